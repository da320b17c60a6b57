"""The wrapper's log output: vboxwrapper's stderr lines and ``events.jsonl`` in the slot.

Modules log with ``logging.getLogger(__name__)`` and pass a stable event code as
``extra={"event": CODE, ...}``. :func:`install` (called by ``vmwrapper run``) adds two handlers:

* stderr (the client redirects it to the slot's ``stderr.txt`` and uploads its tail):
  ``YYYY-MM-DD HH:MM:SS (pid): message`` in local time, the format projects grep
  (docs/compatibility.md#logging-and-error-reports);
* ``<slot>/events.jsonl``: one JSON object per record with ``ts``, ``time``, ``pid``,
  ``level``, ``event`` (``"log"`` when the caller gave none), ``message`` and every extra field.

The event codes below are part of our interface: tests, dashboards and ``vmwrapper job`` read
them; add new ones, never rename.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final

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

#: LogRecord attributes that are not caller extras.
_STANDARD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class BoincStderrFormatter(logging.Formatter):
    """``2026-11-27 06:15:22 (4242): message`` — vboxwrapper's ``vboxlog_msg`` format."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        text = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            text += "\n" + self.formatException(record.exc_info)
        return f"{stamp} ({record.process}): {text}"


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

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._cut = False  # the last line was written only in part
        self.dropped = 0  # records the disk refused

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = json.dumps(event_fields(record), sort_keys=False) + "\n"
        except Exception:  # logging must never take the wrapper down
            self.handleError(record)
            return
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
) -> Callable[[], None]:
    """Send ``vmwrapper.*`` logs to stderr (BOINC format) and ``slot_dir/events.jsonl``.

    Returns a function that removes and closes the handlers again (tests call it).
    """
    logger = logging.getLogger(logger_name)
    stderr_handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    stderr_handler.setFormatter(BoincStderrFormatter())
    handlers: list[logging.Handler] = [stderr_handler]
    if slot_dir is not None:
        handlers.append(JsonLinesHandler(slot_dir / EVENTS_FILE))
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
