"""The QEMU process: spawn, reap (exit status and CPU time from rusage), kill, and a QEMU
left running by a killed wrapper. Its lifecycle is a :class:`Runstate` with a guard, after
``qemu.qmp``'s ``Runstate``; every wait uses the injected clock and sleep. On Windows
(docs/windows.md#the-qemu-back-end-on-windows): no console window, a job object that ends
QEMU with the wrapper, and the CPU time last read while it ran (Windows keeps no rusage)."""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from vmwrapper import hostos
from vmwrapper.errors import BackendError, VmStartError

log = logging.getLogger(__name__)

#: Seconds between two looks at a process we wait for.
POLL = 0.05
#: Seconds to wait for QEMU's exit when its QMP connection drops.
QMP_LOST_GRACE = 5.0


class Runstate(enum.Enum):
    """Where the QEMU process is in its life."""

    IDLE = "idle"  # none started since the back end was made or cleaned up
    RUNNING = "running"  # spawned, exit not yet collected
    EXITED = "exited"  # exit status collected (``exit`` holds it)


@dataclass(frozen=True)
class Exit:
    code: int  # negative: killed by that signal
    cpu_time: float


class QemuProcess:
    """One QEMU at a time; ``on_exit`` is called once when its exit is collected."""

    def __init__(
        self,
        on_exit: Callable[[Exit], None],
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self._on_exit = on_exit
        self.clock = clock
        self.sleep = sleep
        self._proc: subprocess.Popen[bytes] | None = None
        self._state = Runstate.IDLE
        self.exit: Exit | None = None
        self._cpu_seen = 0.0  # the last CPU time read while QEMU ran (Windows has no rusage)

    @property
    def runstate(self) -> Runstate:
        """The state as last seen (call :meth:`alive` to look at the process first)."""
        return self._state

    def _require(self, *states: Runstate, what: str) -> None:
        """The guard: ``what`` is only legal in ``states``."""
        if self._state not in states:
            raise BackendError(f"cannot {what}: QEMU is {self._state.value}")

    def spawn(self, argv: tuple[str, ...], cwd: Path, stderr: Path) -> None:
        """Run QEMU with stdout and stderr appended to ``stderr``."""
        self._require(Runstate.IDLE, Runstate.EXITED, what="start QEMU")
        with stderr.open("ab") as err:
            try:
                proc = hostos.spawn(
                    argv,
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    start_new_session=True,  # a Ctrl-C for the wrapper is not one for QEMU
                )
            except OSError as exc:
                raise VmStartError(f"cannot run QEMU: {exc}", argv=argv) from exc
        hostos.end_with_this_process(proc.pid)
        self._proc, self.exit, self._state = proc, None, Runstate.RUNNING
        self._cpu_seen = 0.0

    def forget(self) -> None:
        """Back to IDLE (the back end cleaned up)."""
        self._proc, self.exit, self._state = None, None, Runstate.IDLE

    def reap(self, wait: float = 0.0) -> None:
        """Collect QEMU's exit status (and its CPU time from rusage) once it has exited."""
        proc = self._proc
        if proc is None or self._state is not Runstate.RUNNING:
            return
        deadline = self.clock() + wait
        while True:
            done = _collect(proc)
            if done is not None:
                code, cpu = done
                self.exit = Exit(code, self._cpu_seen if cpu is None else cpu)
                self._state = Runstate.EXITED
                self._on_exit(self.exit)
                return
            if self.clock() >= deadline:
                return
            self.sleep(POLL)

    def alive(self) -> bool:
        self.reap()
        return self._state is Runstate.RUNNING

    def pid(self) -> int | None:
        return self._proc.pid if self.alive() and self._proc is not None else None

    def started_pid(self) -> int:
        """The pid of the QEMU started last (running or not)."""
        assert self._proc is not None
        return self._proc.pid

    def kill(self) -> None:
        if self.alive():
            assert self._proc is not None
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()  # SIGKILL; TerminateProcess on Windows
            self.reap(wait=10.0)

    def wait_exit(self, timeout: float) -> bool:
        self.reap(wait=timeout)
        return not self.alive()

    def cpu_time(self) -> float:
        if self._proc is None:
            return 0.0
        if self.alive():
            try:
                times = psutil.Process(self._proc.pid).cpu_times()
                # QEMU forks no helpers; children() would read all of /proc
                self._cpu_seen = float(times.user + times.system)
                return self._cpu_seen
            except psutil.Error:
                self.reap(wait=1.0)
        return self.exit.cpu_time if self.exit else 0.0

    def stop_stale(self, pidfile: Path, marker: str) -> None:
        """A QEMU that outlived a killed wrapper holds the overlay's lock: stop it. It is
        ours if its command line names ``marker`` (this slot's QMP socket)."""
        try:
            pid = int(pidfile.read_text().strip())
            proc = psutil.Process(pid)
            cmdline = " ".join(proc.cmdline())
        except (OSError, ValueError, psutil.Error):
            return
        if marker not in cmdline:
            return  # the pid was reused by something else
        log.warning("stopping QEMU pid %d left by an earlier run of this slot", pid)
        proc.kill()
        deadline = self.clock() + 10.0
        while self.clock() < deadline:  # gone, or a zombie: its locks are released
            with contextlib.suppress(psutil.Error):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    self.sleep(POLL)
                    continue
            break


def _collect(proc: subprocess.Popen[bytes]) -> tuple[int, float | None] | None:
    """QEMU's exit code and CPU time (None where the OS keeps no rusage for a child: Windows)
    once it has exited, else None."""
    if not hasattr(os, "wait4"):
        code = proc.poll()
        return None if code is None else (code, None)
    try:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    except ChildProcessError:
        pid, status, usage = proc.pid, 0, None
    if not pid:
        return None
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # Popen must not wait for it again
    return code, (usage.ru_utime + usage.ru_stime if usage else 0.0)
