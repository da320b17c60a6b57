"""The CPU cap of a QEMU process: a cgroup's CFS bandwidth where one can be made, else a
SIGSTOP/SIGCONT duty cycle in a small thread (on Windows: NtSuspendProcess/NtResumeProcess,
through ``hostos``)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

from vmwrapper import hostos
from vmwrapper.errors import BackendError

log = logging.getLogger(__name__)


class CpuCap:
    """Limits a process to a share of CPU time. ``set(percent)`` 100 lifts the limit."""

    method = "none"

    def set(self, percent: int) -> None:
        raise NotImplementedError

    def hold(self) -> contextlib.AbstractContextManager[None]:
        """While held, the process runs (QMP calls must not meet a stopped QEMU)."""
        return contextlib.nullcontext()

    def close(self) -> None:
        """Lift the limit and release what the cap made (threads, cgroups)."""


class CgroupCpuCap(CpuCap):
    """CFS bandwidth of a cgroup made for the process (cgroup v2 ``cpu.max`` or v1 quota)."""

    method = "cgroup"
    PERIOD_US = 100_000

    def __init__(self, pid: int, cpus: int, name: str) -> None:
        self.cpus = cpus
        v2 = Path("/sys/fs/cgroup")
        v1 = Path("/sys/fs/cgroup/cpu")
        if "cpu" in _read(v2 / "cgroup.controllers").split():
            self.v2 = True
            self.dir = v2 / _own_cgroup_v2() / name
        elif (v1 / "cpu.cfs_quota_us").exists():
            self.v2 = False
            self.dir = v1 / name
        else:
            raise OSError("no cgroup cpu controller mounted")
        self.dir.mkdir(exist_ok=True)
        (self.dir / "cgroup.procs").write_text(str(pid))

    def set(self, percent: int) -> None:
        quota = max(1000, self.PERIOD_US * self.cpus * percent // 100)
        if self.v2:
            text = "max" if percent >= 100 else str(quota)
            (self.dir / "cpu.max").write_text(f"{text} {self.PERIOD_US}")
        else:
            (self.dir / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
            (self.dir / "cpu.cfs_quota_us").write_text("-1" if percent >= 100 else str(quota))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.set(100)
        with contextlib.suppress(OSError):
            self.dir.rmdir()  # fails while a process is still in it; retried on next close


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _own_cgroup_v2() -> str:
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        if line.startswith("0::"):
            return line[3:].strip("/")
    return ""


class DutyCycleCpuCap(CpuCap):
    """SIGSTOP/SIGCONT the process in a small thread: ``percent`` of each period it runs.

    Used when no cgroup can be made. QEMU's monitor stops with the process, so QMP calls run
    inside :meth:`hold`, which waits for the running phase and keeps the process running.
    """

    method = "duty-cycle"

    def __init__(self, pid: int, period: float = 0.1) -> None:
        self.pid = pid
        self.period = period
        self.percent = 100
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._cycle, name=f"cpu-cap-{pid}", daemon=True)
        self._thread.start()

    def set(self, percent: int) -> None:
        self.percent = max(1, min(100, percent))

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self._lock:
            yield

    def _cycle(self) -> None:
        while not self._stop.is_set():
            percent = self.percent
            if percent >= 100:
                self._stop.wait(self.period)
                continue
            with self._lock:
                if not hostos.stop_process(self.pid):
                    return
                self._stop.wait(self.period * (100 - percent) / 100)
                hostos.continue_process(self.pid)
            self._stop.wait(self.period * percent / 100)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        hostos.continue_process(self.pid)


def make_cpu_cap(
    pid: int, cpus: int, name: str, method: str = "auto", percent: int = 100
) -> CpuCap:
    """A cgroup cap set to ``percent`` where one works here, else the SIGSTOP/SIGCONT cycle.

    A cgroup can be made yet unusable (cgroup v2 without the cpu controller delegated to
    it), so the first ``set`` is part of the test.
    """
    if method in ("auto", "cgroup"):
        cap: CgroupCpuCap | None = None
        try:
            cap = CgroupCpuCap(pid, cpus, name)
            cap.set(percent)
            return cap
        except OSError as exc:
            if cap is not None:
                _move_back(pid, cap)
            if method == "cgroup":
                raise BackendError(f"cannot cap CPU use with a cgroup: {exc}") from exc
            log.info("no cgroup for the CPU cap (%s); using a SIGSTOP/SIGCONT duty cycle", exc)
    duty = DutyCycleCpuCap(pid)
    duty.set(percent)
    return duty


def _move_back(pid: int, cap: CgroupCpuCap) -> None:
    """Undo a half-made cgroup cap: the process back to the parent group, the group gone."""
    with contextlib.suppress(OSError):
        (cap.dir.parent / "cgroup.procs").write_text(str(pid))
    cap.close()


class CapControl:
    """The cap the back end was asked for, applied to its QEMU while one runs (a new QEMU
    gets it when started)."""

    def __init__(self, cpus: int, method: str) -> None:
        self.cpus = cpus
        self.method = method
        self.percent = 100
        self._cap: CpuCap | None = None

    def want(self, percent: int) -> None:
        self.percent = max(1, min(100, int(percent)))

    def apply(self, pid: int) -> None:
        """Cap QEMU ``pid`` at the wanted share (no cap made while it is 100)."""
        if self._cap is None:
            if self.percent >= 100:
                return
            self._cap = make_cpu_cap(pid, self.cpus, f"vmwrapper-{pid}", self.method, self.percent)
        else:
            try:
                self._cap.set(self.percent)
            except OSError as exc:
                raise BackendError(f"cannot change the CPU cap: {exc}") from exc
        log.info(
            "CPU cap %d%% (%s)", self.percent, self._cap.method,
            extra={"event": "qemu_cpu_cap", "percent": self.percent},
        )  # fmt: skip

    def hold(self) -> contextlib.AbstractContextManager[None]:
        return self._cap.hold() if self._cap is not None else contextlib.nullcontext()

    def release(self) -> None:
        """QEMU exited: lift the cap and drop what it made."""
        if self._cap is not None:
            self._cap.close()
            self._cap = None

    @property
    def in_use(self) -> str:
        return self._cap.method if self._cap is not None else "none"
