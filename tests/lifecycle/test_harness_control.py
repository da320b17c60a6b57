"""The client's per-task rules, pure: the control queue
(docs/compatibility.md#how-the-client-runs-a-task) and the exit classification
(docs/compatibility.md#how-the-client-runs-a-task)."""

from __future__ import annotations

import signal

import pytest

from vmwrapper.boinc.files import TemporaryExitRequest
from vmwrapper.boinc.messages import ControlMessage
from vmwrapper.harness.control import (
    ControlQueue,
    Disposition,
    ExitFacts,
    TaskState,
    classify_exit,
)
from vmwrapper.outcome import EXIT_ABORTED_BY_CLIENT, EXIT_ABORTED_VIA_GUI, Finish


class Channel:
    """A one-message channel the app empties when told to."""

    def __init__(self) -> None:
        self.full: str | None = None
        self.delivered: list[str] = []

    def send(self, text: str) -> bool:
        if self.full is not None:
            return False
        self.full = text
        return True

    def app_reads(self) -> None:
        if self.full is not None:
            self.delivered.append(self.full)
            self.full = None


def test_message_goes_straight_in_when_nothing_is_queued() -> None:
    ch = Channel()
    q = ControlQueue(ch.send)
    q.push(ControlMessage.SUSPEND, now=0)
    assert ch.full == "<suspend/>" and q.messages == [] and q.blocked_since is None


def test_blocked_messages_wait_in_order_and_the_180_s_rule() -> None:
    ch = Channel()
    q = ControlQueue(ch.send)
    q.push(ControlMessage.SUSPEND, now=0)
    q.push(ControlMessage.RESUME, now=10)
    q.push(ControlMessage.QUIT, now=20)
    assert q.messages == [ControlMessage.RESUME, ControlMessage.QUIT]
    assert not q.timed_out(190) and q.timed_out(190.5)  # blocked since 10 s
    ch.app_reads()
    q.poll()
    assert ch.full == "<resume/>" and q.messages == [ControlMessage.QUIT]
    assert q.blocked_since is None  # as MSG_QUEUE: reset on a delayed send
    ch.app_reads()
    q.poll()
    ch.app_reads()
    assert ch.delivered == ["<suspend/>", "<resume/>", "<quit/>"]


def test_suspend_cancels_a_queued_resume_and_vice_versa() -> None:
    ch = Channel()
    q = ControlQueue(ch.send)
    q.suspend(0)  # goes in
    q.resume(1)  # queued (suspend unread)
    q.suspend(2)  # cancels the queued resume instead of queueing suspend
    assert q.messages == []
    q.resume(3)
    q.resume(4)
    assert q.messages == [ControlMessage.RESUME, ControlMessage.RESUME]
    q.suspend(5)
    assert q.messages == [ControlMessage.RESUME]


def facts(code: int, state: TaskState = TaskState.EXECUTING, **kw: object) -> ExitFacts:
    return ExitFacts(returncode=code, state=state, **kw)  # type: ignore[arg-type]


def test_quit_pending_restarts_whatever_the_exit() -> None:
    for code in (0, 1, -signal.SIGKILL):
        verdict = classify_exit(facts(code, TaskState.QUIT_PENDING, finish=Finish(0)))
        assert verdict.disposition is Disposition.RESTART and not verdict.premature


def test_abort_pending_is_aborted_with_the_clients_code() -> None:
    verdict = classify_exit(facts(EXIT_ABORTED_BY_CLIENT, TaskState.ABORT_PENDING))
    assert verdict.disposition is Disposition.ABORTED
    assert verdict.exit_status == EXIT_ABORTED_VIA_GUI
    assert "exit code 194" in verdict.message


def test_temporary_exit_file_wins_over_the_exit_code() -> None:
    t = TemporaryExitRequest(600, "busy")
    for code in (0, 3):
        verdict = classify_exit(facts(code, temporary_exit=t, finish=Finish(0)))
        assert verdict.disposition is Disposition.POSTPONED
        assert verdict.delay == 600 and verdict.premature
        assert verdict.message == "postponed for 600 seconds: busy"


def test_non_zero_exit_is_a_compute_error_even_with_a_finish_file() -> None:
    verdict = classify_exit(facts(5, finish=Finish(5)))
    assert verdict.disposition is Disposition.ERROR and verdict.exit_status == 5
    assert verdict.message == "process exited with code 5 (0x5, -251)"


def test_exit_0_with_finish_file_finished_without_premature() -> None:
    assert classify_exit(facts(0, finish=Finish(0))).disposition is Disposition.FINISHED
    premature = classify_exit(facts(0))
    assert premature.disposition is Disposition.RESTART and premature.premature


@pytest.mark.parametrize(
    "sig",
    [signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP],
)
def test_outside_signals_restart(sig: signal.Signals) -> None:
    verdict = classify_exit(facts(-sig))
    assert verdict.disposition is Disposition.RESTART and not verdict.premature


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGABRT, signal.SIGFPE, signal.SIGUSR1])
def test_other_signals_are_errors(sig: signal.Signals) -> None:
    verdict = classify_exit(facts(-sig))
    assert verdict.disposition is Disposition.ERROR
    assert verdict.message.startswith(f"process got signal {int(sig)}")


def test_a_hang_kill_says_why() -> None:
    verdict = classify_exit(facts(-signal.SIGKILL, kill_reason="no reply for 180 s"))
    assert verdict.disposition is Disposition.RESTART
    assert "no reply for 180 s" in verdict.message
