"""The RAM state of ONE guest written both ways: a live checkpoint's RAM file against a
`savevm` of the same guest a moment later (diagnostic; docs/performance.md#checkpoint-pause).

bench_checkpoint_pause.py compares the slots of two guests (one per method) whose RAM content
differs a little, so its "slot no bigger than with savevm" comparison carries that
difference. Here one live VM (the same app: FILL of its RAM written, then a counter) takes a
live checkpoint and, right after, an HMP `savevm` into its top disk layer; the two streams
are then of (nearly) the same RAM. Rounds repeat that, the previous ones deleted.

    .venv/bin/python bench/state_size.py [--memory-mb 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench_checkpoint_pause import BOOT_TIMEOUT, ConsoleWatch, Run, checkpoint, make_vm, wait_filled
from common import guest_image, progress

from vmwrapper.hypervisor.qemu.backend import QemuBackend


def vm_state_size(vm: QemuBackend, name: str) -> int:
    """The size of internal snapshot ``name``'s VM state, in whichever disk file holds it."""
    for path in sorted(vm.config.slot_dir.glob("vm_disk*.qcow2")):
        info = json.loads(
            subprocess.run(
                ["qemu-img", "info", "-U", "--output=json", str(path)],
                capture_output=True, text=True, check=True, timeout=60,
            ).stdout
        )  # fmt: skip
        for snap in info.get("snapshots", []):
            if snap["name"] == name:
                return int(snap["vm-state-size"])
    raise RuntimeError(f"no snapshot {name} in the slot's disk files")


def savevm(vm: QemuBackend, name: str) -> None:
    """HMP savevm, retried while the guest's 9p sync window makes QEMU refuse it."""
    for _ in range(200):
        if "Error" not in vm.hmp(f"savevm {name}"):
            return
        time.sleep(0.2)
    raise RuntimeError(f"savevm {name} refused 200 times")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-mb", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-state-"))
    try:
        with ExitStack() as stack:
            vm = stack.enter_context(make_vm(tmp, guest_image(), args.memory_mb, "live"))
            vm.create()
            vm.start()
            run = Run(vm, ConsoleWatch(vm.files.console))
            stack.callback(run.watch.stop)
            progress(wait_filled(vm, time.monotonic() + BOOT_TIMEOUT))
            for i in range(1, args.rounds + 1):
                checkpoint(run, f"live{i}")
                if i > 1:
                    vm.delete_checkpoint(f"live{i - 1}")
                ram = (vm.config.slot_dir / f"live_live{i}.ram").stat().st_size
                savevm(vm, f"savevm{i}")
                state = vm_state_size(vm, f"savevm{i}")
                vm.hmp(f"delvm savevm{i}")
                progress(
                    f"{args.memory_mb} MB round {i}: live RAM file {ram / 2**20:.2f} MiB, "
                    f"savevm state {state / 2**20:.2f} MiB, live - savevm "
                    f"{(ram - state) / 2**20:+.2f} MiB"
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
