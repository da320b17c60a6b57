"""The shared directory as the wrapper sees it: bounded, symlink-safe reads and the start-up files.

Everything here touches the file system; what the files *mean* is in :mod:`.triggers`.
The guest controls the shared directory, so every read is bounded
(:data:`~.triggers.MAX_TRIGGER_BYTES`), opens with ``O_NOFOLLOW`` and accepts regular files
only, and every name must stay inside the slot: a guest cannot make the wrapper read, copy or
delete a file elsewhere on the host through a symlink.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from vmwrapper import hostos
from vmwrapper.errors import InputError
from vmwrapper.shared_dir.heartbeat import MISSING, UNREADABLE
from vmwrapper.shared_dir.triggers import (
    MAX_TRIGGER_BYTES,
    GraphicsStatus,
    cmdline_text,
    format_graphics_status,
    parse_fraction_done,
)

GRAPHICS_STATUS_FILE = "graphics_status.xml"
#: vboxwrapper reports this when the fraction-done file exists but cannot be read.
UNREADABLE_FRACTION = 0.001
#: remove_symlinks looks at no more entries than this.
MAX_SWEEP_ENTRIES = 100_000

#: With share_slot_dir the guest's share is the slot itself. These top-level names (shell
#: patterns) are the wrapper's, the client's and the back ends' files: VM disks and their
#: snapshots, sockets, logs, the console credential, the client's protocol files. The guest's
#: sync agent neither pulls nor pushes them (docs/compatibility.md#runtime); the list goes
#: to the guest in EXCLUDE_FILE.
SLOT_PRIVATE_PATTERNS: tuple[str, ...] = (
    "vm_*",  # vm_image.vdi (+ its .qcow2 conversion), vm_disk/state/cache.qcow2, floppy,
    # ISO, vm_console.txt
    "qemu*",  # QMP socket, console and stderr logs, pidfile, NIC captures
    "vbox_*",  # vbox_job.xml, vbox_checkpoint.xml, screenshot, VBoxManage trace
    "vmwrapper_*",
    "events.jsonl",
    "stderr.txt",
    "fake_vm*",
    "boinc_mmap_file",
    "boinc_lockfile",
    "boinc_finish_called",
    "boinc_temporary_exit",
    "boinc_task_state.xml",
    "boinc_ufr_*",
    "boinc_ufs_*",
    "trickle_up.xml",
    "trickle_down*",
    GRAPHICS_STATUS_FILE,
)
EXCLUDE_FILE = ".vmwrapper-exclude"


def write_slot_exclusions(slot_dir: Path) -> None:
    """The patterns above, one a line, for the guest's agent (share_slot_dir only)."""
    text = "".join(f"{p}\n" for p in (*SLOT_PRIVATE_PATTERNS, EXCLUDE_FILE))
    (slot_dir / EXCLUDE_FILE).write_text(text, encoding="utf-8")


class SharedDir:
    """``slot/<shared_dir>``: ``shared`` with enable_shared_directory, the slot with
    share_slot_dir, else the slot itself (vboxwrapper would use ``/<name>``,
    docs/compatibility.md#shared-directory)."""

    def __init__(self, slot_dir: Path, shared_rel: str) -> None:
        self.slot_dir = slot_dir.resolve()
        rel = shared_rel if shared_rel not in ("", ".") else "."
        self.path = (self.slot_dir / rel).resolve() if rel != "." else self.slot_dir
        if not self._inside(self.path):
            raise InputError(f"shared directory {self.path} is outside the slot {self.slot_dir}")

    def _inside(self, path: Path) -> bool:
        return path == self.slot_dir or self.slot_dir in path.parents

    def file(self, name: str) -> Path:
        """The path of ``name`` in the shared dir: a plain name or a relative path under it
        (``results/progress``), as vboxwrapper takes it; refuses an absolute path, one whose
        ``..`` leaves the shared dir, and one that resolves through a symlink out of the slot
        (docs/compatibility.md#job-file)."""
        normal = posixpath.normpath(name) if name else ""
        if not name or name.startswith("/") or normal == ".." or normal.startswith("../"):
            raise InputError(f"file name {name!r} must be a path inside the shared dir")
        path = self.path / normal
        if not self._inside(path.parent.resolve()):
            raise InputError(f"{name!r} leads outside the slot")
        return path

    def read(self, name: str, limit: int = MAX_TRIGGER_BYTES) -> bytes | None:
        """The file's first ``limit`` bytes, or None if it is absent, a symlink or not a file."""
        try:
            fd = os.open(self.file(name), os.O_RDONLY | hostos.NOFOLLOW | hostos.NONBLOCK)
        except (OSError, InputError):
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return os.read(fd, limit)
        except OSError:
            return None
        finally:
            os.close(fd)

    def read_text(self, name: str) -> str | None:
        data = self.read(name)
        return None if data is None else data.decode("utf-8", errors="replace")

    def exists(self, name: str) -> bool:
        try:
            return stat.S_ISREG(os.lstat(self.file(name)).st_mode)
        except (OSError, InputError):
            return False

    def mtime_ns(self, name: str) -> int | None:
        """The file's modification time (ns), never following a symlink; None if absent."""
        try:
            return os.lstat(self.file(name)).st_mtime_ns
        except (OSError, InputError):
            return None

    def remove(self, name: str) -> None:
        with contextlib.suppress(OSError, InputError):
            os.unlink(self.file(name))

    def present(self, names: Iterable[str]) -> list[str]:
        return [n for n in names if self.exists(n)]

    def fraction_done(self, name: str) -> float | None:
        """The fraction in ``name``: None if absent, 0.001 if present but unreadable."""
        if not self.exists(name):
            return None
        try:
            size = os.lstat(self.file(name)).st_size
        except (OSError, InputError):
            return UNREADABLE_FRACTION
        # Only the tail matters (vboxwrapper seeks to 32 bytes before the end).
        text = self._tail(name, size)
        if text is None:
            return UNREADABLE_FRACTION
        value = parse_fraction_done(text)
        return UNREADABLE_FRACTION if value is None else value

    def _tail(self, name: str, size: int) -> str | None:
        try:
            fd = os.open(self.file(name), os.O_RDONLY | hostos.NOFOLLOW | hostos.NONBLOCK)
        except (OSError, InputError):
            return None
        try:
            os.lseek(fd, max(size - 256, 0), os.SEEK_SET)
            return os.read(fd, 256).decode("utf-8", errors="replace")
        except OSError:
            return None
        finally:
            os.close(fd)

    def mtime(self, name: str) -> float | str:
        """The heartbeat file's mtime, or MISSING / UNREADABLE."""
        try:
            st = os.lstat(self.file(name))
        except FileNotFoundError:
            return MISSING
        except (OSError, InputError):
            return UNREADABLE
        return st.st_mtime if stat.S_ISREG(st.st_mode) else UNREADABLE

    def copy_out(self, name: str, dest: Path) -> None:
        """Copy shared/<name> to ``dest`` (temp + rename), never through a symlink."""
        src = self.file(name)
        fd = os.open(src, os.O_RDONLY | hostos.NOFOLLOW)
        with os.fdopen(fd, "rb") as fin:
            if not stat.S_ISREG(os.fstat(fin.fileno()).st_mode):
                raise InputError(f"{src} is not a regular file")
            tmp = dest.with_name(f".{dest.name}.vmwrapper-tmp")
            with tmp.open("wb") as fout:
                shutil.copyfileobj(fin, fout)
                fout.flush()
                os.fsync(fout.fileno())
        os.replace(tmp, dest)

    def remove_symlinks(self, limit: int = MAX_SWEEP_ENTRIES) -> list[str]:
        """Delete every symlink under the shared dir, never following one; return their names.

        The guest's agent never pushes a symlink, so one here was planted by a guest that
        mounted the share itself. The client collects outputs from here and follows links:
        a link named like an output would upload a host file. At most ``limit`` entries are
        looked at (a guest may leave millions of files).
        """
        removed: list[str] = []
        seen = 0
        pending = [self.path]
        while pending and seen < limit:
            with contextlib.suppress(OSError), os.scandir(pending.pop()) as entries:
                for entry in entries:
                    seen += 1
                    if seen > limit:
                        break
                    if entry.is_symlink():
                        with contextlib.suppress(OSError):
                            os.unlink(entry.path)
                            removed.append(os.path.relpath(entry.path, self.path))
                    elif entry.is_dir(follow_symlinks=False):
                        pending.append(Path(entry.path))
        return removed

    # -- start-up files ------------------------------------------------------------------

    def ensure(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def copy_in(self, source: Path, name: str) -> bool:
        """``copy_to_shared``: copy ``source`` to shared/<name> unless it exists. True if copied."""
        dest = self.file(name)
        if dest.exists() or dest.is_symlink():
            return False
        shutil.copyfile(source, dest)
        return True

    def write_cmdline(self, argv: Sequence[str]) -> None:
        self.file("cmdline").write_text(cmdline_text(argv), encoding="utf-8")

    def make_sporadic_files(self) -> None:
        """``--sporadic``: the API's boinc_sporadic_dir creates the files ``ac`` and ``ca``."""
        for name in ("ac", "ca"):
            path = self.file(name)
            path.touch(exist_ok=True)
            if path.is_symlink() or not path.is_file():
                raise OSError(f"{path} exists and is not a regular file")


def write_graphics_status(slot_dir: Path, status: GraphicsStatus) -> None:
    path = slot_dir / GRAPHICS_STATUS_FILE
    tmp = slot_dir / f".{GRAPHICS_STATUS_FILE}.tmp"
    tmp.write_text(format_graphics_status(status), encoding="utf-8")
    os.replace(tmp, path)
