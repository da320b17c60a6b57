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

from vmwrapper.hypervisor.base import Diagnosis, VmState
from vmwrapper.outcome import (
    ERR_EXEC,
    EXIT_ABORTED_BY_CLIENT,
    EXIT_CHILD_FAILED,
    EXIT_OUT_OF_MEMORY,
    MAX_TEMPORARY_EXIT_DELAY,
    VM_EXTENSIONS_TOKEN,
    Finish,
    Outcome,
    PlainExit,
    TemporaryExit,
)
from vmwrapper.shared_dir.triggers import CompletionTrigger, TemporaryExitTrigger
from vmwrapper.supervisor.backoff import ErrorClass, Failure


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
    checkpoint_due: bool = False
    boot_timed_out: bool = False
    failure: Failure | None = None
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


# -- what the machine asks for ---------------------------------------------------------------


@dataclass(frozen=True)
class PrepareVm:
    """Create the VM or reuse this slot's; power off one left running; drop orphan snapshots."""


@dataclass(frozen=True)
class StartVm:
    restore: str = ""  # snapshot name, "" = boot fresh


@dataclass(frozen=True)
class BringUp:
    """The VM is online: lower its priority, contextualize, announce ports, write the record."""


@dataclass(frozen=True)
class ApplyPreferences:
    """Apply (or re-apply after <reread_app_info/>) cpu_usage_limit, bandwidth, interval."""

    reread: bool = False  # re-read init_data.xml first (the client rewrote it)


@dataclass(frozen=True)
class PauseVm:
    pass


@dataclass(frozen=True)
class ResumeVm:
    pass


@dataclass(frozen=True)
class TakeCheckpoint:
    final: bool = False  # before a temporary exit: a refused snapshot is retried briefly


@dataclass(frozen=True)
class SaveState:
    """Quit with enable_vm_savestate_usage: checkpoint, then save the VM's state and stop."""


@dataclass(frozen=True)
class PowerOff:
    """Stop the VM, keep it (and its checkpoints) for the next run."""


@dataclass(frozen=True)
class DumpLogs:
    """An error report into stderr before the VM goes: the screenshot (with
    enable_screenshots_on_error, while the VM is still up) and the hypervisor's log tails."""

    exit_code: int | None = None  # the hypervisor process's exit status, when known


@dataclass(frozen=True)
class Cleanup:
    """The job is over: power off and remove the VM and everything it made."""


@dataclass(frozen=True)
class SetNetwork:
    connected: bool


@dataclass(frozen=True)
class SendTrickle:
    variety: str
    text: str
    trigger_file: str = ""  # remove this shared-dir file once the trickle is queued


@dataclass(frozen=True)
class RequestUpload:
    name: str


@dataclass(frozen=True)
class RemoveTrigger:
    name: str


@dataclass(frozen=True)
class WriteCernOutput:
    """enable_cern_dataformat and job_duration reached: slot file `output`."""


@dataclass(frozen=True)
class RecordTransientFailure:
    reason: str


@dataclass(frozen=True)
class ResetBackoff:
    pass


@dataclass(frozen=True)
class Exit:
    outcome: Outcome


Action = (
    PrepareVm
    | StartVm
    | BringUp
    | ApplyPreferences
    | PauseVm
    | ResumeVm
    | TakeCheckpoint
    | SaveState
    | PowerOff
    | DumpLogs
    | Cleanup
    | SetNetwork
    | SendTrickle
    | RequestUpload
    | RemoveTrigger
    | WriteCernOutput
    | RecordTransientFailure
    | ResetBackoff
    | Exit
)


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


# -- messages (fixed texts projects and volunteers see) --------------------------------------

MSG_EXTENSIONS_DISABLED = (
    "Hardware virtualization (VT-x/AMD-V) is disabled in this computer's BIOS/UEFI settings. "
    "Enable it there and restart the computer to run this VM job. "
    f"(Error Code: {VM_EXTENSIONS_TOKEN})"
)
MSG_NO_EXTENSIONS = (
    "This job's VM needs hardware virtualization (VT-x/AMD-V), which this processor lacks or "
    "which another program hides. Run only 32-bit VM jobs on this computer. "
    f"(Error Code: {VM_EXTENSIONS_TOKEN})"
)
MSG_FOREIGN_HYPERVISOR = (
    "Another hypervisor (e.g. Hyper-V, WSL2, another VM program) holds the hardware "
    "virtualization features. Close it or turn it off, then resume this task."
)
MSG_HOST_MEMORY = "VM Hypervisor was unable to allocate enough memory to start VM."
MSG_BOOT_TIMEOUT = "VM Hypervisor failed to enter an online state in a timely fashion."
MSG_PREMATURE = "VM Premature Shutdown Detected."
MSG_GUEST_OOM = "The guest ran out of memory (EXIT_OUT_OF_MEMORY)."
MSG_REGISTER_ONLY = "VM registered and left for debugging (--register_only)."
MSG_HEARTBEAT = "VM Heartbeat file check failed."


def msg_guest_failed(status: int) -> str:
    return f"The guest's app exited with status {status} (VMWRAPPER_GUEST_DONE status={status})."


# -- classification --------------------------------------------------------------------------

_LIVE = (State.BOOTING, State.RUNNING, State.SUSPENDED)


def classify(state: State, obs: Observation, config: MachineConfig) -> Event:
    """The one event this tick stands for, by vboxwrapper's priority order."""
    if state is State.DONE:
        raise ValueError("the machine is done; no more observations")
    client = obs.client
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
    if not obs.vm.online:
        if obs.vm in (VmState.CRASHED, VmState.ABSENT):
            return Event.VM_CRASHED
        return Event.VM_STOPPED
    if obs.guest_oom:
        return Event.GUEST_OUT_OF_MEMORY
    if state is State.BOOTING:
        if obs.vm in (VmState.RUNNING, VmState.PAUSED):
            return Event.VM_ONLINE
        return Event.BOOT_TIMEOUT if obs.boot_timed_out else Event.TICK
    if config.job_duration > 0 and obs.elapsed >= config.job_duration:
        return Event.DURATION_REACHED
    if state is State.RUNNING and (client.suspended or obs.vm is VmState.PAUSED):
        return Event.SUSPEND if client.suspended else Event.RESUME
    if state is State.SUSPENDED and (not client.suspended or obs.vm is VmState.RUNNING):
        return Event.RESUME if not client.suspended else Event.SUSPEND
    if state is State.RUNNING and obs.checkpoint_due:
        return Event.CHECKPOINT_DUE
    return Event.TICK


# -- outcomes --------------------------------------------------------------------------------

Actions = list[Action]
Builder = Callable[[State, Observation, MachineConfig], Actions]


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


def _on_failure(state: State, obs: Observation, config: MachineConfig) -> Actions:
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


def _on_abort(state: State, obs: Observation, config: MachineConfig) -> Actions:
    if state is State.STARTING:
        return [Cleanup(), Exit(Finish(EXIT_ABORTED_BY_CLIENT))]  # no VM of this run to report
    return _fatal(obs, Finish(EXIT_ABORTED_BY_CLIENT))


def _on_quit(state: State, obs: Observation, config: MachineConfig) -> Actions:
    # The client restarts the task by itself after a quit (and ignores the exit status), so we
    # leave no temporary-exit file: vboxwrapper's reasonless 86400 s file is ignored
    # (docs/compatibility.md#exit-codes-and-temporary-exits), and one with a reason would postpone
    # the task by a day.
    if state is State.STARTING:
        return [Exit(PlainExit(0))]
    stop: Action = (
        SaveState() if config.savestate_on_quit and state is not State.BOOTING else PowerOff()
    )
    return [stop, Exit(PlainExit(0))]


def _on_register_only(state: State, obs: Observation, config: MachineConfig) -> Actions:
    return [PrepareVm(), Exit(Finish(0, MSG_REGISTER_ONLY))]


def _on_start(state: State, obs: Observation, config: MachineConfig) -> Actions:
    return [PrepareVm(), StartVm(obs.restore_snapshot)]


def _on_heartbeat_file(state: State, obs: Observation, config: MachineConfig) -> Actions:
    assert obs.heartbeat_failure is not None
    return _fatal(obs, Finish(obs.heartbeat_failure, MSG_HEARTBEAT))


def _on_completion(state: State, obs: Observation, config: MachineConfig) -> Actions:
    trigger = obs.completion
    assert trigger is not None
    return [
        Cleanup(),
        ResetBackoff(),
        Exit(Finish(trigger.exit_code, trigger.message, notice=trigger.notice)),
    ]


def _on_temporary_exit(state: State, obs: Observation, config: MachineConfig) -> Actions:
    trigger = obs.temporary_exit
    assert trigger is not None
    actions: Actions = [RemoveTrigger(config.temporary_exit_trigger_file)]
    if state in (State.RUNNING, State.SUSPENDED):
        actions.append(TakeCheckpoint(final=True))
    actions += [PowerOff(), Exit(TemporaryExit(trigger.delay, trigger.reason, trigger.notice))]
    return actions


def _on_vm_crashed(state: State, obs: Observation, config: MachineConfig) -> Actions:
    host = _host_problem(obs, "")
    if host is not None:
        return host
    detail = f" ({obs.vm_detail})" if obs.vm_detail else ""
    return _fatal(obs, Finish(EXIT_ABORTED_BY_CLIENT, MSG_PREMATURE + detail))


def _on_vm_stopped(state: State, obs: Observation, config: MachineConfig) -> Actions:
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


def _on_guest_oom(state: State, obs: Observation, config: MachineConfig) -> Actions:
    return _fatal(obs, Finish(EXIT_OUT_OF_MEMORY, MSG_GUEST_OOM))


def _on_boot_timeout(state: State, obs: Observation, config: MachineConfig) -> Actions:
    host = _host_problem(obs, "")
    # A VM that never came up is where its logs matter most (the failure is retried).
    return host if host is not None else [DumpLogs(), *_transient(obs, MSG_BOOT_TIMEOUT)]


def _on_duration(state: State, obs: Observation, config: MachineConfig) -> Actions:
    actions: Actions = [Cleanup()]
    if config.cern_output:
        actions.append(WriteCernOutput())
    return [*actions, ResetBackoff(), Exit(Finish(0))]


def _on_online(state: State, obs: Observation, config: MachineConfig) -> Actions:
    return [BringUp(), ApplyPreferences(reread=obs.client.reread_init_data)]


def _pause(state: State, obs: Observation, config: MachineConfig) -> Actions:
    return [PauseVm()]


def _resume(state: State, obs: Observation, config: MachineConfig) -> Actions:
    return [ResumeVm()]


def _checkpoint(state: State, obs: Observation, config: MachineConfig) -> Actions:
    return [TakeCheckpoint()]


def _nothing(state: State, obs: Observation, config: MachineConfig) -> Actions:
    return []


_ENDINGS: dict[Event, Builder] = {
    Event.FAILURE: _on_failure,
    Event.ABORT: _on_abort,
    Event.QUIT: _on_quit,
    Event.NO_HEARTBEAT: _on_quit,
    Event.HEARTBEAT_FILE_FAILED: _on_heartbeat_file,
    Event.COMPLETION: _on_completion,
    Event.TEMPORARY_EXIT: _on_temporary_exit,
    Event.VM_CRASHED: _on_vm_crashed,
    Event.VM_STOPPED: _on_vm_stopped,
    Event.GUEST_OUT_OF_MEMORY: _on_guest_oom,
    Event.DURATION_REACHED: _on_duration,
}

#: (state, event) -> (next state, action builder). Pairs not listed cannot happen (classify
#: never yields them); step() raises on them, so a gap is a loud bug, not a silent no-op.
TRANSITIONS: dict[tuple[State, Event], tuple[State, Builder]] = {
    **{(s, e): (State.DONE, b) for s in _LIVE for e, b in _ENDINGS.items()},
    **{
        (State.STARTING, e): (State.DONE, _ENDINGS[e])
        for e in (Event.FAILURE, Event.ABORT, Event.QUIT, Event.NO_HEARTBEAT)
    },
    (State.STARTING, Event.DURATION_REACHED): (State.DONE, _on_duration),
    (State.STARTING, Event.REGISTER_ONLY): (State.DONE, _on_register_only),
    (State.STARTING, Event.START): (State.BOOTING, _on_start),
    (State.BOOTING, Event.VM_ONLINE): (State.RUNNING, _on_online),
    (State.BOOTING, Event.BOOT_TIMEOUT): (State.DONE, _on_boot_timeout),
    (State.BOOTING, Event.TICK): (State.BOOTING, _nothing),
    (State.RUNNING, Event.SUSPEND): (State.SUSPENDED, _pause),
    (State.RUNNING, Event.RESUME): (State.RUNNING, _resume),
    (State.RUNNING, Event.CHECKPOINT_DUE): (State.RUNNING, _checkpoint),
    (State.RUNNING, Event.TICK): (State.RUNNING, _nothing),
    (State.SUSPENDED, Event.RESUME): (State.RUNNING, _resume),
    (State.SUSPENDED, Event.SUSPEND): (State.SUSPENDED, _pause),
    (State.SUSPENDED, Event.TICK): (State.SUSPENDED, _nothing),
}


def _housekeeping(
    state: State, next_state: State, obs: Observation, config: MachineConfig
) -> Actions:
    """Per-tick chores: trickles, uploads, preferences, network
    (docs/compatibility.md#main-loop)."""
    # Trickle files are always forwarded, even on the way out: a guest that writes a trickle and
    # powers off must not lose it.
    actions: Actions = [SendTrickle(name, text, trigger_file=name) for name, text in obs.trickles]
    if next_state is State.DONE:
        return actions
    if next_state is State.RUNNING:
        actions += [RequestUpload(name) for name in obs.uploads_ready]
        if obs.periodic_trickle is not None:
            actions.append(SendTrickle("cpu_time", obs.periodic_trickle))
    if state in (State.RUNNING, State.SUSPENDED) and next_state is not State.BOOTING:
        if obs.client.reread_init_data:
            actions.append(ApplyPreferences(reread=True))
        if config.enable_network and obs.network_connected == obs.client.network_suspended:
            actions.append(SetNetwork(not obs.client.network_suspended))
    return actions


def step(state: State, obs: Observation, config: MachineConfig) -> Step:
    """One tick: the event, the next state and the actions, in the order to perform them."""
    event = classify(state, obs, config)
    try:
        next_state, build = TRANSITIONS[(state, event)]
    except KeyError:
        raise AssertionError(f"no transition for {state.name} on {event.name}") from None
    main = build(state, obs, config)
    chores = _housekeeping(state, next_state, obs, config)
    if next_state is State.DONE:
        return Step(next_state, event, (*chores, *main))
    return Step(next_state, event, (*main, *chores))
