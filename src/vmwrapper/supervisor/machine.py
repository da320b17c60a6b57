"""The wrapper's state machine: one :class:`Observation` in, the next :class:`State` and the
:class:`Action` list out. Pure — no clock, no files, no back end (those live in ``loop.py``).

Shape after h11's ``_state.py``: an event is derived from the observation by a fixed priority
order (:func:`classify`, the order of vboxwrapper's main loop, docs/compatibility.md#main-loop), and
the transition table :data:`TRANSITIONS` maps ``(state, event)`` to the next state and a function
that builds the actions. Terminal transitions end with :class:`Exit` carrying the
:data:`~vmwrapper.outcome.Outcome`; the loop performs the actions in order and returns it.

States::

    STARTING ──START──► BOOTING ──VM_ONLINE──► RUNNING ◄──RESUME/SUSPEND──► SUSPENDED
        │                  │                      │                           │
        └──────────────────┴──── any ending event (abort, quit, triggers, VM down,
                                  failures, job_duration reached) ──────────► DONE
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from vmwrapper.hypervisor.base import Diagnosis, VmState
from vmwrapper.outcome import (
    ERR_EXEC,
    EXIT_ABORTED_BY_CLIENT,
    EXIT_CHILD_FAILED,
    EXIT_OUT_OF_MEMORY,
    MAX_TEMPORARY_EXIT_DELAY,
    Finish,
    Outcome,
    PlainExit,
    TemporaryExit,
)
from vmwrapper.shared_dir.triggers import CompletionTrigger, TemporaryExitTrigger
from vmwrapper.supervisor.actions import (
    MSG_BOOT_TIMEOUT,
    MSG_EXTENSIONS_DISABLED,
    MSG_FOREIGN_HYPERVISOR,
    MSG_GUEST_OOM,
    MSG_HEARTBEAT,
    MSG_HOST_MEMORY,
    MSG_NO_EXTENSIONS,
    MSG_PREMATURE,
    MSG_REGISTER_ONLY,
    Action,
    ApplyPreferences,
    BringUp,
    Cleanup,
    DumpLogs,
    Exit,
    PauseVm,
    PowerOff,
    PrepareVm,
    RecordTransientFailure,
    RemoveTrigger,
    RequestUpload,
    ResetBackoff,
    ResumeVm,
    SaveState,
    SendTrickle,
    SetNetwork,
    StartVm,
    TakeCheckpoint,
    WriteCernOutput,
    msg_guest_failed,
)
from vmwrapper.supervisor.backoff import ErrorClass, Failure
from vmwrapper.supervisor.timers import Timers


class State(enum.Enum):
    STARTING = "starting"  # nothing done yet: create or reuse the VM, restore, start
    BOOTING = "booting"  # started; waiting (bounded) for it to be online
    RUNNING = "running"
    SUSPENDED = "suspended"  # the client suspended the task; the VM is paused
    DONE = "done"


class Event(enum.Enum):
    FAILURE = "failure"  # an action failed (classified in Observation.failure)
    ABORT = "abort"
    QUIT = "quit"
    NO_HEARTBEAT = "no_heartbeat"
    REGISTER_ONLY = "register_only"
    START = "start"
    HEARTBEAT_FILE_FAILED = "heartbeat_file_failed"
    COMPLETION = "completion"
    TEMPORARY_EXIT = "temporary_exit"
    VM_CRASHED = "vm_crashed"
    VM_STOPPED = "vm_stopped"
    GUEST_OUT_OF_MEMORY = "guest_out_of_memory"
    VM_ONLINE = "vm_online"
    BOOT_TIMEOUT = "boot_timeout"
    DURATION_REACHED = "duration_reached"
    SUSPEND = "suspend"
    RESUME = "resume"
    CHECKPOINT_DUE = "checkpoint_due"
    SETUP_FAILED = "setup_failed"  # the slot could not be set up (--sporadic's files)
    RESTORE_FAILED = "restore_failed"  # the checkpoint could not be restored: boot fresh
    TICK = "tick"


# -- what the machine sees -------------------------------------------------------------------


@dataclass(frozen=True)
class ClientView:
    """The client's requests as of this tick (from AppClient.poll)."""

    suspended: bool = False
    quit_request: bool = False
    abort_request: bool = False
    no_heartbeat: bool = False
    reread_init_data: bool = False
    network_suspended: bool = False


@dataclass(frozen=True)
class Observation:
    """Everything the loop saw in one tick. Defaults describe a quiet tick."""

    vm: VmState = VmState.ABSENT
    vm_detail: str = ""
    vm_exit_code: int | None = None
    diagnoses: tuple[Diagnosis, ...] = ()
    client: ClientView = field(default_factory=ClientView)
    elapsed: float = 0.0  # the job's elapsed seconds (all runs; frozen while suspended)
    completion: CompletionTrigger | None = None
    temporary_exit: TemporaryExitTrigger | None = None
    heartbeat_failure: int | None = None  # BOINC code when the heartbeat file check failed
    guest_oom: bool = False  # the guest printed EXIT_OUT_OF_MEMORY
    guest_status: int | None = None  # N of the guest's `VMWRAPPER_GUEST_DONE status=N` line
    now: float = 0.0  # the loop's clock (monotonic seconds)
    checkpoint_due: bool = False  # the checkpoint policy says one is due by elapsed time
    checkpoint_retry_at: float = 0.0  # a refused snapshot: not again before this `now`
    booting_for: float = 0.0  # seconds since the VM was started (BOOTING)
    status_failures: int = 0  # failed status queries in a row (`vm` is then the last known)
    status_error: str = ""  # the last failed query's error
    failure: Failure | None = None
    restore_failed: str = ""  # the checkpoint whose restore just failed
    setup_failed: bool = False  # the slot's start-up files could not be made (--sporadic)
    trickles: tuple[tuple[str, str], ...] = ()  # (trigger file name = variety, its text)
    uploads_ready: tuple[str, ...] = ()  # intermediate upload files present, not yet requested
    periodic_trickle: str | None = None  # --trickle body due now
    network_connected: bool = True  # the NIC state the loop last set
    transient_delay: float = 300.0  # the delay the back-off gives the next transient failure
    restore_snapshot: str = ""  # the checkpoint to restore at START ("" = boot fresh)


@dataclass(frozen=True)
class MachineConfig:
    """The job's settings the decisions depend on (from JobSpec and the command line)."""

    job_duration: float = 0.0
    register_only: bool = False
    savestate_on_quit: bool = False  # enable_vm_savestate_usage
    enable_network: bool = False
    cern_output: bool = False  # enable_cern_dataformat: write `output` when job_duration ends
    temporary_exit_trigger_file: str = ""
    timers: Timers = field(default_factory=Timers)


# -- classification --------------------------------------------------------------------------

_LIVE = (State.BOOTING, State.RUNNING, State.SUSPENDED)


def vm_seen(obs: Observation, config: MachineConfig) -> VmState:
    """The VM's state as the machine counts it: after too many failed status queries in a row
    the last known state no longer stands, and the VM counts as crashed."""
    if config.timers.status_lost(obs.status_failures):
        return VmState.CRASHED
    return obs.vm


def boot_timed_out(state: State, obs: Observation, config: MachineConfig) -> bool:
    return state is State.BOOTING and config.timers.boot_timed_out(obs.booting_for)


def needs_diagnosis(state: State, obs: Observation, config: MachineConfig) -> bool:
    """Whether the loop should read the hypervisor's logs for this tick: the VM is down, or
    never came up in time."""
    return not vm_seen(obs, config).online or boot_timed_out(state, obs, config)


def classify(state: State, obs: Observation, config: MachineConfig) -> Event:
    """The one event this tick stands for, by vboxwrapper's priority order."""
    if state is State.DONE:
        raise ValueError("the machine is done; no more observations")
    client = obs.client
    if obs.setup_failed and state is State.STARTING:
        return Event.SETUP_FAILED
    if obs.restore_failed and state is State.BOOTING:  # (only StartVm restores)
        return Event.RESTORE_FAILED
    if obs.failure is not None:
        return Event.FAILURE
    if client.abort_request:
        return Event.ABORT
    if client.quit_request:
        return Event.QUIT
    if client.no_heartbeat:
        return Event.NO_HEARTBEAT
    if state is State.STARTING:
        if config.job_duration > 0 and obs.elapsed >= config.job_duration:
            # restored past the end (vboxwrapper: bare 197, docs/compatibility.md#start-up)
            return Event.DURATION_REACHED
        return Event.REGISTER_ONLY if config.register_only else Event.START
    if obs.heartbeat_failure is not None:
        return Event.HEARTBEAT_FILE_FAILED
    if obs.completion is not None:
        return Event.COMPLETION
    if obs.temporary_exit is not None:
        return Event.TEMPORARY_EXIT
    vm = vm_seen(obs, config)
    if not vm.online:
        if vm in (VmState.CRASHED, VmState.ABSENT):
            return Event.VM_CRASHED
        return Event.VM_STOPPED
    if obs.guest_oom:
        return Event.GUEST_OUT_OF_MEMORY
    if state is State.BOOTING:
        if vm in (VmState.RUNNING, VmState.PAUSED):
            return Event.VM_ONLINE
        return Event.BOOT_TIMEOUT if boot_timed_out(state, obs, config) else Event.TICK
    if config.job_duration > 0 and obs.elapsed >= config.job_duration:
        return Event.DURATION_REACHED
    if state is State.RUNNING and (client.suspended or vm is VmState.PAUSED):
        return Event.SUSPEND if client.suspended else Event.RESUME
    if state is State.SUSPENDED and (not client.suspended or vm is VmState.RUNNING):
        return Event.RESUME if not client.suspended else Event.SUSPEND
    if state is State.RUNNING and obs.checkpoint_due and obs.now >= obs.checkpoint_retry_at:
        return Event.CHECKPOINT_DUE
    return Event.TICK


# -- outcomes --------------------------------------------------------------------------------

Actions = list[Action]
Builder = Callable[[Observation, MachineConfig], Actions]


def _host_problem(obs: Observation, fallback: str) -> Actions | None:
    """Actions for a host problem the back end diagnosed, or None if there is none."""
    found = set(obs.diagnoses)
    if Diagnosis.VM_EXTENSIONS_DISABLED in found:
        return [Cleanup(), Exit(Finish(ERR_EXEC, MSG_EXTENSIONS_DISABLED, notice=True))]
    # vboxwrapper finishes with 0 here (docs/compatibility.md#vm-extensions)
    if Diagnosis.NO_VM_EXTENSIONS in found:
        return [Cleanup(), Exit(Finish(ERR_EXEC, MSG_NO_EXTENSIONS, notice=True))]
    if Diagnosis.FOREIGN_HYPERVISOR in found:
        return [
            PowerOff(),
            Exit(TemporaryExit(MAX_TEMPORARY_EXIT_DELAY, MSG_FOREIGN_HYPERVISOR, notice=True)),
        ]
    if Diagnosis.HOST_OUT_OF_MEMORY in found:
        return _transient(obs, MSG_HOST_MEMORY)
    if fallback:
        return [PowerOff(), Exit(TemporaryExit(MAX_TEMPORARY_EXIT_DELAY, fallback, notice=True))]
    return None


def _fatal(obs: Observation, finish: Finish) -> Actions:
    """A job that ends in error: report (screenshot, logs), then remove the VM
    (docs/compatibility.md#exit-codes-and-temporary-exits)."""
    return [DumpLogs(obs.vm_exit_code), Cleanup(), Exit(finish)]


def _transient(obs: Observation, reason: str) -> Actions:
    return [
        PowerOff(),
        RecordTransientFailure(reason),
        Exit(TemporaryExit(obs.transient_delay, reason)),
    ]


def _on_failure(obs: Observation, config: MachineConfig) -> Actions:
    failure = obs.failure
    assert failure is not None
    if failure.error_class is ErrorClass.HOST_PROBLEM:
        if failure.final and not obs.diagnoses:
            return _fatal(obs, Finish(failure.code, failure.message, notice=True))
        actions = _host_problem(obs, failure.message)
        assert actions is not None
        return actions
    if failure.error_class is ErrorClass.TRANSIENT:
        return _transient(obs, failure.message)
    return _fatal(obs, Finish(failure.code, failure.message))


def _abort_before_vm(obs: Observation, config: MachineConfig) -> Actions:
    return [Cleanup(), Exit(Finish(EXIT_ABORTED_BY_CLIENT))]  # no VM of this run to report


def _on_abort(obs: Observation, config: MachineConfig) -> Actions:
    return _fatal(obs, Finish(EXIT_ABORTED_BY_CLIENT))


# The client restarts the task by itself after a quit (and ignores the exit status), so we
# leave no temporary-exit file: vboxwrapper's reasonless 86400 s file is ignored
# (docs/compatibility.md#exit-codes-and-temporary-exits), and one with a reason would postpone
# the task by a day.


def _quit_before_vm(obs: Observation, config: MachineConfig) -> Actions:
    return [Exit(PlainExit(0))]


def _quit_booting(obs: Observation, config: MachineConfig) -> Actions:
    return [PowerOff(), Exit(PlainExit(0))]  # nothing worth saving yet


def _quit_running(obs: Observation, config: MachineConfig) -> Actions:
    return [SaveState() if config.savestate_on_quit else PowerOff(), Exit(PlainExit(0))]


def _on_setup_failed(obs: Observation, config: MachineConfig) -> Actions:
    # a bare exit status 1, as vboxwrapper's (docs/compatibility.md#start-up)
    return [Exit(PlainExit(1))]


def _on_register_only(obs: Observation, config: MachineConfig) -> Actions:
    return [PrepareVm(), Exit(Finish(0, MSG_REGISTER_ONLY))]


def _on_start(obs: Observation, config: MachineConfig) -> Actions:
    return [PrepareVm(), StartVm(obs.restore_snapshot)]


def _on_restore_failed(obs: Observation, config: MachineConfig) -> Actions:
    # A damaged snapshot must not lose the job: boot afresh, elapsed and CPU time kept.
    return [PowerOff(), StartVm("")]


def _on_heartbeat_file(obs: Observation, config: MachineConfig) -> Actions:
    assert obs.heartbeat_failure is not None
    return _fatal(obs, Finish(obs.heartbeat_failure, MSG_HEARTBEAT))


def _on_completion(obs: Observation, config: MachineConfig) -> Actions:
    trigger = obs.completion
    assert trigger is not None
    return [
        Cleanup(),
        ResetBackoff(),
        Exit(Finish(trigger.exit_code, trigger.message, notice=trigger.notice)),
    ]


def _temporary_exit_booting(obs: Observation, config: MachineConfig) -> Actions:
    trigger = obs.temporary_exit
    assert trigger is not None
    return [
        RemoveTrigger(config.temporary_exit_trigger_file),
        PowerOff(),
        Exit(TemporaryExit(trigger.delay, trigger.reason, trigger.notice)),
    ]


def _temporary_exit_running(obs: Observation, config: MachineConfig) -> Actions:
    first, *rest = _temporary_exit_booting(obs, config)
    return [first, TakeCheckpoint(final=True), *rest]


def _on_vm_crashed(obs: Observation, config: MachineConfig) -> Actions:
    host = _host_problem(obs, "")
    if host is not None:
        return host
    detail = obs.vm_detail
    if config.timers.status_lost(obs.status_failures):
        detail = f"status unknown for {obs.status_failures} s: {obs.status_error}"
    message = f"{MSG_PREMATURE} ({detail})" if detail else MSG_PREMATURE
    return _fatal(obs, Finish(EXIT_ABORTED_BY_CLIENT, message))


def _on_vm_stopped(obs: Observation, config: MachineConfig) -> Actions:
    host = _host_problem(obs, "")
    if host is not None:
        return host
    if obs.guest_status:
        # The guest's app failed: BOINC's own wrapper ends a failed child with
        # EXIT_CHILD_FAILED, so do we (docs/compatibility.md#runtime).
        return _fatal(obs, Finish(EXIT_CHILD_FAILED, msg_guest_failed(obs.guest_status)))
    if config.job_duration > 0 and obs.elapsed < config.job_duration:
        return _fatal(obs, Finish(EXIT_ABORTED_BY_CLIENT, MSG_PREMATURE))
    return [Cleanup(), ResetBackoff(), Exit(Finish(0))]  # the guest shut itself down: success


def _on_guest_oom(obs: Observation, config: MachineConfig) -> Actions:
    return _fatal(obs, Finish(EXIT_OUT_OF_MEMORY, MSG_GUEST_OOM))


def _on_boot_timeout(obs: Observation, config: MachineConfig) -> Actions:
    host = _host_problem(obs, "")
    # A VM that never came up is where its logs matter most (the failure is retried).
    return host if host is not None else [DumpLogs(), *_transient(obs, MSG_BOOT_TIMEOUT)]


def _on_duration(obs: Observation, config: MachineConfig) -> Actions:
    actions: Actions = [Cleanup()]
    if config.cern_output:
        actions.append(WriteCernOutput())
    return [*actions, ResetBackoff(), Exit(Finish(0))]


def _on_online(obs: Observation, config: MachineConfig) -> Actions:
    return [BringUp(), ApplyPreferences(reread=obs.client.reread_init_data)]


def _pause(obs: Observation, config: MachineConfig) -> Actions:
    return [PauseVm()]


def _resume(obs: Observation, config: MachineConfig) -> Actions:
    return [ResumeVm()]


def _checkpoint(obs: Observation, config: MachineConfig) -> Actions:
    return [TakeCheckpoint()]


def _nothing(obs: Observation, config: MachineConfig) -> Actions:
    return []


# -- per-tick chores (docs/compatibility.md#main-loop) ---------------------------------------


def _trickles(obs: Observation, config: MachineConfig) -> Actions:
    """Trickle files are always forwarded, even on the way out: a guest that writes a trickle
    and powers off must not lose it."""
    return [SendTrickle(name, text, trigger_file=name) for name, text in obs.trickles]


def _running_chores(obs: Observation, config: MachineConfig) -> Actions:
    actions: Actions = [RequestUpload(name) for name in obs.uploads_ready]
    if obs.periodic_trickle is not None:
        actions.append(SendTrickle("cpu_time", obs.periodic_trickle))
    return actions


def _client_chores(obs: Observation, config: MachineConfig) -> Actions:
    """Preferences the client re-wrote, and its network suspension, once the VM is up."""
    actions: Actions = []
    if obs.client.reread_init_data:
        actions.append(ApplyPreferences(reread=True))
    if config.enable_network and obs.network_connected == obs.client.network_suspended:
        actions.append(SetNetwork(not obs.client.network_suspended))
    return actions


def _online_chores(obs: Observation, config: MachineConfig) -> Actions:
    return [*_trickles(obs, config), *_running_chores(obs, config)]


def _running_all(obs: Observation, config: MachineConfig) -> Actions:
    return [*_online_chores(obs, config), *_client_chores(obs, config)]


def _suspended_chores(obs: Observation, config: MachineConfig) -> Actions:
    return [*_trickles(obs, config), *_client_chores(obs, config)]


# -- the table -------------------------------------------------------------------------------


class Row(NamedTuple):
    """One transition: the next state, the actions for the event, the chores of the tick."""

    next: State
    build: Builder
    chores: Builder = _trickles


def _ending(build: Builder) -> Row:
    return Row(State.DONE, build)


_ENDINGS: dict[Event, Builder] = {
    Event.FAILURE: _on_failure,
    Event.ABORT: _on_abort,
    Event.HEARTBEAT_FILE_FAILED: _on_heartbeat_file,
    Event.COMPLETION: _on_completion,
    Event.VM_CRASHED: _on_vm_crashed,
    Event.VM_STOPPED: _on_vm_stopped,
    Event.GUEST_OUT_OF_MEMORY: _on_guest_oom,
    Event.DURATION_REACHED: _on_duration,
}
_WHILE_UP = (State.RUNNING, State.SUSPENDED)

#: (state, event) -> Row. Pairs not listed cannot happen (classify never yields them); step()
#: raises on them, so a gap is a loud bug, not a silent no-op.
TRANSITIONS: dict[tuple[State, Event], Row] = {
    **{(s, e): _ending(b) for s in _LIVE for e, b in _ENDINGS.items()},
    **{(s, e): _ending(_quit_running) for s in _WHILE_UP for e in (Event.QUIT, Event.NO_HEARTBEAT)},
    **{(s, Event.TEMPORARY_EXIT): _ending(_temporary_exit_running) for s in _WHILE_UP},
    (State.BOOTING, Event.QUIT): _ending(_quit_booting),
    (State.BOOTING, Event.NO_HEARTBEAT): _ending(_quit_booting),
    (State.BOOTING, Event.TEMPORARY_EXIT): _ending(_temporary_exit_booting),
    (State.BOOTING, Event.RESTORE_FAILED): Row(State.BOOTING, _on_restore_failed),
    (State.STARTING, Event.SETUP_FAILED): _ending(_on_setup_failed),
    (State.STARTING, Event.FAILURE): _ending(_on_failure),
    (State.STARTING, Event.ABORT): _ending(_abort_before_vm),
    (State.STARTING, Event.QUIT): _ending(_quit_before_vm),
    (State.STARTING, Event.NO_HEARTBEAT): _ending(_quit_before_vm),
    (State.STARTING, Event.DURATION_REACHED): _ending(_on_duration),
    (State.STARTING, Event.REGISTER_ONLY): _ending(_on_register_only),
    (State.STARTING, Event.START): Row(State.BOOTING, _on_start),
    (State.BOOTING, Event.VM_ONLINE): Row(State.RUNNING, _on_online, _online_chores),
    (State.BOOTING, Event.BOOT_TIMEOUT): _ending(_on_boot_timeout),
    (State.BOOTING, Event.TICK): Row(State.BOOTING, _nothing),
    (State.RUNNING, Event.SUSPEND): Row(State.SUSPENDED, _pause, _suspended_chores),
    (State.RUNNING, Event.RESUME): Row(State.RUNNING, _resume, _running_all),
    (State.RUNNING, Event.CHECKPOINT_DUE): Row(State.RUNNING, _checkpoint, _running_all),
    (State.RUNNING, Event.TICK): Row(State.RUNNING, _nothing, _running_all),
    (State.SUSPENDED, Event.RESUME): Row(State.RUNNING, _resume, _running_all),
    (State.SUSPENDED, Event.SUSPEND): Row(State.SUSPENDED, _pause, _suspended_chores),
    (State.SUSPENDED, Event.TICK): Row(State.SUSPENDED, _nothing, _suspended_chores),
}


@dataclass(frozen=True)
class Step:
    state: State
    event: Event
    actions: tuple[Action, ...]

    @property
    def outcome(self) -> Outcome | None:
        for action in self.actions:
            if isinstance(action, Exit):
                return action.outcome
        return None


def step(state: State, obs: Observation, config: MachineConfig) -> Step:
    """One tick: the event, the next state and the actions, in the order to perform them."""
    event = classify(state, obs, config)
    try:
        row = TRANSITIONS[(state, event)]
    except KeyError:
        raise AssertionError(f"no transition for {state.name} on {event.name}") from None
    main = row.build(obs, config)
    chores = row.chores(obs, config)
    if row.next is State.DONE:
        return Step(row.next, event, (*chores, *main))
    return Step(row.next, event, (*main, *chores))


#: The actions are the machine's words: ``machine.TakeCheckpoint`` reads as well as the table.
__all__ = [
    "MSG_BOOT_TIMEOUT",
    "MSG_EXTENSIONS_DISABLED",
    "MSG_FOREIGN_HYPERVISOR",
    "MSG_GUEST_OOM",
    "MSG_HEARTBEAT",
    "MSG_HOST_MEMORY",
    "MSG_NO_EXTENSIONS",
    "MSG_PREMATURE",
    "MSG_REGISTER_ONLY",
    "TRANSITIONS",
    "Action",
    "ApplyPreferences",
    "BringUp",
    "Cleanup",
    "ClientView",
    "DumpLogs",
    "Event",
    "Exit",
    "MachineConfig",
    "Observation",
    "PauseVm",
    "PowerOff",
    "PrepareVm",
    "RecordTransientFailure",
    "RemoveTrigger",
    "RequestUpload",
    "ResetBackoff",
    "ResumeVm",
    "Row",
    "SaveState",
    "SendTrickle",
    "SetNetwork",
    "StartVm",
    "State",
    "Step",
    "TakeCheckpoint",
    "WriteCernOutput",
    "boot_timed_out",
    "classify",
    "msg_guest_failed",
    "needs_diagnosis",
    "step",
    "vm_seen",
]
