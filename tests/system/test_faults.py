"""Faults on a real QEMU guest, run by the harness as the BOINC client would run it.

* the wrapper SIGKILLed once in each phase of one job — creating the VM, booting, in the
  middle of a checkpoint, running after a checkpoint — then (second job) in the middle of the
  save at quit: every restart goes on and the job ends with the output of an uninterrupted run;
* QEMU killed under a running job: a clear error (194, with the signal), the record intact;
* QEMU failing to start (a broken ``qemu-system-x86_64`` first on PATH): transient, so a
  temporary exit with a reason and a doubling back-off, the job retried;
* the client lost (its process killed): the VM state saved, the wrapper gone within 15 s;
* the slot's disk full (a small tmpfs holds the whole data dir): the snapshot fails, the
  record is never corrupted, the job is retried; once there is room again it finishes.

The long repeated sweeps (random kill points) are in ``scripts/faults.py`` (`make faults`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import psutil
import pytest

from helpers.common import make_slot, vm_config, wait_for
from helpers.fault_fixtures import (
    EXPECTED_OUTPUT,
    RESUMABLE_APP,
    SNAPSHOT_BURST,
    Phase,
    PhaseKiller,
    events,
    fill,
    kill_qemu,
    kill_wrapper,
    no_qemu_left,
    output_text,
    package_app,
    qemu_procs,
    qemu_written,
    resize_tmpfs,
    run,
    tmpfs,
    wrapper_procs,
)
from helpers.qemu_fixtures import qemu_backend
from vmwrapper.harness.job import Action, JobOutcome, ScheduledAction
from vmwrapper.harness.task import TaskEvent
from vmwrapper.supervisor import checkpoint

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def counting_app(tmp_path_factory: pytest.TempPathFactory, default_guest_image: Path) -> Path:
    return package_app(tmp_path_factory.mktemp("faults"), default_guest_image, RESUMABLE_APP)


@pytest.fixture(scope="module")
def slow_counting_app(tmp_path_factory: pytest.TempPathFactory, default_guest_image: Path) -> Path:
    """RESUMABLE_APP at 3 s a step: a job still running a second after its first checkpoint,
    on a quiet host as on a busy one, for tests that act then."""
    slow = RESUMABLE_APP.replace("  sleep 1\n", "  sleep 3\n")
    assert slow != RESUMABLE_APP
    return package_app(tmp_path_factory.mktemp("slowfaults"), default_guest_image, slow)


def record_is_sound(slot: Path) -> checkpoint.CheckpointRecord:
    """vbox_checkpoint.xml parses, and the snapshot it names is in the overlay."""
    record = checkpoint.read_record(slot)
    assert not list(slot.glob(".vbox_checkpoint*")), "a temporary record was left behind"
    return record


def test_sigkill_in_every_phase_then_the_same_output(counting_app: Path, tmp_path: Path) -> None:
    work = tmp_path / "client"
    slot = work / "slots" / "0"
    phases = (Phase.CREATING, Phase.BOOTING, Phase.CHECKPOINT, Phase.RUNNING)
    with PhaseKiller(slot, phases) as killer:
        report = run(counting_app, work, max_episodes=8)
    hit = [k.phase for k in killer.kills]
    assert hit == list(phases), killer.kills
    assert report.outcome is JobOutcome.SUCCESS, report.message + report.stderr_tail
    assert report.episodes == len(phases) + 1
    assert report.finish_message == f"Counted to {EXPECTED_OUTPUT.count('step')}."
    assert output_text(report) == EXPECTED_OUTPUT
    # the run after the kill in RUNNING restored the checkpoint instead of booting afresh
    restored = [
        e for e in events(slot, "vm_started") if str(e.get("snapshot", "")).startswith("boinc_")
    ]
    assert restored, events(slot, "vm_started")
    record_is_sound(slot)
    no_qemu_left(slot)


def test_sigkill_mid_save_at_quit_then_the_same_output(
    slow_counting_app: Path, tmp_path: Path
) -> None:
    work = tmp_path / "client"
    slot = work / "slots" / "0"
    killed: list[str] = []

    def on_event(event: TaskEvent) -> None:
        # The quit reached the wrapper: it now takes a checkpoint and saves the VM state.
        # Kill it as soon as the overlay starts growing (the save is under way).
        if event.kind != "control" or "quit" not in event.detail or killed:
            return
        start = qemu_written(slot)
        wait_for(lambda: qemu_written(slot) > start + SNAPSHOT_BURST, 20, interval=0.005)
        killed.append(f"QEMU wrote {qemu_written(slot) - start} bytes")
        kill_wrapper(slot)

    quit_at = ScheduledAction(1.0, Action.QUIT, after_checkpoint=1)  # the job runs on
    report = run(slow_counting_app, work, on_event=on_event, schedule=(quit_at,))
    assert killed, "the quit never came"
    assert report.outcome is JobOutcome.SUCCESS, report.message + report.stderr_tail
    assert output_text(report) == EXPECTED_OUTPUT
    record_is_sound(slot)
    no_qemu_left(slot)


def test_quit_saves_the_vm_state_and_the_restart_goes_on_from_it(
    slow_counting_app: Path, tmp_path: Path
) -> None:
    """enable_vm_savestate_usage without a fault: the quit checkpoints and saves the VM (the
    client's quit, e.g. its shutdown), the next start restores it: the guest does not boot
    again, and the job ends with the output of an uninterrupted run."""
    work = tmp_path / "client"
    slot = work / "slots" / "0"
    quit_at = ScheduledAction(1.0, Action.QUIT, after_checkpoint=1)  # the job runs on
    report = run(slow_counting_app, work, schedule=(quit_at,))
    assert report.outcome is JobOutcome.SUCCESS, report.message + report.stderr_tail
    assert report.episodes == 2
    assert output_text(report) == EXPECTED_OUTPUT
    stderr = (slot / "stderr.txt").read_text()
    assert stderr.count("VMWRAPPER_GUEST: booted") == 1, "the guest booted again"
    assert events(slot, "quit")
    started = events(slot, "vm_started")
    assert len(started) == 2 and str(started[1].get("snapshot", "")).startswith("boinc_")
    no_qemu_left(slot)


def test_qemu_killed_under_a_running_job(counting_app: Path, tmp_path: Path) -> None:
    work = tmp_path / "client"
    slot = work / "slots" / "0"
    killed: list[int] = []

    def on_progress(_: object) -> None:
        if not killed and events(slot, "checkpoint") and qemu_procs(slot):
            killed.extend(kill_qemu(slot))

    report = run(counting_app, work, on_progress=on_progress, max_episodes=2)
    assert killed
    # vboxwrapper's row 19: a VM that dies under the job is a premature shutdown, with why
    assert report.finish_status == 194, report.message + report.stderr_tail
    assert "VM Premature Shutdown Detected" in report.finish_message
    assert "signal" in report.stderr_tail.lower() or "killed" in report.stderr_tail.lower()
    record_is_sound(slot)
    no_qemu_left(slot)


def test_qemu_that_cannot_start_is_a_transient_error_with_back_off(
    counting_app: Path, tmp_path: Path
) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    broken = fake_bin / "qemu-system-x86_64"
    broken.write_text("#!/bin/sh\necho 'qemu-system-x86_64: broken on purpose' >&2\nexit 1\n")
    broken.chmod(0o755)
    env = {"PATH": f"{fake_bin}:{os.environ['PATH']}", "VMWRAPPER_ACCEL": "tcg"}
    work = tmp_path / "client"
    report = run(counting_app, work, extra_env=env, max_episodes=2)
    # two runs, each a temporary exit with a reason; the client would retry after the delay,
    # which doubles per consecutive failure (300 s, then 600 s), persisted across runs
    assert report.outcome is JobOutcome.POSTPONED, report.message + report.stderr_tail
    assert report.temporary_exits[0][0] == 300.0, report.temporary_exits
    assert "QEMU exited during start" in report.temporary_exits[0][1]
    assert "postponed for 600 seconds: QEMU exited during start" in report.message
    assert "broken on purpose" in report.stderr_tail  # QEMU's own words in the log
    slot = work / "slots" / "0"
    assert '"failures": 2' in (slot / "vmwrapper_backoff.json").read_text()
    assert not events(slot, "vm_online")


def test_full_disk_fails_the_snapshot_cleanly_and_the_job_is_retried(
    counting_app: Path, tmp_path: Path
) -> None:
    # The whole data dir on a tmpfs. Once the VM runs, the disk is filled but for
    # 2 MB: too little for a snapshot of the guest's memory. The snapshot fails, the wrapper
    # exits temporarily with a clear reason, the old record stays sound; with room again the
    # job is retried and finishes with the right output.
    work = tmp_path / "client"
    slot = work / "slots" / "0"
    filler: list[Path] = []
    seen: dict[str, object] = {}

    def on_progress(_: object) -> None:
        # Driven by the wrapper's own events: the disk is filled only once a checkpoint has
        # been recorded, so the record the failed snapshot leaves must name a snapshot. (Before
        # the first checkpoint the record holds the ports only, with no snapshot.)
        taken = [str(e["snapshot"]) for e in events(slot, "checkpoint") if e.get("snapshot")]
        if not filler and taken:
            seen["checkpoints"] = taken
            filler.append(fill(work))
            os.truncate(filler[0], max(filler[0].stat().st_size - 2 * 1024 * 1024, 0))

    def on_event(event: TaskEvent) -> None:
        if event.kind == "exit" and filler and "record" not in seen:
            seen["exit"] = event.detail
            seen["stderr"] = _read(slot / "stderr.txt")
            seen["record"] = _read(slot / "vbox_checkpoint.xml")  # none before a checkpoint
            seen["leftovers"] = [p.name for p in slot.glob(".vbox_checkpoint*")]
            seen["committed"] = [str(e["snapshot"]) for e in events(slot, "checkpoint")]
            filler[0].unlink()
            resize_tmpfs(work, "600m")

    # 400 MB: the job's files (~40 MB) and two snapshots of ~95 MB fit; the filler takes the rest
    with tmpfs(work, "400m"):
        report = run(counting_app, work, on_event=on_event, on_progress=on_progress)
        result = output_text(report) if report.success else ""
        no_qemu_left(slot)
    assert filler and "record" in seen, (
        f"the disk was never filled while the VM ran: {report.message}\n{report.stderr_tail}"
    )
    stderr = str(seen["stderr"])
    assert "No space left on device" in stderr, stderr[-3000:]
    # the record the failed checkpoint left: the previous one, whole, naming a snapshot taken
    # before the disk was filled (or a later one, if one more fit in the last 2 MB)
    snapshot = checkpoint.parse_record(str(seen["record"])).snapshot
    assert snapshot.startswith("boinc_"), seen
    assert snapshot == cast(list[str], seen["committed"])[-1], seen  # the last one committed
    assert not seen["leftovers"], seen
    # transient class: a temporary exit, whose file cannot be written on the full disk, so the
    # wrapper exits 0 without it and the client restarts the task (not a traceback's exit 1)
    # savevm's words, or a live checkpoint's (docs/qemu-backend.md#live-checkpoints)
    failed = ("QEMU could not take checkpoint", "writing the RAM state failed")
    assert any(words in stderr for words in failed) and "TemporaryExit" in stderr
    # (a failed live checkpoint removes its half-written RAM file: then the temporary exit's
    # file fits again, and the client postpones the task as asked)
    assert seen["exit"] == "exited with code 0 without finishing; restarting" or str(
        seen["exit"]
    ).startswith("postponed for 300 seconds"), seen["exit"]
    assert report.outcome is JobOutcome.SUCCESS, report.message + report.stderr_tail
    assert result == EXPECTED_OUTPUT


def test_lost_client_the_vm_is_saved_and_the_wrapper_exits_within_15_s(
    counting_app: Path, tmp_path: Path
) -> None:
    # The client is a separate `vmwrapper job` process; SIGKILL takes it away without a word
    # (its pid disappears), as a crashed BOINC client would.
    work = tmp_path / "client"
    slot = work / "slots" / "0"
    harness = subprocess.Popen(
        [sys.executable, "-m", "vmwrapper", "job", str(counting_app), "--workdir", str(work),
         "--keep-slot", "--checkpoint-period", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        assert wait_for(lambda: "step 2" in _read(slot / "shared" / "result"), 300, 0.2)
        wrappers = wrapper_procs(slot)
        assert wrappers
        harness.kill()
        harness.wait(timeout=10)
        lost = time.monotonic()
        gone = wait_for(lambda: not any(p.is_running() for p in wrappers), 60, 0.1)
        took = time.monotonic() - lost
    finally:
        harness.kill()
        kill_wrapper(slot)
        kill_qemu(slot)
    assert gone and took <= 15.0, f"the wrapper took {took:.1f} s"
    assert events(slot, "no_heartbeat")
    snapshots = subprocess.run(
        ["qemu-img", "snapshot", "-U", "-l", str(slot / "vm_disk.qcow2")],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    snapshots += "".join(f"{p.name}\n" for p in slot.glob("live_*.json"))  # live checkpoints
    assert "vmwrapper_saved_state" in snapshots, snapshots  # the VM was saved, not dropped
    record = record_is_sound(slot)
    assert record.snapshot and record.snapshot in snapshots
    no_qemu_left(slot)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def test_a_conversion_left_by_a_killed_wrapper_is_removed_by_the_next(tmp_path: Path) -> None:
    # A wrapper SIGKILLed while it converts the VDI leaves <base>.<pid>.tmp (image-sized);
    # the next run's back end removes it (only when that pid is gone: another slot may be
    # converting a shared multiattach parent right now).
    slot, project = make_slot(tmp_path)
    vdi = (slot / "vm_image.vdi").read_bytes()
    with qemu_backend(vm_config(slot, project)) as backend:
        backend.create()
        # converted once for every task, in the project dir (the slot's copy now links there)
        (base,) = project.glob("vm_image.vdi.*.qcow2")
        backend.cleanup()
        base.unlink()
        (slot / "vm_image.vdi").write_bytes(vdi)  # a new task's copy
        dead = next(pid for pid in range(4_000_000, 3_000_000, -1) if not psutil.pid_exists(pid))
        stale = base.with_name(f"{base.name}.{dead}.tmp")
        live = base.with_name(f"{base.name}.{os.getppid()}.tmp")  # a live process
        stale.write_bytes(b"half an image")
        live.write_bytes(b"being converted")
        backend.create()
        assert base.exists() and not stale.exists() and live.exists()
        live.unlink()
