"""How the wrapper ends: a returned value, turned into BOINC files and an exit code in one place.

The supervisor returns an :data:`Outcome`; ``cli/run.py`` hands it to
``vmwrapper.boinc.files`` (finish / temporary-exit file) and exits with :func:`exit_status`.
The codes are BOINC's (``lib/error_numbers.h``).
"""

from __future__ import annotations

from dataclasses import dataclass

# 8-bit process exit codes
EXIT_SIGNAL = 193
EXIT_ABORTED_BY_CLIENT = 194
EXIT_CHILD_FAILED = 195
EXIT_DISK_LIMIT_EXCEEDED = 196
EXIT_TIME_LIMIT_EXCEEDED = 197
EXIT_MEM_LIMIT_EXCEEDED = 198
EXIT_ABORTED_VIA_GUI = 203
EXIT_OUT_OF_MEMORY = 205
EXIT_INIT_FAILURE = 206

# negative BOINC error numbers
ERR_FOPEN = -108
ERR_XML_PARSE = -112
ERR_EXEC = -148
ERR_NOT_EXITED = -149
ERR_NOT_FOUND = -161
ERR_FILE_MISSING = -163
ERR_INVALID_PARAM = -178
ERR_TIMEOUT = -182
ERR_STAT = -240
VBOXWRAPPER_ERR_RECOVERABLE = -1000

#: The BOINC client looks for this token in a VM task's stderr and then tells the scheduler
#: that the host's VM extensions are unusable; keep it verbatim
#: (docs/compatibility.md#vm-extensions).
VM_EXTENSIONS_TOKEN = "ERR_CPU_VM_EXTENSIONS_DISABLED"

#: The client clamps a temporary-exit delay outside [0, 86400] to 300 s.
MAX_TEMPORARY_EXIT_DELAY = 86400


@dataclass(frozen=True)
class Finish:
    """The job is over: ``boinc_finish_called`` with ``status`` (0 = success), then exit(status).

    ``message`` reaches the volunteer only with ``notice`` (as the API's boinc_finish_message).
    """

    status: int
    message: str = ""
    notice: bool = False


@dataclass(frozen=True)
class TemporaryExit:
    """Stop now, restart later: ``boinc_temporary_exit`` with delay and reason, then exit(0).

    The reason is never empty: the client ignores a temporary-exit file without a reason line
    (vboxwrapper's bug, docs/compatibility.md#exit-codes-and-temporary-exits), and a multi-line
    reason breaks notice detection.
    """

    delay: float
    reason: str
    notice: bool = False

    def __post_init__(self) -> None:
        if not self.reason.strip():
            raise ValueError("a temporary exit needs a reason: the client ignores it without one")
        if "\n" in self.reason:
            object.__setattr__(self, "reason", " ".join(self.reason.split()))


@dataclass(frozen=True)
class PlainExit:
    """Exit with ``code`` and no BOINC file (e.g. `--sporadic` setup failure, or a quit with the
    VM saved where the client restarts the task by itself)."""

    code: int


Outcome = Finish | TemporaryExit | PlainExit


def exit_status(outcome: Outcome) -> int:
    """The process exit status for an outcome (low 8 bits, as on Unix)."""
    if isinstance(outcome, Finish):
        return outcome.status & 0xFF
    if isinstance(outcome, TemporaryExit):
        return 0
    return outcome.code & 0xFF
