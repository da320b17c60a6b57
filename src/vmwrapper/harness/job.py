"""Run one job from an APP_DIR the way the BOINC client would: :func:`run_job`.

Stage the project and slot, then run episodes of the main program until the job is over:
restart at once after a quit, a premature exit or an outside signal; after a temporary exit
wait the delay (optionally capped, for tests and impatient people); stop on finish, error or
abort. Afterwards the outputs are checked and copied back by logical name, and the slot is
emptied (unless kept). Time comes from an injected ``clock`` / ``sleep``, so lifecycle tests
can run the 60 s and 180 s rules in a moment.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmwrapper.boinc import files
from vmwrapper.boinc.init_data import HostInfo, format_init_data
from vmwrapper.boinc.shmem import sysv_key
from vmwrapper.cputime import CpuTotal
from vmwrapper.errors import HarnessError
from vmwrapper.harness.appdir import DEFAULT_MAX_NBYTES, AppDir, load_app_dir
from vmwrapper.harness.control import (
    ERR_TOO_MANY_EXITS,
    MAX_PREMATURE_EXITS,
    Disposition,
    ExitFacts,
    ExitVerdict,
    classify_exit,
)
from vmwrapper.harness.slot import (
    FLOPS,
    SHM_KEY_MMAP,
    DataDir,
    StagedFile,
    TaskIdentity,
    build_init_data,
    clean_slot,
    host_info,
    setup_output_link,
    setup_slot_file,
    stage_project_file,
)
from vmwrapper.harness.task import (
    NICE_HIGH_PRIORITY,
    NICE_NORMAL,
    ActiveTask,
    LaunchSpec,
    TaskEvent,
    UploadTarget,
    client_environment,
    limits_for,
)
from vmwrapper.outcome import ERR_FILE_MISSING, EXIT_ABORTED_VIA_GUI
from vmwrapper.packaging.templates import InputFile, OutputFile

log = logging.getLogger(__name__)

ERR_FILE_TOO_BIG = -131
#: The last this many bytes of stderr.txt go into the report (the client keeps 63 KB).
STDERR_TAIL = 64 * 1024


class Action(enum.Enum):
    """What a user of the BOINC Manager can do to a running task."""

    SUSPEND = "suspend"
    RESUME = "resume"
    QUIT = "quit"
    ABORT = "abort"


@dataclass(frozen=True)
class ScheduledAction:
    """``action`` ``at`` seconds after the job started or, with ``after_checkpoint`` N > 0,
    after the task reported its Nth checkpoint: a moment tied to what the task did, not to
    how fast this host runs it (a slow host's boot must not outlast a fixed time)."""

    at: float
    action: Action
    after_checkpoint: int = 0


class JobOutcome(enum.Enum):
    SUCCESS = "success"
    ERROR = "error"
    ABORTED = "aborted"
    POSTPONED = "temporary exit"  # stopped while postponed: restarts disabled or exhausted


@dataclass(frozen=True)
class JobRequest:
    app_dir: Path
    workdir: Path
    inputs: Mapping[str, Path] = field(default_factory=dict)
    outputs: Mapping[str, Path] = field(default_factory=dict)
    keep_slot: bool = False
    schedule: tuple[ScheduledAction, ...] = ()
    checkpoint_period: float = 60.0
    poll_interval: float = 1.0
    #: cap on a temporary exit's delay before the restart; None = the full delay
    max_restart_delay: float | None = None
    #: stop after this many episodes (0 = no limit but the client's own 100-exits rule)
    max_episodes: int = 0
    #: the client also sets SCHED_IDLE for normal jobs; off by default on a busy test host
    sched_idle: bool = False
    extra_env: Mapping[str, str] = field(default_factory=dict)
    #: trickle-down messages from the "project": (seconds after the start, body)
    trickle_downs: tuple[tuple[float, str], ...] = ()
    #: the volunteer's "transfer at most N MB a day" preference (the wrapper then reports the
    #: VM's network bytes); 0 = no limit
    daily_xfer_limit_mb: float = 0.0


@dataclass(frozen=True)
class CopiedOutput:
    logical_name: str
    physical_name: str
    destination: str
    size: int


@dataclass(frozen=True)
class ReceivedTrickle:
    variety: str
    body: str
    path: str


@dataclass(frozen=True)
class Upload:
    logical_name: str
    status: int | None
    path: str


@dataclass(frozen=True)
class Progress:
    """A snapshot for progress displays (once per poll)."""

    elapsed: float
    episode: int
    state: str
    fraction_done: float
    cpu_time: float
    checkpoint_cpu_time: float


@dataclass(frozen=True)
class JobReport:
    outcome: JobOutcome
    message: str
    exit_status: int
    process_exit_code: int | None
    finish_status: int | None
    finish_message: str
    episodes: int
    elapsed: float
    cpu_time: float
    checkpoint_cpu_time: float
    fraction_done: float
    checkpoints: int
    outputs: tuple[CopiedOutput, ...]
    trickles: tuple[ReceivedTrickle, ...]
    uploads: tuple[Upload, ...]
    temporary_exits: tuple[tuple[float, str], ...]
    web_graphics_url: str | None
    remote_desktop_addr: str | None
    bytes_sent: float  # network bytes the app reported, over all episodes (client accounting)
    bytes_received: float
    workdir: str
    slot_dir: str
    stderr_tail: str
    events: tuple[tuple[float, str, str], ...]

    @property
    def success(self) -> bool:
        return self.outcome is JobOutcome.SUCCESS

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON types (``vmwrapper job --json``)."""
        return {
            "outcome": self.outcome.value,
            "message": self.message,
            "exit_status": self.exit_status,
            "process_exit_code": self.process_exit_code,
            "finish_status": self.finish_status,
            "finish_message": self.finish_message,
            "episodes": self.episodes,
            "elapsed": round(self.elapsed, 3),
            "cpu_time": self.cpu_time,
            "checkpoint_cpu_time": self.checkpoint_cpu_time,
            "fraction_done": self.fraction_done,
            "checkpoints": self.checkpoints,
            "outputs": [o.__dict__ for o in self.outputs],
            "trickles": [t.__dict__ for t in self.trickles],
            "uploads": [u.__dict__ for u in self.uploads],
            "temporary_exits": [{"delay": d, "reason": r} for d, r in self.temporary_exits],
            "web_graphics_url": self.web_graphics_url,
            "remote_desktop_addr": self.remote_desktop_addr,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "workdir": self.workdir,
            "slot_dir": self.slot_dir,
            "stderr_tail": self.stderr_tail,
            "events": [{"t": round(t, 3), "kind": k, "detail": d} for t, k, d in self.events],
        }


# ---------------------------------------------------------------------------------------------
# staging


@dataclass(frozen=True)
class _Staged:
    app: AppDir
    data_dir: DataDir
    slot: int
    slot_dir: Path
    identity: TaskIdentity
    slot_files: tuple[StagedFile, ...]
    outputs: tuple[tuple[OutputFile, StagedFile], ...]
    launch: LaunchSpec


def _parse_mapping(items: Mapping[str, Path], what: str) -> dict[str, Path]:
    out = {}
    for logical, path in items.items():
        if not logical or logical.startswith("/") or ".." in Path(logical).parts:
            raise HarnessError(f"{what} {logical!r}: a logical name is relative, without '..'")
        out[logical] = Path(path)
    return out


def stage_job(request: JobRequest) -> _Staged:
    """Make the data dir, project dir and slot, and put every file in place."""
    app = load_app_dir(request.app_dir)
    data_dir = DataDir(Path(request.workdir))
    data_dir.make()
    app_name = app.name
    wu_name = f"{app_name}_wu"
    result_name = f"{wu_name}_0"
    # app version files
    slot_files: list[StagedFile] = []
    for vf in app.version.files:
        stage_project_file(
            data_dir,
            app.path / vf.physical_name,
            vf.physical_name,
            vf.main_program or vf.executable,
        )
        slot_files.append(StagedFile(vf.physical_name, vf.open_name, vf.copy_file))
    # workunit inputs: template refs, then extra --input names
    given = _parse_mapping(request.inputs, "--input")
    refs = list(app.workunit.files)
    for logical in given:
        if all(r.open_name != logical for r in refs):
            refs.append(InputFile(logical, copy_file=True))
    for number, ref in enumerate(refs):
        source = given.get(ref.open_name, app.default_input(ref))
        if not source.is_file():
            if ref.optional:
                continue
            raise HarnessError(
                f"input {ref.open_name!r}: {source} does not exist "
                f"(give it with --input {ref.open_name}=PATH)"
            )
        physical = f"{wu_name}_{number}_{Path(ref.open_name).name}"
        stage_project_file(data_dir, source, physical, executable=False)
        slot_files.append(StagedFile(physical, ref.open_name, ref.copy_file))
    # result outputs: template refs, then extra --output names
    wanted = _parse_mapping(request.outputs, "--output")
    out_refs = list(app.outputs)
    for logical in wanted:
        if all(r.open_name != logical for r in out_refs):
            out_refs.append(OutputFile(logical, DEFAULT_MAX_NBYTES, copy_file=True))
    # the server names output n (<OUTFILE_n/>) "<result>_<n>"
    outputs = tuple(
        (ref, StagedFile(f"{result_name}_{n}", ref.open_name, ref.copy_file))
        for n, ref in enumerate(out_refs)
    )
    slot, slot_dir = data_dir.free_slot()
    for staged in slot_files:
        setup_slot_file(data_dir, slot_dir, staged)
    for _, staged in outputs:
        setup_output_link(data_dir, slot_dir, staged)
    identity = TaskIdentity(
        app_name=app_name,
        wu_name=wu_name,
        result_name=result_name,
        app_version=app.version.version_num,
        ncpus=app.version.avg_ncpus,
        checkpoint_period=request.checkpoint_period,
        rsc_fpops_est=app.workunit.bounds.rsc_fpops_est,
        rsc_fpops_bound=app.workunit.bounds.rsc_fpops_bound,
        rsc_memory_bound=app.workunit.bounds.rsc_memory_bound,
        rsc_disk_bound=app.workunit.bounds.rsc_disk_bound,
        app_files=tuple(f.physical_name for f in app.version.files),
        daily_xfer_limit_mb=request.daily_xfer_limit_mb,
    )
    if not app.version.uses_mmap:
        log.info(
            "%s has no <api_version> >= 6.0: System V shared memory, as the client does",
            app.path / "version.xml",
        )
    command_line = " ".join(x for x in (app.workunit.command_line, app.version.cmdline) if x)
    high_priority = app.version.is_wrapper or app.version.avg_ncpus < 1
    launch = LaunchSpec(
        exec_path=data_dir.link_target(app.version.main_program.physical_name),
        args=tuple(parse_command_line(command_line)),
        env=client_environment(
            os.environ,
            data_dir.project_dir.name,
            {"VMWRAPPER_PYTHON": sys.executable, **request.extra_env},
        ),
        nice=NICE_HIGH_PRIORITY if high_priority else NICE_NORMAL,
        sched_idle=request.sched_idle and not high_priority,
    )
    return _Staged(app, data_dir, slot, slot_dir, identity, tuple(slot_files), outputs, launch)


def parse_command_line(text: str) -> list[str]:
    """``parse_command_line`` (``lib/str_util.cpp``): white space splits, quotes group, no
    escapes."""
    args: list[str] = []
    current: list[str] = []
    quote = ""
    in_arg = False
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
            else:
                current.append(ch)
        elif ch in "'\"":
            quote = ch
            in_arg = True
        elif ch.isspace():
            if in_arg:
                args.append("".join(current))
                current, in_arg = [], False
        else:
            current.append(ch)
            in_arg = True
    if in_arg:
        args.append("".join(current))
    return args


# ---------------------------------------------------------------------------------------------
# running


@dataclass
class _JobState:
    """Counters that span episodes (the client's RESULT / ACTIVE_TASK fields)."""

    started: float
    episodes: int = 0
    premature_exits: int = 0
    checkpoints: int = 0
    cpu: CpuTotal = field(default_factory=CpuTotal)  # the task's reports: never decreasing
    checkpoint_cpu_time: float = 0.0
    checkpoint_elapsed: float = 0.0
    fraction_done: float = 0.0
    trickles: list[ReceivedTrickle] = field(default_factory=list)
    uploads: list[Upload] = field(default_factory=list)
    temporary_exits: list[tuple[float, str]] = field(default_factory=list)
    events: list[tuple[float, str, str]] = field(default_factory=list)
    web_graphics_url: str | None = None
    remote_desktop_addr: str | None = None
    pending: list[ScheduledAction] = field(default_factory=list)
    checkpoint_times: list[float] = field(default_factory=list)  # clock() of each one seen
    bytes_sent: float = 0.0  # earlier episodes' totals
    bytes_received: float = 0.0
    trickle_downs: list[tuple[float, str]] = field(default_factory=list)

    def record(self, event: TaskEvent, elapsed: float) -> None:
        """Keep an event for the report (trickles and uploads also in their own lists)."""
        self.events.append((elapsed, event.kind, event.detail))
        log.info("%s: %s", event.kind, event.detail, extra={"event": f"harness_{event.kind}"})
        data = event.data
        if event.kind == "trickle_up":
            self.trickles.append(
                ReceivedTrickle(str(data["variety"]), str(data["body"]), str(data["path"]))
            )
        elif event.kind == "upload":
            status = data.get("status")
            self.uploads.append(
                Upload(
                    str(data.get("logical_name", "")),
                    status if isinstance(status, int) else None,
                    str(data.get("path", "")),
                )
            )


def run_job(
    request: JobRequest,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_event: Callable[[TaskEvent], None] | None = None,
    host: HostInfo | None = None,
) -> JobReport:
    """Run the job in ``request`` to its end; the report says how it ended.

    Between polls the harness waits for the app's exit (so a job's end is seen at once);
    an injected ``sleep`` (tests with a fake clock) replaces that wait.
    """
    staged = stage_job(request)
    state = _JobState(
        started=clock(),
        pending=sorted(request.schedule, key=lambda a: a.at),
        trickle_downs=sorted(request.trickle_downs),
    )
    host_desc = host if host is not None else host_info()
    uploads = {
        ref.open_name: UploadTarget(sf.physical_name, ref.copy_file) for ref, sf in staged.outputs
    }

    def record(event: TaskEvent) -> None:
        state.record(event, clock() - state.started)
        if on_event is not None:
            on_event(event)

    verdict: ExitVerdict | None = None
    last_code: int | None = None
    while True:
        state.episodes += 1
        shm_key = _write_init_data(staged, state, host_desc)
        task = ActiveTask(
            slot_dir=staged.slot_dir,
            project_dir=staged.data_dir.project_dir,
            result_name=staged.identity.result_name,
            launch=staged.launch,
            uploads=uploads,
            uploads_dir=staged.data_dir.root / "uploads",
            clock=clock,
            on_event=record,
            checkpoint_cpu_time=state.checkpoint_cpu_time,
            shm_key=shm_key,
            limits=limits_for(
                staged.app.workunit.bounds.rsc_fpops_bound,
                FLOPS,
                staged.app.workunit.bounds.rsc_disk_bound,
                request.checkpoint_period,
            ),
            starting_elapsed=state.checkpoint_elapsed,
        )
        try:
            task.start()
            facts = _run_episode(task, state, request, clock, sleep, on_progress)
        finally:
            task.close()
        state.bytes_sent += task.bytes_sent
        state.bytes_received += task.bytes_received
        last_code = facts.returncode
        verdict = classify_exit(facts)
        record(
            TaskEvent(
                "exit",
                verdict.message,
                {
                    "returncode": facts.returncode,
                    "finish_file": facts.finish is not None,
                    "temporary_exit_file": facts.temporary_exit is not None,
                    "disposition": verdict.disposition.value,
                },
            )
        )
        if verdict.disposition in (Disposition.FINISHED, Disposition.ERROR, Disposition.ABORTED):
            break
        if verdict.premature:
            state.premature_exits += 1
            if state.premature_exits > MAX_PREMATURE_EXITS:
                verdict = ExitVerdict(
                    Disposition.ERROR,
                    f"too many exits without a checkpoint ({MAX_PREMATURE_EXITS})",
                    exit_status=ERR_TOO_MANY_EXITS,
                )
                break
        if request.max_episodes and state.episodes >= request.max_episodes:
            break
        if verdict.disposition is Disposition.POSTPONED:
            state.temporary_exits.append((verdict.delay, verdict.message))
            if _wait_postponed(verdict.delay, state, request, clock, sleep or time.sleep):
                verdict = ExitVerdict(
                    Disposition.ABORTED, "aborted while postponed", exit_status=EXIT_ABORTED_VIA_GUI
                )
                break
    return _finish_job(staged, state, request, verdict, last_code, clock)


def _write_init_data(staged: _Staged, state: _JobState, host: HostInfo) -> int:
    """init_data.xml for the next run; returns the shm_key in it (-1: boinc_mmap_file)."""
    init_path = staged.slot_dir / files.INIT_DATA_FILE
    shm_key = SHM_KEY_MMAP
    if not staged.app.version.uses_mmap:
        # System V: the client makes the key from init_data.xml (created empty if need be),
        # then writes the key into it
        init_path.touch()
        shm_key = sysv_key(init_path)
    init = build_init_data(
        staged.identity,
        staged.data_dir,
        staged.slot,
        wu_cpu_time=state.checkpoint_cpu_time,
        starting_elapsed_time=state.checkpoint_elapsed,
        host=host,
        shm_key=shm_key,
    )
    files.write_atomic(init_path, format_init_data(init).encode())
    return shm_key


def _due_actions(state: _JobState, now: float) -> list[Action]:
    due = [a for a in state.pending if _is_due(a, state, now)]
    state.pending = [a for a in state.pending if a not in due]
    return [a.action for a in due]


def _is_due(scheduled: ScheduledAction, state: _JobState, now: float) -> bool:
    if scheduled.after_checkpoint == 0:
        return scheduled.at <= now - state.started
    if len(state.checkpoint_times) < scheduled.after_checkpoint:
        return False
    return scheduled.at <= now - state.checkpoint_times[scheduled.after_checkpoint - 1]


def _run_episode(
    task: ActiveTask,
    state: _JobState,
    request: JobRequest,
    clock: Callable[[], float],
    sleep: Callable[[float], None] | None,
    on_progress: Callable[[Progress], None] | None,
) -> ExitFacts:
    seen_checkpoints = 0
    while True:
        for action in _due_actions(state, clock()):
            {
                Action.SUSPEND: task.suspend,
                Action.RESUME: task.resume,
                Action.QUIT: task.request_quit,
                Action.ABORT: task.request_abort,
            }[action]()
        while state.trickle_downs and state.trickle_downs[0][0] <= clock() - state.started:
            path = task.send_trickle_down(state.trickle_downs.pop(0)[1])
            state.events.append((clock() - state.started, "trickle_down", f"sent {path.name}"))
        facts = task.poll()
        if task.checkpoints != seen_checkpoints:
            # a checkpoint resets the premature-exit count and is where a restart resumes
            seen_checkpoints = task.checkpoints
            state.checkpoints += 1
            state.checkpoint_times.append(clock())
            state.premature_exits = 0
            state.checkpoint_cpu_time = task.status.checkpoint_cpu_time
            state.checkpoint_elapsed = task.elapsed
        state.cpu.read(task.status.current_cpu_time)
        if task.fraction_done:
            state.fraction_done = task.fraction_done
        state.web_graphics_url = task.web_graphics_url or state.web_graphics_url
        state.remote_desktop_addr = task.remote_desktop_addr or state.remote_desktop_addr
        if on_progress is not None:
            on_progress(
                Progress(
                    elapsed=clock() - state.started,
                    episode=state.episodes,
                    state=task.state.value,
                    fraction_done=state.fraction_done,
                    cpu_time=state.cpu.total,
                    checkpoint_cpu_time=state.checkpoint_cpu_time,
                )
            )
        if facts is not None:
            return facts
        if sleep is None:
            task.wait_exit(request.poll_interval)
        else:
            sleep(request.poll_interval)


def _wait_postponed(
    delay: float,
    state: _JobState,
    request: JobRequest,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> bool:
    """Wait out a temporary exit; True if an abort came meanwhile."""
    if request.max_restart_delay is not None:
        delay = min(delay, request.max_restart_delay)
    until = clock() + delay
    while clock() < until:
        if Action.ABORT in _due_actions(state, clock()):
            return True
        sleep(min(request.poll_interval, max(until - clock(), 0.0)))
    return False


# ---------------------------------------------------------------------------------------------
# the end of a job


def _finish_job(
    staged: _Staged,
    state: _JobState,
    request: JobRequest,
    verdict: ExitVerdict,
    last_code: int | None,
    clock: Callable[[], float],
) -> JobReport:
    finish = files.read_finish_file(staged.slot_dir)
    outcome, message, exit_status = _outcome(verdict)
    copied: list[CopiedOutput] = []
    if verdict.disposition is Disposition.FINISHED:
        problem = _collect_outputs(staged)
        if problem is not None:
            outcome, message, exit_status = JobOutcome.ERROR, problem[1], problem[0]
        else:
            copied = _copy_outputs(staged, request)
    stderr_tail = _stderr_tail(staged.slot_dir)
    if not request.keep_slot:
        clean_slot(staged.slot_dir)
    return JobReport(
        outcome=outcome,
        message=message,
        exit_status=exit_status,
        process_exit_code=last_code,
        finish_status=None if finish is None else finish.status,
        finish_message=finish.message if finish is not None else "",
        episodes=state.episodes,
        elapsed=clock() - state.started,
        cpu_time=state.cpu.total,
        checkpoint_cpu_time=state.checkpoint_cpu_time,
        fraction_done=state.fraction_done,
        checkpoints=state.checkpoints,
        outputs=tuple(copied),
        trickles=tuple(state.trickles),
        uploads=tuple(state.uploads),
        temporary_exits=tuple(state.temporary_exits),
        web_graphics_url=state.web_graphics_url,
        remote_desktop_addr=state.remote_desktop_addr,
        bytes_sent=state.bytes_sent,
        bytes_received=state.bytes_received,
        workdir=str(staged.data_dir.root),
        slot_dir=str(staged.slot_dir),
        stderr_tail=stderr_tail,
        events=tuple(state.events),
    )


def _outcome(verdict: ExitVerdict) -> tuple[JobOutcome, str, int]:
    if verdict.disposition is Disposition.FINISHED:
        return JobOutcome.SUCCESS, verdict.message, 0
    if verdict.disposition is Disposition.ABORTED:
        return JobOutcome.ABORTED, verdict.message, verdict.exit_status
    if verdict.disposition is Disposition.ERROR:
        return JobOutcome.ERROR, verdict.message, verdict.exit_status
    # the run stopped (episode limit) while the client would restart the task
    return JobOutcome.POSTPONED, verdict.message, 0


def _collect_outputs(staged: _Staged) -> tuple[int, str] | None:
    """``app_finished``: move copied outputs into the project dir; check every output."""
    for ref, sf in staged.outputs:
        dest = staged.data_dir.project_dir / sf.physical_name
        if ref.copy_file:
            source = staged.slot_dir / ref.open_name
            if source.is_file():
                shutil.move(source, dest)
        if not dest.is_file():
            if ref.optional:
                continue
            return ERR_FILE_MISSING, f"output file {ref.open_name} ({sf.physical_name}) absent"
        size = dest.stat().st_size
        if size > ref.max_nbytes:
            return (
                ERR_FILE_TOO_BIG,
                f"output file {ref.open_name}: {size} bytes, over <max_nbytes> "
                f"{ref.max_nbytes:.0f}",
            )
    return None


def _copy_outputs(staged: _Staged, request: JobRequest) -> list[CopiedOutput]:
    wanted = {k: Path(v) for k, v in request.outputs.items()}
    copied = []
    for ref, sf in staged.outputs:
        source = staged.data_dir.project_dir / sf.physical_name
        if not source.is_file():
            continue
        dest = wanted.get(
            ref.open_name, staged.data_dir.root / "outputs" / Path(ref.open_name).name
        )
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        copied.append(CopiedOutput(ref.open_name, sf.physical_name, str(dest), dest.stat().st_size))
    return copied


def _stderr_tail(slot_dir: Path) -> str:
    path = slot_dir / files.STDERR_FILE
    try:
        with path.open("rb") as f:
            f.seek(max(path.stat().st_size - STDERR_TAIL, 0))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


__all__: Sequence[str] = (
    "Action",
    "JobOutcome",
    "JobReport",
    "JobRequest",
    "ScheduledAction",
    "run_job",
)
