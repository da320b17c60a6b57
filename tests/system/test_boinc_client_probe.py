"""Our Python app side (``AppClient``) under the real BOINC client 7.20.5.

One client and one job for the whole module, driven step by step as a volunteer would: the
task starts and reports progress, checkpoints and a trickle-up reach the client, a GUI
suspend/resume reaches the app, a client shutdown mid-run and a restart resume the job from
its checkpoint, and the job completes with the output in the project directory.
The tests run in file order and build on each other.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from helpers.boinc_client_fixtures import ClientSession, write_probe_app_dir
from vmwrapper.boincclient import (
    ActiveTaskState,
    BoincClientError,
    JobRequest,
    ResultState,
    TaskInfo,
)

pytestmark = pytest.mark.system

JOB = JobRequest(name="probe1", command_line="--steps 8 --hold-at 5")
# long enough to be running when the client dies (the release file is there by then)
CRASH_JOB = JobRequest(name="probe2", command_line="--steps 300 --hold-at 300", held=True)
RESULT = JOB.result_name
STEPS, HOLD_AT = 8, 5
WAIT = 90.0  # seconds; every wait is bounded


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientSession]:
    base = tmp_path_factory.mktemp("boinc_probe")
    app_dir = write_probe_app_dir(base / "app")
    s = ClientSession(base / "data", app_dir, [JOB, CRASH_JOB])
    s.start()
    try:
        yield s
    finally:
        s.close()


def events(session: ClientSession, result: str = RESULT) -> list[str]:
    path = session.data.project_dir / f"probe_events_{result}.log"
    return path.read_text().splitlines() if path.exists() else []


def wait_event(session: ClientSession, line: str, *, count: int = 1) -> None:
    session.client.wait_for(
        lambda: events(session).count(line) >= count,
        timeout=WAIT,
        what=f"the app to record {line!r} ({count}x); it recorded {events(session)}",
    )


def wait_event_prefix(session: ClientSession, prefix: str) -> None:
    session.client.wait_for(
        lambda: any(e.startswith(prefix) for e in events(session)),
        timeout=WAIT,
        what=f"the app to record {prefix!r}...; it recorded {events(session)}",
    )


def test_task_starts_on_the_mmap_segment_and_reports_progress(session: ClientSession) -> None:
    client = session.client
    info = client.wait_task(
        RESULT,
        lambda t: t.running and (t.fraction_done or 0) > 0,
        timeout=WAIT,
        what="executing with a fraction done",
    )
    assert info.wu_name == JOB.name
    assert info.project_url == session.data.master_url
    assert info.pid is not None
    # fraction done is what the app reports: steps / 8
    assert info.fraction_done is not None
    assert info.fraction_done * STEPS == pytest.approx(round(info.fraction_done * STEPS))
    assert events(session)[0] == "start step=0 standalone=False"
    # heartbeats arrive and parse: max_wss is the RAM the client lets jobs use (GBs here)
    wait_event_prefix(session, "heartbeat max_wss=")
    beat = next(e for e in events(session) if e.startswith("heartbeat"))
    assert int(beat.split("=")[1]) > 100e6
    # the slot holds the segment the client made (api_version 7.20.5 -> mmap, not System V)
    slot = session.data.path / "slots" / str(info.slot)
    assert (slot / "boinc_mmap_file").stat().st_size == 8192
    assert "<shm_key>-1</shm_key>" in (slot / "init_data.xml").read_text()


def test_gui_rpc_listens_on_loopback_only(session: ClientSession) -> None:
    assert session.client.pid is not None
    listening = [
        c.laddr
        for c in psutil.Process(session.client.pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening, "the client has no GUI RPC socket"
    assert all(addr.ip == "127.0.0.1" for addr in listening), listening
    assert any(addr.port == session.client.port for addr in listening)


def test_gui_rpc_needs_the_password_and_reports_errors(session: ClientSession) -> None:
    client = session.client
    wrong = subprocess.run(
        ["boinccmd", "--host", f"127.0.0.1:{client.port}", "--passwd", "wrong", "--get_tasks"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert wrong.returncode != 0 and "Authorization failure" in wrong.stderr
    with pytest.raises(BoincClientError, match="no such result"):
        client.suspend("no_such_result_0")


def test_checkpoint_and_trickle_up_reach_the_client(session: ClientSession) -> None:
    info = session.client.wait_task(
        RESULT,
        lambda t: (t.checkpoint_cpu_time or 0) >= 2,
        timeout=WAIT,
        what="a checkpoint CPU time of 2 or more",
    )
    # the app's checkpoint CPU time is its checkpointed step count, and only even steps are
    assert info.checkpoint_cpu_time is not None and info.checkpoint_cpu_time % 2 == 0
    trickles = session.client.wait_for(
        lambda: sorted(session.data.project_dir.glob(f"trickle_up_{RESULT}_*.xml")),
        timeout=WAIT,
        what="trickle_up.xml moved into the project directory",
    )
    text = trickles[0].read_text()
    assert "<variety>probe</variety>" in text
    assert "<step>3</step>" in text


def test_suspend_and_resume_reach_the_app(session: ClientSession) -> None:
    client = session.client
    client.suspend(RESULT)
    suspended = client.wait_task(
        RESULT, lambda t: t.suspended, timeout=WAIT, what="SUSPENDED after a GUI suspend"
    )
    assert suspended.suspended_via_gui
    wait_event(session, "suspended")
    # suspended, the app does not advance: the step count it recorded stays put
    before = [e for e in events(session) if e.startswith("checkpoint")]
    time.sleep(3)  # unsuspended, the app would take 3 steps in this time
    still = client.task(RESULT)
    assert still.suspended
    assert still.fraction_done == suspended.fraction_done
    assert [e for e in events(session) if e.startswith("checkpoint")] == before
    client.resume(RESULT)
    client.wait_task(RESULT, lambda t: t.running, timeout=WAIT, what="EXECUTING after resume")
    wait_event(session, "resumed")


def test_client_shutdown_and_restart_resume_from_the_checkpoint(session: ClientSession) -> None:
    client = session.client
    client.wait_task(
        RESULT,
        lambda t: t.fraction_done is not None and t.fraction_done >= HOLD_AT / STEPS,
        timeout=WAIT,
        what=f"the app held at step {HOLD_AT}",
    )
    checkpoints = [int(e.split()[1]) for e in events(session) if e.startswith("checkpoint")]
    report = session.quit()
    assert report.graceful and report.exit_code == 0
    assert report.leftovers == (), f"the client left processes behind: {report.leftovers}"
    assert events(session)[-1] == "quit"  # the app got <quit/> and left
    # the client saved the task as unfinished
    record = session.data.results()[RESULT]
    assert record.state is ResultState.DOWNLOADED

    client = session.start()
    wait_event(session, f"start step={checkpoints[-1]} standalone=False")
    client.wait_task(RESULT, lambda t: t.running, timeout=WAIT, what="running again")


def test_job_completes_with_success_and_the_output(session: ClientSession) -> None:
    client = session.client
    (session.data.project_dir / "probe_release").write_text("go\n")
    done: TaskInfo = client.wait_task(
        RESULT, lambda t: t.ready_to_report, timeout=WAIT, what="ready to report"
    )
    assert done.exit_status == 0
    assert done.active_task_state is ActiveTaskState.UNINITIALIZED  # no active task left
    assert events(session)[-1] == "finish"
    report = session.quit()
    assert report.graceful and report.leftovers == ()
    record = session.data.results()[RESULT]
    assert record.success, record
    assert record.state is ResultState.UPLOADED  # sticky output, nothing to upload
    assert record.final_cpu_time == pytest.approx(STEPS)  # the app's reported CPU time
    out: Path = session.data.output_path(JOB.name, "shared/out")
    assert out.read_text() == f"probe output: hello-probe steps={STEPS}\n"
    messages = session.data.client_log.read_text()
    assert re.search(rf"Computation for task {RESULT} finished", messages)


def test_app_notices_a_dead_client_and_exits(session: ClientSession) -> None:
    """The client is killed (no quit): the app sees its pid gone and leaves on its own."""
    client = session.start()  # the last test shut the client down
    name = CRASH_JOB.result_name
    assert client.task(name).suspended_via_gui  # still held, across a restart
    client.resume(name)
    task = client.wait_task(
        name, lambda t: t.running and t.pid is not None, timeout=WAIT, what="the second job running"
    )
    assert task.pid is not None
    app = psutil.Process(task.pid)
    client.kill()
    # the app side probes init_data's client_pid every 10 s (as the BOINC API does)
    gone, _ = psutil.wait_procs([app], timeout=40)
    assert gone, "the app kept running after the client died"
    assert events(session, name)[-1] == "quit"
    report = session.quit()
    assert not report.graceful and report.leftovers == ()
