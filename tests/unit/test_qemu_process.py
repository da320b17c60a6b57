"""The QEMU process's lifecycle (``Runstate`` and its guard), shown with real short-lived
processes in place of QEMU; waits use the injected clock and sleep."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from vmwrapper.errors import BackendError, VmStartError
from vmwrapper.hypervisor.qemu.process import Exit, QemuProcess, Runstate

PY = sys.executable


def _process(exits: list[Exit]) -> QemuProcess:
    return QemuProcess(exits.append, clock=time.monotonic, sleep=time.sleep)


def _state(proc: QemuProcess) -> Runstate:
    return proc.runstate  # read anew each time (mypy would narrow the property)


def test_idle_running_exited_and_the_exit_reported_once(tmp_path: Path) -> None:
    exits: list[Exit] = []
    proc = _process(exits)
    assert _state(proc) is Runstate.IDLE and proc.pid() is None and proc.cpu_time() == 0.0
    proc.spawn((PY, "-c", "import sys; print('bye'); sys.exit(3)"), tmp_path, tmp_path / "err")
    assert _state(proc) is Runstate.RUNNING
    assert proc.wait_exit(30.0)
    assert _state(proc) is Runstate.EXITED and proc.pid() is None
    assert exits == [proc.exit] and proc.exit is not None and proc.exit.code == 3
    proc.reap(wait=0.1)
    assert len(exits) == 1  # collected once
    assert (tmp_path / "err").read_text() == "bye\n"  # stdout and stderr appended there
    proc.forget()
    assert _state(proc) is Runstate.IDLE and proc.exit is None


def test_the_guard_refuses_a_second_process(tmp_path: Path) -> None:
    exits: list[Exit] = []
    proc = _process(exits)
    proc.spawn((PY, "-c", "import time; time.sleep(60)"), tmp_path, tmp_path / "err")
    try:
        with pytest.raises(BackendError, match="cannot start QEMU: QEMU is running"):
            proc.spawn((PY, "-c", "pass"), tmp_path, tmp_path / "err")
    finally:
        proc.kill()
    assert _state(proc) is Runstate.EXITED
    assert exits[0].code == -9  # killed by SIGKILL


def test_a_missing_binary_is_a_start_error(tmp_path: Path) -> None:
    proc = _process([])
    with pytest.raises(VmStartError, match="cannot run QEMU"):
        proc.spawn((str(tmp_path / "no-qemu"),), tmp_path, tmp_path / "err")
    assert _state(proc) is Runstate.IDLE


def test_waits_use_the_injected_clock(tmp_path: Path) -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    proc = QemuProcess(lambda _exit: None, clock=lambda: now[0], sleep=sleep)
    proc.spawn((PY, "-c", "import time; time.sleep(60)"), tmp_path, tmp_path / "err")
    try:
        assert not proc.wait_exit(1.0)  # the fake second passes without a real one
        assert slept and sum(slept) >= 1.0
    finally:
        proc.kill()
