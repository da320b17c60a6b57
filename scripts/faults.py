#!/usr/bin/env python3
"""The long fault sweeps behind `make faults` (real QEMU guests under the harness).

`make test` runs one kill per phase (tests/system/test_faults.py); this script repeats faults
at random points and counts how often the job still ends with the output of an uninterrupted
run. Sweeps (all on by default; pick with --only):

  (first)    one uninterrupted job, timed: the kill and quit moments are drawn inside it
  kills      N jobs, each with 1-3 SIGKILLs of the wrapper at random moments (and, with
             probability --qemu-too, of QEMU with it, as a host crash would); restart until
             done; output must equal the uninterrupted run's, the checkpoint record must parse
  quit       N jobs with a quit while running, the wrapper SIGKILLed while it saves the VM
  heartbeat  the client stops sending heartbeats (no client_pid in init_data.xml, the
             client's poll loop frozen): the wrapper must save the VM and exit
  hbfile     a guest that stops touching its heartbeat file: ended with ERR_TIMEOUT (-182)

Usage: scripts/faults.py [--kills N] [--quit N] [--seed S] [--only kills,quit,...]
                         [--json PATH] [--workdir DIR]
Prints a Markdown summary (paste into docs/reliability.md) and writes every trial as JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from helpers.fault_fixtures import (  # noqa: E402
    COUNTING_JOB,
    EXPECTED_OUTPUT,
    RESUMABLE_APP,
    SNAPSHOT_BURST,
    events,
    kill_qemu,
    kill_wrapper,
    output_text,
    package_app,
    qemu_procs,
    qemu_written,
    run,
    wait_for,
    wait_next_run,
    wrapper_procs,
)
from helpers.image_fixtures import guest_image  # noqa: E402
from vmwrapper.harness.job import Action, JobReport, ScheduledAction  # noqa: E402
from vmwrapper.harness.task import TaskEvent  # noqa: E402
from vmwrapper.supervisor import checkpoint  # noqa: E402


@dataclass
class Trial:
    sweep: str
    n: int
    kills: list[str] = field(default_factory=list)
    outcome: str = ""
    episodes: int = 0
    output_ok: bool = False
    record_ok: bool = False
    seconds: float = 0.0
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.output_ok and self.record_ok


def phase_of(slot: Path) -> str:
    """Where the job was when it was killed, from what the slot shows."""
    if not events(slot, "vm_started") or not qemu_procs(slot):
        return "creating"
    guest = [str(e.get("message")) for e in events(slot, "guest_log")]
    if not any("running boinc_app" in line for line in guest):
        return "booting"
    return "running"


def record_ok(slot: Path) -> bool:
    text = (
        (slot / "vbox_checkpoint.xml").read_text()
        if (slot / "vbox_checkpoint.xml").exists()
        else ""
    )
    if text and checkpoint.parse_record(text) == checkpoint.CheckpointRecord():
        return False  # present but unreadable: corrupted
    return not list(slot.glob(".vbox_checkpoint*"))


class RandomKiller:
    """Kills the wrapper ``count`` times, each at a random moment in its run, drawn within
    ``window`` seconds (most of an uninterrupted job: a later moment finds the job over)."""

    def __init__(
        self, slot: Path, rng: random.Random, count: int, qemu_too: float, window: float
    ) -> None:
        self.slot, self.rng, self.count, self.qemu_too = slot, rng, count, qemu_too
        self.window = window
        self.kills: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RandomKiller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        handled = 0
        for _ in range(self.count):
            runs = wait_next_run(self.slot, handled, self._stop)
            if runs is None:
                return
            handled = runs
            delay = self.rng.uniform(0.0, self.window)
            if self._stop.wait(delay):
                return
            phase = phase_of(self.slot)
            written = qemu_written(self.slot)
            time.sleep(0.005)
            if qemu_written(self.slot) - written > SNAPSHOT_BURST:
                phase += " (mid-snapshot)"
            with_qemu = self.rng.random() < self.qemu_too
            if not kill_wrapper(self.slot):
                continue  # the run was over already
            if with_qemu:
                kill_qemu(self.slot)
            self.kills.append(f"{delay:.1f}s {phase}{' +QEMU' if with_qemu else ''}")
            wait_for(lambda: not wrapper_procs(self.slot), 30)


def check(trial: Trial, report: JobReport, slot: Path, started: float) -> Trial:
    trial.outcome = report.outcome.value
    trial.episodes = report.episodes
    try:
        trial.output_ok = report.success and output_text(report) == EXPECTED_OUTPUT
    except AssertionError:
        trial.output_ok = False
    trial.record_ok = record_ok(slot)
    trial.seconds = round(time.monotonic() - started, 1)
    if not trial.passed:
        trial.note = (report.message + " | " + report.stderr_tail[-400:]).replace("\n", " / ")
    kill_wrapper(slot)
    kill_qemu(slot)
    return trial


def job_seconds(app: Path, base: Path) -> float:
    """How long the job runs uninterrupted, harness start to end: the sweeps draw their
    moments inside it (a job that got faster would otherwise outrun its faults)."""
    work = base / "uninterrupted"
    started = time.monotonic()
    report = run(app, work, max_episodes=1)
    seconds = time.monotonic() - started
    if not report.success or output_text(report) != EXPECTED_OUTPUT:
        raise SystemExit(f"the uninterrupted job failed, no sweep can run: {report.message}")
    shutil.rmtree(work, ignore_errors=True)
    print(f"uninterrupted job: {seconds:.1f} s", flush=True)
    return seconds


def sweep_kills(
    app: Path, base: Path, n: int, rng: random.Random, qemu_too: float, job: float
) -> list[Trial]:
    trials = []
    for i in range(n):
        work = base / f"kills-{i}"
        slot = work / "slots" / "0"
        started = time.monotonic()
        # a run starts a little after the harness: 0.9 of the job keeps the moments inside it
        with RandomKiller(slot, rng, rng.randint(1, 3), qemu_too, 0.9 * job) as killer:
            report = run(app, work, max_episodes=12)
        trial = check(Trial("kills", i, killer.kills), report, slot, started)
        trials.append(trial)
        print(f"kills #{i}: {trial.kills} -> {trial.outcome}, ok={trial.passed}", flush=True)
        shutil.rmtree(work, ignore_errors=True)
    return trials


def sweep_quit(app: Path, base: Path, n: int, rng: random.Random, job: float) -> list[Trial]:
    trials = []
    for i in range(n):
        work = base / f"quit-{i}"
        slot = work / "slots" / "0"
        kills: list[str] = []

        def on_event(event: TaskEvent, slot: Path = slot, kills: list[str] = kills) -> None:
            if event.kind != "control" or "quit" not in event.detail or kills:
                return
            start = qemu_written(slot)
            saving = wait_for(lambda: qemu_written(slot) - start > 512 * 1024, 20, 0.005)
            time.sleep(rng.uniform(0.0, 0.3))  # somewhere inside the save
            kill_wrapper(slot)
            kills.append("mid-save" if saving else "after quit (no save seen)")

        started = time.monotonic()
        # while the guest counts: after its boot, before its end
        quit_at = ScheduledAction(rng.uniform(0.4 * job, 0.85 * job), Action.QUIT)
        report = run(app, work, on_event=on_event, schedule=(quit_at,), max_episodes=6)
        trial = check(Trial("quit", i, kills), report, slot, started)
        trials.append(trial)
        print(f"quit #{i}: {kills} -> {trial.outcome}, ok={trial.passed}", flush=True)
        shutil.rmtree(work, ignore_errors=True)
    return trials


ENDLESS_APP = """#!/bin/sh
while :; do date >> result; sleep 1; done
"""


def _alive(procs: list[psutil.Process]) -> bool:
    """Any still running (a zombie is gone: the frozen client has not reaped it yet)."""
    for proc in procs:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except psutil.Error:
            continue
    return False


def sweep_heartbeat(base: Path) -> list[Trial]:
    """No client_pid, then the client's poll loop freezes: heartbeats stop (30 s rule)."""
    app = package_app(base / "endless-pkg", guest_image(), ENDLESS_APP)
    work = base / "heartbeat"
    slot = work / "slots" / "0"
    result: dict[str, float] = {}

    def on_event(event: TaskEvent) -> None:
        if event.kind == "start" and "patched" not in result:
            init = slot / "init_data.xml"  # before the wrapper reads it (Python starts slower)
            init.write_text(re.sub(r"<client_pid>\d+</client_pid>\n?", "", init.read_text()))
            result["patched"] = 1

    def on_progress(_: object) -> None:
        if "frozen" in result or _read(slot / "shared" / "result").count("\n") < 2:
            return
        procs = wrapper_procs(slot)
        result["frozen"] = time.monotonic()
        # the client hangs: no heartbeats, no polling, until the wrapper is gone (max 90 s)
        wait_for(lambda: not _alive(procs), 90, 0.1)
        result["gone"] = time.monotonic()

    started = time.monotonic()
    # one run: after its saved exit the client would start the task again (pid known again)
    report = run(app, work, on_event=on_event, on_progress=on_progress, max_episodes=1)
    took = result.get("gone", 0.0) - result.get("frozen", 0.0)
    # savevm keeps it in the overlay; a live checkpoint has its own manifest in the slot
    saved = (
        "vmwrapper_saved_state" in _snapshots(slot)
        or (slot / "live_vmwrapper_saved_state.json").exists()
    )
    trial = Trial("heartbeat", 0, [f"client frozen; wrapper gone after {took:.1f} s"])
    trial.outcome = report.outcome.value
    trial.episodes = report.episodes
    # the wrapper noticed the silence (30 s rule), saved the VM and left within 15 s more
    trial.output_ok = bool(events(slot, "no_heartbeat")) and saved and took <= 45.0
    trial.record_ok = record_ok(slot)
    trial.seconds = round(time.monotonic() - started, 1)
    trial.note = f"saved_state={saved} no_heartbeat events={len(events(slot, 'no_heartbeat'))}"
    kill_wrapper(slot)
    kill_qemu(slot)
    print(f"heartbeat: {trial.kills}, ok={trial.passed} {trial.note}", flush=True)
    return [trial]


HB_JOB = COUNTING_JOB.replace(
    "<enable_shared_directory/>",
    "<enable_shared_directory/><heartbeat_filename>hb</heartbeat_filename>"
    "<minimum_heartbeat_interval>30</minimum_heartbeat_interval>",
)
HB_APP = """#!/bin/sh
i=0
while [ $i -lt 8 ]; do i=$((i+1)); date > hb; sleep 1; done
echo "stopped touching hb" > result
while :; do sleep 1; done
"""


def sweep_hbfile(base: Path) -> list[Trial]:
    work = base / "hbfile"
    slot = work / "slots" / "0"
    # the first check needs the file: ship one as an input, as a project would
    (base / "hb-in").write_text("0\n")
    app = package_app(base / "hb-pkg", guest_image(), HB_APP, HB_JOB,
                      inputs=[("hb", base / "hb-in")])  # fmt: skip
    started = time.monotonic()
    report = run(app, work, max_episodes=1)
    trial = Trial("hbfile", 0, ["guest stops touching its heartbeat file"])
    trial.outcome = report.outcome.value
    trial.episodes = report.episodes
    trial.output_ok = report.finish_status in (-182, -161)  # ERR_TIMEOUT, or missing at start
    trial.record_ok = record_ok(slot)
    trial.seconds = round(time.monotonic() - started, 1)
    trial.note = f"finish {report.finish_status}: {report.finish_message}"
    kill_qemu(slot)
    print(f"hbfile: {trial.note}, ok={trial.passed}", flush=True)
    return [trial]


def _snapshots(slot: Path) -> str:
    import subprocess

    disk = slot / "vm_disk.qcow2"
    if not disk.exists():
        return ""
    return subprocess.run(["qemu-img", "snapshot", "-U", "-l", str(disk)],
                          capture_output=True, text=True, timeout=60).stdout  # fmt: skip


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def summary(trials: list[Trial], seed: int) -> str:
    lines = [f"Seed {seed}. {sum(t.passed for t in trials)}/{len(trials)} trials passed.", "",
             "| sweep | # | faults injected | outcome | runs | same output | record sound | s |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for t in trials:
        lines.append(
            f"| {t.sweep} | {t.n} | {'; '.join(t.kills) or '-'} | {t.outcome} | {t.episodes} "
            f"| {'yes' if t.output_ok else 'NO'} | {'yes' if t.record_ok else 'NO'} "
            f"| {t.seconds:.0f} |"
        )
    failed = [t for t in trials if not t.passed]
    for t in failed:
        lines.append(f"\nFAILED {t.sweep} #{t.n}: {t.note}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="jobs with random kills")
    parser.add_argument("--quit", type=int, default=5, help="jobs killed mid-save at quit")
    parser.add_argument("--qemu-too", type=float, default=0.25, help="P(kill QEMU as well)")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    parser.add_argument("--only", default="kills,quit,heartbeat,hbfile")
    parser.add_argument("--json", type=Path, default=ROOT / "build" / "faults.json")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    only = set(args.only.split(","))
    rng = random.Random(args.seed)
    base = args.workdir or Path(tempfile.mkdtemp(prefix="vmwrapper-faults-"))
    base.mkdir(parents=True, exist_ok=True)
    app = package_app(base / "pkg", guest_image(), RESUMABLE_APP)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    trials: list[Trial] = []
    job = job_seconds(app, base) if only & {"kills", "quit"} else 0.0
    if "kills" in only:
        trials += sweep_kills(app, base, args.kills, rng, args.qemu_too, job)
    if "quit" in only:
        trials += sweep_quit(app, base, args.quit, rng, job)
    if "heartbeat" in only:
        trials += sweep_heartbeat(base)
    if "hbfile" in only:
        trials += sweep_hbfile(base)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([asdict(t) for t in trials], indent=1))
    print(summary(trials, args.seed))
    return 0 if all(t.passed for t in trials) else 1


if __name__ == "__main__":
    sys.exit(main())
