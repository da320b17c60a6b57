"""Guest-visible pause per checkpoint, seen from the host: savevm against the live checkpoint,
256 MB and 1 GB guests (goal: the live one at most 20 ms at both sizes).

For each size, two VMs are started (TCG) from the guest image, one taking its checkpoints
with `savevm` (`checkpoint_method="savevm"`), one live. Their app first fills FILL of the
guest's RAM with non-zero data (a job's working set; zero pages cost a snapshot nothing), then
prints a counter line every ~2 ms to the serial console, waiting with the shell's own
`read -t` (no process forked per line: a forked `sleep` made the counter itself stall
~12 ms between lines under TCG, coarser than the goal). A host thread watches each console
file every millisecond and keeps the host time at which new lines arrived. The guest-visible
pause of a checkpoint is the longest gap between arrivals that overlaps the `checkpoint()`
call (the guest's own clock stops while it is paused, so it cannot say); the noise floor is
the longest gap in the quiet stretches just before and after it, same VM.

Checkpoints alternate between the two VMs, CHECKPOINTS each, the previous one deleted after
each as the supervisor does (for the live VM that starts the background merge); the
interval a pause is looked for in covers both calls. Only the VM being measured runs: the
other is paused (QMP `stop`) meanwhile, so that two busy TCG guests do not share the two
cores of this host and each other's checkpoints do not land in the other's noise. For live
checkpoints the wrapper's own log gives where the stop goes: its QMP commands between `stop`
and `migrate`, then QEMU's setup of the migration (it reads every page of the RAM before
write-protecting it) and its downtime (device state, write protection). Then: the slot's
bytes (the console log aside), and the restore, RESTORES times per method, alternating: QEMU
stopped, a new start from the last checkpoint, timed until the counter is seen again. A
refused checkpoint (the guest's 9p sync window open: answered at once, the guest does not
stop) is retried 0.2 s later.

    .venv/bin/python bench/bench_checkpoint_pause.py [--checkpoints N] [--sizes 256,1024]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    LoadWatch,
    Result,
    Stats,
    disk_use,
    guest_image,
    longest_stall,
    machine,
    mib,
    progress,
    stalls_inside,
    today,
    write_result,
)

from vmwrapper.errors import CheckpointRefused
from vmwrapper.hypervisor.base import Share, VmConfig
from vmwrapper.hypervisor.qemu.backend import QemuBackend

GOAL_MS = 20.0
FILL = 0.4  # of the guest's RAM
CHECKPOINTS = 10
RESTORES = 3
QUIET_S = 1.5  # before and after each checkpoint: where the noise floor is measured
SETTLE_S = 0.5  # after a VM is resumed, before its quiet stretch
METHODS = ("savevm", "live")
BOOT_TIMEOUT = 600.0
POLL_S = 0.001

# `yes | head` alone writes ~1 MB/s under TCG; appending an 8 MiB block with cat is fast.
APP = f"""#!/bin/sh
kib=$(awk '/MemTotal/ {{ print $2 }}' /proc/meminfo)
mib=$(( kib * {int(FILL * 100)} / 100 / 1024 / 8 * 8 ))
yes 0123456789abcdef | head -c 1048576 > /tmp/b1
cat /tmp/b1 /tmp/b1 /tmp/b1 /tmp/b1 /tmp/b1 /tmp/b1 /tmp/b1 /tmp/b1 > /tmp/b8
i=0
while [ $i -lt $(( mib / 8 )) ]; do cat /tmp/b8 >> /tmp/fill; i=$((i+1)); done
rm /tmp/b1 /tmp/b8
echo "BENCH_MARK filled $mib MiB"
rm -f /tmp/tick; mkfifo /tmp/tick; exec 3<>/tmp/tick
i=0
while :; do i=$((i+1)); echo "tick $i"; read -t 0.002 x <&3; done
"""


class ConsoleWatch:
    """Host times at which the guest's console file grew by a line with a tick."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.arrivals: list[float] = []
        self._stop = threading.Event()
        self._offset = path.stat().st_size if path.exists() else 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self.path.open("rb") as fh:
                    fh.seek(self._offset)
                    data = fh.read()
            except OSError:
                data = b""
            if data:
                self._offset += len(data)
                if b"tick" in data:
                    self.arrivals.append(time.monotonic())
            time.sleep(POLL_S)

    def first_after(self, moment: float, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            later = [t for t in self.arrivals if t > moment]
            if later:
                return later[0]
            time.sleep(POLL_S)
        raise RuntimeError(f"no counter line on {self.path} within {timeout} s")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Run:
    """One VM's samples."""

    vm: QemuBackend
    watch: ConsoleWatch
    busy: list[tuple[float, float]] = field(default_factory=list)
    quiet: list[tuple[float, float]] = field(default_factory=list)
    took: list[float] = field(default_factory=list)
    stalls: list[float] = field(default_factory=list)
    window_ms: list[float] = field(default_factory=list)  # live: the wrapper's QMP in the stop
    lead_ms: list[float] = field(default_factory=list)  # live: the migration's start → stop
    kinds: list[str] = field(default_factory=list)  # live: how each checkpoint was stopped
    setup_ms: list[float] = field(default_factory=list)  # live: QEMU's migration setup
    downtime_ms: list[float] = field(default_factory=list)  # live: QEMU's own downtime
    refused: int = 0
    slot_bytes: int = 0
    restores: list[float] = field(default_factory=list)


class LiveLog(logging.Handler):
    """The live checkpoints' timings, from the wrapper's own log records."""

    def __init__(self, run: Run) -> None:
        super().__init__(logging.DEBUG)
        self.run = run
        self.kind = ""  # of the checkpoint being taken

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", None)
        if event == "qemu_live_stop_late":
            self.kind = "stopped late, again"
        elif event == "qemu_live_window":
            lead = float(getattr(record, "lead_ms", 0.0))
            self.run.window_ms.append(float(getattr(record, "window_ms", 0.0)))
            self.run.lead_ms.append(lead)
            if not self.kind:
                self.kind = "overlapped" if lead > 0 else "stopped first"
        elif event == "qemu_live_written":
            self.run.setup_ms.append(float(getattr(record, "setup_ms", None) or 0))
            self.run.downtime_ms.append(float(getattr(record, "downtime_ms", None) or 0))


def quiet(run: Run, seconds: float) -> None:
    started = time.monotonic()
    time.sleep(seconds)
    run.quiet.append((started, time.monotonic()))


def make_vm(root: Path, image: Path, memory_mb: int, method: str) -> QemuBackend:
    slot, project = root / "slots" / "0", root / "projects" / "bench"
    shared = slot / "shared"
    shared.mkdir(parents=True)
    project.mkdir(parents=True)
    (shared / "boinc_app").write_text(APP)
    (shared / "boinc_app").chmod(0o755)
    shutil.copyfile(image, slot / "vm_image.vdi")
    config = VmConfig(
        name=f"boinc_bench_{memory_mb}_{method}",
        description=f"bench_{memory_mb}_{method}",
        slot_dir=slot,
        project_dir=project,
        memory_mb=memory_mb,
        cpus=1,
        disk_image=slot / "vm_image.vdi",
        shares=(Share("shared", shared),),
    )
    return QemuBackend(config, accel="tcg", checkpoint_method=method)


def wait_filled(vm: QemuBackend, deadline: float) -> str:
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines += vm.guest_log()
        for line in lines:
            if line.startswith("BENCH_MARK filled"):
                return line
        if not vm.status().state.online:
            break
        time.sleep(0.5)
    raise RuntimeError("the guest never said it filled its memory:\n" + "\n".join(lines[-30:]))


def checkpoint(run: Run, name: str, live_log: LiveLog | None = None) -> None:
    if live_log is not None:
        live_log.kind = ""
    while True:
        started = time.monotonic()
        try:
            run.vm.checkpoint(name)
        except CheckpointRefused:
            run.refused += 1
            if run.refused > 200:
                raise
            time.sleep(0.2)
            continue
        run.took.append(time.monotonic() - started)
        run.busy.append((started, time.monotonic()))
        if live_log is not None:
            run.kinds.append(live_log.kind)
        return


def measure_size(tmp: Path, image: Path, memory_mb: int, count: int) -> dict[str, Run]:
    runs: dict[str, Run] = {}
    live_log = logging.getLogger("vmwrapper.hypervisor.qemu.live")
    with ExitStack() as stack:
        for method in METHODS:
            root = tmp / f"{memory_mb}-{method}"
            vm = stack.enter_context(make_vm(root, image, memory_mb, method))
            vm.create()
            vm.start()
            runs[method] = Run(vm, ConsoleWatch(vm.files.console))
            stack.callback(runs[method].watch.stop)
        handler = LiveLog(runs["live"])
        live_log.addHandler(handler)
        live_log.setLevel(logging.DEBUG)
        stack.callback(live_log.removeHandler, handler)
        deadline = time.monotonic() + BOOT_TIMEOUT
        for method, run in runs.items():
            progress(f"{memory_mb} MB {method}: {wait_filled(run.vm, deadline)}")
            run.vm.pause()
        for rep in range(count):
            order = METHODS if rep % 2 == 0 else tuple(reversed(METHODS))
            for method in order:
                run = runs[method]
                run.vm.resume()
                time.sleep(SETTLE_S)
                quiet(run, QUIET_S)
                checkpoint(run, f"boinc_{rep + 1}", handler if method == "live" else None)
                if rep:  # as the supervisor does; part of what the guest may feel
                    run.vm.delete_checkpoint(f"boinc_{rep}")
                    run.busy[-1] = (run.busy[-1][0], time.monotonic())
                quiet(run, QUIET_S)
                run.vm.pause()
                progress(f"{memory_mb} MB {method} #{rep + 1}: {run.took[-1]:.3f} s")
        for run in runs.values():
            run.vm.resume()
        time.sleep(1.0)  # the live VM's last merge
        for run in runs.values():
            run.vm.status()  # ends a merge that has finished
            run.vm.pause()
            run.stalls = [longest_stall(run.watch.arrivals, a, b) for a, b in run.busy]
            run.slot_bytes = disk_use(
                run.vm.config.slot_dir, exclude=lambda p: p.name.startswith("qemu-")
            ).allocated
        for rep in range(RESTORES):  # one VM at a time, the other paused
            for method in METHODS if rep % 2 == 0 else tuple(reversed(METHODS)):
                run = runs[method]
                run.vm.poweroff(timeout=0)
                started = time.monotonic()
                run.vm.start(restore=f"boinc_{count}")
                run.restores.append(run.watch.first_after(started, 120.0) - started)
                run.vm.pause()
                progress(f"{memory_mb} MB {method}: restored in {run.restores[-1]:.2f} s")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=CHECKPOINTS)
    parser.add_argument("--sizes", default="256,1024")
    args = parser.parse_args()
    load = LoadWatch()
    image = guest_image()
    results: dict[int, dict[str, Run]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
    try:
        for memory_mb in (int(s) for s in args.sizes.split(",")):
            results[memory_mb] = measure_size(tmp, image, memory_mb, args.checkpoints)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_result(build_result(results, load))


def _median_ratio(a: list[float], b: list[float]) -> float:
    return Stats(tuple(a)).median / max(Stats(tuple(b)).median, 1e-9)


def _ms(values: list[float]) -> Stats:
    return Stats(tuple(v * 1000 for v in values))


def _stop_parts(run: Run) -> str:
    """The live checkpoint's stopped window, in medians: the wrapper's QMP commands, QEMU's
    migration setup (less the lead, where the migration started before the stop) and QEMU's
    downtime (savevm: the whole save is the stop)."""
    if not run.setup_ms:
        return "—"
    inside = [max(0.0, s - lead) for s, lead in zip(run.setup_ms, run.lead_ms, strict=False)]
    parts = (run.window_ms, inside, run.downtime_ms)
    return " + ".join(f"{Stats(tuple(p)).median:.0f}" for p in parts) + " ms"


def _by_kind(run: Run) -> str:
    """The live checkpoints' pauses by how the guest was stopped."""
    pauses: dict[str, list[float]] = {}
    for pause, kind in zip(run.stalls, run.kinds, strict=True):
        pauses.setdefault(kind, []).append(pause)
    return "; ".join(f"{kind}: {_ms(p).show('ms', 0)}" for kind, p in sorted(pauses.items()))


def build_result(results: dict[int, dict[str, Run]], load: LoadWatch) -> Result:
    lines = []
    live_highs: list[float] = []
    restore_ok = slot_ok = True
    for memory_mb, runs in results.items():
        size = f"{memory_mb} MB" if memory_mb < 1024 else f"{memory_mb // 1024} GB"
        for method, run in runs.items():
            noise = stalls_inside(run.watch.arrivals, run.quiet)
            lines.append(
                f"| {size} | {method} | {_ms(run.stalls).show('ms', 0)} | "
                f"{_ms(noise).show('ms', 0)} | {_stop_parts(run)} | "
                f"{Stats(tuple(run.took)).show('s', 2)} | "
                f"{Stats(tuple(run.restores)).show('s', 2)} | {mib(run.slot_bytes)} | "
                f"{run.refused} |"
            )
        live, savevm = runs["live"], runs["savevm"]
        live_highs.append(max(live.stalls) * 1000)
        restore_ok &= Stats(tuple(live.restores)).median <= Stats(tuple(savevm.restores)).median
        slot_ok &= live.slot_bytes <= savevm.slot_bytes
    table = "\n".join(lines)
    kinds = "\n".join(
        f"* {mb} MB: {_by_kind(runs['live'])}" for mb, runs in results.items() if runs["live"].kinds
    )
    summary = "; ".join(
        f"{mb} MB live {_ms(runs['live'].stalls).show('ms', 0)} vs savevm "
        f"{_ms(runs['savevm'].stalls).show('ms', 0)}"
        for mb, runs in results.items()
    )
    ratio = "; ".join(
        f"{mb} MB savevm / live {_median_ratio(runs['savevm'].stalls, runs['live'].stalls):.0f}"
        for mb, runs in results.items()
    )
    goal_met = bool(live_highs) and max(live_highs) <= GOAL_MS
    body = f"""
Guest-visible pause, seen from the host: the guest app prints a counter line every ~5 ms
(`sleep 0.005` under TCG) to the serial console, a host thread looks at the console file
every millisecond, and the pause of a checkpoint is the longest gap between arrivals that
overlaps the `checkpoint()` call. The noise floor is the longest gap in the quiet stretches
({QUIET_S:g} s) just before and after each checkpoint, same VM. Both VMs of a size were booted
with {FILL:.0%} of their RAM filled; checkpoints alternated between them, and only the VM being
measured ran (the other paused); each checkpoint deleted the one before (the live VM then
merged its disk layer in the background). Stopped window (live) = medians of the wrapper's
QMP commands from `stop` to `migrate` + QEMU's migration setup (done while the guest is
stopped, because the disk must be frozen in the same window) + QEMU's downtime. Total =
the `checkpoint()` call (the live one returns once the RAM file is written, synced and its
manifest written; the guest runs meanwhile). Restore = QEMU stopped, then `start(restore=)`
until the counter is seen again ({RESTORES} times each, alternating). Slot = bytes allocated
in the slot after the last checkpoint (the logs aside): the overlays, layers and RAM file.

| guest | method | pause around a checkpoint | noise floor | stopped window (live) \
| total checkpoint time | restore | slot after the last checkpoint | refused first |
|---|---|---|---|---|---|---|---|---|
{table}

The live checkpoints' pauses by how the guest was stopped (the first checkpoint of a QEMU,
and any whose last setup was too short to be worth a lead, stop the guest before the
migration starts; the others start it first, docs/qemu-backend.md#the-stopped-window):

{kinds}

Goals: live pause ≤ {GOAL_MS:g} ms at every size: {"met" if goal_met else "MISSED"}; restore
no slower than savevm's `-loadvm`: {"met" if restore_ok else "MISSED"}; slot no bigger than
with savevm: {"met" if slot_ok else "MISSED"}.
"""
    return Result(
        key="checkpoint_pause",
        title="Guest pause per checkpoint: savevm vs live, 256 MB and 1 GB",
        goal=f"live: ≤ {GOAL_MS:g} ms guest-visible pause at 256 MB and 1 GB",
        measured=summary,
        ratio=ratio,
        met=goal_met,
        command=".venv/bin/python bench/bench_checkpoint_pause.py",
        date=today(),
        machine=machine(),
        load=load.show(),
        body=body,
    )


if __name__ == "__main__":
    main()
