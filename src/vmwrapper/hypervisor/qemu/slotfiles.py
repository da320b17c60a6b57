"""Where the QEMU back end keeps its files in a slot, and this run's part of its logs.

Files in the slot (all removed by ``QemuBackend.cleanup``)::

    vm_disk.qcow2     overlay over vm_image.vdi or the multiattach parent; holds the snapshots
    vm_cache.qcow2    overlay over vm_cache.vdi (ISO contextualization with a cache disk)
    vm_state.qcow2    ISO mode without disks: a node the guest never sees, holds the VM state
    qemu-qmp.sock     the QMP socket (a short path under $TMPDIR if the slot path is too long;
                      none on Windows, where QMP is on TCP loopback)
    qemu-console.log  the guest's first serial port (appended across restarts)
    qemu-stderr.log   QEMU's own messages (host out-of-memory, start errors)
    qemu.pid          QEMU's pidfile: a QEMU left by a killed wrapper is found and stopped
    qemu-net-*.pcap   NIC byte counting (daily_xfer_limit_mb), see ``nettaps``
    vbox_screenshot.png  the error screenshot (enable_screenshots_on_error)
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vmwrapper import hostos
from vmwrapper.hypervisor.base import SCREENSHOT_FILE
from vmwrapper.hypervisor.qemu.console import ConsoleLines
from vmwrapper.hypervisor.text import whole_lines_tail

_UNIX_PATH_MAX = 100  # sun_path is 108 bytes; keep a margin


@dataclass(frozen=True)
class SlotFiles:
    """Where the back end keeps its files for one slot."""

    disk_overlay: Path
    cache_overlay: Path
    state_disk: Path
    qmp_socket: Path
    console: Path
    stderr: Path
    pidfile: Path

    @classmethod
    def for_slot(cls, slot: Path) -> SlotFiles:
        qmp = slot / "qemu-qmp.sock"
        # a Unix socket path must fit in sun_path (without Unix sockets QMP is on TCP)
        if hostos.UNIX_SOCKETS and len(str(qmp)) > _UNIX_PATH_MAX:
            digest = hashlib.sha256(str(slot).encode()).hexdigest()[:16]
            qmp = Path(tempfile.gettempdir()) / f"vmwrapper-{os.getuid()}" / f"{digest}.qmp"
        return cls(
            disk_overlay=slot / "vm_disk.qcow2",
            cache_overlay=slot / "vm_cache.qcow2",
            state_disk=slot / "vm_state.qcow2",
            qmp_socket=qmp,
            console=slot / "qemu-console.log",
            stderr=slot / "qemu-stderr.log",
            pidfile=slot / "qemu.pid",
        )

    def remove(self, slot: Path) -> None:
        """All of them, and the error screenshot; a missing one is fine."""
        for path in (
            self.disk_overlay,
            self.cache_overlay,
            self.state_disk,
            self.qmp_socket,
            self.console,
            self.stderr,
            self.pidfile,
            slot / SCREENSHOT_FILE,
        ):
            path.unlink(missing_ok=True)


class RunLogs:
    """The guest's console and QEMU's stderr as this run wrote them: both files are appended
    across restarts, so each start marks where its own part begins."""

    def __init__(self, files: SlotFiles) -> None:
        self.files = files
        self.console = ConsoleLines()
        self._console_offset = 0
        self._run_console_start = 0
        self._run_stderr_start = 0
        self._pending: list[str] = []

    def new_run(self) -> None:
        """A QEMU is about to start: its logs begin at the files' current ends."""
        self._run_console_start = self._console_offset = size(self.files.console)
        self._run_stderr_start = size(self.files.stderr)
        self.console = ConsoleLines()

    def pull_console(self, final: bool = False) -> None:
        """Read what the guest wrote since the last pull; ``final``: QEMU is gone, so a last
        line without its newline is complete."""
        try:
            with self.files.console.open("rb") as fh:
                fh.seek(self._console_offset)
                data = fh.read(1 << 20)
        except OSError:
            data = b""
        self._console_offset += len(data)
        self._pending += self.console.feed(data)
        if final:
            self._pending += self.console.flush()

    def take_lines(self, final: bool) -> list[str]:
        """The guest's lines not handed out yet."""
        self.pull_console(final=final)
        lines, self._pending = self._pending, []
        return lines

    def stderr_text(self) -> str:
        return tail(self.files.stderr, self._run_stderr_start)

    def console_text(self) -> str:
        return tail(self.files.console, self._run_console_start)

    def sections(self, limit: int) -> dict[str, str]:
        """This run's QEMU messages and the guest's console, their last ``limit`` characters
        cut to whole lines."""
        sections = {
            "Hypervisor Log (qemu-stderr.log)": self.stderr_text(),
            "VM Console Log (qemu-console.log)": self.console_text(),
        }
        return {title: whole_lines_tail(text, limit) for title, text in sections.items() if text}


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def tail(path: Path, start: int, limit: int = 1 << 20) -> str:
    """Text of ``path`` from ``start`` (this run's part), at most the last ``limit`` bytes."""
    try:
        with path.open("rb") as fh:
            end = fh.seek(0, os.SEEK_END)
            fh.seek(max(start, end - limit))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
