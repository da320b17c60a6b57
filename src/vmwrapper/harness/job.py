"""Run one job from an APP_DIR the way the BOINC client would: :func:`run_job`.

Stage the project and slot, then run episodes of the main program until the job is over:
restart at once after a quit, a premature exit or an outside signal; after a temporary exit
wait the delay (optionally capped, for tests and impatient people); stop on finish, error or
abort. Afterwards the outputs are checked and copied back by logical name, and the slot is
emptied (unless kept). Time comes from an injected ``clock`` / ``sleep``, so lifecycle tests
can run the 60 s and 180 s rules in a moment.

The request and the report are in :mod:`.request` and :mod:`.report`, staging in
:mod:`.staging`, the outputs at the end in :mod:`.outputs`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vmwrapper.boinc import files
from vmwrapper.boinc.init_data import HostInfo, format_init_data
from vmwrapper.boinc.shmem import sysv_key
from vmwrapper.cputime import CpuTotal
from vmwrapper.harness.control import (
    ERR_TOO_MANY_EXITS,
    MAX_PREMATURE_EXITS,
    Disposition,
    ExitFacts,
    ExitVerdict,
    classify_exit,
)
from vmwrapper.harness.outputs import collect_outputs, copy_outputs, outcome_of, read_stderr_tail
from vmwrapper.harness.report import (
    CopiedOutput,
    JobOutcome,
    JobReport,
    Progress,
    ReceivedTrickle,
    Upload,
)
from vmwrapper.harness.request import Action, JobRequest, ScheduledAction
from vmwrapper.harness.slot import (
    FLOPS,
    SHM_KEY_MMAP,
    build_init_data,
    clean_slot,
    host_info,
)
from vmwrapper.harness.staging import Staged, stage_job
from vmwrapper.harness.task import (
    ActiveTask,
    TaskEvent,
    UploadTarget,
    limits_for,
)
from vmwrapper.outcome import EXIT_ABORTED_VIA_GUI

log = logging.getLogger(__name__)


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


def _write_init_data(staged: Staged, state: _JobState, host: HostInfo) -> int:
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


def _finish_job(
    staged: Staged,
    state: _JobState,
    request: JobRequest,
    verdict: ExitVerdict,
    last_code: int | None,
    clock: Callable[[], float],
) -> JobReport:
    finish = files.read_finish_file(staged.slot_dir)
    outcome, message, exit_status = outcome_of(verdict)
    copied: list[CopiedOutput] = []
    if verdict.disposition is Disposition.FINISHED:
        problem = collect_outputs(staged)
        if problem is not None:
            outcome, message, exit_status = JobOutcome.ERROR, problem[1], problem[0]
        else:
            copied = copy_outputs(staged, request)
    stderr_tail = read_stderr_tail(staged.slot_dir)
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


__all__: Sequence[str] = (
    "Action",
    "JobOutcome",
    "JobReport",
    "JobRequest",
    "Progress",
    "ScheduledAction",
    "run_job",
)
