"""Load: four jobs at once on one host (2 cores under TCG).

Each job has the console (VNC) and a port forward, so each needs its own ports. All four must
finish with the output of an uninterrupted run, and nothing may be shared by accident: QEMU
processes, host ports, QMP sockets, and every file QEMU opens (overlay, QMP socket, console
log, shared dir) must be in the job's own slot. (VM names come from result names, unique per
task in a real client; the harness names every task alike, and under QEMU the name only labels
the process.)
"""

from __future__ import annotations

import contextlib
import re
import threading
from pathlib import Path

import psutil
import pytest

from helpers.fault_fixtures import (
    COUNTING_JOB,
    EXPECTED_OUTPUT,
    RESUMABLE_APP,
    no_qemu_left,
    output_text,
    package_app,
    qemu_procs,
    run,
)
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
    default_guest_image: Path,
    tmp_path: Path,
) -> None:
    app = package_app(tmp_path / "pkg", default_guest_image, RESUMABLE_APP, LOAD_JOB)
    # The harness runs one task per data dir (it names every task app_wu_0_0), so four data
    # dirs on the one host: what they could clash on is the host's (ports, processes, files
    # QEMU opens, temp dirs), which is what is checked.
    works = [tmp_path / f"client{n}" for n in range(JOBS)]
    reports: dict[int, JobReport] = {}
    errors: list[BaseException] = []
    qemu_seen: dict[str, dict[int, str]] = {}  # slot -> QEMU pid -> its command line
    ports_seen: dict[str, set[int]] = {}  # slot -> host ports its QEMU listened on
    stop = threading.Event()

    def one(n: int) -> None:
        try:
            reports[n] = run(app, works[n], max_episodes=2)
        except BaseException as exc:  # reported below, with the others' results
            errors.append(exc)

    def watch() -> None:  # what ran in which slot, while they all run
        while not stop.wait(0.5):
            for slot in (w / "slots" / "0" for w in works):
                for proc in qemu_procs(slot):
                    with contextlib.suppress(psutil.Error):
                        qemu_seen.setdefault(str(slot), {})[proc.pid] = " ".join(proc.cmdline())
                        ports_seen.setdefault(str(slot), set()).update(
                            c.laddr[1]
                            for c in proc.net_connections(kind="tcp")
                            if c.status == psutil.CONN_LISTEN and c.laddr
                        )

    threads = [threading.Thread(target=one, args=(n,)) for n in range(JOBS)]
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for thread in threads:
        thread.start()
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
        no_qemu_left(Path(report.slot_dir))

    # every slot had its own QEMU (no pid in two slots), whose every file is in its own slot
    assert sorted(qemu_seen) == sorted(str(Path(s)) for s in slots), qemu_seen
    pids = [pid for per_slot in qemu_seen.values() for pid in per_slot]
    assert len(pids) == len(set(pids))
    sockets: set[str] = set()
    for slot, per_slot in qemu_seen.items():
        for cmdline in per_slot.values():
            paths = re.findall(r"(?:filename|path|file)=(/[^,\s]+)", cmdline)
            # (a QMP socket goes to $TMPDIR when the slot path is too long for one)
            assert paths and all(p.startswith(slot + "/") or p.endswith(".qmp") for p in paths), (
                slot,
                paths,
            )
            sockets.update(p for p in paths if p.endswith((".qmp", ".sock")))
            assert f"{slot}/vm_disk.qcow2" in cmdline  # its own overlay
    assert len(sockets) == JOBS, sockets  # four QMP sockets
    # eight distinct host ports (a VNC console and a forward per job), none shared
    all_ports = [p for ports in ports_seen.values() for p in ports]
    assert len(all_ports) >= 2 * JOBS and len(all_ports) == len(set(all_ports)), ports_seen
    for s in slots:
        checkpoint.read_record(Path(s))  # each slot's record, intact
