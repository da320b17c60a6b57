"""What the guest's files in the shared directory mean (pure: text in, values out).

File formats are vboxwrapper's (docs/compatibility.md#trigger-files):

* completion trigger: line 1 exit code, line 2 notice flag (non-zero = show to the volunteer),
  the remaining lines the message;
* temporary-exit trigger: line 1 delay in seconds, line 2 notice flag, the rest the reason;
* fraction-done file: the last line that parses as a number, clamped to [0, 1];
* ``graphics_status.xml`` as the BOINC API's ``boinc_write_graphics_status`` writes it.

Numbers are read like C's ``atoi`` / ``strtod``: leading blanks, then as many characters as form
a number; anything else reads as 0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

#: A guest may write any amount; we read at most this much of a trigger or progress file.
MAX_TRIGGER_BYTES: Final = 64 * 1024

_INT = re.compile(r"\s*([+-]?\d+)")
_FLOAT = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)")
DEFAULT_TEMPORARY_EXIT_REASON: Final = "The job asked for a temporary exit (trigger file)."


#: C's int: a guest's exit code or delay beyond it is cut to the nearest end, never passed on
#: as a number no finish file reader (the client's is C) can hold.
INT_MIN, INT_MAX = -(2**31), 2**31 - 1


def atoi(text: str) -> int:
    match = _INT.match(text)
    return min(max(int(match.group(1)), INT_MIN), INT_MAX) if match else 0


def strtod(text: str) -> float | None:
    match = _FLOAT.match(text)
    if not match:
        return None
    value = float(match.group(1))
    return value if math.isfinite(value) else None


def _split(text: str) -> tuple[str, str, str]:
    lines = text.splitlines()
    first = lines[0] if lines else ""
    second = lines[1] if len(lines) > 1 else ""
    rest = "\n".join(lines[2:]).strip()
    return first, second, rest


@dataclass(frozen=True)
class CompletionTrigger:
    """The guest says the job is over."""

    exit_code: int = 0
    notice: bool = False
    message: str = ""


@dataclass(frozen=True)
class TemporaryExitTrigger:
    """The guest says: stop now, restart after ``delay`` seconds."""

    delay: int = 0
    notice: bool = False
    message: str = ""

    @property
    def reason(self) -> str:
        """Never empty: the client ignores a temporary exit without a reason
        (docs/compatibility.md#exit-codes-and-temporary-exits)."""
        return self.message or DEFAULT_TEMPORARY_EXIT_REASON


def parse_completion(text: str) -> CompletionTrigger:
    first, second, rest = _split(text)
    return CompletionTrigger(atoi(first), atoi(second) != 0, rest)


def parse_temporary_exit(text: str) -> TemporaryExitTrigger:
    first, second, rest = _split(text)
    return TemporaryExitTrigger(max(atoi(first), 0), atoi(second) != 0, rest)


def parse_fraction_done(text: str) -> float | None:
    """The last line that starts with a number, clamped to [0, 1]; None if there is none."""
    for line in reversed(text.splitlines()):
        value = strtod(line)
        if value is not None:
            return min(max(value, 0.0), 1.0)
    return None


def cmdline_text(argv: Sequence[str]) -> str:
    """``copy_cmdline_to_shared``: every argument after argv[0] followed by one space."""
    return "".join(f"{arg} " for arg in argv[1:])


@dataclass(frozen=True)
class GraphicsStatus:
    updated_time: float
    cpu_time: float
    elapsed_time: float
    fraction_done: float
    no_heartbeat: bool = False
    suspended: bool = False
    quit_request: bool = False
    abort_request: bool = False
    network_suspended: bool = False


def format_graphics_status(status: GraphicsStatus) -> str:
    """``graphics_status.xml`` in the layout of the API's boinc_write_graphics_status."""
    flags = (
        ("no_heartbeat", status.no_heartbeat),
        ("suspended", status.suspended),
        ("quit_request", status.quit_request),
        ("abort_request", status.abort_request),
        ("network_suspended", status.network_suspended),
    )
    lines = [
        "<graphics_status>",
        f"    <updated_time>{status.updated_time:f}</updated_time>",
        f"    <cpu_time>{status.cpu_time:f}</cpu_time>",
        f"    <elapsed_time>{status.elapsed_time:f}</elapsed_time>",
        f"    <fraction_done>{status.fraction_done:f}</fraction_done>",
        "    <boinc_status>",
        *(f"        <{tag}>{int(value)}</{tag}>" for tag, value in flags),
        "    </boinc_status>",
        "</graphics_status>",
    ]
    return "\n".join(lines) + "\n"


# -- echoes of consumed trigger files ----------------------------------------------------------

#: Without the file's time (a record from an older wrapper), a consumed trigger file that
#: reappears with the same content within this much job elapsed time is taken for an echo.
ECHO_WINDOW = 10.0


@dataclass(frozen=True)
class ConsumedTrigger:
    """A trigger file the wrapper acted on (and removed): its content digest, when (job
    elapsed time), and the file's modification time (ns) as the guest wrote it."""

    digest: str
    elapsed: float
    mtime_ns: int | None = None


def content_digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest()


def is_echo(
    last: ConsumedTrigger | None, text: str, elapsed: float, mtime_ns: int | None = None
) -> bool:
    """True when ``text`` (modified at ``mtime_ns``) is the trigger we already consumed
    coming back, rather than a new write that happens to say the same.

    Under QEMU the guest's sync agent may push one version of a file twice (a file written in
    the tick of its listing is pushed again) and pushes everything once more at the end; it
    never learns that the host removed it. It copies the guest's modification time with the
    file, so a version we consumed comes back with the same content *and* the same time: an
    echo. A new write of the same text has a new time and is a new event. A VM restored from
    a checkpoint may also re-run the step that wrote the file: the same text seen at an
    elapsed time before the consumption's (a restore rewinds elapsed time) is dropped too
    (only before: an equal elapsed time is a paused clock, not a rewind). Without times (a
    record from an older wrapper) the old rule holds: the same text within
    :data:`ECHO_WINDOW` seconds. docs/compatibility.md#runtime
    """
    if last is None or last.digest != content_digest(text):
        return False
    if elapsed < last.elapsed:
        return True  # rewound: a restored VM replays what it did after its snapshot
    if last.mtime_ns is None or mtime_ns is None:
        return elapsed <= last.elapsed + ECHO_WINDOW
    return mtime_ns == last.mtime_ns
