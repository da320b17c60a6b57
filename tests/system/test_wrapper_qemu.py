"""The wrapper on a real QEMU guest, run by the harness exactly as the BOINC client would.

Five boots in all (TCG, ~10 s each): one uninterrupted counting job (completion trigger with
code and message, a trickle, fraction done, the output), the same job with the wrapper killed
by SIGKILL after a checkpoint (it must finish with the same output), and a job that asks for a
temporary exit and is restored from its checkpoint on restart.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from helpers.fault_fixtures import package_app
from vmwrapper.harness.job import JobReport, JobRequest, Progress, run_job
from vmwrapper.harness.task import TaskEvent
from vmwrapper.supervisor.events import read_events

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]

JOB = """<vbox_job>
  <os_name>Linux26_64</os_name>
  <vmwrapper_backends>qemu</vmwrapper_backends>
  <vmwrapper_software_emulation/>
  <memory_size_mb>512</memory_size_mb>
  <enable_shared_directory/>
  <completion_trigger_file>done</completion_trigger_file>
  <temporary_exit_trigger_file>later</temporary_exit_trigger_file>
  <trickle_trigger_file>trickle_a</trickle_trigger_file>
  <fraction_done_filename>progress</fraction_done_filename>
  <minimum_checkpoint_interval>4</minimum_checkpoint_interval>
</vbox_job>
"""

# Runs in the guest in /root/shared. Deterministic: the same output however often the VM is
# snapshotted, killed and restored. It rewrites `result` whole from its counter rather than
# appending: after a restore the host's shared dir may hold files from after the snapshot (as
# with VirtualBox's live shared folders), and a snapshot taken before the guest pulled its
# inputs would pull them back in.
COUNTING_APP = """#!/bin/sh
i=0
while [ $i -lt 10 ]; do
  i=$((i+1))
  seq 1 $i | sed 's/^/step /' > result
  echo "$i" | awk '{ print $1 / 10 }' > progress
  sleep 1
done
echo "<steps>$i</steps>" > trickle_a
sleep 2
printf '0\\n1\\nCounted to %s.\\n' "$i" > done
sleep 60
"""

# /tmp is guest memory outside the shared dir: it survives only through a restored snapshot,
# so a fresh boot would run phase 1 again.
TEMPORARY_EXIT_APP = """#!/bin/sh
if [ ! -f /tmp/phase1 ]; then
  touch /tmp/phase1
  echo "phase 1" >> result
  printf '1\\n0\\n' > later
  sleep 10
fi
echo "phase 2" >> result
sleep 1
printf '0\\n0\\n' > done
sleep 60
"""


def package(tmp: Path, image: Path, app_script: str) -> Path:
    return package_app(tmp, image, app_script, JOB, name="counting")


def run(
    app: Path,
    work: Path,
    on_progress: Callable[[Progress], None] | None = None,
    on_event: Callable[[TaskEvent], None] | None = None,
) -> JobReport:
    request = JobRequest(
        app_dir=app,
        workdir=work,
        keep_slot=True,
        checkpoint_period=1.0,
        max_restart_delay=1.0,
        max_episodes=4,
    )
    return run_job(request, on_progress=on_progress, on_event=on_event)


def output(report: JobReport) -> str:
    return Path(next(o.destination for o in report.outputs)).read_text()


def no_qemu_left(slot: Path) -> None:
    for proc in psutil.process_iter(["name", "cwd"]):
        try:
            if "qemu" in (proc.info["name"] or "") and proc.info["cwd"] == str(slot):
                raise AssertionError(f"QEMU {proc.pid} still runs for {slot}")
        except psutil.Error:
            continue


@pytest.fixture(scope="module")
def counting_app(tmp_path_factory: pytest.TempPathFactory, default_guest_image: Path) -> Path:
    return package(tmp_path_factory.mktemp("counting"), default_guest_image, COUNTING_APP)


@pytest.fixture(scope="module")
def uninterrupted(
    counting_app: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[JobReport, list[float]]:
    fractions: list[float] = []
    report = run(
        counting_app, tmp_path_factory.mktemp("plain"), lambda p: fractions.append(p.fraction_done)
    )
    return report, fractions


def test_completion_trigger_trickle_fraction_and_output(
    uninterrupted: tuple[JobReport, list[float]],
) -> None:
    report, fractions = uninterrupted
    assert report.finish_status == 0, report.message + report.stderr_tail
    assert report.finish_message == "Counted to 10."
    assert report.episodes == 1
    assert [(t.variety, t.body) for t in report.trickles] == [("trickle_a", "<steps>10</steps>\n")]
    assert any(0.1 <= f <= 0.9 for f in fractions)  # the guest's progress file reached the client
    assert output(report) == "".join(f"step {i}\n" for i in range(1, 11))
    assert "VM Completion File Detected." in report.stderr_tail
    slot = Path(report.slot_dir)
    assert [e for e in read_events(slot) if e["event"] == "checkpoint"]
    no_qemu_left(slot)


def test_kill_9_after_a_checkpoint_then_restart_gives_the_same_output(
    counting_app: Path, uninterrupted: tuple[JobReport, list[float]], tmp_path: Path
) -> None:
    work = tmp_path / "client"
    slot = work / "slots" / "0"
    killed: list[int] = []

    def kill_after_checkpoint(progress: Progress) -> None:
        result = slot / "shared" / "result"
        if killed or progress.checkpoint_cpu_time <= 0 or not result.exists():
            return
        if result.read_text().count("step") < 3:
            return
        for proc in psutil.process_iter(["cmdline", "cwd"]):
            try:
                cmd = " ".join(proc.info["cmdline"] or [])
                if proc.info["cwd"] == str(slot) and "-m vmwrapper" in cmd:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.append(proc.pid)
            except psutil.Error:
                continue

    report = run(counting_app, work, kill_after_checkpoint)
    assert killed, "the wrapper was never killed"
    assert report.episodes == 2, report.message + report.stderr_tail
    assert report.finish_status == 0 and report.finish_message == "Counted to 10."
    assert output(report) == output(uninterrupted[0])
    starts = [e for e in read_events(slot) if e["event"] == "vm_started"]
    assert starts[-1]["snapshot"].startswith("boinc_")  # the second episode restored
    no_qemu_left(slot)


def test_temporary_exit_trigger_then_restart_from_the_checkpoint(
    default_guest_image: Path,
    tmp_path: Path,
) -> None:
    app = package(tmp_path, default_guest_image, TEMPORARY_EXIT_APP)
    result = tmp_path / "client" / "slots" / "0" / "shared" / "result"
    after_first: list[str] = []

    def at_exit(event: TaskEvent) -> None:
        if event.kind == "exit" and not after_first:
            after_first.append(result.read_text())

    report = run(app, tmp_path / "client", on_event=at_exit)
    assert after_first == ["phase 1\n"]  # stopped right after the trigger: phase 2 still to do
    assert report.success, report.message + report.stderr_tail
    assert report.episodes == 2
    assert len(report.temporary_exits) == 1 and report.temporary_exits[0][1]  # with a reason
    assert output(report) == "phase 1\nphase 2\n"  # phase 1 not redone: restored, not rebooted
    starts = [e for e in read_events(Path(report.slot_dir)) if e["event"] == "vm_started"]
    assert starts[-1]["snapshot"].startswith("boinc_")
    no_qemu_left(Path(report.slot_dir))


FAILING_JOB = """<vbox_job>
  <os_name>Linux26_64</os_name>
  <memory_size_mb>512</memory_size_mb>
  <enable_shared_directory/>
  <vmwrapper_backends>qemu</vmwrapper_backends>
  <vmwrapper_software_emulation/>
</vbox_job>
"""

# No completion trigger: the image's boot script reports the app's status on the console
# (`VMWRAPPER_GUEST_DONE status=3`) and powers the VM off.
FAILING_APP = """#!/bin/sh
echo "half a result" > result
exit 3
"""


def test_a_guest_app_that_fails_fails_the_task(
    tmp_path: Path,
    default_guest_image: Path,
) -> None:
    app = package_app(tmp_path, default_guest_image, FAILING_APP, FAILING_JOB, name="failing")
    report = run(app, tmp_path / "work")
    assert report.finish_status == 195, report.message + report.stderr_tail  # EXIT_CHILD_FAILED
    assert report.exit_status == 195 and not report.success
    assert "Guest Log: VMWRAPPER_GUEST_DONE status=3" in report.stderr_tail
    assert "exited with status 3" in report.stderr_tail
    no_qemu_left(Path(report.slot_dir))


# The same trickle text twice, far enough apart for the host to take the first one; the sync
# agent pushes each version again at the end (the final push): two trickles, not one or four.
REPEATING_TRICKLE_APP = """#!/bin/sh
echo "<ping/>" > trickle_a
echo ok > result
sleep 4
echo "<ping/>" > trickle_a
sleep 4
printf '0\\n0\\n' > done
sleep 60
"""


def test_the_same_trickle_text_twice_is_two_trickles(
    tmp_path: Path,
    default_guest_image: Path,
) -> None:
    app = package_app(tmp_path, default_guest_image, REPEATING_TRICKLE_APP, JOB, name="pings")
    report = run(app, tmp_path / "work")
    assert report.finish_status == 0, report.message + report.stderr_tail
    assert [(t.variety, t.body) for t in report.trickles] == [("trickle_a", "<ping/>\n")] * 2
