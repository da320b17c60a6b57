"""The client's rules for one task, as pure logic: control queue and exit classification.

:class:`ControlQueue` is ``MSG_QUEUE`` (``client/app.cpp``,
docs/compatibility.md#how-the-client-runs-a-task): a message goes straight into the channel if
nothing is queued and the channel is free, else it waits; each poll retries the head; a message
blocked longer than 180 s means the app is hung.
:func:`classify_exit` is ``handle_exited_app`` (docs/compatibility.md#how-the-client-runs-a-task).
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from vmwrapper.boinc.files import TemporaryExitRequest
from vmwrapper.boinc.messages import ControlMessage
from vmwrapper.outcome import EXIT_ABORTED_VIA_GUI, Finish

#: A control message blocked this long: the app is hung, kill it (restart later).
MESSAGE_TIMEOUT = 180.0
#: After <quit/> or <abort/>, the client waits this long, then kills the process.
QUIT_TIMEOUT = 60.0
ABORT_TIMEOUT = 60.0
#: A process still alive this long after its finish file appeared is aborted.
FINISH_FILE_TIMEOUT = 300.0
#: More temporary/premature exits than this without a checkpoint fail the task.
MAX_PREMATURE_EXITS = 100

ERR_TOO_MANY_EXITS = -226

#: Signals the client treats as "killed from outside": the task restarts. (POSIX names;
#: a Windows build of the package has only some of them, and no client of its own.)
RESTART_SIGNALS: frozenset[int] = frozenset(
    getattr(signal, name)
    for name in ("SIGHUP", "SIGINT", "SIGQUIT", "SIGKILL", "SIGTERM", "SIGSTOP")
    if hasattr(signal, name)
)


@dataclass
class ControlQueue:
    """``MSG_QUEUE`` for the process_control channel. ``send`` puts text into the channel and
    says whether it could (False while the previous message is unread)."""

    send: Callable[[str], bool]
    messages: list[ControlMessage] = field(default_factory=list)
    blocked_since: float | None = None

    def push(self, message: ControlMessage, now: float) -> None:
        if not self.messages and self.send(message.value):
            self.blocked_since = None
            return
        self.messages.append(message)
        if self.blocked_since is None:
            self.blocked_since = now

    def poll(self) -> None:
        """Retry the head of the queue (once a second)."""
        if self.messages and self.send(self.messages[0].value):
            self.messages.pop(0)
            self.blocked_since = None

    def purge(self, message: ControlMessage) -> bool:
        """Drop ``message`` if it is the last one queued (``msg_queue_purge``)."""
        if self.messages and self.messages[-1] is message:
            self.messages.pop()
            return True
        return False

    def timed_out(self, now: float, limit: float = MESSAGE_TIMEOUT) -> bool:
        return self.blocked_since is not None and now - self.blocked_since > limit

    def suspend(self, now: float) -> None:
        """``ACTIVE_TASK::suspend``: cancel a queued resume, else send suspend."""
        if not self.purge(ControlMessage.RESUME):
            self.push(ControlMessage.SUSPEND, now)

    def resume(self, now: float) -> None:
        """``ACTIVE_TASK::unsuspend``: cancel a queued suspend, else send resume."""
        if not self.purge(ControlMessage.SUSPEND):
            self.push(ControlMessage.RESUME, now)


class TaskState(enum.Enum):
    """The client's view of a running task (``PROCESS_*`` task states)."""

    EXECUTING = "executing"
    SUSPENDED = "suspended"
    QUIT_PENDING = "quit pending"
    ABORT_PENDING = "abort pending"


class Disposition(enum.Enum):
    """What the client does after the process ended."""

    FINISHED = "finished"  # exit 0 + finish file: check outputs, report
    ERROR = "error"  # compute error: report it
    ABORTED = "aborted"  # the client aborted it
    POSTPONED = "temporary exit"  # restart after the delay
    RESTART = "restart"  # quit, premature exit, outside signal, hang: restart now


@dataclass(frozen=True)
class ExitFacts:
    """What the client knows when the process is gone.

    ``returncode`` as :class:`subprocess.Popen` gives it (negative = killed by that signal).
    ``kill_reason`` is set when the client itself killed the process (hang, timeouts).
    """

    returncode: int
    state: TaskState
    temporary_exit: TemporaryExitRequest | None = None
    finish: Finish | None = None
    kill_reason: str = ""
    abort_code: int = EXIT_ABORTED_VIA_GUI
    abort_reason: str = ""  # why the client aborted it (a limit), if not the user


@dataclass(frozen=True)
class ExitVerdict:
    disposition: Disposition
    message: str
    #: the result's exit status as the client records it (0 unless an error or an abort)
    exit_status: int = 0
    delay: float = 0.0
    #: counts toward the 100-exits-without-checkpoint limit
    premature: bool = False


def classify_exit(facts: ExitFacts) -> ExitVerdict:
    """``handle_exited_app`` (7.20.5, Unix)."""
    if facts.state is TaskState.ABORT_PENDING:
        why = f": {facts.abort_reason}" if facts.abort_reason else ""
        return ExitVerdict(
            Disposition.ABORTED,
            f"aborted by the client{why}{_detail(facts)}",
            exit_status=facts.abort_code,
        )
    if facts.state is TaskState.QUIT_PENDING:
        return ExitVerdict(Disposition.RESTART, f"quit at the client's request{_detail(facts)}")
    code = facts.returncode
    if code < 0:
        number = -code
        name = _signal_name(number)
        if number in RESTART_SIGNALS:
            why = facts.kill_reason or f"killed by {name}"
            return ExitVerdict(Disposition.RESTART, f"{why}; restarting")
        return ExitVerdict(
            Disposition.ERROR, f"process got signal {number} ({name})", exit_status=code
        )
    if facts.temporary_exit is not None:
        t = facts.temporary_exit
        return ExitVerdict(
            Disposition.POSTPONED,
            f"postponed for {t.delay:.0f} seconds: {t.reason}",
            delay=t.delay,
            premature=True,
        )
    if code != 0:
        return ExitVerdict(
            Disposition.ERROR,
            f"process exited with code {code} (0x{code:x}, {(~0xFF) | code})",
            exit_status=code,
        )
    if facts.finish is not None:
        return ExitVerdict(Disposition.FINISHED, f"finished (boinc_finish({facts.finish.status}))")
    return ExitVerdict(
        Disposition.RESTART, "exited with code 0 without finishing; restarting", premature=True
    )


def _detail(facts: ExitFacts) -> str:
    if facts.kill_reason:
        return f" ({facts.kill_reason})"
    if facts.returncode < 0:
        return f" (killed by {_signal_name(-facts.returncode)})"
    return f" (exit code {facts.returncode})"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
