"""The client harness end to end: staging like the real client, and every way a job ends.

Apps here are tiny (our Python app side, or /bin/sh scripts); a fast clock runs the client's
60 s and 180 s rules in a few real seconds.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from helpers.harness_fixtures import (
    DATA,
    FastClock,
    make_golden_like_app_dir,
    make_pyapp_dir,
    make_shell_app_dir,
)
from vmwrapper.boinc.init_data import format_init_data, parse_init_data
from vmwrapper.boinc.shmem import Segment
from vmwrapper.errors import HarnessError
from vmwrapper.harness.control import ERR_TOO_MANY_EXITS
from vmwrapper.harness.job import (
    Action,
    JobOutcome,
    JobReport,
    JobRequest,
    ScheduledAction,
    run_job,
)
from vmwrapper.harness.slot import build_init_data, escape_project_url, host_info
from vmwrapper.harness.staging import parse_command_line, stage_job
from vmwrapper.harness.task import Limits, TaskEvent, limits_for, wait_for_exit
from vmwrapper.outcome import ERR_FILE_MISSING

GOLDEN = DATA / "real-client-slot"


def run(
    app: Path, work: Path, *schedule: ScheduledAction, clock: FastClock | None = None, **kw: object
) -> tuple[JobReport, list[TaskEvent]]:
    events: list[TaskEvent] = []
    request = JobRequest(
        app_dir=app,
        workdir=work,
        schedule=tuple(schedule),
        poll_interval=kw.pop("poll_interval", 0.1),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )
    if clock is None:
        report = run_job(request, on_event=events.append)
    else:
        report = run_job(request, clock=clock, sleep=clock.sleep, on_event=events.append)
    return report, events


def exits(events: list[TaskEvent]) -> list[TaskEvent]:
    return [e for e in events if e.kind == "exit"]


# -- staging -----------------------------------------------------------------------------------


def test_project_dir_names_as_the_client_escapes_urls() -> None:
    assert escape_project_url("https://ex.org/proj/") == "ex.org_proj"
    assert escape_project_url("http://127.0.0.1:9/proj/") == "127.0.0.1_9_proj"


def test_command_line_split_as_the_client_does() -> None:
    assert parse_command_line("--a 1  'two words' \"x y\"z") == ["--a", "1", "two words", "x yz"]
    assert parse_command_line("") == []


def test_slot_staged_like_the_real_client(tmp_path: Path) -> None:
    app = make_golden_like_app_dir(tmp_path)
    staged = stage_job(JobRequest(app_dir=app, workdir=tmp_path / "data"))
    slot = staged.slot_dir
    listing = sorted(str(p.relative_to(slot)) for p in slot.rglob("*"))
    # the golden slot minus init_data.xml (written at start) plus nothing else
    assert listing == [
        "shared",
        "shared/boinc_app",
        "shared/in",
        "vbox_job.xml",
        "vm_image.vdi",
        "vmwrapper_1.00_x86_64-pc-linux-gnu",
    ]
    assert (slot / "shared").stat().st_mode & 0o777 == 0o771
    assert (slot / "shared" / "boinc_app").stat().st_mode & 0o777 == 0o755
    assert (slot / "shared" / "in").read_text() == "input\n"
    assert (slot / "vm_image.vdi").read_text() == "disk"
    project = staged.data_dir.project_dir.name
    for name, golden in [
        ("vmwrapper_1.00_x86_64-pc-linux-gnu", "main_program.softlink"),
        ("vbox_job.xml", "vbox_job.xml.softlink"),
    ]:
        expected = (GOLDEN / golden).read_bytes().replace(b"127.0.0.1_9_proj", project.encode())
        assert (slot / name).read_bytes() == expected
    assert staged.launch.exec_path == f"../../projects/{project}/vmwrapper_1.00_x86_64-pc-linux-gnu"
    assert staged.launch.nice == 10  # <is_wrapper/>: the client's "high priority"


def test_init_data_has_the_real_clients_elements_in_order(tmp_path: Path) -> None:
    app = make_golden_like_app_dir(tmp_path)
    staged = stage_job(JobRequest(app_dir=app, workdir=tmp_path / "data", checkpoint_period=30))
    ours = build_init_data(
        staged.identity,
        staged.data_dir,
        staged.slot,
        wu_cpu_time=0,
        starting_elapsed_time=0,
        host=host_info(),
    )
    text = format_init_data(ours)
    golden = (GOLDEN / "init_data.xml").read_text()

    def tags(xml: str) -> list[str]:
        return re.findall(r"^<(\w+)>", xml, flags=re.M)

    assert tags(text) == tags(golden)
    back, real = parse_init_data(text), parse_init_data(golden)
    assert back.shm_key == real.shm_key == -1
    assert back.client_pid == os.getpid()
    assert back.app_files == real.app_files
    assert back.checkpoint_period == real.checkpoint_period == 30
    for name in ("rsc_fpops_est", "rsc_fpops_bound", "rsc_memory_bound", "rsc_disk_bound"):
        assert getattr(back, name) == getattr(real, name)
    assert back.project_dir == str(staged.data_dir.project_dir.resolve())
    assert back.host_info.p_ncpus == os.cpu_count()


def test_missing_input_says_how_to_give_it(tmp_path: Path) -> None:
    app = make_golden_like_app_dir(tmp_path)
    (app / "inputs" / "in").unlink()
    with pytest.raises(HarnessError, match=r"--input shared/in=PATH"):
        stage_job(JobRequest(app_dir=app, workdir=tmp_path / "data"))


# -- outcomes ----------------------------------------------------------------------------------


def test_success_copies_outputs_by_logical_name_and_cleans_the_slot(tmp_path: Path) -> None:
    app = make_pyapp_dir(
        tmp_path,
        "--steps 5 --output shared/out",
        output="shared/out",
        output_copy=True,
        input_name="shared/in",
    )
    dest = tmp_path / "result.txt"
    report, _ = run(app, tmp_path / "work", outputs={"shared/out": dest})
    assert report.outcome is JobOutcome.SUCCESS and report.finish_status == 0
    assert dest.read_text() == "done 5 steps\n"
    assert [(o.logical_name, o.destination) for o in report.outputs] == [("shared/out", str(dest))]
    assert report.fraction_done == pytest.approx(1.0) and report.cpu_time > 0
    assert list(Path(report.slot_dir).iterdir()) == []
    assert "pyapp: start at step 0" in report.stderr_tail


def test_the_apps_exit_is_seen_at_once_not_at_the_next_poll(tmp_path: Path) -> None:
    """The harness waits on the process between polls: a 10 s poll period does not make a
    short job take 10 s."""
    app = make_pyapp_dir(
        tmp_path, "--steps 1 --output shared/out", output="shared/out", output_copy=True
    )
    report, events = run(app, tmp_path / "work", poll_interval=10.0)
    assert report.outcome is JobOutcome.SUCCESS
    assert report.elapsed < 8.0, report.elapsed
    (exit_event,) = exits(events)
    assert "boinc_finish(0)" in exit_event.detail


def test_missing_output_is_an_error(tmp_path: Path) -> None:
    app = make_pyapp_dir(tmp_path, "--steps 2 --output other", output="result")
    report, _ = run(app, tmp_path / "work")
    assert report.outcome is JobOutcome.ERROR and report.exit_status == ERR_FILE_MISSING
    assert "result" in report.message and "absent" in report.message


def test_output_over_max_nbytes_is_an_error(tmp_path: Path) -> None:
    app = make_pyapp_dir(tmp_path, "--steps 2", max_nbytes=5)
    report, _ = run(app, tmp_path / "work", keep_slot=True)
    assert report.outcome is JobOutcome.ERROR and report.exit_status == -131
    assert "max_nbytes" in report.message
    assert Path(report.slot_dir, "boinc_finish_called").exists()  # --keep-slot kept it


def test_finish_with_an_error_status(tmp_path: Path) -> None:
    app = make_pyapp_dir(tmp_path, "--steps 2 --crash-code 3")
    report, _ = run(app, tmp_path / "work")
    assert report.outcome is JobOutcome.ERROR
    assert report.exit_status == 3 and report.finish_status == 3 and report.process_exit_code == 3


def test_temporary_exit_waits_the_delay_then_restarts(tmp_path: Path) -> None:
    app = make_pyapp_dir(tmp_path, "--steps 6 --temporary-exit-at 3 --temporary-exit-delay 100")
    clock = FastClock(factor=50)
    report, events = run(app, tmp_path / "work", clock=clock, poll_interval=0.5)
    assert report.outcome is JobOutcome.SUCCESS and report.episodes == 2
    assert report.temporary_exits == ((100.0, "postponed for 100 seconds: test postpones"),)
    times = [t for t, kind, _ in report.events if kind in ("exit", "start")]
    assert times[2] - times[1] >= 100  # first exit -> second start: the whole delay
    assert exits(events)[0].data["temporary_exit_file"] is True


def test_temporary_exit_delay_can_be_capped(tmp_path: Path) -> None:
    app = make_pyapp_dir(tmp_path, "--steps 4 --temporary-exit-at 2 --temporary-exit-delay 3600")
    report, _ = run(app, tmp_path / "work", max_restart_delay=0.5)
    assert report.outcome is JobOutcome.SUCCESS and report.episodes == 2
    assert report.elapsed < 60


def test_stop_after_a_temporary_exit_when_episodes_are_limited(tmp_path: Path) -> None:
    app = make_pyapp_dir(tmp_path, "--steps 4 --temporary-exit-at 1 --temporary-exit-delay 9")
    report, _ = run(app, tmp_path / "work", max_episodes=1)
    assert report.outcome is JobOutcome.POSTPONED and report.episodes == 1


def test_premature_exit_restarts_at_once_and_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    app = make_pyapp_dir(tmp_path, "--steps 8 --exit-at 5 --checkpoint-every 2")
    report, events = run(app, tmp_path / "work")
    assert report.outcome is JobOutcome.SUCCESS and report.episodes == 2
    first = exits(events)[0]
    assert first.data == {
        "returncode": 0,
        "finish_file": False,
        "temporary_exit_file": False,
        "disposition": "restart",
    }
    assert "pyapp: start at step 4" in report.stderr_tail  # the second run resumed


def test_quit_ignored_is_killed_after_60_s_and_restarted(tmp_path: Path) -> None:
    app = make_pyapp_dir(tmp_path, "--steps 150 --step-time 0.02 --ignore-quit")
    clock = FastClock(factor=40)
    report, events = run(
        app, tmp_path / "work", ScheduledAction(2.0, Action.QUIT), clock=clock, poll_interval=1.0
    )
    kills = [e.detail for e in events if e.kind == "kill"]
    assert kills == ["did not exit 60 s after <quit/>"]
    assert exits(events)[0].data["returncode"] == -9
    assert report.outcome is JobOutcome.SUCCESS and report.episodes == 2, report.events


def test_an_action_after_a_checkpoint_waits_for_that_checkpoint(tmp_path: Path) -> None:
    # a quit tied to the second checkpoint, not to the clock: however slow the app's start,
    # it comes after step 20's checkpoint, so the restart resumes from there
    app = make_pyapp_dir(tmp_path, "--steps 40 --step-time 0.1 --checkpoint-every 10")
    quit_after = ScheduledAction(0.0, Action.QUIT, after_checkpoint=2)
    report, events = run(app, tmp_path / "work", quit_after)
    assert report.outcome is JobOutcome.SUCCESS and report.episodes == 2, report.events
    first, resumed = re.findall(r"pyapp: start at step (\d+)", report.stderr_tail)
    assert first == "0" and 20 <= int(resumed) < 40, report.stderr_tail
    quits = [e for e in events if e.kind == "control" and "quit" in e.detail]
    assert len(quits) == 1


def test_abort(tmp_path: Path) -> None:
    app = make_pyapp_dir(tmp_path, "--steps 400 --step-time 0.02")
    report, _ = run(app, tmp_path / "work", ScheduledAction(1.0, Action.ABORT))
    assert report.outcome is JobOutcome.ABORTED and report.process_exit_code == 194
    assert report.exit_status == 203  # aborted by the user, as the client records it
    assert report.outputs == ()


HANGS_ONCE = """
if [ -e restarted ]; then printf '0\\n' > boinc_finish_called; exit 0; fi
touch restarted
exec sleep 600
"""


def test_app_not_reading_control_messages_is_killed_after_180_s(tmp_path: Path) -> None:
    app = make_shell_app_dir(tmp_path, HANGS_ONCE)
    clock = FastClock(factor=90)
    report, events = run(
        app,
        tmp_path / "work",
        ScheduledAction(1.0, Action.SUSPEND),
        ScheduledAction(2.0, Action.RESUME),  # queued behind the unread <suspend/>
        clock=clock,
        poll_interval=1.0,
    )
    assert [e.detail for e in events if e.kind == "kill"] == [
        "no reply to a control message for 180 s: the app seems hung"
    ]
    kill_time = next(t for t, kind, _ in report.events if kind == "kill")
    assert 182 <= kill_time <= 190
    assert report.outcome is JobOutcome.SUCCESS and report.episodes == 2


SHOWS_ITS_WORLD = """
echo "cwd=$(pwd)" >&2
echo "argv0=$0" >&2
for a in "$@"; do echo "arg=$a" >&2; done
echo "ld=$LD_LIBRARY_PATH" >&2
echo "nice=$(cut -d' ' -f19 /proc/self/stat)" >&2
echo "to stdout"
printf '0\\n' > boinc_finish_called
"""


@pytest.mark.parametrize(("is_wrapper", "nice"), [(False, 19), (True, 10)])
def test_main_program_gets_the_clients_cwd_argv_env_priority(
    tmp_path: Path, is_wrapper: bool, nice: int
) -> None:
    app = make_shell_app_dir(tmp_path, SHOWS_ITS_WORLD, is_wrapper=is_wrapper)
    report, _ = run(app, tmp_path / "work", extra_env={"LD_LIBRARY_PATH": "/opt/lib"})
    assert report.outcome is JobOutcome.SUCCESS
    lines = report.stderr_tail.splitlines()
    project = "localhost_vmwrapper_harness"
    assert f"cwd={Path(report.slot_dir).resolve()}" in lines
    assert f"argv0=../../projects/{project}/shapp_1.sh" in lines
    assert [x for x in lines if x.startswith("arg=")] == ["arg=--opt", "arg=two words", "arg=x y"]
    assert f"ld=../../projects/{project}:.:../..:/opt/lib" in lines
    assert f"nice={nice}" in lines
    assert "to stdout" not in report.stderr_tail  # stdout goes to /dev/null


def test_signals_restart_or_fail_as_in_the_client(tmp_path: Path) -> None:
    term_once = (
        "if [ -e again ]; then printf '0\\n' > boinc_finish_called; exit 0; fi\n"
        "touch again; kill -TERM $$\n"
    )
    report, events = run(make_shell_app_dir(tmp_path / "a", term_once), tmp_path / "wa")
    assert report.outcome is JobOutcome.SUCCESS and report.episodes == 2
    assert exits(events)[0].data["returncode"] == -15
    report, _ = run(make_shell_app_dir(tmp_path / "b", "kill -SEGV $$\n"), tmp_path / "wb")
    assert report.outcome is JobOutcome.ERROR
    assert report.message.startswith("process got signal 11")


def test_more_than_100_exits_without_checkpoint_fail_the_task(tmp_path: Path) -> None:
    report, _ = run(make_shell_app_dir(tmp_path, "exit 0\n"), tmp_path / "w", poll_interval=0.01)
    assert report.outcome is JobOutcome.ERROR and report.exit_status == ERR_TOO_MANY_EXITS
    assert report.episodes == 101


def test_trickle_down_reaches_the_app(tmp_path: Path) -> None:
    app = make_pyapp_dir(tmp_path, "--steps 30 --step-time 0.05")
    report, _ = run(app, tmp_path / "work", trickle_downs=((0.5, "<cmd>hello</cmd>\n"),))
    assert report.outcome is JobOutcome.SUCCESS
    assert "pyapp: trickle-down '<cmd>hello</cmd>\\n'" in report.stderr_tail
    assert any(kind == "trickle_down" for _, kind, _ in report.events)


def test_main_program_that_cannot_be_executed(tmp_path: Path) -> None:
    app = make_shell_app_dir(tmp_path, "exit 0\n")
    (app / "shapp_1.sh").write_text("#!/nonexistent/interpreter\n")
    report, _ = run(app, tmp_path / "work", max_episodes=1)
    # the client's child would _exit(errno) after a failed execv: ENOENT = 2
    assert report.outcome is JobOutcome.ERROR and report.exit_status == 2
    assert report.message.startswith("process exited with code 2")
    assert any("cannot start" in detail for _, kind, detail in report.events if kind == "exit")


def test_other_pid_is_killed_when_the_task_ends(tmp_path: Path) -> None:
    app = make_pyapp_dir(tmp_path, "--steps 10 --other-pid")
    report, _ = run(app, tmp_path / "work")
    assert report.outcome is JobOutcome.SUCCESS
    pid = int(re.findall(r"pyapp: other_pid (\d+)", report.stderr_tail)[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    alive = _alive(pid)
    if alive:  # leave no stray process behind, even when failing
        psutil.Process(pid).kill()
    assert not alive


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_app_version_without_api_version_gets_system_v_memory(tmp_path: Path) -> None:
    app = make_pyapp_dir(tmp_path, "--steps 20 --step-time 0.05 --trickles 1", api_version="")
    report, _ = run(
        app,
        tmp_path / "work",
        ScheduledAction(0.8, Action.SUSPEND),
        ScheduledAction(1.6, Action.RESUME),
        keep_slot=True,
    )
    assert report.outcome is JobOutcome.SUCCESS
    assert "standalone=False" in report.stderr_tail  # the app found the System V segment
    assert [t.variety for t in report.trickles] == ["pyapp"]
    slot = Path(report.slot_dir)
    assert not (slot / "boinc_mmap_file").exists()
    key = parse_init_data((slot / "init_data.xml").read_bytes()).shm_key
    assert key not in (-1, 0)
    assert Segment.attach_sysv(key, slot) is None  # destroyed when the task ended


def test_elapsed_time_limit_aborts_with_197(tmp_path: Path) -> None:
    # rsc_fpops_bound / 1e9 flops = 200 s of run time; suspended time does not count
    bounds = "<rsc_fpops_bound>2e11</rsc_fpops_bound>"
    app = make_pyapp_dir(tmp_path, "--steps 2000 --step-time 0.02", bounds=bounds)
    clock = FastClock(factor=40)
    report, _ = run(
        app,
        tmp_path / "work",
        ScheduledAction(10, Action.SUSPEND),
        ScheduledAction(110, Action.RESUME),
        clock=clock,
        poll_interval=1.0,
    )
    assert report.outcome is JobOutcome.ABORTED and report.exit_status == 197
    assert "exceeded elapsed time limit 200.00 s" in report.message
    limit_time = next(t for t, kind, _ in report.events if kind == "limit")
    assert 295 <= limit_time <= 320  # 200 s running + 100 s suspended
    assert report.process_exit_code == 194  # the app obeyed <abort/>


def test_short_time_bounds_become_12_hours() -> None:
    assert limits_for(1e10, 1e9, 0, 60).max_elapsed == 43200  # 10 s < 120 s
    assert limits_for(1e12, 1e9, 5e8, 60) == Limits(1000, 5e8, 300)
    assert limits_for(1e15, 1e9, 1e9, 600).disk_check_interval == 600


def test_disk_limit_aborts_with_196(tmp_path: Path) -> None:
    bounds = "<rsc_disk_bound>100000</rsc_disk_bound>"
    app = make_pyapp_dir(
        tmp_path, "--steps 2000 --step-time 0.02 --write-bytes 200000", bounds=bounds
    )
    clock = FastClock(factor=100)
    report, _ = run(app, tmp_path / "work", clock=clock, poll_interval=1.0)
    assert report.outcome is JobOutcome.ABORTED and report.exit_status == 196
    assert "exceeded disk limit" in report.message
    limit_time = next(t for t, kind, _ in report.events if kind == "limit")
    assert 300 <= limit_time <= 320  # checked at the first poll, then every 300 s


LEAVES_A_CHILD = """
sleep 600 &
echo "child=$!" >&2
wait
"""


def test_descendants_listed_at_quit_are_killed_after_the_exit(tmp_path: Path) -> None:
    app = make_shell_app_dir(tmp_path, LEAVES_A_CHILD)
    clock = FastClock(factor=30)
    report, events = run(
        app,
        tmp_path / "work",
        ScheduledAction(45.0, Action.QUIT),  # 1.5 s real: the child exists by then
        clock=clock,
        poll_interval=1.0,
        max_episodes=1,
    )
    # the script ignores <quit/>: killed after 60 s; its child is killed after the exit
    assert [e.detail for e in events if e.kind == "kill"] == ["did not exit 60 s after <quit/>"]
    pid = int(re.findall(r"child=(\d+)", report.stderr_tail)[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    alive = _alive(pid)
    if alive:  # leave no stray process behind, even when failing
        psutil.Process(pid).kill()
    assert not alive


def test_the_wait_between_polls_ends_when_the_app_exits() -> None:
    """The harness's wait between two polls returns at the app's exit, not at its end."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    started = time.monotonic()
    wait_for_exit(proc, 60.0)
    assert time.monotonic() - started < 30.0  # woken by the exit, not by the 60 s timeout
    assert proc.wait(timeout=5) == 0


def test_the_wait_between_polls_ends_at_its_timeout_while_the_app_runs() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        wait_for_exit(proc, 0.1)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
