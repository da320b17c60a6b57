"""The shared directory's two QEMU transports side by side: virtio-9p sync windows and the
file service on a virtio-serial port (docs/shared-transport.md).

One guest per repetition and transport (QemuBackend, the default guest image, TCG unless
KVM works), alternating 9p / serial:

* **inputs in**: the guest agent's pull of ``in.bin`` (IN_MIB MiB of random bytes), timed by
  the guest itself (its ``pulled ... in S s`` line);
* **trigger latency**: the app writes a small file and at once prints a marker; the time from
  the marker on the console (the host's clock; the console file is written at once) to the
  file on the host, TRIGGERS times per run. The agent looks once a second, so 0–1 s of it is
  the agent's period;
* **outputs out**: the app renames a copy of ``in.bin`` (made under the agent's temp prefix,
  which it never pushes) to ``out.bin`` and prints a marker; marker → ``out.bin`` complete on
  the host (both transports write a temp name and rename), including up to 1 s of that period.

    .venv/bin/python bench/bench_transport.py [--reps N] [--mib M]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import (
    LoadWatch,
    Result,
    Stats,
    alternate,
    guest_image,
    machine,
    progress,
    today,
    write_result,
)

from vmwrapper.hypervisor.base import Share, VmConfig
from vmwrapper.hypervisor.qemu.backend import QemuBackend

TRANSPORTS = ("9p", "serial")
#: The app's pauses before each trigger file: uneven, so the files meet the agent's 1 s
#: period at different phases (an even 1.3 s locks onto a 1.3 s agent cycle).
PAUSES = ("0.7", "1.6", "1.1", "1.9", "0.9", "1.4", "0.5", "1.2")
TRIGGERS = len(PAUSES)
POLL = 0.01
TIMEOUT = 300.0

APP = """#!/bin/sh
n=0
for pause in {pauses}; do
    n=$((n + 1))
    sleep "$pause"
    echo "$n" > "trigger_$n"
    echo "BENCH_MARK trigger $n"
done
cp in.bin .vmwrapper-tmp.out
sleep 1.5
mv .vmwrapper-tmp.out out.bin
echo "BENCH_MARK out"
sleep 3
"""
PULLED = re.compile(r"VMWRAPPER_GUEST: pulled .* in ([0-9.]+) s \((9p|serial)\)")


@dataclass(frozen=True)
class Sample:
    pull_s: float
    triggers_s: tuple[float, ...]
    out_s: float


def make_slot(root: Path, image: Path, transport: str, mib: int) -> VmConfig:
    slot = root / "slots" / "0"
    project = root / "projects" / "bench"
    shared = slot / "shared"
    for d in (shared, project):
        d.mkdir(parents=True)
    (shared / "boinc_app").write_text(APP.format(pauses=" ".join(PAUSES)))
    (shared / "boinc_app").chmod(0o755)
    (shared / "in.bin").write_bytes(os.urandom(mib * 1024 * 1024))
    shutil.copyfile(image, slot / "vm_image.vdi")
    return VmConfig(
        name="boinc_bench_transport",
        description="bench_transport",
        slot_dir=slot,
        project_dir=project,
        memory_mb=256 + 3 * mib,  # in.bin pulled, its copy, and the push's copy (serial)
        disk_image=slot / "vm_image.vdi",
        shares=(Share("shared", shared, transport=transport),),
        allow_software_emulation=True,
    )


def measure(config: VmConfig, mib: int) -> Sample:
    shared = config.slot_dir / "shared"
    size = mib * 1024 * 1024
    marks: dict[str, float] = {}
    landed: dict[str, float] = {}
    pull_s: float | None = None
    with QemuBackend(config) as vm:
        vm.start()
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and vm.status().state.online:
            now = time.monotonic()
            for line in vm.guest_log():
                if match := PULLED.search(line):
                    pull_s = float(match.group(1))
                if line.startswith("BENCH_MARK "):
                    marks[line.removeprefix("BENCH_MARK ")] = now
            for n in range(1, TRIGGERS + 1):
                if f"trigger {n}" not in landed and (shared / f"trigger_{n}").exists():
                    landed[f"trigger {n}"] = now
            out = shared / "out.bin"
            if "out" not in landed and out.exists() and out.stat().st_size == size:
                landed["out"] = now
            time.sleep(POLL)
    missing = {f"trigger {n}" for n in range(1, TRIGGERS + 1)} | {"out"}
    if pull_s is None or missing - marks.keys() or missing - landed.keys():
        raise RuntimeError(f"incomplete run: pull {pull_s}, marks {marks}, landed {landed}")
    return Sample(
        pull_s=pull_s,
        triggers_s=tuple(
            landed[f"trigger {n}"] - marks[f"trigger {n}"] for n in range(1, TRIGGERS + 1)
        ),
        out_s=landed["out"] - marks["out"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--mib", type=int, default=32, help="size of in.bin and out.bin")
    args = parser.parse_args()
    load = LoadWatch()
    image = guest_image()
    samples: dict[str, list[Sample]] = {t: [] for t in TRANSPORTS}
    tmp = Path(tempfile.mkdtemp(prefix="bench-transport-"))
    try:
        for rep, transport in alternate(TRANSPORTS, args.reps):
            work = tmp / f"{transport}{rep}"
            sample = measure(make_slot(work, image, transport, args.mib), args.mib)
            samples[transport].append(sample)
            progress(f"rep {rep} {transport}: {sample}")
            shutil.rmtree(work, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_result(build_result(samples, args.mib, load))


def _figures(samples: list[Sample], mib: int) -> tuple[Stats, Stats, Stats]:
    pull = Stats(tuple(mib / s.pull_s for s in samples))
    out = Stats(tuple(mib / s.out_s for s in samples))
    trig = Stats(tuple(t for s in samples for t in s.triggers_s))
    return pull, out, trig


def build_result(samples: dict[str, list[Sample]], mib: int, load: LoadWatch) -> Result:
    figs = {t: _figures(samples[t], mib) for t in TRANSPORTS}
    rows = "\n".join(
        f"| {t} | {pull.show('MiB/s', 1)} | {out.show('MiB/s', 1)} | {trig.show('s')} |"
        for t, (pull, out, trig) in figs.items()
    )
    runs = "\n".join(
        f"| {t} | {i} | {s.pull_s:.2f} | {s.out_s:.2f} | "
        f"{' '.join(f'{x:.2f}' for x in s.triggers_s)} |"
        for t in TRANSPORTS
        for i, s in enumerate(samples[t])
    )
    head = (
        f"| transport | inputs in ({mib} MiB pull) | outputs out ({mib} MiB, marker → on the "
        "host) | small trigger file, written → on the host |\n|---|---|---|---|"
    )
    body = f"""
{head}
{rows}

| transport | rep | pull (s) | out.bin out (s) | trigger latencies (s) |
|---|---|---|---|---|
{runs}

The guest agent looks for changed files once a second under both transports, so a trigger
file's latency is its period (0–1 s, 0.5 s on average) plus the window itself; "outputs out"
includes that period too (the figure is a lower bound of the transport's own rate).
"""
    serial_pull, serial_out, serial_trig = figs["serial"]
    ninep_pull, ninep_out, ninep_trig = figs["9p"]
    return Result(
        key="share_transport",
        title="Shared directory: 9p windows vs the serial file service",
        goal="trigger files on the host within 1 s; pick the default from the figures",
        measured=(
            f"9p in {ninep_pull.show('MiB/s', 1)}, out {ninep_out.show('MiB/s', 1)}, "
            f"trigger {ninep_trig.show('s')}; serial in {serial_pull.show('MiB/s', 1)}, "
            f"out {serial_out.show('MiB/s', 1)}, trigger {serial_trig.show('s')}"
        ),
        ratio=(
            f"serial / 9p: in {serial_pull.median / ninep_pull.median:.2f}, "
            f"out {serial_out.median / ninep_out.median:.2f}, "
            f"trigger {serial_trig.median / ninep_trig.median:.2f}"
        ),
        met=max(serial_trig.median, ninep_trig.median) < 1.0,
        command=".venv/bin/python bench/bench_transport.py",
        date=today(),
        machine=machine(),
        load=load.show(),
        body=body,
    )


if __name__ == "__main__":
    main()
