"""Load: four jobs at once on one host (2 cores under TCG), in four slots of one BOINC data dir.

Each job has the console (VNC) and a port forward, so each needs its own ports. All four must
finish with the output of an uninterrupted run, and nothing may be shared by accident: VM
names, QEMU processes, QMP sockets, host ports, lock files, overlays (each over its own slot's
image copy) and checkpoint records.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from helpers.fault_fixtures import (
    COUNTING_JOB,
    EXPECTED_OUTPUT,
    RESUMABLE_APP,
    events,
    no_qemu_left,
    output_text,
    package_app,
    qemu_procs,
    run,
)
from helpers.image_fixtures import default_guest_image  # noqa: F401 (fixture)
from vmwrapper.harness.job import JobReport
from vmwrapper.supervisor import checkpoint

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]

JOBS = 4
LOAD_JOB = COUNTING_JOB.replace(
    "<enable_shared_directory/>",
    "<enable_shared_directory/><enable_remotedesktop/><enable_network/>"
    "<pf_guest_port>80</pf_guest_port>",
)


def test_four_jobs_at_once_all_finish_without_clashes(
    default_guest_image: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    app = package_app(tmp_path / "pkg", default_guest_image, RESUMABLE_APP, LOAD_JOB)
    work = tmp_path / "client"
    reports: dict[int, JobReport] = {}
    errors: list[BaseException] = []
    qemu_seen: dict[str, set[int]] = {}
    stop = threading.Event()

    def one(n: int) -> None:
        try:
            reports[n] = run(app, work, max_episodes=2)
        except BaseException as exc:  # reported below, with the others' results
            errors.append(exc)

    def watch() -> None:  # which QEMU ran in which slot, while they all run
        while not stop.wait(0.5):
            for slot in (work / "slots").glob("*"):
                qemu_seen.setdefault(slot.name, set()).update(p.pid for p in qemu_procs(slot))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(JOBS)]
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for thread in threads:
        thread.start()
        # the harness takes the first empty slot: let each job stage before the next looks
        wait_for_slots(work, len([t for t in threads if t.ident]), timeout=60)
    for thread in threads:
        thread.join(timeout=800)
    stop.set()
    watcher.join(timeout=5)
    assert not errors, errors
    assert len(reports) == JOBS

    slots = sorted({r.slot_dir for r in reports.values()})
    assert len(slots) == JOBS  # four slots, one per job
    for report in reports.values():
        assert report.success, report.message + report.stderr_tail
        assert output_text(report) == EXPECTED_OUTPUT

    # no clash: every slot had its own QEMU, and QEMU ran in all four at the same time
    pids = [pid for name in qemu_seen for pid in qemu_seen[name]]
    assert len(pids) == len(set(pids)) and len(qemu_seen) == JOBS, qemu_seen

    names: set[str] = set()
    ports: list[int] = []
    backing: set[str] = set()
    for s in map(Path, slots):
        names.update(str(e["message"]) for e in events(s, "vm_created"))  # "Create VM. (name)"
        record = checkpoint.read_record(s)
        ports += [record.webapi_port, record.remote_desktop_port]
        info = json.loads(
            subprocess.run(
                ["qemu-img", "info", "-U", "--output=json", str(s / "vm_disk.qcow2")],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout
        )
        base = Path(info["backing-filename"])
        assert base.parent == s or (s / base).parent == s, base  # over its own slot's copy
        backing.add(str(s / base.name))
        no_qemu_left(s)
    assert all(ports) and len(set(ports)) == 2 * JOBS, ports  # eight distinct host ports
    assert len(backing) == JOBS
    assert len(names) == JOBS, names  # four VM names


def wait_for_slots(work: Path, count: int, timeout: float) -> None:
    """Until ``count`` slots hold a staged job (init_data.xml written)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        staged = list((work / "slots").glob("*/init_data.xml")) if work.exists() else []
        if len(staged) >= count:
            return
        time.sleep(0.1)
