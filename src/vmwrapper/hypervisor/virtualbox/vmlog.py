"""The VM's ``VBox.log`` as this run sees it: which file is this run's, the VM process id in
it, its new ``Guest Log:`` lines, and the hypervisor log dump for error reports.

VirtualBox rotates ``VBox.log`` at every start (docs/compatibility.md#virtualbox-state-and-logs),
so a log is this run's only when its identity (device, inode) differs from the one before
``startvm``: the log before is renamed, not deleted, so the new one cannot reuse its inode. Not
the ctime, which every appended line changes (and, under Wine, the creation time too): with it
each read looked like a new log and every guest line came again. The parsing is pure
(:mod:`.logs`); this module reads the files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psutil

from vmwrapper.errors import VmStartError
from vmwrapper.hypervisor.base import VmConfig
from vmwrapper.hypervisor.text import whole_lines_tail
from vmwrapper.hypervisor.virtualbox import commands as cmd
from vmwrapper.hypervisor.virtualbox import logs
from vmwrapper.hypervisor.virtualbox.runner import TRACE_FILE

PID_TIMEOUT = 45.0  # vboxwrapper waits ~45 s for "Process ID:" in VBox.log

#: A log file's identity: (device, inode); a rotated log has a new one.
Identity = tuple[int, int]


class VmLog:
    """This run's ``VBox.log`` of one VM; remembers how far its guest lines were read."""

    def __init__(
        self,
        config: VmConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        poll_interval: float = 0.25,
    ) -> None:
        self.config = config
        self._clock = clock
        self._sleep = sleep
        self._poll_interval = poll_interval
        self._identity: Identity | None = None  # of the log this run's VM writes
        self._offset = 0

    @property
    def path(self) -> Path:
        return cmd.log_dir(self.config) / "VBox.log"

    def identity(self) -> Identity | None:
        """The current file's identity, None when there is none."""
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def is_this_runs(self) -> bool:
        """The current file is the log of the VM this run started."""
        return self._identity is not None and self.identity() == self._identity

    def read(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def wait_for_pid(self, before: Identity | None) -> int:
        """The VM process id from the *new* VBox.log (VirtualBox rotates it at start,
        docs/compatibility.md#virtualbox-state-and-logs); the new log becomes this run's."""
        deadline = self._clock() + PID_TIMEOUT
        while True:
            identity = self.identity()
            if identity is not None and identity != before:
                pid = logs.process_id(self.read())
                if pid is not None and psutil.pid_exists(pid):
                    self._identity = identity
                    self._offset = 0
                    return pid
            if self._clock() >= deadline:
                raise VmStartError(
                    f"VM {self.config.name} was started but its log {self.path} named no "
                    f"process within {PID_TIMEOUT:.0f} s",
                    code=-182,
                )
            self._sleep(self._poll_interval)

    def guest_lines(self) -> list[str]:
        """New ``Guest Log:`` lines of the current VBox.log (a rotated log restarts at 0)."""
        identity = self.identity()
        if identity is None or self._identity is None:
            return []  # not started by us yet: the log is an earlier run's
        if identity != self._identity:
            self._identity = identity
            self._offset = 0
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except OSError:
            return []
        chunk = logs.split_new(data, self._offset)
        self._offset = chunk.offset
        return logs.guest_lines(chunk.lines)


def hypervisor_logs(config: VmConfig, profile_dir: Path, limit: int) -> dict[str, str]:
    """vboxwrapper's hypervisor log dump (docs/compatibility.md#logging-and-error-reports): the
    tails of VBoxSVC.log, VBox.log, vbox_trace.txt and VBoxStartup.log under its section titles.
    """
    sources = {
        "Hypervisor System Log": profile_dir / "VBoxSVC.log",
        "VM Execution Log": cmd.log_dir(config) / "VBox.log",
        "VM Startup Log": cmd.log_dir(config) / "VBoxStartup.log",
        "VM Trace Log": config.slot_dir / TRACE_FILE,
    }
    dump: dict[str, str] = {}
    for title, path in sources.items():
        try:
            dump[title] = whole_lines_tail(
                path.read_text(encoding="utf-8", errors="replace"), limit
            )
        except OSError:
            continue
    return dump
