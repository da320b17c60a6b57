"""The wrapper under the real BOINC client 7.20.5, with the QEMU back end and a real guest.

The app version is what a project would ship (made by `vmwrapper package`): the development
launcher as main program (interpreter baked in), vbox_job.xml, the guest image, the guest app
as ``shared/boinc_app``; each workunit has an input ``shared/in`` and an output ``shared/out``.
One client for the module and three jobs: ``vm1`` starts at once; ``vm2`` and ``vm3`` are
held (suspended via the GUI) until their turn. The tests run in file order and build on each other:

1. vm1 starts, and the fraction done the wrapper reads from the guest shows in --get_tasks;
2. a GUI suspend pauses the VM (the guest stops counting), resume lets it go on;
3. vm1 completes: success, and the output in the project directory holds what the guest wrote;
4. vm2 runs until the wrapper has checkpointed, the client is shut down with
   ``boinccmd --quit``, started again, and the job resumes from the wrapper's checkpoint (the
   guest app does not start a second time) and completes;
5. vm3 is aborted from the GUI while its VM boots: wrapper and QEMU are gone, the client
   records the abort.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from helpers.boinc_client_fixtures import VM_STEPS, ClientSession, write_vm_app_dir
from helpers.image_fixtures import guest_image
from vmwrapper.boincclient import JobRequest, Naming, ResultRecord, ResultState, TaskInfo

pytestmark = pytest.mark.system

VM1 = JobRequest(name="vm1")
VM2 = JobRequest(name="vm2", held=True)
VM3 = JobRequest(name="vm3", held=True)
BOOT_WAIT = 240.0  # TCG boot on a loaded 2-core host, plus the image copy into the slot
RUN_WAIT = 240.0
#: The wrapper snapshots the VM at this interval (the disk_interval preference). A snapshot
#: blocks the guest's 9p mounts while it is saved (QEMU refuses a 9p attach during a
#: migration), and the guest agent does not retry its first and last mount yet (see
#: docs/boinc-client.md), so snapshots are taken only where the test needs them: in vm2.
NO_CHECKPOINTS = 600.0
CHECKPOINT_PERIOD = 15.0


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientSession]:
    base = tmp_path_factory.mktemp("boinc_vm")
    # the session's guest image (built once through the image cache, shared with other modules)
    app_dir = write_vm_app_dir(base / "app", guest_image(), base / "src")
    s = ClientSession(
        base / "data",
        app_dir,
        [VM1, VM2, VM3],
        naming=Naming(app_name="vmhello"),
        checkpoint_period=NO_CHECKPOINTS,
    )
    s.start()
    try:
        yield s
    finally:
        s.close()


def slot_file(session: ClientSession, task: TaskInfo, name: str) -> Path:
    assert task.slot is not None
    return session.data.path / "slots" / str(task.slot) / name


def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def wrapper_log(session: ClientSession, task: TaskInfo) -> str:
    path = slot_file(session, task, "stderr.txt")
    return path.read_text(errors="replace") if path.exists() else ""


def recorded(
    session: ClientSession,
    name: str,
    done: Callable[[ResultRecord], bool] = lambda r: r.ready_to_report,
) -> ResultRecord:
    """The result once client_state.xml (written a moment after the task ends) has it done."""

    def check() -> ResultRecord | None:
        record = session.data.results()[name]
        return record if done(record) else None

    return session.client.wait_for(check, timeout=60, what=f"{name} done in client_state.xml")


def test_vm_task_starts_and_reports_the_guests_fraction_done(session: ClientSession) -> None:
    client = session.client
    # the guest writes i / N to its progress file; the wrapper passes it on unchanged, and
    # boinccmd prints it with 6 decimals (the client's own estimate, shown while the app
    # reports nothing, stays far below 1 / N: see write_vm_app_dir)
    task = client.wait_task(
        VM1.result_name,
        lambda t: t.running and (t.fraction_done or 0) >= 1 / VM_STEPS - 1e-6,
        timeout=BOOT_WAIT,
        what="the guest app's first fraction done",
    )
    assert task.fraction_done is not None
    steps = task.fraction_done * VM_STEPS
    assert steps == pytest.approx(round(steps), abs=1e-4)
    # the main program is our wrapper, with QEMU below it
    assert task.pid is not None
    wrapper = psutil.Process(task.pid)
    assert "vmwrapper" in " ".join(wrapper.cmdline())
    children = [" ".join(c.cmdline()) for c in wrapper.children(recursive=True)]
    assert any("qemu-system" in c for c in children), children
    assert "back end qemu" in wrapper_log(session, task)


def test_gui_suspend_pauses_the_vm_and_resume_resumes_it(session: ClientSession) -> None:
    client = session.client
    name = VM1.result_name
    client.suspend(name)
    task = client.wait_task(name, lambda t: t.suspended, timeout=60, what="SUSPENDED")
    client.wait_for(
        lambda: "Suspended: VM paused." in wrapper_log(session, task),
        timeout=60,
        what="the wrapper to pause the VM",
    )
    ticks = slot_file(session, task, "shared/ticks")
    time.sleep(2)  # let a push that was under way land
    before = read_int(ticks)
    time.sleep(5)  # running, the guest would count 5 more ticks and push them
    assert read_int(ticks) == before, "the guest kept running while suspended"
    assert client.task(name).suspended

    client.resume(name)
    client.wait_task(name, lambda t: t.running, timeout=60, what="EXECUTING after resume")
    client.wait_for(
        lambda: "Resumed: VM running." in wrapper_log(session, task),
        timeout=60,
        what="the wrapper to resume the VM",
    )
    client.wait_for(
        lambda: (read_int(ticks) or 0) > (before or 0),
        timeout=60,
        what="the guest to count on after resume",
    )


def test_vm_job_completes_with_success_and_its_output(session: ClientSession) -> None:
    client = session.client
    name = VM1.result_name
    done = client.wait_task(name, lambda t: t.ready_to_report, timeout=RUN_WAIT, what="done")
    assert done.exit_status == 0
    record = recorded(session, name)
    assert record.success and record.state is ResultState.UPLOADED, record
    assert "Outcome: Finish (status 0)" in record.stderr_out
    # the disk_interval preference reached the wrapper through init_data.xml
    assert "Setting checkpoint interval to 600 seconds" in record.stderr_out
    assert "Checkpoint completed." not in record.stderr_out
    out = session.data.output_path(VM1.name, "shared/out")
    assert out.read_text() == f"vm output: hello-vm ticks={VM_STEPS} starts=1\n"


def test_client_shutdown_mid_run_resumes_from_the_wrappers_checkpoint(
    session: ClientSession,
) -> None:
    client = session.client
    name = VM2.result_name
    client.set_checkpoint_period(CHECKPOINT_PERIOD)  # reaches the wrapper in init_data.xml
    client.resume(name)  # release the held job
    client.wait_task(
        name,
        lambda t: t.running and (t.fraction_done or 0) >= 4 / VM_STEPS,
        timeout=BOOT_WAIT,
        what="the guest app under way",
    )
    assert f"Setting checkpoint interval to {CHECKPOINT_PERIOD:.0f} seconds" in wrapper_log(
        session, client.task(name)
    )
    # wait for a checkpoint taken while the guest app runs, so the restart must resume it
    client.wait_task(
        name,
        lambda t: (
            "Checkpoint completed." in wrapper_log(session, t).split("running boinc_app")[-1]
            and (t.checkpoint_cpu_time or 0) > 0
        ),
        timeout=RUN_WAIT,
        what="a wrapper checkpoint after the guest app started",
    )
    report = session.quit()
    assert report.graceful and report.exit_code == 0
    assert report.leftovers == (), f"processes outlived the client: {report.leftovers}"
    assert session.data.results()[name].state is ResultState.DOWNLOADED  # not finished

    client = session.start()
    client.wait_task(name, lambda t: t.running, timeout=BOOT_WAIT, what="running again")
    done = client.wait_task(name, lambda t: t.ready_to_report, timeout=RUN_WAIT, what="done")
    assert done.exit_status == 0
    record = recorded(session, name)
    assert record.success, record
    log = record.stderr_out
    assert "Restoring from checkpoint" in log and "snapshot boinc_" in log
    assert log.count("VMWRAPPER_GUEST: booted") == 1, "the guest booted again, not resumed"
    out = session.data.output_path(VM2.name, "shared/out")
    # the guest app started once: it went on from the snapshot, not from the beginning
    assert out.read_text() == f"vm output: hello-vm ticks={VM_STEPS} starts=1\n"


def test_gui_abort_stops_the_vm_and_the_wrapper(session: ClientSession) -> None:
    client = session.client
    name = VM3.result_name
    client.resume(name)
    task = client.wait_task(
        name, lambda t: t.running and t.pid is not None, timeout=BOOT_WAIT, what="running"
    )
    assert task.pid is not None
    wrapper = psutil.Process(task.pid)

    def qemu() -> list[psutil.Process]:
        return [c for c in wrapper.children(recursive=True) if "qemu-system" in c.name()]

    vms = client.wait_for(qemu, timeout=BOOT_WAIT, what="QEMU started by the wrapper")
    client.task_op(name, "abort")
    _, alive = psutil.wait_procs([wrapper, *vms], timeout=90)
    assert not alive, f"still running after the abort: {alive}"
    record = recorded(session, name, lambda r: r.state is ResultState.ABORTED)
    assert not record.success
