"""Helpers for the fault, hostile-guest, exposure and load tests (real QEMU, through the harness).

* :func:`package_app` — an app version (``vmwrapper package``) running a shell ``boinc_app``
  in the built guest image, with a given ``vbox_job.xml``.
* :data:`RESUMABLE_APP` — a counting job whose output is the same however often it is killed,
  restored from a snapshot or rebooted: it resumes from the lines already in ``result``.
* :func:`wrapper_procs`, :func:`qemu_procs`, :func:`kill_wrapper`, :func:`kill_qemu`,
  :func:`no_qemu_left` — the processes of one slot, found by working directory.
* :class:`PhaseKiller` — a harness progress callback that SIGKILLs the wrapper once per
  episode at a chosen phase (creating the VM, booting, running, mid-checkpoint).
* :func:`tmpfs` — a size-limited tmpfs mounted for a test (root only), always unmounted.

Used by ``tests/system/test_faults*.py`` and friends and by ``scripts/faults.py``.
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from helpers.common import GUEST_MEMORY_MB, wait_for
from vmwrapper.harness.job import JobReport, JobRequest, Progress, ScheduledAction, run_job
from vmwrapper.harness.task import TaskEvent
from vmwrapper.supervisor.events import read_events

STEPS = 10

#: A counting job: a checkpoint every 4 s, 10 steps of 1 s, then the completion trigger.
COUNTING_JOB = f"""<vbox_job>
  <os_name>Linux26_64</os_name>
  <vmwrapper_backends>qemu</vmwrapper_backends>
  <vmwrapper_software_emulation/>
  <memory_size_mb>{GUEST_MEMORY_MB}</memory_size_mb>
  <enable_shared_directory/>
  <enable_vm_savestate_usage/>
  <completion_trigger_file>done</completion_trigger_file>
  <fraction_done_filename>progress</fraction_done_filename>
  <minimum_checkpoint_interval>4</minimum_checkpoint_interval>
</vbox_job>
"""


def resumable_app(steps: int = STEPS) -> str:
    """A guest app that counts to ``steps``, a second a step, run in the guest in /root/shared.

    It starts counting after the lines already in `result`: restored from a snapshot it
    continues from memory, rebooted it continues from the file the guest pulled from the host.
    Either way the output is the same as an uninterrupted run (:func:`expected_output`).
    """
    return f"""#!/bin/sh
i=$(grep -c '^step ' result 2>/dev/null)
i=${{i:-0}}
while [ $i -lt {steps} ]; do
  i=$((i+1))
  echo "step $i" >> result
  echo "$i" | awk '{{ print $1 / {steps} }}' > progress
  sleep 1
done
sleep 2
printf '0\\n0\\nCounted to %s.\\n' "$i" > done
sleep 600
"""


def expected_output(steps: int = STEPS) -> str:
    """What an uninterrupted run of :func:`resumable_app` writes."""
    return "".join(f"step {i}\n" for i in range(1, steps + 1))


RESUMABLE_APP = resumable_app()
#: What an uninterrupted run of RESUMABLE_APP writes (tests/system/test_load.py runs it
#: four times uninterrupted and checks it; the fault tests compare against it).
EXPECTED_OUTPUT = expected_output()


def package_app(
    tmp: Path,
    image: Path,
    app_script: str,
    job_xml: str = COUNTING_JOB,
    *,
    outputs: Sequence[str] = ("result",),
    inputs: Sequence[tuple[str, Path]] = (),
    name: str = "faults",
    backend: str = "qemu",
) -> Path:
    """An APP_DIR made by `vmwrapper package` (as a project would) in ``tmp/app``."""
    src = tmp / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "vbox_job.xml").write_text(job_xml)
    (src / "app.sh").write_text(app_script)
    (src / "app.sh").chmod(0o755)
    out = tmp / "app"
    argv = [
        sys.executable, "-m", "vmwrapper", "package", "--app", name,
        "--job", str(src / "vbox_job.xml"), "--image", str(image),
        "--boinc-app", str(src / "app.sh"), "--no-gzip", "--out", str(out),
    ]  # fmt: skip
    if backend:  # "" = no --backend: the wrapper's selection rule decides
        argv += ["--cmdline", f"--backend {backend}"]
    for output in outputs:
        argv += ["--output", output]
    for logical, path in inputs:
        argv += ["--input", f"{logical}={path}"]
    subprocess.run(argv, check=True, capture_output=True, timeout=300)
    return out


def run(
    app: Path,
    work: Path,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    on_event: Callable[[TaskEvent], None] | None = None,
    max_episodes: int = 8,
    schedule: tuple[ScheduledAction, ...] = (),
    extra_env: dict[str, str] | None = None,
    poll_interval: float = 0.25,
) -> JobReport:
    """Run the job under the harness, keeping the slot for inspection."""
    request = JobRequest(
        app_dir=app,
        workdir=work,
        keep_slot=True,
        checkpoint_period=1.0,
        max_restart_delay=1.0,
        max_episodes=max_episodes,
        schedule=schedule,
        extra_env=extra_env or {},
        poll_interval=poll_interval,
    )
    return run_job(request, on_progress=on_progress, on_event=on_event)


def output_text(report: JobReport, logical: str = "result") -> str:
    for out in report.outputs:
        if Path(out.logical_name).name == logical:
            return Path(out.destination).read_text()
    raise AssertionError(f"no output {logical}: {report.message}\n{report.stderr_tail}")


def events(slot: Path, name: str | None = None) -> list[dict[str, object]]:
    """The slot's events.jsonl records (all runs), optionally only those named ``name``."""
    try:
        records = read_events(slot)
    except (OSError, ValueError):
        return []
    return [e for e in records if name is None or e.get("event") == name]


def this_run(slot: Path, name: str) -> list[dict[str, object]]:
    """The records named ``name`` since the last ``wrapper_start`` (the run going on)."""
    found: list[dict[str, object]] = []
    for record in events(slot):
        if record.get("event") == "wrapper_start":
            found = []
        elif record.get("event") == name:
            found.append(record)
    return found


def wait_next_run(slot: Path, handled: int, stop: threading.Event) -> int | None:
    """Wait for a wrapper run after the first ``handled`` ones (the previous one is dead):
    how many runs there are then, or None when ``stop`` was set first."""
    while not stop.is_set():
        runs = len(events(slot, "wrapper_start"))
        if runs > handled and wrapper_procs(slot):
            return runs
        time.sleep(0.005)
    return None


# -- processes of a slot ---------------------------------------------------------------------


def _procs(slot: Path, match: Callable[[psutil.Process, str], bool]) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd", "name"]):
        try:
            if proc.info["cwd"] != str(slot):
                continue
            if match(proc, " ".join(proc.info["cmdline"] or [])):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def wrapper_procs(slot: Path) -> list[psutil.Process]:
    """The wrapper process(es) running in ``slot`` (``python -m vmwrapper`` via the launcher)."""
    return _procs(
        slot, lambda p, cmd: "-m vmwrapper" in cmd and "qemu-system" not in (p.info["name"] or "")
    )


def qemu_procs(slot: Path) -> list[psutil.Process]:
    """The slot's VM: a QEMU with a pidfile (the back end also runs QEMU briefly in the slot
    to ask what it has, ``-device help`` and the like; those are not the VM)."""
    return _procs(slot, lambda p, cmd: ("qemu-system" in (p.info["name"] or "") or
                  cmd.startswith("qemu-system")) and "-pidfile" in cmd)  # fmt: skip


def _kill(procs: list[psutil.Process]) -> list[int]:
    killed = []
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
            killed.append(proc.pid)
    return killed


def kill_wrapper(slot: Path) -> list[int]:
    return _kill(wrapper_procs(slot))


def kill_qemu(slot: Path) -> list[int]:
    return _kill(qemu_procs(slot))


def no_qemu_left(slot: Path) -> None:
    left = qemu_procs(slot)
    if left:
        _kill(left)
        raise AssertionError(f"QEMU {[p.pid for p in left]} still ran for {slot}")


# -- killing the wrapper at a phase ----------------------------------------------------------


class Phase(enum.Enum):
    CREATING = "creating the VM"  # wrapper started, the VM not started yet
    BOOTING = "booting"  # QEMU started, boinc_app not yet running in the guest
    RUNNING = "running"  # the app counts, after a checkpoint
    CHECKPOINT = "mid-checkpoint"  # the VM state is being written into the overlay


@dataclass
class Kill:
    phase: Phase
    episode: int
    detail: str


def _guest_running_app(slot: Path) -> bool:
    return any("running boinc_app" in str(e.get("message", "")) for e in events(slot, "guest_log"))


def _creating(slot: Path) -> bool:
    """The back end converts the image (a ``vm_image*.tmp`` file) or made the overlay."""
    try:
        names = [p.name for p in slot.iterdir()]
    except OSError:
        return False
    return any(n.startswith("vm_image") and n.endswith(".tmp") for n in names) or (
        "vm_disk.qcow2" in names
    )


#: QEMU writing more than this within ~5 ms is a snapshot being written (the guest itself
#: writes little: its files live on a RAM disk, the console is a line at a time).
SNAPSHOT_BURST = 512 * 1024


def qemu_written(slot: Path) -> int:
    """Bytes QEMU has written so far (write syscalls: psutil's write_chars), -1 if none."""
    for proc in qemu_procs(slot):
        with contextlib.suppress(psutil.Error, AttributeError):
            return int(proc.io_counters().write_chars)
    return -1


def _steps(slot: Path) -> int:
    try:
        return (slot / "shared" / "result").read_text().count("step ")
    except OSError:
        return 0


@dataclass
class PhaseKiller:
    """Watches a slot from a thread (every ~5 ms) and SIGKILLs the wrapper once per phase,
    in the order given: each episode after a kill starts on the next phase. Phases are
    recognised from the slot itself: events.jsonl (``wrapper_start``, ``vm_started``, the
    guest's ``running boinc_app`` line), the shared ``result`` file, the image conversion's
    temporary file, and QEMU writing more than :data:`SNAPSHOT_BURST` between two looks
    once the guest's app counts (only a snapshot writes that much then)."""

    slot: Path
    phases: Sequence[Phase]
    also_qemu: bool = False  # mid-checkpoint: kill QEMU too (as a host crash would)
    kills: list[Kill] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> PhaseKiller:
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _watch(self) -> None:
        handled = 0  # wrapper runs already seen
        for phase in self.phases:
            runs = wait_next_run(self.slot, handled, self._stop)
            if runs is None:
                return
            episode = handled = runs
            if not self._wait_phase(phase, episode):
                return
            detail = self._state()
            killed = kill_wrapper(self.slot)
            if phase is Phase.CHECKPOINT and self.also_qemu:
                killed += kill_qemu(self.slot)
            if killed:
                self.kills.append(Kill(phase, episode, detail))
            # wait until the killed run is gone before looking for the next one
            wait_for(lambda: not wrapper_procs(self.slot), 30)

    def _state(self) -> str:
        names = sorted(p.name for p in self.slot.iterdir()) if self.slot.exists() else []
        return (
            f"vm_started={len(events(self.slot, 'vm_started'))} "
            f"checkpoints={len(events(self.slot, 'checkpoint'))} steps={_steps(self.slot)} "
            f"files={','.join(n for n in names if n.startswith(('vm_', 'qemu')))}"
        )

    def _wait_phase(self, phase: Phase, episode: int) -> bool:
        # counted from this run's wrapper_start, not from when this thread looked: a restore
        # can start the VM before a busy host lets this thread see the new run
        last_written = -1
        while not self._stop.is_set():
            now_started = bool(this_run(self.slot, "vm_started"))
            if phase is Phase.CREATING and (now_started or _creating(self.slot)):
                return True  # mid-conversion of the image or making the overlay (else late)
            if phase is Phase.BOOTING and now_started and qemu_procs(self.slot):
                return not _guest_running_app(self.slot)  # a boot takes ~10 s: still booting
            if (
                phase is Phase.RUNNING
                and now_started
                and _steps(self.slot) >= 3
                and this_run(self.slot, "checkpoint")
            ):
                return True
            # once the app counts: on a busy host this thread may look seldom, and a boot's
            # writes between two looks then exceed the burst without any snapshot
            if phase is Phase.CHECKPOINT and now_started and _steps(self.slot) >= 1:
                written = qemu_written(self.slot)
                if last_written >= 0 and written - last_written > SNAPSHOT_BURST:
                    return True
                last_written = written
            time.sleep(0.005)
        return False


# -- a small file system -------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (e.g. "40m") on ``path``; unmounted (lazily) afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True, timeout=30)


def resize_tmpfs(path: Path, size: str) -> None:
    subprocess.run(
        ["mount", "-o", f"remount,size={size}", str(path)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip


def fill(path: Path) -> Path:
    """Fill the file system holding ``path`` with one file; returns the filler file."""
    filler = path / "filler"
    with filler.open("wb") as fh, contextlib.suppress(OSError):
        block = b"\0" * (1 << 20)
        while True:
            fh.write(block)
            fh.flush()
    return filler
