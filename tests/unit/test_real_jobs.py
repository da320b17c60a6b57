"""Real projects' job files and app versions (tests/data/real-jobs/README.md names each source).

Every job file vboxwrapper runs is accepted by ``vmwrapper spec`` and by ``vmwrapper run``;
``vmwrapper lint`` passes BOINC's own samples/worker app version and boinc2docker's, and still
catches each documented pitfall when one is put into a real app version.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from vmwrapper.cli.main import main
from vmwrapper.packaging.templates import InputFile, InputTemplate, format_input_template
from vmwrapper.spec import parse_job

REAL = Path(__file__).parent.parent / "data" / "real-jobs"
INIT_DATA = Path(__file__).parent.parent / "data" / "init_data_real_client.xml"
JOBS = sorted(p for p in REAL.rglob("*.xml") if "version" not in p.name)
VDI_HEAD = b"<<< Oracle VM VirtualBox Disk Image >>>\n".ljust(64, b"\0") + b"\x7f\x10\xda\xbe"


def _id(path: Path) -> str:
    return str(path.relative_to(REAL))


def test_the_collection_is_there() -> None:
    assert len(JOBS) >= 8
    readme = (REAL / "README.md").read_text()
    assert all(f"`{_id(p)}`" in readme for p in REAL.rglob("*.xml"))


@pytest.mark.parametrize("job", JOBS, ids=_id)
def test_spec_accepts_every_real_job(job: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["spec", str(job)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("job", JOBS, ids=_id)
def test_run_accepts_every_real_job(
    job: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(job, tmp_path / "vbox_job.xml")
    shutil.copy(INIT_DATA, tmp_path / "init_data.xml")
    monkeypatch.chdir(tmp_path)
    assert main(["--dry-run"]) == 0, capsys.readouterr().err


def test_real_values_read_as_vboxwrapper_reads_them() -> None:
    cms = parse_job((REAL / "lhcathome" / "CMS.xml").read_bytes()).spec
    assert (cms.memory_size_mb, cms.job_duration) == (2048.0, 64800.0)
    assert (cms.heartbeat_filename, cms.minimum_heartbeat_interval) == ("heartbeat", 1200.0)
    assert cms.multiattach_vdi_file == "CMS.vdi" and cms.copy_to_shared == ("init_data.xml",)
    assert cms.enable_vm_savestate_usage and cms.disable_automatic_checkpoints
    worker = parse_job((REAL / "boinc-samples-worker" / "vbox_job_worker_1.xml").read_bytes())
    assert worker.spec.share_slot_dir and worker.spec.share_project_dir
    assert worker.spec.shared_dir == "."
    docker = parse_job((REAL / "boinc2docker" / "x86_64" / "vbox_job.xml").read_bytes()).spec
    assert docker.enable_isocontextualization and docker.enable_cache_disk  # written "1"
    template = parse_job((REAL / "boinc2docker" / "vbox_job_template.xml").read_bytes(), "t.xml")
    assert template.spec.memory_size_mb == 0.0  # "{memory}" is no number: BOINC keeps 0
    assert any("<memory_size_mb>" in w and "'{memory}'" in w for w in template.warnings)


# -- lint on real app versions -------------------------------------------------------------


def _stand_in(app: Path, name: str) -> None:
    path = app / name
    if path.exists():
        return
    if name.endswith((".vdi",)):
        path.write_bytes(VDI_HEAD + b"\0" * 64)
    elif name.endswith(".iso"):
        path.write_bytes(b"\0" * 1024)
    else:
        path.write_bytes(b"#!/bin/sh\nexit 0\n")
        os.chmod(path, 0o755)


WORKER_FILES = (
    "vboxwrapper_26207_windows_x86_64.exe",
    "worker_2_x86_64-pc-linux-gnu",
    "run_worker_1.sh",
    "boinc_resolve_1",
    "vm_image_x64_1.vdi",
)
APPS = {
    "boinc-samples-worker": (
        REAL / "boinc-samples-worker" / "vm_version.xml",
        REAL / "boinc-samples-worker" / "vbox_job_worker_1.xml",
        "vbox_job_1.xml",  # the name vm_version.xml gives it
        WORKER_FILES,
    ),
    "boinc2docker-app": (
        REAL / "boinc2docker" / "app" / "version.xml",
        REAL / "boinc2docker" / "app" / "vbox_job.xml",
        "vbox_job.xml",
        ("vboxwrapper_26105_x86_64-pc-linux-gnu", "vm_isocontext.iso", "vm_cache.vdi"),
    ),
    "boinc2docker-x86_64": (
        REAL / "boinc2docker" / "x86_64" / "version.xml",
        REAL / "boinc2docker" / "x86_64" / "vbox_job.xml",
        "vbox_job.xml",
        ("vboxwrapper", "vm_isocontext.iso", "vm_cache.vdi"),
    ),
}


def _real_app(tmp_path: Path, which: str) -> Path:
    version, job, job_name, others = APPS[which]
    app = tmp_path / which
    app.mkdir()
    shutil.copy(version, app / "version.xml")
    shutil.copy(job, app / job_name)
    for name in others:
        _stand_in(app, name)
    return app


def _lint(app: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = main(["lint", str(app), *extra])
    return code, capsys.readouterr().out


@pytest.mark.parametrize("which", ["boinc-samples-worker", "boinc2docker-x86_64"])
def test_lint_passes_real_app_versions(
    which: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _lint(_real_app(tmp_path, which), capsys)
    assert code == 0, out
    assert " error:" not in out
    if which == "boinc-samples-worker":  # the whole slot is shared: no shared/ demanded
        assert "VMW016" not in out and "VMW017" not in out and "VMW018" not in out


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_pitfall_caught_in_a_real_early_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """boinc2docker's first app version had <copy_file/> commented out for the ISO and the
    cache disk (its later x86_64 version has them): VirtualBox would open the client's link
    files instead of the images."""
    code, out = _lint(_real_app(tmp_path, "boinc2docker-app"), capsys)
    assert code == 1 and "VMW009" in out and "VMW024" in out


# Each documented pitfall, put into BOINC's real worker app version, is caught.
WORKER_PITFALLS = {
    "boinc_app without copy_file": (
        "version.xml",
        "<logical_name>boinc_app</logical_name>\n        <copy_file/>",
        "<logical_name>boinc_app</logical_name>",
        "VMW018",
    ),
    "boinc_app outside shared/ without share_slot_dir": (
        "vbox_job_1.xml",
        "<share_slot_dir/>",
        "<enable_shared_directory/>",
        "VMW017",
    ),
    "no dont_throttle": ("version.xml", "<dont_throttle/>", "", "VMW019"),
    "multiattach parent copied": (
        "version.xml",
        "<logical_name>vm_image.vdi</logical_name>",
        "<logical_name>vm_image.vdi</logical_name><copy_file/>",
        "VMW012",
    ),
    "multiattach parent missing": (
        "vbox_job_1.xml",
        "vm_image_x64_1.vdi",
        "vm_image_x64_2.vdi",
        "VMW011",
    ),
    "job file parse error": ("vbox_job_1.xml", "</vbox_job>", "", "VMW007"),
}


@pytest.mark.parametrize("pitfall", sorted(WORKER_PITFALLS))
def test_pitfall_in_the_real_worker_app_is_caught(
    pitfall: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, old, new, code = WORKER_PITFALLS[pitfall]
    app = _real_app(tmp_path, "boinc-samples-worker")
    _edit(app / name, old, new)
    exit_code, out = _lint(app, capsys)
    assert exit_code == 1 and f"{code} [error]" in out, out


def _worker_with_wu_disk(tmp_path: Path, disk: InputFile) -> Path:
    """The worker app with its multiattach disk sent per workunit instead of in the version."""
    app = _real_app(tmp_path, "boinc-samples-worker")
    _edit(app / "vbox_job_1.xml", "<share_slot_dir/>", "<enable_shared_directory/>")
    _edit(app / "vbox_job_1.xml", "vm_image_x64_1.vdi", "batch_image_7.vdi")
    template = InputTemplate((disk, InputFile("shared/in")))
    (app / "input_template.xml").write_bytes(format_input_template(template).encode())
    # the image runs its own program, so the app needs a boinc_app under shared/
    _edit(
        app / "version.xml",
        "<logical_name>boinc_app</logical_name>",
        "<logical_name>shared/boinc_app</logical_name>",
    )
    return app


def test_multiattach_disk_as_sticky_workunit_file_is_right(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = InputFile("batch_image_7.vdi", copy_file=False, sticky=True, no_delete=True)
    app = _worker_with_wu_disk(tmp_path, disk)
    code, out = _lint(app, capsys, "--wu", str(app / "input_template.xml"))
    assert code == 0, out
    assert "VMW017" not in out and "VMW018" not in out and "VMW011" not in out


def test_pitfall_multiattach_disk_in_workunit_not_sticky(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = InputFile("batch_image_7.vdi", copy_file=False)
    app = _worker_with_wu_disk(tmp_path, disk)
    _, out = _lint(app, capsys, "--wu", str(app / "input_template.xml"))
    assert "VMW013" in out and "VMW017" not in out


def test_pitfall_workunit_input_outside_shared(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = InputFile("batch_image_7.vdi", copy_file=False, sticky=True)
    app = _worker_with_wu_disk(tmp_path, disk)
    template = InputTemplate((disk, InputFile("in", copy_file=False)))
    (app / "input_template.xml").write_bytes(format_input_template(template).encode())
    code, out = _lint(app, capsys, "--wu", str(app / "input_template.xml"))
    assert code == 1 and "VMW017" in out and "VMW018" in out
