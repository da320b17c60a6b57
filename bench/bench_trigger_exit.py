"""Completion trigger written in the guest → `vmwrapper run` exited (goal: under 1.5 s).

A job under `vmwrapper job` whose guest app prints `BENCH_MARK trigger` on the console and at
once writes the completion trigger file `done` in /root/shared. The script polls every
POLL s: the slot's console log for the marker (the serial console reaches the host file at
once, so this is when the guest wrote the trigger, on the host's clock), `shared/done` on the
host (the guest agent's push), and the wrapper process (gone or a zombie = exited). Side by
side, alternating: the same job ending the other way vboxwrapper supports, the app exiting
(`BENCH_MARK exit`) so the guest pushes, powers off and the wrapper sees the VM stop.

    .venv/bin/python bench/bench_trigger_exit.py [--reps N]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from common import (
    LoadWatch,
    Result,
    Stats,
    alternate,
    events,
    find_descendant,
    guest_image,
    is_wrapper,
    machine,
    package_app,
    paired_ratio,
    progress,
    today,
    vmwrapper_job,
    wait_job,
    write_result,
)

GOAL_S = 1.5
POLL = 0.01
TIMEOUT = 300.0

APPS = {
    "trigger": """#!/bin/sh
sleep 2
echo "BENCH_MARK trigger"
printf '0\\n' > done
sleep 120
""",
    "poweroff": """#!/bin/sh
sleep 2
echo "BENCH_MARK exit"
exit 0
""",
}
HEAD = (
    "| rep | trigger written → wrapper exited (s) | of which: written → on the host (s) "
    "| host → wrapper saw it (s) | wrapper saw it → exited (s) "
    "| app exit → wrapper exited, power-off ending (s) |\n"
    "|---|---|---|---|---|---|"
)
MARKS = {"trigger": "BENCH_MARK trigger", "poweroff": "BENCH_MARK exit"}

JOB = """<vbox_job>
  <os_name>Linux26_64</os_name>
  <vmwrapper_backends>qemu</vmwrapper_backends>
  <vmwrapper_software_emulation/>
  <memory_size_mb>256</memory_size_mb>
  <enable_shared_directory/>
  <completion_trigger_file>done</completion_trigger_file>
</vbox_job>
"""


@dataclass(frozen=True)
class Timing:
    mark_to_exit: float
    mark_to_host: float | None  # trigger file on the host (trigger variant only)
    host_to_detect: float | None  # on the host → the wrapper's completion_trigger event
    detect_to_exit: float | None  # wrapper's completion_trigger event → exited


def exited(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def measure(app: Path, work: Path, variant: str) -> Timing:
    mark = MARKS[variant]
    with vmwrapper_job(app, work, "--keep-slot") as run:
        root = psutil.Process(run.proc.pid)
        wrapper = None
        t_mark = t_host = t_exit = None
        wall_exit = wall_host = 0.0
        deadline = time.monotonic() + TIMEOUT
        while t_exit is None and time.monotonic() < deadline:
            now = time.monotonic()
            wrapper = wrapper or find_descendant(root, is_wrapper)
            if t_mark is None and mark in run.console():
                t_mark = now
            if t_host is None and (run.slot / "shared" / "done").exists():
                t_host, wall_host = now, time.time()
            if wrapper is not None and t_mark is not None and exited(wrapper):
                t_exit, wall_exit = now, time.time()
            time.sleep(POLL)
        wait_job(run, max(deadline - time.monotonic(), 1.0))
        stamps = {str(e["event"]): float(str(e["ts"])) for e in events(run.slot)}
    if t_mark is None or t_exit is None:
        raise RuntimeError(f"marker or exit not seen ({work})")
    detect = stamps.get("completion_trigger")
    return Timing(
        mark_to_exit=t_exit - t_mark,
        mark_to_host=None if t_host is None else t_host - t_mark,
        host_to_detect=None if detect is None or t_host is None else detect - wall_host,
        detect_to_exit=None if detect is None else wall_exit - detect,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=4)
    args = parser.parse_args()
    load = LoadWatch()
    image = guest_image()
    tmp = Path(tempfile.mkdtemp(prefix="bench-trigger-"))
    timings: dict[str, list[Timing]] = {v: [] for v in APPS}
    try:
        apps = {v: package_app(tmp / f"app-{v}", image, text, JOB) for v, text in APPS.items()}
        for rep, variant in alternate(tuple(APPS), args.reps):
            work = tmp / f"{variant}{rep}"
            t = measure(apps[variant], work, variant)
            timings[variant].append(t)
            progress(f"rep {rep} {variant}: {t}")
            shutil.rmtree(work, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_result(build_result(timings, load))


def build_result(timings: dict[str, list[Timing]], load: LoadWatch) -> Result:
    trig = [t.mark_to_exit for t in timings["trigger"]]
    off = [t.mark_to_exit for t in timings["poweroff"]]
    total, plain = Stats(tuple(trig)), Stats(tuple(off))
    push = Stats(tuple(t.mark_to_host for t in timings["trigger"] if t.mark_to_host is not None))
    after = Stats(
        tuple(t.detect_to_exit for t in timings["trigger"] if t.detect_to_exit is not None)
    )
    notice = Stats(
        tuple(t.host_to_detect for t in timings["trigger"] if t.host_to_detect is not None)
    )
    rows = "\n".join(
        f"| {i} | {t.mark_to_exit:.2f} | "
        f"{'-' if t.mark_to_host is None else f'{t.mark_to_host:.2f}'} | "
        f"{'-' if t.host_to_detect is None else f'{t.host_to_detect:.2f}'} | "
        f"{'-' if t.detect_to_exit is None else f'{t.detect_to_exit:.2f}'} | {o:.2f} |"
        for i, (t, o) in enumerate(zip(timings["trigger"], off, strict=True))
    )
    body = f"""
{HEAD}
{rows}

* trigger written → on the host (the guest agent's next push): {push.show("s")}
* the wrapper's `completion_trigger` event → the process gone: {after.show("s")}
* on the host → the wrapper's `completion_trigger` event (its look between ticks):
  {notice.show("s")}

The path: the guest agent mounts the share and pushes new files about once a second; the
wrapper looks for the trigger files every 0.2 s between its 1 s ticks (`Timers.trigger_poll`)
and for the VM's process every 0.05 s (`Timers.exit_poll`, the power-off ending); then it
powers the VM off hard, removes the slot's VM files, writes its final status and
`boinc_finish_called` (without waiting for the client's next read) and exits.
"""
    return Result(
        key="trigger_exit",
        title="Completion trigger written → wrapper exited",
        goal=f"< {GOAL_S:g} s",
        measured=f"trigger {total.show('s')}; power-off ending {plain.show('s')}",
        ratio=(
            f"trigger / power-off ending {paired_ratio(trig, off).show('', 2)}; "
            f"trigger / goal {total.median / GOAL_S:.2f}"
        ),
        met=total.median < GOAL_S,
        command=".venv/bin/python bench/bench_trigger_exit.py",
        date=today(),
        machine=machine(),
        load=load.show(),
        body=body,
    )


if __name__ == "__main__":
    main()
