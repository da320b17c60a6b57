"""The wrapper's log output: vboxwrapper's stderr lines and ``events.jsonl`` in the slot.

Modules log with ``logging.getLogger(__name__)`` and pass a stable event code as
``extra={"event": CODE, ...}``. :func:`install` (called by ``vmwrapper run``) adds two handlers:

* stderr (the client redirects it to the slot's ``stderr.txt`` and uploads its tail):
  ``YYYY-MM-DD HH:MM:SS (pid): message`` in local time, the format projects grep
  (reference §7);
* ``<slot>/events.jsonl``: one JSON object per record with ``ts``, ``time``, ``pid``,
  ``level``, ``event`` (``"log"`` when the caller gave none), ``message`` and every extra field.

The event codes below are part of our interface: tests, dashboards and ``vmwrapper job`` read
them; add new ones, never rename.
"""

from __future__ import annotations

import contextlib
import json
import logging
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
    """Appends one JSON line per record to ``path``; flushed per line so a kill loses nothing."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._stream: IO[str] = path.open("a", encoding="utf-8")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._stream.write(json.dumps(event_fields(record), sort_keys=False) + "\n")
            self._stream.flush()
        except Exception:  # logging must never take the wrapper down
            self.handleError(record)

    def close(self) -> None:
        try:
            # a full disk leaves unflushed lines that fail again here: the wrapper must still
            # reach its exit status (issue 9), so the lines are given up
            with contextlib.suppress(OSError):
                self._stream.close()
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
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out
