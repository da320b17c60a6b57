"""The wrapper's log output: vboxwrapper's stderr lines and ``events.jsonl`` in the slot.

Modules log with ``logging.getLogger(__name__)`` and pass a stable event code as
``extra={"event": CODE, ...}``. :func:`install` (called by ``vmwrapper run``) adds two handlers:

* stderr (the client redirects it to the slot's ``stderr.txt`` and uploads its tail):
  ``YYYY-MM-DD HH:MM:SS (pid): message`` in local time, the format projects grep
  (docs/compatibility.md#logging-and-error-reports);
* ``<slot>/events.jsonl``: one JSON object per record with ``ts``, ``time``, ``pid``,
  ``level``, ``event`` (``"log"`` when the caller gave none), ``message`` and every extra field.

Guest console lines (``guest_log``) are capped per file (:class:`GuestLogCap`): a chatty guest
must neither fill the task's disk bound nor push the wrapper's own lines out of the tail of
stderr.txt that the client reports (docs/compatibility.md#runtime).

The event codes below are part of our interface: tests, dashboards and ``vmwrapper job`` read
them; add new ones, never rename.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final

from vmwrapper.hypervisor.base import VmState
from vmwrapper.runconfig import GUEST_LOG_LIMIT

EVENTS_FILE: Final = "events.jsonl"

# Stable event codes.
WRAPPER_START: Final = "wrapper_start"
VM_CREATED: Final = "vm_created"
VM_STARTED: Final = "vm_started"
VM_ONLINE: Final = "vm_online"
VM_STATE: Final = "vm_state"
GUEST_LOG: Final = "guest_log"
SUSPEND: Final = "suspend"
RESUME: Final = "resume"
QUIT: Final = "quit"
ABORT: Final = "abort"
NO_HEARTBEAT: Final = "no_heartbeat"
CHECKPOINT: Final = "checkpoint"
CHECKPOINT_REFUSED: Final = "checkpoint_refused"
CHECKPOINT_FAILED: Final = "checkpoint_failed"
CHECKPOINT_DISKS: Final = "checkpoint_disks"
RESTORE: Final = "restore"
COMPLETION_TRIGGER: Final = "completion_trigger"
TEMPORARY_EXIT_TRIGGER: Final = "temporary_exit_trigger"
TRICKLE_UP: Final = "trickle_up"
UPLOAD_REQUESTED: Final = "upload_requested"
UPLOAD_DONE: Final = "upload_done"
HEARTBEAT_FILE: Final = "heartbeat_file"
PREFERENCES: Final = "preferences"
NETWORK: Final = "network"
STATUS_REPORT: Final = "status_report"
FAILURE: Final = "failure"
HOST_PROBLEM: Final = "host_problem"
OUTCOME: Final = "outcome"
GC: Final = "gc"
SHARED_SYMLINKS_REMOVED: Final = "shared_symlinks_removed"
ERROR_REPORT: Final = "error_report"
NET_USAGE: Final = "net_usage"
VM_PRIORITY: Final = "vm_priority"
GUEST_LOG_DROPPED: Final = "guest_log_dropped"
CAPABILITY_MISSING: Final = "capability_missing"  # an action the back end cannot do: skipped

#: Of those, the guest's last lines, held back and written when the VM goes down. Small: with
#: the wrapper's last lines it must fit the 64 KiB tail of stderr.txt the client reports.
GUEST_LOG_TAIL: Final = 16 << 10

#: LogRecord attributes that are not caller extras.
_STANDARD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class GuestLogCap:
    """Keeps one file's guest lines within a byte budget: the first lines pass at once, the
    last ``GUEST_LOG_TAIL`` bytes are held (older held lines are dropped and counted) until
    :meth:`take_held`, when the VM goes down or the run ends."""

    def __init__(self, limit: int, used: int = 0) -> None:
        budget = max(limit - used, 0)  # bytes the file already has count (earlier runs)
        self.tail_left = min(GUEST_LOG_TAIL, budget // 2)
        self.head_left = budget - self.tail_left
        self.held: deque[tuple[str, int]] = deque()  # (line, its size in bytes)
        self.held_bytes = 0
        self.dropped_lines = 0
        self.dropped_bytes = 0

    def admit(self, line: str) -> bool:
        """True: write ``line`` now. False: it is held back (or dropped at once)."""
        size = len(line.encode("utf-8", errors="replace"))
        if not self.held and size <= self.head_left:
            self.head_left -= size
            return True
        self.head_left = 0  # a later line must never overtake a held one
        self.held.append((line, size))
        self.held_bytes += size
        while self.held and self.held_bytes > self.tail_left:
            _, old = self.held.popleft()
            self.held_bytes -= old
            self.dropped_lines += 1
            self.dropped_bytes += old
        return False

    def take_held(self) -> tuple[str, list[str]] | None:
        """(a note on what was dropped, the held lines), or None when nothing is pending."""
        if not self.held and not self.dropped_lines:
            return None
        lines = [line for line, _ in self.held]
        note = (
            f"Guest log limit reached: {self.dropped_lines} guest lines "
            f"({self.dropped_bytes} bytes) dropped; the guest's last {len(lines)} lines follow."
        )
        self.tail_left -= self.held_bytes
        self.held.clear()
        self.held_bytes = self.dropped_lines = self.dropped_bytes = 0
        return note, lines


def _is_guest_line(record: logging.LogRecord) -> bool:
    return getattr(record, "event", None) == GUEST_LOG


def _ends_guest_output(record: logging.LogRecord) -> bool:
    """The VM went down (its last lines are in) or the run ends: time for the held lines."""
    event = getattr(record, "event", None)
    if event == OUTCOME:
        return True
    if event == VM_STATE:
        with contextlib.suppress(ValueError):
            return not VmState(getattr(record, "new", "")).online
    return False


def _note_record(note: str) -> logging.LogRecord:
    return logging.makeLogRecord(
        {
            "msg": note,
            "levelno": logging.WARNING,
            "levelname": "WARNING",
            "event": GUEST_LOG_DROPPED,
            "name": __name__,
        }
    )


def _file_size(fd: int) -> int:
    with contextlib.suppress(OSError):
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode):
            return info.st_size
    return 0


class BoincStderrFormatter(logging.Formatter):
    """``2026-11-27 06:15:22 (4242): message`` — vboxwrapper's ``vboxlog_msg`` format."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        text = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            text += "\n" + self.formatException(record.exc_info)
        return f"{stamp} ({record.process}): {text}"


class CappedStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr in BOINC's format with the guest's lines capped (:class:`GuestLogCap`)."""

    def __init__(self, stream: IO[str], limit: int) -> None:
        super().__init__(stream)
        self.setFormatter(BoincStderrFormatter())
        used = 0
        with contextlib.suppress(AttributeError, OSError, ValueError):
            used = _file_size(stream.fileno())
        self.cap = GuestLogCap(limit, used)

    def emit(self, record: logging.LogRecord) -> None:
        if _is_guest_line(record):
            try:
                text = self.format(record) + self.terminator
            except Exception:  # logging must never take the wrapper down
                self.handleError(record)
                return
            if not self.cap.admit(text):
                return
        elif _ends_guest_output(record):
            self.write_held()
        super().emit(record)

    def write_held(self) -> None:
        pending = self.cap.take_held()
        if pending is None:
            return
        note, lines = pending
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(self.format(_note_record(note)) + self.terminator + "".join(lines))
            self.flush()

    def close(self) -> None:
        self.write_held()
        super().close()


def event_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The JSON object for one record (pure: a function of the record only)."""
    fields: dict[str, Any] = {
        "ts": round(record.created, 3),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(record.created)),
        "pid": record.process,
        "level": record.levelname.lower(),
        "event": getattr(record, "event", "log"),
        "message": record.getMessage(),
    }
    for key, value in vars(record).items():
        if key in _STANDARD_ATTRS or key in fields:
            continue
        fields[key] = value if isinstance(value, int | float | str | bool | None) else str(value)
    return fields


class JsonLinesHandler(logging.Handler):
    """Appends one JSON line per record to ``path`` with one ``write`` each, so a kill loses
    nothing and a full disk loses only the events it could not hold.

    A write the disk refuses is dropped quietly: logging's own error report (a traceback on
    stderr) would take the last bytes of the disk that the wrapper's stderr lines need. A
    line cut short by the full disk is ended before the next one, so the file stays one JSON
    object a line (``read_events`` skips the cut one).
    """

    def __init__(self, path: Path, guest_log_limit: int = GUEST_LOG_LIMIT) -> None:
        super().__init__()
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._cut = False  # the last line was written only in part
        self.dropped = 0  # records the disk refused
        self.cap = GuestLogCap(guest_log_limit, _file_size(self._fd))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = json.dumps(event_fields(record), sort_keys=False) + "\n"
        except Exception:  # logging must never take the wrapper down
            self.handleError(record)
            return
        if _is_guest_line(record):
            if not self.cap.admit(line):
                return
        elif _ends_guest_output(record):
            self.write_held()
        self._write(line)

    def write_held(self) -> None:
        pending = self.cap.take_held()
        if pending is not None:
            note, lines = pending
            self._write(json.dumps(event_fields(_note_record(note))) + "\n" + "".join(lines))

    def _write(self, line: str) -> None:
        data = (b"\n" if self._cut else b"") + line.encode("utf-8")
        try:
            written = os.write(self._fd, data)
        except OSError:
            self.dropped += 1
            return
        self._cut = written < len(data)
        if self._cut:
            self.dropped += 1

    def close(self) -> None:
        try:
            self.write_held()
            with contextlib.suppress(OSError):
                os.close(self._fd)
        finally:
            super().close()


def install(
    slot_dir: Path | None,
    *,
    stream: IO[str] | None = None,
    level: int = logging.INFO,
    logger_name: str = "vmwrapper",
    guest_log_limit: int = GUEST_LOG_LIMIT,
) -> Callable[[], None]:
    """Send ``vmwrapper.*`` logs to stderr (BOINC format) and ``slot_dir/events.jsonl``, each
    with at most ``guest_log_limit`` bytes of guest console lines.

    Returns a function that removes and closes the handlers again (tests call it).
    """
    logger = logging.getLogger(logger_name)
    stderr_handler = CappedStderrHandler(
        stream if stream is not None else sys.stderr, guest_log_limit
    )
    handlers: list[logging.Handler] = [stderr_handler]
    if slot_dir is not None:
        handlers.append(JsonLinesHandler(slot_dir / EVENTS_FILE, guest_log_limit))
    for handler in handlers:
        logger.addHandler(handler)
    previous = (logger.level, logger.propagate)
    logger.setLevel(level)
    logger.propagate = False

    def uninstall() -> None:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(previous[0])  # as before: in-process callers (tests) log as they did
        logger.propagate = previous[1]

    return uninstall


def read_events(slot_dir: Path) -> list[dict[str, Any]]:
    """The events a run wrote into ``slot_dir`` (for tests and ``vmwrapper job``)."""
    path = slot_dir / EVENTS_FILE
    if not path.exists():
        return []
    out: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line a full disk cut short
    return out
