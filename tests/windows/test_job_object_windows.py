"""The job object, under Wine: BOINC's Windows client kills an app with ``TerminateProcess``
on the pid it started, which reaches neither the app's children nor (Wine or Windows) any
process the app started. The wrapper puts its QEMU into a job object that ends it when the
wrapper ends (docs/windows.md#the-qemu-back-end-on-windows); this kills ``vmwrapper.exe`` as
the client does while its ``qemu-system-x86_64.exe`` runs, and checks that none is left.

The QEMU is found from the Linux side: under Wine psutil cannot name a Windows process, but
the Linux process that runs the exe carries its command line.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest

from helpers.common import wait_for
from helpers.fault_fixtures import COUNTING_JOB, RESUMABLE_APP, events
from helpers.wine_fixtures import Toolchain, make_client_slot, run_client, windows_path

pytestmark = pytest.mark.system

#: s: the exe's start, the VDI's conversion and QEMU's start under Wine on a busy host.
DEADLINE = 240


def slot_qemus(slot: Path) -> list[psutil.Process]:
    """The VMs of ``slot`` that run now: a Windows QEMU with a pidfile whose command line
    names the slot (the back end's short ``-device help`` run in the slot is not the VM)."""
    where = windows_path(slot).lower()
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or []).lower()
        if "qemu-system-x86_64" in cmd and "-pidfile" in cmd and where in cmd:
            found.append(proc)
    return found


def test_the_clients_kill_of_the_wrapper_ends_its_qemu(
    wine_toolchain: Toolchain, windows_exe: Path, default_guest_image: Path, tmp_path: Path
) -> None:
    slot = make_client_slot(tmp_path, COUNTING_JOB)
    shutil.copyfile(default_guest_image, slot / "vm_image.vdi")
    (slot / "shared" / "boinc_app").write_text(RESUMABLE_APP)
    report: dict[str, Any] = {}
    failed: list[BaseException] = []

    def client() -> None:
        try:
            report.update(
                run_client(
                    wine_toolchain,
                    windows_exe,
                    slot,
                    # TerminateProcess(194) on the started pid once the VM runs
                    actions=[{"when": {"event": "vm_started"}, "do": "kill"}],
                    deadline=DEADLINE,
                    wu_command_line="",
                    path=[wine_toolchain.qemu],
                )
            )
        except BaseException as exc:  # reported by the test below
            # a QEMU left running keeps Wine's pipes open: the client's run then times out
            failed.append(exc)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    seen: list[psutil.Process] = []

    def vm_runs() -> bool:
        seen[:] = slot_qemus(slot)
        return bool(seen)

    try:
        # the VM as Linux sees it, before the kill (the client kills at the vm_started event)
        assert wait_for(vm_runs, timeout=DEADLINE, interval=0.02)
        thread.join(DEADLINE + 60)
        left = [p.pid for p in seen if p.is_running()]
        assert not thread.is_alive() and report, f"client run: {failed}; QEMU still runs: {left}"
        stderr = (slot / "stderr.txt").read_text(errors="replace")
        assert report["killed"] and not report["timed_out"], report["client_output"] + stderr
        assert report["exit_code"] == 194, report
        assert events(slot, "vm_started"), stderr[-3000:]
        # the wrapper's Python child ended with its bootloader (winclient checks it) ...
        assert report["wrapper_alive_after"] is False, report
        # ... and the job object took QEMU with them
        assert wait_for(lambda: not any(p.is_running() for p in seen), timeout=30), [
            p.info["cmdline"] for p in seen if p.is_running()
        ]
        assert not slot_qemus(slot)
    finally:
        for proc in seen + slot_qemus(slot):  # never leave a VM behind a failed test
            with contextlib.suppress(psutil.Error):
                proc.kill()
