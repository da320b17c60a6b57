"""The wrapper's runtime behaviours, end to end in-process: the real supervisor loop, a real
AppClient on a real shared segment (the client side in helpers.supervisor_fixtures), the
FakeBackend as the VM, and an injected clock (hours of job time in milliseconds).

Each test names the row of the exit table (docs/supervisor.md#exit-table-as-adapted) or the
behaviour it covers.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers.common import FakeClock, make_slot, vm_config
from helpers.supervisor_fixtures import ClientSide, run_job, write_init_data
from vmwrapper.boinc import files
from vmwrapper.boinc.app import AppClient
from vmwrapper.boinc.init_data import GlobalPrefs
from vmwrapper.errors import CheckpointError
from vmwrapper.hypervisor.base import VmState
from vmwrapper.hypervisor.fake import FakeBackend, FakeScript, GuestStep
from vmwrapper.outcome import (
    ERR_EXEC,
    ERR_FILE_MISSING,
    ERR_TIMEOUT,
    EXIT_ABORTED_BY_CLIENT,
    EXIT_CHILD_FAILED,
    EXIT_OUT_OF_MEMORY,
    Finish,
    PlainExit,
    TemporaryExit,
)
from vmwrapper.spec.model import JobSpec
from vmwrapper.supervisor import backoff, checkpoint, events, machine
from vmwrapper.supervisor.loop import Settings, run_supervisor

SHARED = JobSpec(enable_shared_directory=True, completion_trigger_file="done")


def steps(*items: tuple[float, str, str, str]) -> tuple[GuestStep, ...]:
    return tuple(GuestStep(at, action, name, text) for at, action, name, text in items)


def done_at(t: float, text: str = "0\n0\n") -> tuple[float, str, str, str]:
    return (t, "write", "done", text)


def last_status(run_client: ClientSide) -> dict[str, float]:
    text = run_client.statuses[-1]
    out: dict[str, float] = {}
    for tag in ("current_cpu_time", "checkpoint_cpu_time", "fraction_done", "other_pid"):
        if f"<{tag}>" in text:
            out[tag] = float(text.split(f"<{tag}>")[1].split("<")[0])
    return out


# -- exit table row 16: completion trigger ----


def test_completion_trigger_finishes_with_code_notice_and_message(tmp_path: Path) -> None:
    script = FakeScript(boot_seconds=3, steps=steps(done_at(20, "3\n1\nInput was corrupt.\n")))
    run = run_job(tmp_path, SHARED, script)
    assert run.outcome == Finish(3, "Input was corrupt.", notice=True)
    assert files.read_finish_file(run.slot) == Finish(3, "Input was corrupt.", notice=True)
    assert run.backend.state is VmState.ABSENT and run.backend.calls[-1] == "cleanup"
    assert "completion_trigger" in run.codes()
    assert run.shared("done").exists()  # not deleted, as vboxwrapper


def ended_at(
    tmp: Path, job: JobSpec, script: FakeScript, trigger_poll: float, exit_poll: float = 0.05
) -> float:
    """The elapsed time at which a successful job ended, with these between-tick polls."""

    def guest_runs(clock: FakeClock, backend: FakeBackend) -> None:
        backend.status()  # the fake guest acts when asked; a real one writes at any time

    run = run_job(
        tmp / f"{trigger_poll}-{exit_poll}",
        job,
        script,
        settings={"trigger_poll": trigger_poll, "exit_poll": exit_poll},
        before_tick=guest_runs,
    )
    assert run.outcome == Finish(0)
    return float([e for e in run.events if e["event"] == "outcome"][-1]["elapsed"])


@pytest.mark.parametrize(
    ("job", "ending"),
    [
        (SHARED, done_at(10.3)),  # a completion trigger written mid-tick
        (JobSpec(), (10.3, "poweroff", "", "")),  # the guest powers off mid-tick
    ],
)
def test_a_jobs_end_is_seen_between_ticks(
    tmp_path: Path, job: JobSpec, ending: tuple[float, str, str, str]
) -> None:
    """Seen within the trigger poll (0.2 s), not at the next 1 s tick."""
    script = FakeScript(steps=steps(ending))
    once_a_tick = ended_at(tmp_path, job, script, 0.0)
    # 0.3 s into a tick: seen 0.1 s later instead of 0.7 s later
    assert once_a_tick - ended_at(tmp_path, job, script, 0.2) >= 0.5


def test_a_power_off_is_seen_at_the_exit_poll_and_trigger_files_at_the_trigger_poll(
    tmp_path: Path,
) -> None:
    """The VM's process is probed every exit_poll (a syscall), the trigger files looked for
    every trigger_poll (paths resolved): a power-off 0.3 s into a tick is acted on at the
    next 0.05 s step, a completion trigger written at the same moment at the next 0.2 s one."""
    poweroff = FakeScript(steps=steps((10.3, "poweroff", "", "")))
    trigger = FakeScript(steps=steps(done_at(10.3)))
    by_exit_poll = ended_at(tmp_path, JobSpec(), poweroff, 0.2, exit_poll=0.05)
    by_trigger_pace = ended_at(tmp_path, JobSpec(), poweroff, 0.2, exit_poll=0.0)
    assert by_trigger_pace - by_exit_poll == pytest.approx(0.05)  # seen at 10.35, not 10.4
    files_seen = ended_at(tmp_path, SHARED, trigger, 0.2, exit_poll=0.05)
    assert files_seen == ended_at(tmp_path, SHARED, trigger, 0.2, exit_poll=0.0)


def test_vm_pid_reported_to_the_client(tmp_path: Path) -> None:
    run = run_job(tmp_path, SHARED, FakeScript(steps=steps(done_at(5))))
    assert any("<other_pid>100001</other_pid>" in s for s in run.client.statuses)


# -- exit table row 17: temporary-exit trigger, then restart from the checkpoint ----


def test_temporary_exit_trigger_checkpoints_and_restart_continues(tmp_path: Path) -> None:
    job = JobSpec(
        enable_shared_directory=True,
        completion_trigger_file="done",
        temporary_exit_trigger_file="later",
    )
    script = FakeScript(
        steps=steps(
            (10, "write", "progress.log", "phase 1\n"),
            (30, "write", "later", "120\n0\n"),
            (50, "append", "progress.log", "phase 2\n"),
            done_at(60),
        )
    )
    first = run_job(tmp_path, job, script)
    assert isinstance(first.outcome, TemporaryExit)
    # a reason, always (docs/compatibility.md#exit-codes-and-temporary-exits)
    assert first.outcome.delay == 120 and first.outcome.reason
    request = files.read_temporary_exit_file(first.slot)
    assert request is not None and request.delay == 120
    assert not first.shared("later").exists()  # deleted
    record = checkpoint.read_record(first.slot)
    assert record.snapshot in first.backend.snapshots and first.backend.state is VmState.POWERED_OFF
    # the next episode restores that snapshot: the guest does not redo phase 1
    (first.slot / "boinc_temporary_exit").unlink()
    second = run_job(tmp_path, job, script)
    assert second.outcome == Finish(0)
    assert f"start:{record.snapshot}" in second.backend.calls
    assert second.shared("progress.log").read_text() == "phase 1\nphase 2\n"


# -- trickles ----


def test_trickle_files_each_become_a_trickle_none_lost(tmp_path: Path) -> None:
    job = JobSpec(
        enable_shared_directory=True,
        completion_trigger_file="done",
        trickle_trigger_file=("trickle_a", "trickle_b"),
    )
    script = FakeScript(
        steps=steps(
            (10, "write", "trickle_a", "<a>1</a>"),
            (10, "write", "trickle_b", "<b>2</b>"),
            (20, "write", "trickle_a", "<a>3</a>"),
            (30, "write", "trickle_b", "<b>last</b>"),
            (30, "poweroff", "", ""),
        )
    )
    run = run_job(tmp_path, job, script)
    assert run.outcome == Finish(0)
    got = [(t.variety, t.body) for t in run.client.trickles]
    assert got == [
        ("trickle_a", "<a>1</a>"),
        ("trickle_b", "<b>2</b>"),
        ("trickle_a", "<a>3</a>"),
        ("trickle_b", "<b>last</b>"),  # written right before power-off: still delivered
    ]
    assert not run.shared("trickle_a").exists() and not run.shared("trickle_b").exists()


def test_sync_echo_of_a_consumed_trickle_is_not_sent_twice(tmp_path: Path) -> None:
    """The QEMU guest agent pushes a version twice and never sees the host delete it; a new
    write of the same text, even two seconds later, is a new trickle."""
    job = JobSpec(
        enable_shared_directory=True,
        completion_trigger_file="done",
        trickle_trigger_file=("trickle_a",),
    )
    script = FakeScript(
        steps=steps(
            (10, "write", "trickle_a", "<n>1</n>"),
            (11, "echo", "trickle_a", ""),  # the agent pushes that version again
            (13, "write", "trickle_a", "<n>1</n>"),  # the guest sends the same text again
            (15, "echo", "trickle_a", ""),
            (30, "write", "trickle_a", "<n>1</n>"),  # and once more, much later
            (39, "echo", "trickle_a", ""),  # the final push
            done_at(40),
        )
    )
    run = run_job(tmp_path, job, script)
    assert [t.body for t in run.client.trickles] == ["<n>1</n>"] * 3


def test_temporary_exit_echo_after_restore_does_not_loop(tmp_path: Path) -> None:
    job = JobSpec(
        enable_shared_directory=True,
        completion_trigger_file="done",
        temporary_exit_trigger_file="later",
    )
    # the agent pushes "later" again right after the restored snapshot resumes
    script = FakeScript(
        steps=steps((30, "write", "later", "5\n0\n"), (32, "echo", "later", ""), done_at(40))
    )
    first = run_job(tmp_path, job, script)
    assert isinstance(first.outcome, TemporaryExit)
    second = run_job(tmp_path, job, script)
    assert second.outcome == Finish(0)


def test_periodic_trickle_reports_cpu_time_and_does_not_refire_after_restart(
    tmp_path: Path,
) -> None:
    job = JobSpec(enable_shared_directory=True, completion_trigger_file="done")
    script = FakeScript(cpu_fraction=0.5, steps=steps(done_at(250)))
    run = run_job(tmp_path, job, script, settings={"trickle_period": 100.0})
    cpu = [t for t in run.client.trickles if t.variety == "cpu_time"]
    assert len(cpu) == 2  # at 100 s and 200 s of elapsed time
    value = float(cpu[0].body.split("<cpu_time>")[1].split("<")[0])
    # CPU time (half of elapsed here), not elapsed (docs/compatibility.md#trickles)
    assert 45 <= value <= 55


# -- intermediate uploads ----


def test_intermediate_upload_uploads_the_shared_dir_file(tmp_path: Path) -> None:
    job = JobSpec(
        enable_shared_directory=True,
        completion_trigger_file="done",
        intermediate_upload_file=("partial.dat",),
    )
    project = tmp_path / "projects" / "example.org"
    project.mkdir(parents=True)
    physical = project / "job_1_0_partial"

    def link(side: ClientSide) -> None:
        files.write_soft_link(side.slot / "partial.dat", str(physical))

    def client_uploaded(side: ClientSide) -> None:
        if (side.slot / "boinc_ufr_partial.dat").exists():
            files.write_upload_status(side.slot, "partial.dat", 0)

    script = FakeScript(steps=steps((10, "write", "partial.dat", "partial result"), done_at(40)))
    run = run_job(tmp_path, job, script, control=[(0, link), (20, client_uploaded)])
    # the guest's file, not the slot's (docs/compatibility.md#intermediate-uploads)
    assert physical.read_text() == "partial result"
    assert (run.slot / "boinc_ufr_partial.dat").exists()
    assert "upload_requested" in run.codes() and "upload_done" in run.codes()


# -- fraction done, job_duration ----------------------------------------------------------------


def test_fraction_done_from_the_guest_file(tmp_path: Path) -> None:
    job = JobSpec(
        enable_shared_directory=True,
        completion_trigger_file="done",
        fraction_done_filename="progress",
    )
    script = FakeScript(steps=steps((5, "write", "progress", "0.1\n0.42\nnoise\n"), done_at(30)))
    seen: list[float] = []

    def watch(side: ClientSide) -> None:
        seen.append(last_status(side)["fraction_done"])

    run_job(tmp_path, job, script, control=[(25, watch)])
    assert seen == [pytest.approx(0.42)]


def test_job_duration_drives_fraction_and_ends_in_success_with_cern_output(tmp_path: Path) -> None:
    job = JobSpec(job_duration=100.0, enable_cern_dataformat=True)
    seen: list[float] = []

    def watch(side: ClientSide) -> None:
        seen.append(last_status(side)["fraction_done"])

    run = run_job(tmp_path, job, FakeScript(), control=[(51, watch)])
    assert run.outcome == Finish(0)
    assert 0.45 <= seen[0] <= 0.55
    assert (run.slot / "output").read_text() == "Work Unit completed!\n"
    assert run.backend.calls[-1] == "cleanup"


def test_restored_past_job_duration_finishes_cleanly(tmp_path: Path) -> None:
    slot = tmp_path / "slots" / "0"
    slot.mkdir(parents=True)
    checkpoint.write_record(slot, checkpoint.CheckpointRecord(elapsed_time=500.0, cpu_time=400.0))
    run = run_job(tmp_path, JobSpec(job_duration=100.0), FakeScript())
    # vboxwrapper: bare exit 197, no finish file (docs/compatibility.md#start-up)
    assert run.outcome == Finish(0)
    assert files.read_finish_file(run.slot) == Finish(0)


# -- exit table row 15: heartbeat file ----


def test_heartbeat_file_that_stops_advancing_fails_with_timeout(tmp_path: Path) -> None:
    job = JobSpec(
        enable_shared_directory=True, heartbeat_filename="hb", minimum_heartbeat_interval=30.0
    )
    beats = tuple((float(t), "write", "hb", str(t)) for t in range(1, 40, 2))

    def touch_times(clock: FakeClock, backend: FakeBackend) -> None:
        hb = tmp_path / "slots" / "0" / "shared" / "hb"
        if hb.exists():  # mtime follows the fake clock, as a real guest's writes follow time
            os.utime(hb, (clock.now, clock.now if backend.guest_time < 40 else 1.0))

    run = run_job(tmp_path, job, FakeScript(steps=steps(*beats)), before_tick=touch_times)
    assert run.outcome == Finish(ERR_TIMEOUT, machine.MSG_HEARTBEAT)
    assert run.client.statuses  # ran for a while first
    assert "heartbeat_file" in run.codes()


def test_heartbeat_file_missing_fails(tmp_path: Path) -> None:
    job = JobSpec(enable_shared_directory=True, heartbeat_filename="hb")
    run = run_job(tmp_path, job, FakeScript())
    assert run.outcome == Finish(ERR_FILE_MISSING, machine.MSG_HEARTBEAT)
    # checked first a third of minimum_heartbeat_interval (600 s) into the run, as vboxwrapper
    (failed,) = [e for e in run.events if e["event"] == "heartbeat_file"]
    outcome = [e for e in run.events if e["event"] == "outcome"][-1]
    assert 200 <= outcome["elapsed"] <= 202, failed


def test_heartbeat_file_written_after_boot_is_in_time(tmp_path: Path) -> None:
    """The guest writes the file only once its app runs: not an error (first check at 1/3)."""
    job = JobSpec(
        enable_shared_directory=True,
        completion_trigger_file="done",
        heartbeat_filename="hb",
        minimum_heartbeat_interval=30.0,
    )
    script = FakeScript(steps=steps((8, "write", "hb", "1"), done_at(12)))
    assert run_job(tmp_path, job, script).outcome == Finish(0)


# -- graphics status ----


def test_graphics_status_written_each_poll(tmp_path: Path) -> None:
    job = JobSpec(
        enable_shared_directory=True, completion_trigger_file="done", enable_graphics_support=True
    )
    run = run_job(tmp_path, job, FakeScript(steps=steps(done_at(10))))
    text = (run.slot / "graphics_status.xml").read_text()
    assert "<graphics_status>" in text and "<suspended>0</suspended>" in text


# -- client control: suspend / resume, quit, lost client, abort ------------------------------------


def test_suspend_pauses_vm_and_freezes_elapsed(tmp_path: Path) -> None:
    job = JobSpec(job_duration=100.0)
    seen: list[tuple[float, int]] = []

    def look(side: ClientSide) -> None:  # runs only if the job is still going
        seen.append((last_status(side)["fraction_done"], len(side.statuses)))

    control: list[tuple[float, str | Callable[[ClientSide], None]]] = [
        (30, "<suspend/>"),
        (40, look),
        (520, look),
        (530, "<resume/>"),
    ]
    run = run_job(tmp_path, job, FakeScript(), control=control)
    assert run.outcome == Finish(0)
    assert "pause" in run.backend.calls and "resume" in run.backend.calls
    (frac_a, count_a), (frac_b, count_b) = seen
    assert frac_a == frac_b and 0.25 <= frac_a <= 0.35  # elapsed frozen while suspended
    assert count_b - count_a <= 1  # no status messages while suspended
    assert 99 <= run.backend.guest_time <= 102  # the guest was paused too


def test_quit_powers_off_without_a_file_and_restart_restores(tmp_path: Path) -> None:
    job = JobSpec(
        enable_shared_directory=True, completion_trigger_file="done", minimum_checkpoint_interval=60
    )
    script = FakeScript(steps=steps(done_at(400)))
    first = run_job(tmp_path, job, script, control=[(200, "<quit/>")])
    assert first.outcome == PlainExit(0)
    assert not (first.slot / "boinc_temporary_exit").exists()  # quit: the client restarts us
    assert first.backend.state is VmState.POWERED_OFF and "cleanup" not in first.backend.calls
    record = checkpoint.read_record(first.slot)
    assert record.snapshot and 60 <= record.elapsed_time <= 200
    second = run_job(tmp_path, job, script)
    assert second.outcome == Finish(0)
    assert f"start:{record.snapshot}" in second.backend.calls


def test_quit_with_savestate_usage_checkpoints_and_saves(tmp_path: Path) -> None:
    job = JobSpec(enable_vm_savestate_usage=True, minimum_checkpoint_interval=10_000)
    run = run_job(tmp_path, job, FakeScript(), control=[(50, "<quit/>")])
    assert run.outcome == PlainExit(0)
    assert run.backend.calls[-1] == "save_state"
    record = checkpoint.read_record(run.slot)
    assert record.snapshot in run.backend.snapshots and record.elapsed_time >= 49


def test_lost_client_stops_the_vm_and_exits(tmp_path: Path) -> None:
    dead_pid = 2**22 + 12345  # above pid_max: never alive
    run = run_job(tmp_path, JobSpec(), FakeScript(), init_data={"client_pid": dead_pid})
    assert run.outcome == PlainExit(0)
    assert run.backend.state is VmState.POWERED_OFF
    assert "no_heartbeat" in run.codes()


def test_abort_cleans_up_and_finishes_194(tmp_path: Path) -> None:
    run = run_job(tmp_path, JobSpec(), FakeScript(), control=[(20, "<abort/>")])
    assert run.outcome == Finish(EXIT_ABORTED_BY_CLIENT)
    assert run.backend.state is VmState.ABSENT


# -- long back-end calls: the client is served meanwhile (docs/supervisor.md) ----


@pytest.mark.parametrize(
    ("message", "outcome"),
    [("<quit/>", PlainExit(0)), ("<abort/>", Finish(EXIT_ABORTED_BY_CLIENT))],
)
def test_a_quit_or_an_abort_during_a_long_conversion_is_acted_on_at_once(
    tmp_path: Path, message: str, outcome: object
) -> None:
    # create() converts the image: here it would block for 30 s of real time unless cut short
    started = time.monotonic()
    run = run_job(tmp_path, JobSpec(), FakeScript(hang=("create",)), control=[(3, message)])
    assert run.outcome == outcome
    assert run.backend.calls[:2] == ["create", "cancel"]
    assert not [c for c in run.backend.calls if c.startswith("start")]  # the step stopped
    assert time.monotonic() - started < 20  # far from the 30 s the conversion would take
    # the client kept getting status messages while the conversion ran
    assert len(run.client.statuses) >= 4


def test_a_long_call_that_finishes_by_itself_goes_on_with_the_step(tmp_path: Path) -> None:
    class SlowCreate(FakeBackend):
        def create(self) -> None:
            time.sleep(1.2)  # over SERVE_PERIOD: served, not interrupted
            super().create()

    slot, _ = make_slot(tmp_path)
    clock = FakeClock()
    backend = SlowCreate(
        vm_config(slot, job=JobSpec()),
        FakeScript(steps=steps((30, "poweroff", "", ""))),
        clock=clock,
    )
    run = run_job(tmp_path, JobSpec(), backend=backend, clock=clock)
    assert run.outcome == Finish(0)
    assert run.backend.calls[:2] == ["create", "start:"]


def test_the_save_a_quit_asked_for_is_not_cut_short_by_that_quit(tmp_path: Path) -> None:
    """A checkpoint longer than the serve period (a live one writes the RAM while the guest
    runs): the quit that started the save must not stop it, or the VM state is lost."""

    class SlowCheckpoint(FakeBackend):
        def checkpoint(self, name: str) -> None:
            time.sleep(1.2)  # over SERVE_PERIOD
            super().checkpoint(name)

    slot, _ = make_slot(tmp_path)
    clock = FakeClock()
    job = JobSpec(enable_vm_savestate_usage=True, minimum_checkpoint_interval=10_000)
    backend = SlowCheckpoint(vm_config(slot, job=job), FakeScript(), clock=clock)
    run = run_job(tmp_path, job, backend=backend, clock=clock, control=[(50, "<quit/>")])
    assert run.outcome == PlainExit(0)
    assert run.backend.calls[-1] == "save_state"
    assert "cancel" not in run.backend.calls
    record = checkpoint.read_record(run.slot)
    assert record.snapshot in run.backend.snapshots and record.elapsed_time >= 49


def test_quit_while_booting(tmp_path: Path) -> None:
    script = FakeScript(boot_seconds=1000)
    run = run_job(tmp_path, JobSpec(), script, control=[(5, "<quit/>")])
    assert run.outcome == PlainExit(0) and run.backend.state is VmState.POWERED_OFF


# -- exit table rows 19-21: the VM goes away -------------------------------------------------------


def test_guest_shut_itself_down_is_success(tmp_path: Path) -> None:
    run = run_job(tmp_path, JobSpec(), FakeScript(steps=steps((30, "poweroff", "", ""))))
    assert run.outcome == Finish(0) and run.backend.state is VmState.ABSENT


@pytest.mark.parametrize("status", [1, 3, 255])
def test_guest_app_failure_finishes_child_failed_with_its_status(
    tmp_path: Path, status: int
) -> None:
    done = f"VMWRAPPER_GUEST_DONE status={status}"
    script = FakeScript(steps=steps((30, "log", "", done), (30, "poweroff", "", "")))
    run = run_job(tmp_path, JobSpec(), script)
    assert run.outcome == Finish(EXIT_CHILD_FAILED, machine.msg_guest_failed(status))
    assert run.backend.state is VmState.ABSENT  # the failed job's VM is removed


def test_guest_app_success_status_zero_is_success(tmp_path: Path) -> None:
    done = "VMWRAPPER_GUEST_DONE status=0"
    script = FakeScript(steps=steps((30, "log", "", done), (31, "poweroff", "", "")))
    run = run_job(tmp_path, JobSpec(), script)
    assert run.outcome == Finish(0)


def test_completion_trigger_wins_over_the_guest_done_status(tmp_path: Path) -> None:
    # an image that uses vboxwrapper's contract: its trigger file's code is the job's status
    script = FakeScript(
        steps=steps(
            done_at(30, "0\n"),
            (30, "log", "", "VMWRAPPER_GUEST_DONE status=2"),
            (30, "poweroff", "", ""),
        )
    )
    run = run_job(tmp_path, SHARED, script)
    assert run.outcome == Finish(0)


def test_early_poweroff_with_job_duration_is_premature(tmp_path: Path) -> None:
    script = FakeScript(steps=steps((30, "poweroff", "", "")))
    run = run_job(tmp_path, JobSpec(job_duration=100.0), script)
    assert run.outcome == Finish(EXIT_ABORTED_BY_CLIENT, machine.MSG_PREMATURE)


def test_crash_finishes_194_with_the_reason(tmp_path: Path) -> None:
    script = FakeScript(steps=steps((30, "crash", "", "guest: cannot mount shared")))
    run = run_job(tmp_path, JobSpec(), script)
    assert isinstance(run.outcome, Finish) and run.outcome.status == EXIT_ABORTED_BY_CLIENT
    assert "guest: cannot mount shared" in run.outcome.message


def test_guest_out_of_memory_marker_finishes_205(tmp_path: Path) -> None:
    script = FakeScript(steps=steps((30, "log", "", "app: EXIT_OUT_OF_MEMORY")))
    run = run_job(tmp_path, JobSpec(), script)
    assert run.outcome == Finish(EXIT_OUT_OF_MEMORY, machine.MSG_GUEST_OOM)
    assert any(e["message"] == "Guest Log: app: EXIT_OUT_OF_MEMORY" for e in run.events)


# -- start failures (docs/compatibility.md#start-failures), host problems, back-off ----


def test_boot_timeout_is_transient_with_growing_persisted_backoff(tmp_path: Path) -> None:
    script = FakeScript(boot_seconds=float("inf"))
    delays = []
    for _ in range(3):
        run = run_job(tmp_path, JobSpec(), script)
        assert isinstance(run.outcome, TemporaryExit)
        assert run.outcome.reason == machine.MSG_BOOT_TIMEOUT
        delays.append(run.outcome.delay)
    assert delays == [300.0, 600.0, 1200.0]  # never a blanket 86400
    assert backoff.load(run.slot).failures == 3


def test_backoff_resets_after_success(tmp_path: Path) -> None:
    run_job(tmp_path, JobSpec(), FakeScript(fail={"start": "transient"}))
    assert backoff.load(tmp_path / "slots" / "0").failures == 1
    run = run_job(tmp_path, SHARED, FakeScript(steps=steps(done_at(5))))
    assert run.outcome == Finish(0) and backoff.load(run.slot).failures == 0


def test_start_failure_transient_job_bug_and_host_problem(tmp_path: Path) -> None:
    transient = run_job(tmp_path / "a", JobSpec(), FakeScript(fail={"start": "transient"}))
    assert isinstance(transient.outcome, TemporaryExit) and transient.outcome.delay == 300.0
    bug = run_job(tmp_path / "b", JobSpec(), FakeScript(fail={"create": "job"}))
    assert isinstance(bug.outcome, Finish) and bug.outcome.status == ERR_EXEC
    host = run_job(
        tmp_path / "c",
        JobSpec(),
        FakeScript(fail={"start": "host"}, diagnoses=("vm_extensions_disabled",)),
    )
    assert host.outcome == Finish(ERR_EXEC, machine.MSG_EXTENSIONS_DISABLED, notice=True)
    stderr_like = [e["message"] for e in host.events]
    assert any("ERR_CPU_VM_EXTENSIONS_DISABLED" in line for line in stderr_like)


def test_foreign_hypervisor_at_boot_is_one_notice(tmp_path: Path) -> None:
    script = FakeScript(boot_seconds=float("inf"), diagnoses=("foreign_hypervisor",))
    run = run_job(tmp_path, JobSpec(), script)
    assert isinstance(run.outcome, TemporaryExit) and run.outcome.notice
    assert run.outcome.reason == machine.MSG_FOREIGN_HYPERVISOR


def test_pause_failure_is_a_transient_exit(tmp_path: Path) -> None:
    run = run_job(
        tmp_path, JobSpec(), FakeScript(fail={"pause": "transient"}), control=[(10, "<suspend/>")]
    )
    assert isinstance(run.outcome, TemporaryExit) and "pause failed" in run.outcome.reason


# -- checkpoints ----


def test_periodic_checkpoints_keep_one_snapshot_and_a_matching_record(tmp_path: Path) -> None:
    job = JobSpec(
        enable_shared_directory=True,
        completion_trigger_file="done",
        minimum_checkpoint_interval=100,
    )
    run = run_job(
        tmp_path, job, FakeScript(steps=steps(done_at(450))), control=[(440, lambda s: None)]
    )
    taken = [c for c in run.backend.calls if c.startswith("checkpoint:")]
    deleted = [c for c in run.backend.calls if c.startswith("delete_checkpoint:")]
    assert len(taken) >= 3 and len(deleted) == len(taken) - 1  # old one dropped after each
    record_events = [e for e in run.events if e["event"] == "checkpoint"]
    assert [e["snapshot"] for e in record_events] == [c.split(":")[1] for c in taken]
    first = record_events[0]["elapsed"]
    assert 100 <= first <= 200  # interval plus a seeded offset below it
    assert all(b["elapsed"] - a["elapsed"] >= 100 for a, b in itertools.pairwise(record_events))


def test_refused_checkpoint_is_retried_shortly(tmp_path: Path) -> None:
    job = JobSpec(job_duration=400.0, minimum_checkpoint_interval=100)
    run = run_job(tmp_path, job, FakeScript(refuse_checkpoints=2))
    calls = run.backend.calls
    refused = [i for i, c in enumerate(calls) if c.startswith("checkpoint-refused")]
    taken = [i for i, c in enumerate(calls) if c.startswith("checkpoint:")]
    assert len(refused) == 2 and taken and taken[0] > refused[-1]
    assert "checkpoint_refused" in run.codes()


def test_a_share_kept_mounted_warns_once_backs_off_then_checkpoints_the_disks(
    tmp_path: Path,
) -> None:
    # QEMU refuses every snapshot while the guest keeps the 9p share mounted
    job = JobSpec(job_duration=1000.0, minimum_checkpoint_interval=100)
    run = run_job(tmp_path, job, FakeScript(refuse_checkpoints=10**6))
    calls = run.backend.calls
    refused = [c for c in calls if c.startswith("checkpoint-refused")]
    disks = [c for c in calls if c.startswith("checkpoint_disks:")]
    # a fixed 2 s retry would have tried ~400 times in 900 s; backing off it is a few dozen
    assert checkpoint.REFUSED_LIMIT <= len(refused) <= 40, len(refused)
    assert disks and calls.index(disks[0]) > calls.index(refused[checkpoint.REFUSED_LIMIT - 1])
    refusal_events = [e for e in run.events if e["event"] == "checkpoint_refused"]
    assert [e["level"] for e in refusal_events].count("warning") == 1  # one warning a run
    assert next(e["level"] for e in run.events if e["event"] == "checkpoint_disks") == "warning"
    # the disk checkpoints are real checkpoints: recorded, reported, the older one dropped
    record = checkpoint.read_record(run.slot)
    assert record.snapshot == disks[-1].split(":", 1)[1] and record.elapsed_time >= 100
    assert len(disks) >= 2 and f"delete_checkpoint:{disks[0].split(':', 1)[1]}" in calls
    assert run.outcome == Finish(0)


def test_failed_checkpoint_is_a_transient_exit(tmp_path: Path) -> None:
    job = JobSpec(minimum_checkpoint_interval=100)
    run = run_job(tmp_path, job, FakeScript(fail={"checkpoint": "checkpoint"}))
    assert isinstance(run.outcome, TemporaryExit) and run.outcome.delay == 300.0
    assert run.backend.state is VmState.POWERED_OFF


def test_killed_mid_checkpoint_restarts_from_the_last_good_one(tmp_path: Path) -> None:
    """A snapshot taken but never recorded (wrapper killed between the two) is an orphan: the
    next start deletes it and restores the recorded one."""
    job = JobSpec(
        enable_shared_directory=True,
        completion_trigger_file="done",
        minimum_checkpoint_interval=100,
    )
    script = FakeScript(steps=steps((150, "write", "mid", "x"), done_at(600)))
    first = run_job(tmp_path, job, script, control=[(260, "<quit/>")])
    record = checkpoint.read_record(first.slot)
    assert record.snapshot
    # simulate the kill: a newer snapshot exists, the record still names the older one
    backend = FakeBackend(
        vm_config(first.slot, job=job),
        script,
        clock=FakeClock(),
        state_file=first.slot / "fake_vm.json",
    )
    backend.snapshots["boinc_999"] = 999.0
    backend._save()
    second = run_job(tmp_path, job, script)
    assert second.outcome == Finish(0)
    assert "delete_checkpoint:boinc_999" in second.backend.calls
    assert f"start:{record.snapshot}" in second.backend.calls


def test_vanished_snapshot_boots_afresh_keeping_time(tmp_path: Path) -> None:
    slot = tmp_path / "slots" / "0"
    slot.mkdir(parents=True)
    checkpoint.write_record(slot, checkpoint.CheckpointRecord(300.0, 250.0, 0, 0, "boinc_300"))
    run = run_job(tmp_path, SHARED, FakeScript(steps=steps(done_at(5))))
    assert run.outcome == Finish(0)
    assert "start:" in run.backend.calls  # fresh boot
    assert last_status(run.client)["current_cpu_time"] >= 250.0


def test_disabled_automatic_checkpoints_keep_time_but_take_no_snapshot(tmp_path: Path) -> None:
    job = JobSpec(disable_automatic_checkpoints=True, job_duration=200.0)
    run = run_job(tmp_path, job, FakeScript(), control=[(150, lambda s: None)])
    assert not run.backend.snapshots and not any(
        c.startswith("checkpoint:") for c in run.backend.calls
    )
    assert "checkpoint" in run.codes()  # the record still advanced (client period 60 s)


def test_cpu_time_is_monotonic_across_restarts(tmp_path: Path) -> None:
    job = JobSpec(minimum_checkpoint_interval=100)
    script = FakeScript(cpu_fraction=0.5)
    first = run_job(tmp_path, job, script, control=[(300, "<quit/>")])
    first_cpu = last_status(first.client)["current_cpu_time"]
    record = checkpoint.read_record(first.slot)
    second = run_job(tmp_path, job, script, control=[(100, "<quit/>")])
    cpus = [float(s.split("<current_cpu_time>")[1].split("<")[0]) for s in second.client.statuses]
    assert cpus[0] >= record.cpu_time and all(a <= b for a, b in itertools.pairwise(cpus))
    assert cpus[-1] > first_cpu * 0.5


# -- preferences, network ----


def test_cpu_limit_and_bandwidth_applied_and_reapplied_on_reread(tmp_path: Path) -> None:
    job = JobSpec(enable_network=True, job_duration=100.0)
    prefs = GlobalPrefs(cpu_usage_limit=50.0, max_bytes_sec_up=2048.0, max_bytes_sec_down=4096.0)

    def change(side: ClientSide) -> None:
        write_init_data(side.slot, prefs=GlobalPrefs(cpu_usage_limit=0.0))
        side.send("<reread_app_info/>")

    run = run_job(tmp_path, job, FakeScript(), prefs=prefs, control=[(50, change)])
    calls = run.backend.calls
    assert calls.index("set_cpu_cap:50") < calls.index("set_cpu_cap:100")
    assert "set_bandwidth:2048" in calls and "set_bandwidth:0" in calls  # limit removed again
    assert run.backend.cpu_cap == 100


def test_network_suspension_is_honoured(tmp_path: Path) -> None:
    job = JobSpec(enable_network=True, job_duration=60.0)

    def cut(side: ClientSide) -> None:
        side.heartbeat = "<heartbeat/><network_suspended/>"

    def restore(side: ClientSide) -> None:
        side.heartbeat = "<heartbeat/>"

    run = run_job(
        tmp_path, job, FakeScript(), control=[(10, cut), (30, restore)], heartbeat="<heartbeat/>"
    )
    calls = [c for c in run.backend.calls if c.startswith("set_network")]
    assert calls == ["set_network:0", "set_network:1"]


# -- start-up items ----


def test_startup_files_copy_to_shared_cmdline_sporadic(tmp_path: Path) -> None:
    slot = tmp_path / "slots" / "0"
    slot.mkdir(parents=True)
    (slot / "params.txt").write_text("alpha=1\n")
    job = JobSpec(
        enable_shared_directory=True,
        completion_trigger_file="done",
        copy_to_shared=("params.txt",),
        copy_cmdline_to_shared=True,
    )
    run = run_job(tmp_path, job, FakeScript(steps=steps(done_at(3))), settings={"sporadic": True})
    assert run.shared("params.txt").read_text() == "alpha=1\n"
    assert run.shared("cmdline").read_text() == "--nthreads 1 "
    assert run.shared("ac").exists() and run.shared("ca").exists()


def test_slot_state_files_and_web_graphics_url(tmp_path: Path) -> None:
    run = run_job(
        tmp_path,
        SHARED,
        FakeScript(steps=steps(done_at(5))),
        settings={"webapi_port": 8123, "remote_desktop_port": 5901},
    )
    assert checkpoint.read_record(run.slot).webapi_port == 8123
    assert "<host_port>8123</host_port>" in (run.slot / "vbox_webapi.xml").read_text()
    assert "<host_port>5901</host_port>" in (run.slot / "vbox_remote_desktop.xml").read_text()
    assert any("http://localhost:8123" in e["message"] for e in run.events)


def test_contextualization_runs_before_the_vm_is_created(tmp_path: Path) -> None:
    order: list[str] = []
    holder: dict[str, FakeBackend] = {}

    def contextualize() -> None:
        order.append(f"floppy after {list(holder['b'].calls)}")

    clock = FakeClock()
    slot = tmp_path / "slots" / "0"
    slot.mkdir(parents=True)
    backend = FakeBackend(
        vm_config(slot, job=SHARED), FakeScript(steps=steps(done_at(3))), clock=clock
    )
    holder["b"] = backend
    run_job(
        tmp_path, SHARED, clock=clock, backend=backend, settings={"contextualize": contextualize}
    )
    assert order == ["floppy after []"]


def test_register_only_creates_and_leaves_the_vm(tmp_path: Path) -> None:
    run = run_job(tmp_path, JobSpec(), FakeScript(), settings={"register_only": True})
    assert run.outcome == Finish(0, machine.MSG_REGISTER_ONLY)
    assert run.backend.calls == ["create"] and run.backend.state is VmState.POWERED_OFF


def test_events_jsonl_has_stable_codes_in_order(tmp_path: Path) -> None:
    run = run_job(tmp_path, SHARED, FakeScript(boot_seconds=2, steps=steps(done_at(5))))
    codes = [c for c in run.codes() if c != "log"]
    expected = [
        "vm_created",
        "vm_started",
        "vm_online",
        "preferences",
        "completion_trigger",
        "outcome",
    ]
    assert [c for c in codes if c in expected] == expected


# -- more exit-table rows ---------------------------------------------------------------------


def test_sporadic_setup_failure_exits_1_without_a_file(tmp_path: Path) -> None:
    slot = tmp_path / "slots" / "0"
    (slot / "shared" / "ac").mkdir(parents=True)  # `ac` cannot be a file
    run = run_job(tmp_path, SHARED, FakeScript(), settings={"sporadic": True})
    assert run.outcome == PlainExit(1)
    assert files.read_finish_file(run.slot) is None and run.backend.calls == []


def test_status_query_failing_for_a_minute_is_a_crash(tmp_path: Path) -> None:
    run = run_job(tmp_path, JobSpec(), FakeScript(fail={"status": "transient"}))
    assert isinstance(run.outcome, Finish) and run.outcome.status == EXIT_ABORTED_BY_CLIENT
    assert "status unknown" in run.outcome.message


def test_abort_is_honoured_while_status_queries_fail(tmp_path: Path) -> None:
    script = FakeScript(fail={"status": "transient"})
    run = run_job(tmp_path, JobSpec(), script, control=[(5, "<abort/>")])
    # vboxwrapper ignores it (docs/compatibility.md#main-loop)
    assert run.outcome == Finish(EXIT_ABORTED_BY_CLIENT)
    assert run.backend.calls[-1] == "cleanup"


def test_vm_down_for_lack_of_host_memory_is_transient(tmp_path: Path) -> None:
    script = FakeScript(
        steps=steps((20, "crash", "", "cannot allocate")), diagnoses=("host_out_of_memory",)
    )
    run = run_job(tmp_path, JobSpec(), script)
    assert run.outcome == TemporaryExit(300.0, machine.MSG_HOST_MEMORY)
    assert run.backend.state is VmState.POWERED_OFF  # kept for the restart


def test_old_snapshot_is_deleted_only_after_the_record_names_the_new_one(tmp_path: Path) -> None:
    slot = tmp_path / "slots" / "0"
    slot.mkdir(parents=True)
    seen: list[str] = []

    class Watching(FakeBackend):
        def checkpoint(self, name: str) -> None:
            assert checkpoint.read_record(slot).snapshot != name  # not recorded before it exists
            super().checkpoint(name)

        def delete_checkpoint(self, name: str) -> None:
            recorded = checkpoint.read_record(slot).snapshot
            assert recorded and recorded != name and recorded in self.snapshots
            seen.append(name)
            super().delete_checkpoint(name)

    clock = FakeClock()
    job = JobSpec(job_duration=500.0, minimum_checkpoint_interval=100)
    backend = Watching(vm_config(slot, job=job), FakeScript(), clock=clock)
    run = run_job(tmp_path, job, clock=clock, backend=backend)
    assert run.outcome == Finish(0) and len(seen) >= 2


def test_sigterm_when_run_by_hand_stops_like_a_quit(tmp_path: Path) -> None:
    clock = FakeClock()
    slot, _ = make_slot(tmp_path, with_blank_disk=False)
    write_init_data(slot)
    backend = FakeBackend(vm_config(slot, job=JobSpec()), FakeScript(), clock=clock)

    def terminate_once() -> None:
        if clock.now > 1030 and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)

    sent: list[bool] = []
    clock.on_sleep = [terminate_once]
    with AppClient.attach(slot, clock=clock, sleep=clock.sleep) as client:
        settings = Settings(job=JobSpec(), slot_dir=slot)
        outcome = run_supervisor(backend, client, settings, clock=clock, sleep=clock.sleep)
    assert outcome == PlainExit(0) and backend.state is VmState.POWERED_OFF
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # our handler is gone again


class DamagedSnapshots(FakeBackend):
    """A hypervisor that lists the snapshots but cannot restore them (a damaged state file)."""

    def start(self, restore: str | None = None) -> int:
        if restore:
            self.calls.append(f"start:{restore}")
            raise CheckpointError(f"cannot load snapshot {restore}: damaged")
        return super().start(restore)


def test_a_snapshot_that_cannot_be_restored_boots_afresh_keeping_time(tmp_path: Path) -> None:
    job = JobSpec(
        enable_shared_directory=True,
        completion_trigger_file="done",
        minimum_checkpoint_interval=100,
    )
    script = FakeScript(steps=steps(done_at(600)))
    first = run_job(tmp_path, job, script, control=[(260, "<quit/>")])
    record = checkpoint.read_record(first.slot)
    assert record.snapshot and record.cpu_time > 0
    clock = FakeClock()
    backend = DamagedSnapshots(
        vm_config(first.slot, job=job), script, clock=clock, state_file=first.slot / "fake_vm.json"
    )
    earlier = len(backend.calls)  # the first run's, kept in the state file
    second = run_job(tmp_path, job, script, backend=backend, clock=clock)
    assert second.outcome == Finish(0)
    starts = [c for c in backend.calls[earlier:] if c.startswith(("start:", "poweroff"))]
    assert starts[:3] == [f"start:{record.snapshot}", "poweroff", "start:"]
    assert last_status(second.client)["current_cpu_time"] >= record.cpu_time
    assert events.FAILURE not in second.codes()  # not a failure: the job goes on
