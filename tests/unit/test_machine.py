"""The supervisor's state machine: feed observations, assert states, events and actions."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmwrapper.hypervisor.base import Diagnosis, VmState
from vmwrapper.outcome import (
    ERR_EXEC,
    ERR_TIMEOUT,
    EXIT_ABORTED_BY_CLIENT,
    EXIT_OUT_OF_MEMORY,
    MAX_TEMPORARY_EXIT_DELAY,
    Finish,
    PlainExit,
    TemporaryExit,
)
from vmwrapper.shared_dir.triggers import CompletionTrigger, TemporaryExitTrigger
from vmwrapper.supervisor import machine as m
from vmwrapper.supervisor.backoff import ErrorClass, Failure
from vmwrapper.supervisor.timers import Timers

S, E = m.State, m.Event
RUN = m.Observation(vm=VmState.RUNNING)
CFG = m.MachineConfig()


def client(**flags: bool) -> m.ClientView:
    return m.ClientView(**flags)


def kinds(step: m.Step) -> list[type]:
    return [type(a) for a in step.actions]


def test_start_boots_from_the_recorded_snapshot() -> None:
    step = m.step(S.STARTING, m.Observation(restore_snapshot="boinc_600"), CFG)
    assert step.state is S.BOOTING and step.event is E.START
    assert step.actions == (m.PrepareVm(), m.StartVm("boinc_600"))


def test_booting_waits_then_goes_online_and_applies_preferences() -> None:
    waiting = m.step(S.BOOTING, m.Observation(vm=VmState.STARTING), CFG)
    assert (waiting.state, waiting.actions) == (S.BOOTING, ())
    online = m.step(S.BOOTING, RUN, CFG)
    assert online.state is S.RUNNING
    assert online.actions == (m.BringUp(), m.ApplyPreferences(reread=False))


def test_boot_timeout_is_a_transient_exit_with_backoff_delay() -> None:
    obs = m.Observation(vm=VmState.STARTING, booting_for=301.0, transient_delay=600.0)
    step = m.step(S.BOOTING, obs, CFG)
    assert step.state is S.DONE
    assert step.outcome == TemporaryExit(600.0, m.MSG_BOOT_TIMEOUT)
    assert m.RecordTransientFailure(m.MSG_BOOT_TIMEOUT) in step.actions
    # the logs of a VM that never came up are reported before it is powered off
    assert kinds(step)[:2] == [m.DumpLogs, m.PowerOff]


@pytest.mark.parametrize(
    ("diagnosis", "expected"),
    [
        (Diagnosis.VM_EXTENSIONS_DISABLED, Finish(ERR_EXEC, m.MSG_EXTENSIONS_DISABLED, True)),
        (Diagnosis.NO_VM_EXTENSIONS, Finish(ERR_EXEC, m.MSG_NO_EXTENSIONS, True)),
        (
            Diagnosis.FOREIGN_HYPERVISOR,
            TemporaryExit(MAX_TEMPORARY_EXIT_DELAY, m.MSG_FOREIGN_HYPERVISOR, True),
        ),
        (Diagnosis.HOST_OUT_OF_MEMORY, TemporaryExit(300.0, m.MSG_HOST_MEMORY)),
    ],
)
def test_host_problems_seen_at_boot(diagnosis: Diagnosis, expected: object) -> None:
    obs = m.Observation(vm=VmState.STARTING, booting_for=301.0, diagnoses=(diagnosis,))
    assert m.step(S.BOOTING, obs, CFG).outcome == expected


def test_extensions_messages_keep_the_client_token() -> None:
    assert "ERR_CPU_VM_EXTENSIONS_DISABLED" in m.MSG_EXTENSIONS_DISABLED
    assert "ERR_CPU_VM_EXTENSIONS_DISABLED" in m.MSG_NO_EXTENSIONS


def test_no_vm_extensions_is_never_success() -> None:
    # vboxwrapper finishes with 0 here (docs/compatibility.md#vm-extensions)
    obs = m.Observation(vm=VmState.CRASHED, diagnoses=(Diagnosis.NO_VM_EXTENSIONS,))
    outcome = m.step(S.BOOTING, obs, CFG).outcome
    assert isinstance(outcome, Finish) and outcome.status == ERR_EXEC


def test_suspend_pauses_and_resume_resumes() -> None:
    suspended = m.step(
        S.RUNNING, m.Observation(vm=VmState.RUNNING, client=client(suspended=True)), CFG
    )
    assert (suspended.state, suspended.actions) == (S.SUSPENDED, (m.PauseVm(),))
    still = m.step(
        S.SUSPENDED, m.Observation(vm=VmState.PAUSED, client=client(suspended=True)), CFG
    )
    assert (still.state, still.actions) == (S.SUSPENDED, ())
    resumed = m.step(S.SUSPENDED, m.Observation(vm=VmState.PAUSED), CFG)
    assert (resumed.state, resumed.actions) == (S.RUNNING, (m.ResumeVm(),))


def test_vm_that_did_not_pause_is_paused_again() -> None:
    obs = m.Observation(vm=VmState.RUNNING, client=client(suspended=True))
    assert m.step(S.SUSPENDED, obs, CFG).actions == (m.PauseVm(),)


def test_abort_cleans_up_and_finishes_194_from_every_live_state() -> None:
    for state in (S.STARTING, S.BOOTING, S.RUNNING, S.SUSPENDED):
        step = m.step(
            state, m.Observation(vm=VmState.RUNNING, client=client(abort_request=True)), CFG
        )
        assert step.outcome == Finish(EXIT_ABORTED_BY_CLIENT)
        assert m.Cleanup() in step.actions


@pytest.mark.parametrize("flag", ["quit_request", "no_heartbeat"])
def test_quit_and_lost_client_power_off_and_exit_without_a_file(flag: str) -> None:
    step = m.step(S.RUNNING, m.Observation(vm=VmState.RUNNING, client=client(**{flag: True})), CFG)
    assert step.actions == (m.PowerOff(), m.Exit(PlainExit(0)))


def test_quit_with_savestate_usage_saves_the_vm() -> None:
    cfg = m.MachineConfig(savestate_on_quit=True)
    step = m.step(
        S.RUNNING, m.Observation(vm=VmState.RUNNING, client=client(quit_request=True)), cfg
    )
    assert step.actions == (m.SaveState(), m.Exit(PlainExit(0)))


def test_quit_beats_triggers_and_abort_beats_quit() -> None:
    obs = m.Observation(
        vm=VmState.RUNNING,
        client=client(quit_request=True, abort_request=True),
        completion=CompletionTrigger(0),
    )
    assert m.step(S.RUNNING, obs, CFG).event is E.ABORT


def test_completion_trigger_finishes_with_code_message_and_notice() -> None:
    obs = m.Observation(vm=VmState.RUNNING, completion=CompletionTrigger(7, True, "bad input"))
    step = m.step(S.RUNNING, obs, CFG)
    assert step.outcome == Finish(7, "bad input", notice=True)
    assert kinds(step)[0] is m.Cleanup


def test_temporary_exit_trigger_removes_checkpoints_powers_off() -> None:
    cfg = m.MachineConfig(temporary_exit_trigger_file="later")
    obs = m.Observation(vm=VmState.RUNNING, temporary_exit=TemporaryExitTrigger(120, False, ""))
    step = m.step(S.RUNNING, obs, cfg)
    assert step.actions[:3] == (
        m.RemoveTrigger("later"),
        m.TakeCheckpoint(final=True),
        m.PowerOff(),
    )
    outcome = step.outcome
    assert isinstance(outcome, TemporaryExit)
    # always a reason (docs/compatibility.md#exit-codes-and-temporary-exits)
    assert outcome.delay == 120 and outcome.reason


def test_guest_powered_off_is_success_unless_job_duration_not_reached() -> None:
    off = m.Observation(vm=VmState.POWERED_OFF, elapsed=50.0)
    assert m.step(S.RUNNING, off, CFG).outcome == Finish(0)
    early = m.step(S.RUNNING, off, m.MachineConfig(job_duration=100.0)).outcome
    assert early == Finish(EXIT_ABORTED_BY_CLIENT, m.MSG_PREMATURE)
    late = m.step(S.RUNNING, off, m.MachineConfig(job_duration=40.0))
    assert late.outcome == Finish(0)


def test_crash_finishes_194_with_the_reason() -> None:
    obs = m.Observation(vm=VmState.CRASHED, vm_detail="guest panic: no shared dir")
    outcome = m.step(S.RUNNING, obs, CFG).outcome
    assert isinstance(outcome, Finish) and outcome.status == EXIT_ABORTED_BY_CLIENT
    assert "guest panic: no shared dir" in outcome.message


def test_guest_out_of_memory_finishes_205() -> None:
    obs = m.Observation(vm=VmState.RUNNING, guest_oom=True)
    assert m.step(S.RUNNING, obs, CFG).outcome == Finish(EXIT_OUT_OF_MEMORY, m.MSG_GUEST_OOM)


def test_heartbeat_file_failure_finishes_with_its_code() -> None:
    obs = m.Observation(vm=VmState.RUNNING, heartbeat_failure=ERR_TIMEOUT)
    assert m.step(S.RUNNING, obs, CFG).outcome == Finish(ERR_TIMEOUT, m.MSG_HEARTBEAT)


def test_job_duration_reached_is_success_with_cern_output() -> None:
    cfg = m.MachineConfig(job_duration=100.0, cern_output=True)
    step = m.step(S.RUNNING, m.Observation(vm=VmState.RUNNING, elapsed=100.0), cfg)
    assert step.actions == (m.Cleanup(), m.WriteCernOutput(), m.ResetBackoff(), m.Exit(Finish(0)))


def test_restored_past_job_duration_finishes_cleanly_at_start() -> None:
    # vboxwrapper returns 197 without a finish file or clean-up (docs/compatibility.md#start-up)
    step = m.step(S.STARTING, m.Observation(elapsed=500.0), m.MachineConfig(job_duration=100.0))
    assert step.outcome == Finish(0)
    assert m.Cleanup() in step.actions


def test_register_only_creates_and_leaves_the_vm() -> None:
    step = m.step(S.STARTING, m.Observation(), m.MachineConfig(register_only=True))
    assert step.actions == (m.PrepareVm(), m.Exit(Finish(0, m.MSG_REGISTER_ONLY)))
    assert not any(isinstance(a, m.Cleanup) for a in step.actions)


def test_checkpoint_due_only_while_running() -> None:
    due = m.Observation(vm=VmState.RUNNING, checkpoint_due=True)
    assert m.step(S.RUNNING, due, CFG).actions == (m.TakeCheckpoint(),)
    paused = m.Observation(vm=VmState.PAUSED, checkpoint_due=True, client=client(suspended=True))
    assert m.TakeCheckpoint() not in m.step(S.SUSPENDED, paused, CFG).actions


@pytest.mark.parametrize(
    ("error_class", "first", "outcome_type"),
    [
        (ErrorClass.TRANSIENT, m.PowerOff, TemporaryExit),
        (ErrorClass.JOB_BUG, m.DumpLogs, Finish),
        (ErrorClass.HOST_PROBLEM, m.PowerOff, TemporaryExit),
    ],
)
def test_failures_by_class(error_class: ErrorClass, first: type, outcome_type: type) -> None:
    obs = m.Observation(vm=VmState.RUNNING, failure=Failure(error_class, "boom", -148))
    step = m.step(S.RUNNING, obs, CFG)
    assert kinds(step)[0] is first
    assert isinstance(step.outcome, outcome_type)


def test_transient_failure_never_waits_a_blanket_day() -> None:
    obs = m.Observation(failure=Failure(ErrorClass.TRANSIENT, "lock held"), transient_delay=600.0)
    outcome = m.step(S.STARTING, obs, CFG).outcome
    assert outcome == TemporaryExit(600.0, "lock held")


def test_host_problem_failure_uses_the_diagnosis() -> None:
    obs = m.Observation(
        failure=Failure(ErrorClass.HOST_PROBLEM, "start refused"),
        diagnoses=(Diagnosis.VM_EXTENSIONS_DISABLED,),
    )
    outcome = m.step(S.BOOTING, obs, CFG).outcome
    assert isinstance(outcome, Finish) and "ERR_CPU_VM_EXTENSIONS_DISABLED" in outcome.message


def test_final_host_problem_from_the_back_end_finishes_with_its_code() -> None:
    message = "ERR_CPU_VM_EXTENSIONS_DISABLED: a 64-bit guest needs VT-x"
    obs = m.Observation(failure=Failure(ErrorClass.HOST_PROBLEM, message, -148, final=True))
    step = m.step(S.STARTING, obs, CFG)
    assert step.outcome == Finish(-148, message, notice=True)


def test_trickle_files_become_trickles_even_on_the_way_out() -> None:
    trickles = (("t1", "a"), ("t2", "b"))
    tick = m.step(S.RUNNING, m.Observation(vm=VmState.RUNNING, trickles=trickles), CFG)
    assert tick.actions == (m.SendTrickle("t1", "a", "t1"), m.SendTrickle("t2", "b", "t2"))
    off = m.step(S.RUNNING, m.Observation(vm=VmState.POWERED_OFF, trickles=trickles), CFG)
    assert off.actions[:2] == (m.SendTrickle("t1", "a", "t1"), m.SendTrickle("t2", "b", "t2"))
    assert off.outcome == Finish(0)


def test_uploads_and_periodic_trickle_while_running() -> None:
    obs = m.Observation(vm=VmState.RUNNING, uploads_ready=("out1",), periodic_trickle="<x/>")
    assert m.step(S.RUNNING, obs, CFG).actions == (
        m.RequestUpload("out1"),
        m.SendTrickle("cpu_time", "<x/>"),
    )


def test_preferences_reapplied_on_reread_even_suspended() -> None:
    obs = m.Observation(vm=VmState.PAUSED, client=client(suspended=True, reread_init_data=True))
    assert m.ApplyPreferences(reread=True) in m.step(S.SUSPENDED, obs, CFG).actions


def test_network_follows_the_client() -> None:
    cfg = m.MachineConfig(enable_network=True)
    cut = m.Observation(vm=VmState.RUNNING, client=client(network_suspended=True))
    assert m.step(S.RUNNING, cut, cfg).actions == (m.SetNetwork(False),)
    restored = m.Observation(vm=VmState.RUNNING, network_connected=False)
    assert m.step(S.RUNNING, restored, cfg).actions == (m.SetNetwork(True),)
    assert m.step(S.RUNNING, cut, CFG).actions == ()  # no network in the job: nothing to do


def test_done_is_final() -> None:
    with pytest.raises(ValueError):
        m.step(S.DONE, RUN, CFG)


_client_views = st.builds(
    m.ClientView,
    suspended=st.booleans(),
    quit_request=st.booleans(),
    abort_request=st.booleans(),
    no_heartbeat=st.booleans(),
    reread_init_data=st.booleans(),
    network_suspended=st.booleans(),
)
_observations = st.builds(
    m.Observation,
    vm=st.sampled_from(VmState),
    diagnoses=st.lists(st.sampled_from(Diagnosis), max_size=2).map(tuple),
    client=_client_views,
    elapsed=st.floats(0, 1e5),
    completion=st.none() | st.builds(CompletionTrigger, st.integers(-300, 300), st.booleans()),
    temporary_exit=st.none() | st.builds(TemporaryExitTrigger, st.integers(0, 86400)),
    heartbeat_failure=st.none() | st.just(ERR_TIMEOUT),
    guest_oom=st.booleans(),
    checkpoint_due=st.booleans(),
    booting_for=st.sampled_from([0.0, 301.0]),
    status_failures=st.sampled_from([0, 61]),
    restore_failed=st.sampled_from(["", "boinc_1"]),
    failure=st.none() | st.builds(Failure, st.sampled_from(ErrorClass), st.just("x")),
    trickles=st.lists(st.tuples(st.just("t"), st.text(max_size=5)), max_size=2).map(tuple),
    network_connected=st.booleans(),
)
_configs = st.builds(
    m.MachineConfig,
    job_duration=st.sampled_from([0.0, 100.0]),
    register_only=st.booleans(),
    savestate_on_quit=st.booleans(),
    enable_network=st.booleans(),
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([S.STARTING, S.BOOTING, S.RUNNING, S.SUSPENDED]), _observations, _configs)
def test_every_observation_has_a_transition_and_exits_only_when_done(
    state: m.State, obs: m.Observation, cfg: m.MachineConfig
) -> None:
    step = m.step(state, obs, cfg)  # never a missing table entry
    exits = [a for a in step.actions if isinstance(a, m.Exit)]
    if step.state is S.DONE:
        assert len(exits) == 1 and step.actions[-1] is exits[0]
        if isinstance(exits[0].outcome, TemporaryExit):
            assert exits[0].outcome.reason.strip()
    else:
        assert exits == []


FATAL_ROWS = [
    # (state, observation): vboxwrapper's exits that report (screenshot, logs) before cleanup
    (S.RUNNING, m.Observation(vm=VmState.RUNNING, client=client(abort_request=True))),
    (S.RUNNING, m.Observation(vm=VmState.RUNNING, heartbeat_failure=-163)),
    (S.RUNNING, m.Observation(vm=VmState.CRASHED, vm_exit_code=-6)),
    (S.RUNNING, m.Observation(vm=VmState.RUNNING, guest_oom=True)),
    (S.RUNNING, m.Observation(vm=VmState.RUNNING, failure=Failure(ErrorClass.JOB_BUG, "x", -1))),
]


@pytest.mark.parametrize(("state", "obs"), FATAL_ROWS)
def test_fatal_exits_report_before_the_vm_is_removed(state: m.State, obs: m.Observation) -> None:
    step = m.step(state, obs, CFG)
    assert isinstance(step.outcome, Finish) and step.outcome.status != 0
    found = kinds(step)
    assert found.index(m.DumpLogs) < found.index(m.Cleanup)
    dump = next(a for a in step.actions if isinstance(a, m.DumpLogs))
    assert dump.exit_code == obs.vm_exit_code


@pytest.mark.parametrize(
    ("state", "obs"),
    [
        (S.RUNNING, m.Observation(vm=VmState.POWERED_OFF)),  # the guest ended the job
        (S.RUNNING, m.Observation(vm=VmState.RUNNING, client=client(quit_request=True))),
        (S.STARTING, m.Observation(client=client(abort_request=True))),  # no VM to report on
    ],
)
def test_normal_endings_write_no_error_report(state: m.State, obs: m.Observation) -> None:
    assert m.DumpLogs not in kinds(m.step(state, obs, CFG))


# -- rules that live in the machine (timers, recovery, chores) -------------------------------


def test_boot_timeout_is_the_timers_value() -> None:
    cfg = m.MachineConfig(timers=Timers(boot_timeout=30.0))
    booting = m.Observation(vm=VmState.STARTING, booting_for=30.0)
    assert m.step(S.BOOTING, booting, cfg).event is E.TICK
    late = m.Observation(vm=VmState.STARTING, booting_for=30.5)
    assert m.step(S.BOOTING, late, cfg).event is E.BOOT_TIMEOUT
    assert m.needs_diagnosis(S.BOOTING, late, cfg)
    assert not m.needs_diagnosis(S.BOOTING, booting, cfg)


def test_failed_status_queries_keep_the_last_state_until_the_limit() -> None:
    cfg = m.MachineConfig(timers=Timers(max_status_failures=3))
    held = m.Observation(vm=VmState.RUNNING, status_failures=3, status_error="no answer")
    assert m.step(S.RUNNING, held, cfg).event is E.TICK
    assert not m.needs_diagnosis(S.RUNNING, held, cfg)
    lost = m.Observation(vm=VmState.RUNNING, status_failures=4, status_error="no answer")
    step = m.step(S.RUNNING, lost, cfg)
    assert step.event is E.VM_CRASHED and m.needs_diagnosis(S.RUNNING, lost, cfg)
    assert step.outcome == Finish(
        EXIT_ABORTED_BY_CLIENT, f"{m.MSG_PREMATURE} (status unknown for 4 s: no answer)"
    )


def test_a_refused_checkpoint_waits_for_its_retry_time() -> None:
    due = m.Observation(
        vm=VmState.RUNNING, checkpoint_due=True, now=99.0, checkpoint_retry_at=100.0
    )
    assert m.step(S.RUNNING, due, CFG).event is E.TICK
    assert m.step(S.RUNNING, replace(due, now=100.0), CFG).actions == (m.TakeCheckpoint(),)


def test_a_restore_that_fails_boots_afresh() -> None:
    obs = m.Observation(vm=VmState.ABSENT, restore_failed="boinc_600")
    step = m.step(S.BOOTING, obs, CFG)
    assert (step.state, step.event) == (S.BOOTING, E.RESTORE_FAILED)
    assert step.actions == (m.PowerOff(), m.StartVm(""))


def test_start_up_files_that_cannot_be_made_end_with_a_bare_status_1() -> None:
    step = m.step(S.STARTING, m.Observation(setup_failed=True), CFG)
    assert step.actions == (m.Exit(PlainExit(1)),) and step.state is S.DONE


UPLOAD, TRICKLE = m.RequestUpload("out"), m.SendTrickle("cpu_time", "<x/>")
PREFS, PLUG = m.ApplyPreferences(reread=True), m.SetNetwork(connected=True)


@pytest.mark.parametrize(
    ("state", "vm", "suspended", "expected"),
    [
        # coming online: uploads and the periodic trickle, not yet the client's preferences
        (S.BOOTING, VmState.RUNNING, False, (m.BringUp(), PREFS, UPLOAD, TRICKLE)),
        (S.RUNNING, VmState.RUNNING, False, (UPLOAD, TRICKLE, PREFS, PLUG)),
        (S.SUSPENDED, VmState.RUNNING, False, (m.ResumeVm(), UPLOAD, TRICKLE, PREFS, PLUG)),
        (S.RUNNING, VmState.PAUSED, True, (m.PauseVm(), PREFS, PLUG)),
        (S.BOOTING, VmState.STARTING, False, ()),
    ],
)
def test_each_row_does_its_chores(
    state: m.State, vm: VmState, suspended: bool, expected: tuple[m.Action, ...]
) -> None:
    busy = m.Observation(
        vm=vm,
        uploads_ready=("out",),
        periodic_trickle="<x/>",
        client=client(reread_init_data=True, suspended=suspended),
        network_connected=False,
    )
    assert m.step(state, busy, m.MachineConfig(enable_network=True)).actions == expected
