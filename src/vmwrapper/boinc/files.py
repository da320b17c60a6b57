"""The files of the BOINC client/app protocol in the slot directory
(docs/compatibility.md#files-in-the-slot).

Each file has a pure ``format_*`` / ``parse_*`` pair (text in, value out, byte-exact with the
7.20.5 API and client) and small writers / readers that do the I/O. Both sides use this module:
the app (:class:`vmwrapper.boinc.app.AppClient`) writes finish, temporary-exit, trickle-up and
upload-request files and reads soft links, trickle-down and upload-status files; the harness
writes and reads the other half.

Writers replace a file atomically and durably (:func:`write_atomic`: temporary name, fsync,
rename, fsync of the directory) so the other side never reads a half-written file and a crash
leaves the old file or the new one. Text is written as UTF-8; undecodable bytes that a caller
read with ``surrogateescape`` (e.g. a trickle file from the guest) go back out unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

import psutil

from vmwrapper import hostos
from vmwrapper.boinc.messages import parse_str
from vmwrapper.errors import ProtocolError
from vmwrapper.hostos import locks
from vmwrapper.outcome import MAX_TEMPORARY_EXIT_DELAY, Finish, TemporaryExit

FINISH_FILE = "boinc_finish_called"
TEMPORARY_EXIT_FILE = "boinc_temporary_exit"
TRICKLE_UP_FILE = "trickle_up.xml"
TRICKLE_DOWN_MARK = "trickle_down"
UPLOAD_REQUEST_PREFIX = "boinc_ufr_"
UPLOAD_STATUS_PREFIX = "boinc_ufs_"
LOCK_FILE = "boinc_lockfile"
STDERR_FILE = "stderr.txt"
INIT_DATA_FILE = "init_data.xml"
TASK_STATE_FILE = "boinc_task_state.xml"

#: The client replaces a temporary-exit delay outside 0...86400 s with this.
DEFAULT_TEMPORARY_EXIT_DELAY = 300.0
#: The API reads at most this much of a link file's first line (``char buf[512]``).
SOFT_LINK_LINE_MAX = 511


def _one_line(text: str) -> str:
    """A message that must stay on one line (the readers are line based)."""
    return " ".join(text.split())


def write_atomic(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` (text as UTF-8) so that no reader ever sees part of it
    and a crash, even of the host, leaves either the old file or the new one: the data is
    synced before the rename and the directory after it. The one atomic write of the package
    (protocol files, checkpoint record, back-off state, consumed triggers)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    _remove_dead_writers_files(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    hostos.sync_directory(path.parent)


def _remove_dead_writers_files(path: Path) -> None:
    """Temporary files of ``path`` whose writer was killed before its rename (a SIGKILL of
    the wrapper in the middle of a checkpoint record): nothing else would remove them."""
    prefix = f".{path.name}.tmp"
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            pid = entry.name[len(prefix) :] if entry.name.startswith(prefix) else ""
            if pid.isdigit() and int(pid) != os.getpid() and not psutil.pid_exists(int(pid)):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------
# boinc_finish_called


def format_finish(finish: Finish) -> str:
    """``boinc_finish_message``: ``%d\\n`` status, then message and ``notice`` (or empty) lines."""
    text = f"{finish.status}\n"
    if finish.message:
        text += f"{_one_line(finish.message)}\n{'notice' if finish.notice else ''}\n"
    return text


_LEADING_INT = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")


def parse_finish(text: str) -> Finish:
    """Read a finish file as the client does (``finish_file_present``).

    The message counts only if a third line can be read (the API always writes one).
    """
    lines = text.splitlines(keepends=True)
    status = 0
    if lines and (m := _LEADING_INT.match(lines[0])):
        status = int(m.group(1))
    message = ""
    notice = False
    if len(lines) >= 3 and lines[1].strip():
        message = lines[1].rstrip("\n")
        notice = "notice" in lines[2]
    return Finish(status=status, message=message, notice=notice)


def write_finish_file(slot_dir: Path, finish: Finish) -> Path:
    path = slot_dir / FINISH_FILE
    write_atomic(path, format_finish(finish).encode("utf-8", "surrogateescape"))
    return path


def read_finish_file(slot_dir: Path) -> Finish | None:
    text = _read_text(slot_dir / FINISH_FILE)
    return None if text is None else parse_finish(text)


# ---------------------------------------------------------------------------------------------
# boinc_temporary_exit


@dataclass(frozen=True)
class TemporaryExitRequest:
    """A temporary-exit file as the client reads it: delay clamped, reason may be empty."""

    delay: float
    reason: str
    notice: bool = False


def format_temporary_exit(exit_: TemporaryExit) -> str:
    """``boinc_temporary_exit``: ``%d\\n`` delay, the reason line, ``notice\\n`` if wanted."""
    text = f"{int(exit_.delay)}\n{_one_line(exit_.reason)}\n"
    return text + ("notice\n" if exit_.notice else "")


def parse_temporary_exit(text: str) -> TemporaryExitRequest | None:
    """Read the file as the 7.20.5 client does (``temporary_exit_file_present``).

    ``fscanf("%d")`` for the delay (invalid or outside 0...86400 -> 300 s), the rest of that
    line, then the reason line; without a reason line the file is ignored (None).
    """
    match = _LEADING_INT.match(text)
    pos = 0
    delay = DEFAULT_TEMPORARY_EXIT_DELAY
    if match is not None:
        value = int(match.group(1))
        if 0 <= value <= MAX_TEMPORARY_EXIT_DELAY:
            delay = float(value)
        pos = match.end()
    else:  # fscanf skipped the white space, then stopped at what is not a number
        pos = len(text) - len(text.lstrip(" \t\n\v\f\r"))
    rest_of_first = text.find("\n", pos)
    if rest_of_first < 0 or rest_of_first + 1 >= len(text):
        return None
    remainder = text[rest_of_first + 1 :].splitlines(keepends=True)
    reason = remainder[0].strip()
    notice = len(remainder) > 1 and "notice" in remainder[1]
    return TemporaryExitRequest(delay=delay, reason=reason, notice=notice)


def write_temporary_exit_file(slot_dir: Path, exit_: TemporaryExit) -> Path:
    path = slot_dir / TEMPORARY_EXIT_FILE
    write_atomic(path, format_temporary_exit(exit_).encode("utf-8", "surrogateescape"))
    return path


def read_temporary_exit_file(slot_dir: Path) -> TemporaryExitRequest | None:
    text = _read_text(slot_dir / TEMPORARY_EXIT_FILE)
    return None if text is None else parse_temporary_exit(text)


# ---------------------------------------------------------------------------------------------
# trickle_up.xml / trickle_down_*


@dataclass(frozen=True)
class Trickle:
    """A trickle message: its variety and its body (raw text, as the app gave it)."""

    variety: str
    body: str


def format_trickle_up(trickle: Trickle) -> str:
    """``boinc_send_trickle_up``: ``<variety>V</variety>\\n`` followed by the raw body."""
    if "<" in trickle.variety or "\n" in trickle.variety:
        raise ProtocolError(
            f"a trickle variety cannot hold '<' or a newline: {trickle.variety!r} "
            "(use a short name such as 'progress')"
        )
    return f"<variety>{trickle.variety}</variety>\n{trickle.body}"


def parse_trickle_up(text: str) -> Trickle:
    """Split a trickle_up.xml into variety and body (what the scheduler request carries)."""
    first, _, body = text.partition("\n")
    variety = parse_str(first, "<variety>")
    if variety is None:
        raise ProtocolError(f"{TRICKLE_UP_FILE} does not start with <variety>: {first[:80]!r}")
    return Trickle(variety=variety, body=body)


def write_trickle_up(slot_dir: Path, trickle: Trickle) -> Path:
    path = slot_dir / TRICKLE_UP_FILE
    write_atomic(path, format_trickle_up(trickle).encode("utf-8", "surrogateescape"))
    return path


def write_trickle_down(slot_dir: Path, body: str, now: float) -> Path:
    """The client's side: a ``trickle_down_<unixtime>`` file (a suffix avoids clobbering)."""
    path = slot_dir / f"{TRICKLE_DOWN_MARK}_{int(now)}"
    n = 0
    while path.exists():
        n += 1
        path = slot_dir / f"{TRICKLE_DOWN_MARK}_{int(now)}_{n}"
    write_atomic(path, body.encode("utf-8", "surrogateescape"))
    return path


def find_trickle_down(slot_dir: Path) -> Path | None:
    """The API's ``boinc_receive_trickle_down``: the first entry whose name has trickle_down."""
    for path in sorted(slot_dir.iterdir()):
        if TRICKLE_DOWN_MARK in path.name and not path.name.startswith("."):
            return path
    return None


# ---------------------------------------------------------------------------------------------
# intermediate uploads: boinc_ufr_<logical> (app) and boinc_ufs_<logical> (client)


def format_upload_status(status: int) -> str:
    return f"<status>{status}</status>\n"


def parse_upload_status(text: str) -> int | None:
    at = text.find("<status>")
    if at < 0:
        return None
    match = _LEADING_INT.match(text, at + len("<status>"))
    return None if match is None else int(match.group(1))


def _check_logical(logical_name: str) -> None:
    if not logical_name or "/" in logical_name or logical_name in (".", ".."):
        raise ProtocolError(
            f"an upload needs the output's logical name without '/': {logical_name!r}"
        )


def write_upload_request(slot_dir: Path, logical_name: str) -> Path:
    """``boinc_upload_file``: an empty ``boinc_ufr_<logical>``; a stale status is removed."""
    _check_logical(logical_name)
    with contextlib.suppress(FileNotFoundError):
        (slot_dir / f"{UPLOAD_STATUS_PREFIX}{logical_name}").unlink()
    path = slot_dir / f"{UPLOAD_REQUEST_PREFIX}{logical_name}"
    write_atomic(path, b"")
    return path


def list_upload_requests(slot_dir: Path) -> list[str]:
    """The client's scan: logical names of every ``boinc_ufr_*`` in the slot."""
    return sorted(
        p.name[len(UPLOAD_REQUEST_PREFIX) :]
        for p in slot_dir.iterdir()
        if p.name.startswith(UPLOAD_REQUEST_PREFIX)
    )


#: The status the client writes into ``boinc_ufs_<name>`` after a good upload: the file's
#: state, FILE_PRESENT (an error is a negative BOINC code).
FILE_PRESENT = 1


def write_upload_status(slot_dir: Path, logical_name: str, status: int) -> Path:
    path = slot_dir / f"{UPLOAD_STATUS_PREFIX}{logical_name}"
    write_atomic(path, format_upload_status(status).encode("utf-8", "surrogateescape"))
    return path


def read_upload_status(slot_dir: Path, logical_name: str) -> int | None:
    text = _read_text(slot_dir / f"{UPLOAD_STATUS_PREFIX}{logical_name}")
    return None if text is None else parse_upload_status(text)


# ---------------------------------------------------------------------------------------------
# soft links (logical name -> physical file)


def format_soft_link(target: str) -> str:
    """A link file: one line ``<soft_link>TARGET</soft_link>`` and a newline."""
    return f"<soft_link>{target}</soft_link>\n"


def parse_soft_link(first_line: str) -> str | None:
    """The target of a link file's first line, or None if it is not a link file."""
    return parse_str(first_line[:SOFT_LINK_LINE_MAX], "<soft_link>")


def write_soft_link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_soft_link(target), encoding="utf-8")


def resolve_filename(slot_dir: Path, logical_name: str) -> Path:
    """``boinc_resolve_filename``: where the file behind a logical name is.

    A symlink or a missing file resolves to the name itself; a link file to its target
    (relative to the slot, e.g. ``../../projects/<dir>/<physical>``).
    """
    path = slot_dir / logical_name
    if path.is_symlink():
        return path
    try:
        with path.open("rb") as f:
            first = f.readline(SOFT_LINK_LINE_MAX).decode("utf-8", errors="replace")
    except OSError:
        return path
    target = parse_soft_link(first)
    return path if target is None else slot_dir / target


# ---------------------------------------------------------------------------------------------
# boinc_lockfile


class LockfileBusy(ProtocolError):
    """Another process holds ``boinc_lockfile``: a second instance runs in this slot."""


class Lockfile:
    """``boinc_lockfile`` locked as the API locks it: a whole-file POSIX write lock (``fcntl``,
    not ``flock``) on POSIX, the file opened unshared on Windows (:mod:`vmwrapper.hostos.locks`).

    The real client and API use ``F_SETLK``, so only a POSIX lock excludes a C++ app.
    """

    def __init__(self, slot_dir: Path) -> None:
        self.path = slot_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Lock now or raise :class:`LockfileBusy` (the caller decides how long to wait)."""
        if self._fd is not None:
            return
        try:
            self._fd = locks.lock_boinc_file(self.path)
        except BlockingIOError as exc:
            raise LockfileBusy(
                f"{self.path} is locked by another process: is a second copy of the app "
                "running in this slot?"
            ) from exc
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
            # no locking on this file system: the API goes on
            self._fd = os.open(self.path, os.O_WRONLY)

    def release(self) -> None:
        """Unlock, close and delete the lock file, as ``boinc_exit`` does."""
        if self._fd is None:
            return
        locks.release_boinc_file(self._fd, self.path)
        self._fd = None
