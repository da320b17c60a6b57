"""Jobs in the style of BOINC's ``samples/worker`` on a real QEMU guest, run by the harness:
``<share_slot_dir/>`` (the slot is the guest's ``/root/shared``; no ``shared/`` directory) with
``<share_project_dir/>`` or ``<enable_scratch_directory/>``. Two boots.

The app version is hand-written as a project would for such a job: ``boinc_app`` and the
workunit's ``in`` and the result's ``out`` are in the slot itself. What the guest receives
from the slot is its job's files, not the wrapper's (VM disks and snapshots, QEMU's socket and
logs, stderr.txt, events.jsonl, the client's files): docs/compatibility.md#runtime.
"""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path

import pytest

from helpers.supervisor_fixtures import LAUNCHER
from vmwrapper.harness.job import JobRequest, run_job
from vmwrapper.packaging.templates import (
    InputFile,
    InputTemplate,
    OutputFile,
    OutputTemplate,
    format_input_template,
    format_output_template,
)
from vmwrapper.packaging.version import AppVersion, VersionFile, format_version_xml
from vmwrapper.shared_dir.watch import SLOT_PRIVATE_PATTERNS

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]

WORKER_APP = """#!/bin/sh
# runs in the guest, in /root/shared = the slot
ls -A > listing
read -r n < in
data=$(vmwrapper-with-share project cat /root/project/worker_data_1.txt)
echo "worker: $n squared is $((n * n)); the project says $data" > out
"""

SCRATCH_APP = """#!/bin/sh
ls -A > listing
read -r n < in
vmwrapper-with-share scratch sh -c "echo 'scratch note $n' > /root/scratch/note"
echo "worker: $n" > out
"""


def job_xml(extra: str) -> str:
    return f"""<vbox_job>
  <os_name>Linux26_64</os_name>
  <memory_size_mb>512</memory_size_mb>
  <share_slot_dir/>
  <vmwrapper_backends>qemu</vmwrapper_backends>
  <vmwrapper_software_emulation/>
  {extra}
</vbox_job>
"""


def worker_app_dir(root: Path, image: Path, app: str, extra: str) -> Path:
    d = root / "app"
    (d / "templates").mkdir(parents=True)
    (d / "inputs").mkdir()
    shutil.copyfile(LAUNCHER, d / "vmwrapper_1.sh")
    (d / "vmwrapper_1.sh").chmod(0o755)
    (d / "vbox_job_1.xml").write_text(job_xml(extra))
    shutil.copyfile(image, d / "vm_image_1.vdi")
    (d / "boinc_app_1.sh").write_text(app)
    (d / "worker_data_1.txt").write_text("forty-two\n")
    (d / "inputs" / "in").write_text("7\n")
    version = AppVersion(
        (
            VersionFile("vmwrapper_1.sh", main_program=True, executable=True),
            VersionFile("vbox_job_1.xml", "vbox_job.xml"),
            VersionFile("vm_image_1.vdi", "vm_image.vdi", copy_file=True),
            VersionFile("boinc_app_1.sh", "boinc_app", copy_file=True),
            VersionFile("worker_data_1.txt"),  # read through the project share
        ),
        cmdline="--backend qemu",
    )
    (d / "version.xml").write_text(format_version_xml(version))
    # the job's files in the slot itself, not under shared/
    inputs = InputTemplate((InputFile("in"),))
    outputs = OutputTemplate((OutputFile("out", max_nbytes=100000),))
    (d / "templates" / "input_template.xml").write_text(format_input_template(inputs))
    (d / "templates" / "output_template.xml").write_text(format_output_template(outputs))
    return d


def run(app: Path, work: Path) -> tuple[str, list[str], Path]:
    request = JobRequest(app_dir=app, workdir=work, keep_slot=True, max_episodes=1)
    report = run_job(request)
    assert report.finish_status == 0, report.message + report.stderr_tail
    out = next(o for o in report.outputs if o.logical_name == "out")
    slot = Path(report.slot_dir)
    return Path(out.destination).read_text(), (slot / "listing").read_text().split(), slot


def private(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in SLOT_PRIVATE_PATTERNS)


@pytest.mark.parametrize(
    "transport",
    ["", "<vmwrapper_share_transport>serial</vmwrapper_share_transport>"],
    ids=["9p", "serial"],  # serial: the slot through the file service, the project still 9p
)
def test_share_slot_dir_with_the_project_dir_like_samples_worker(
    tmp_path: Path, default_guest_image: Path, transport: str
) -> None:
    extra = "<share_project_dir/>" + transport
    app = worker_app_dir(tmp_path, default_guest_image, WORKER_APP, extra)
    out, listing, slot = run(app, tmp_path / "work")
    assert out == "worker: 7 squared is 49; the project says forty-two\n"
    # the job's files came in ...
    assert {"boinc_app", "in"} <= set(listing), listing
    # ... and none of the wrapper's, though the slot had them while the guest ran
    assert not [n for n in listing if private(n)], listing
    assert all((slot / n).exists() for n in ("vm_image.vdi", "stderr.txt", "vbox_job.xml"))


def test_share_slot_dir_with_the_scratch_directory(
    tmp_path: Path,
    default_guest_image: Path,
) -> None:
    app = worker_app_dir(tmp_path, default_guest_image, SCRATCH_APP, "<enable_scratch_directory/>")
    out, listing, _slot = run(app, tmp_path / "work")
    assert out == "worker: 7\n"
    notes = list((tmp_path / "work").rglob("scratch/note"))
    assert [n.read_text() for n in notes] == ["scratch note 7\n"], notes
    assert not [n for n in listing if private(n)], listing
