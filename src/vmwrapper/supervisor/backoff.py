"""Error classes and the bounded, persisted back-off for temporary exits.

vboxwrapper postpones almost every transient problem by a blanket 86400 s (a day of lost
work for a lock that was held for a second). We classify instead:

=================  =====================================================  =====================
class              examples                                               outcome
=================  =====================================================  =====================
``TRANSIENT``      lock held, QEMU failed to start, low memory, a         temporary exit after
                   snapshot failed, VM did not come online in time, a     5 min, doubling per
                   back end error marked ``temporary`` (VBoxSVC not       failure, capped at 3 h
                   answering, a session lock held after the retries)
``HOST_PROBLEM``   no hardware virtualization for a 64-bit guest,         one notice saying what
                   acceleration disabled in the BIOS, foreign hypervisor  to do (see outcomes)
``JOB_BUG``        a back end error that carries a final BOINC code,      finish with that code
                   a broken image
=================  =====================================================  =====================

The number of consecutive transient failures is kept in ``vmwrapper_backoff.json`` in the slot
(slots survive restarts of one task) and reset by a successful checkpoint or finish.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from vmwrapper.boinc.files import write_atomic
from vmwrapper.errors import (
    BackendError,
    CheckpointError,
    HostNotReady,
    ImageError,
    VmStartError,
)
from vmwrapper.outcome import ERR_EXEC, MAX_TEMPORARY_EXIT_DELAY

BACKOFF_FILE: Final = "vmwrapper_backoff.json"
BASE_DELAY: Final = 300.0  # vboxwrapper's RESTART_DELAY
MAX_DELAY: Final = 3 * 3600.0
#: Host problems wait longer (the volunteer has to act), but never more than the client allows.
HOST_PROBLEM_DELAY: Final = float(MAX_TEMPORARY_EXIT_DELAY)


class ErrorClass(enum.Enum):
    TRANSIENT = "transient"
    HOST_PROBLEM = "host_problem"
    JOB_BUG = "job_bug"


@dataclass(frozen=True)
class Failure:
    """A classified failure: what the supervisor's machine decides an outcome from."""

    error_class: ErrorClass
    message: str
    code: int = ERR_EXEC  # the finish code for JOB_BUG (and a final HOST_PROBLEM)
    final: bool = False  # a host problem that ends the task (the back end gave its code)


def classify(exc: BaseException) -> Failure:
    """Map an exception from a back end (or the wrapper's own I/O) to its class."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, HostNotReady):
        if exc.code is not None:  # e.g. -148 with ERR_CPU_VM_EXTENSIONS_DISABLED: final
            return Failure(ErrorClass.HOST_PROBLEM, text, exc.code, final=True)
        return Failure(ErrorClass.HOST_PROBLEM, text)
    if isinstance(exc, ImageError):
        return Failure(ErrorClass.JOB_BUG, text, ERR_EXEC)
    if isinstance(exc, BackendError) and exc.temporary:
        # e.g. VirtualBox's VBoxSVC unreachable or a session lock still held after the retries
        # (docs/compatibility.md#virtualbox-failures)
        return Failure(ErrorClass.TRANSIENT, text)
    if (
        isinstance(exc, BackendError)
        and exc.code is not None
        and not isinstance(exc, VmStartError | CheckpointError)
    ):
        # The back end says this is final (e.g. the image cannot be opened).
        return Failure(ErrorClass.JOB_BUG, text, exc.code)
    if isinstance(exc, BackendError | OSError):
        return Failure(ErrorClass.TRANSIENT, text)
    return Failure(ErrorClass.JOB_BUG, f"{type(exc).__name__}: {text}", ERR_EXEC)


def transient_delay(failures: int, *, base: float = BASE_DELAY, cap: float = MAX_DELAY) -> float:
    """Delay before retrying after the ``failures``-th consecutive transient failure (1-based)."""
    if failures <= 1:
        return min(base, cap)
    return min(base * 2.0 ** min(failures - 1, 30), cap)


@dataclass(frozen=True)
class BackoffState:
    failures: int = 0  # consecutive transient failures so far
    last_reason: str = ""

    def next_delay(self) -> float:
        """The delay the next transient failure gets."""
        return transient_delay(self.failures + 1)

    def bumped(self, reason: str) -> BackoffState:
        return BackoffState(self.failures + 1, reason)


def load(slot_dir: Path) -> BackoffState:
    """The persisted state; a missing or damaged file means no failures so far."""
    try:
        data = json.loads((slot_dir / BACKOFF_FILE).read_text(encoding="utf-8"))
        return BackoffState(int(data.get("failures", 0)), str(data.get("last_reason", "")))
    except (OSError, ValueError, TypeError, AttributeError):
        return BackoffState()


def save(slot_dir: Path, state: BackoffState) -> None:
    """Persist atomically and durably."""
    payload = json.dumps({"failures": state.failures, "last_reason": state.last_reason})
    write_atomic(slot_dir / BACKOFF_FILE, payload)


def reset(slot_dir: Path) -> None:
    (slot_dir / BACKOFF_FILE).unlink(missing_ok=True)
