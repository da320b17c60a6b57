"""Per-task disk use: multiattach (one parent in the project dir, an overlay per slot) versus
a per-slot copy of the image (`<copy_file/>`, what the client does without multiattach).

For each variant, alternately: a fresh BOINC-like tree (project dir holding the downloaded
VDI), a slot set up as the client would (copy mode: the VDI copied into the slot), then the
QEMU back end creates the VM, boots the guest image, and takes one checkpoint (a 256 MB guest
with 64 MiB of its RAM written by the app). The slot's files are summed (allocated blocks, and
apparent sizes) after `create()` and after the checkpoint, and so is what the project dir
gained (a multiattach parent is converted to qcow2 once per project, next to the parent; a
slot's VDI copy is converted once per image content into the project dir too, and the copy is
replaced by a link to that conversion).

    .venv/bin/python bench/bench_disk_multiattach.py [--reps N]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import (
    DiskUse,
    LoadWatch,
    Result,
    Stats,
    alternate,
    disk_use,
    guest_image,
    machine,
    mib,
    paired_ratio,
    progress,
    today,
    write_result,
)

from vmwrapper.errors import CheckpointRefused
from vmwrapper.hypervisor.base import Share, VmConfig
from vmwrapper.hypervisor.qemu.backend import QemuBackend

BOOT_TIMEOUT = 300.0
PARENT = "vm_image_1.vdi"
APP = """#!/bin/sh
yes 0123456789abcdef | head -c 1048576 > /tmp/b1
cat /tmp/b1 /tmp/b1 /tmp/b1 /tmp/b1 /tmp/b1 /tmp/b1 /tmp/b1 /tmp/b1 > /tmp/b8
for i in 1 2 3 4 5 6 7 8; do cat /tmp/b8 >> /tmp/fill; done
rm /tmp/b1 /tmp/b8
echo "BENCH_MARK ready"
sleep 1800
"""


@dataclass(frozen=True)
class Usage:
    created: DiskUse  # slot after create(): overlays (and the copy and its conversion)
    checkpointed: DiskUse  # slot after one checkpoint
    project_added: DiskUse  # what the project dir gained (shared by every task)


def setup(root: Path, image: Path, variant: str) -> QemuBackend:
    project, slot = root / "projects" / "bench", root / "slots" / "0"
    shared = slot / "shared"
    project.mkdir(parents=True)
    shared.mkdir(parents=True)
    shutil.copyfile(image, project / PARENT)  # the downloaded file
    (shared / "boinc_app").write_text(APP)
    (shared / "boinc_app").chmod(0o755)
    disk_image: Path | None = None
    parent: Path | None = None
    if variant == "copy":
        disk_image = slot / "vm_image.vdi"
        shutil.copyfile(project / PARENT, disk_image)  # the client's <copy_file/>
    else:
        parent = project / PARENT
    config = VmConfig(
        name="boinc_bench_disk",
        description="bench_disk",
        slot_dir=slot,
        project_dir=project,
        memory_mb=256,
        cpus=1,
        shares=(Share("shared", shared),),
        disk_image=disk_image,
        multiattach_parent=parent,
    )
    return QemuBackend(config, accel="tcg")


def wait_ready(vm: QemuBackend) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines += vm.guest_log()
        if "BENCH_MARK ready" in lines:
            return
        if not vm.status().state.online:
            break
        time.sleep(0.5)
    raise RuntimeError("guest not ready:\n" + "\n".join(lines[-30:]))


def checkpoint(vm: QemuBackend, name: str) -> None:
    for _ in range(100):
        try:
            vm.checkpoint(name)
            return
        except CheckpointRefused:
            time.sleep(0.2)
    raise RuntimeError("every checkpoint refused")


def measure(root: Path, image: Path, variant: str) -> Usage:
    with setup(root, image, variant) as vm:
        slot, project = vm.config.slot_dir, vm.config.project_dir
        project_before = disk_use(project)
        vm.create()
        created = disk_use(slot)
        vm.start()
        wait_ready(vm)
        checkpoint(vm, "bench_1")
        checkpointed = disk_use(slot, exclude=lambda p: p.suffix in (".sock", ".pid"))
        project_after = disk_use(project)
    added = DiskUse(
        project_after.apparent - project_before.apparent,
        project_after.allocated - project_before.allocated,
    )
    return Usage(created, checkpointed, added)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    load = LoadWatch()
    image = guest_image()
    tmp = Path(tempfile.mkdtemp(prefix="bench-disk-"))
    usage: dict[str, list[Usage]] = {"multiattach": [], "copy": []}
    try:
        for rep, variant in alternate(tuple(usage), args.reps):
            u = measure(tmp / f"{variant}{rep}", image, variant)
            usage[variant].append(u)
            progress(
                f"rep {rep} {variant}: slot {mib(u.created.allocated)} created, "
                f"{mib(u.checkpointed.allocated)} after a checkpoint; project "
                f"+{mib(u.project_added.allocated)}"
            )
            shutil.rmtree(tmp / f"{variant}{rep}", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_result(build_result(usage, image, load))


#: The per-slot copy before the conversion moved to the project dir (2026-11-27 run).
BEFORE_COPY_CREATED = 22.8
BEFORE_COPY_CHECKPOINTED = 170.3


def build_result(usage: dict[str, list[Usage]], image: Path, load: LoadWatch) -> Result:
    def stat(variant: str, pick: str) -> Stats:
        return Stats(tuple(getattr(u, pick).allocated / 2**20 for u in usage[variant]))

    m_c, c_c = stat("multiattach", "created"), stat("copy", "created")
    m_k, c_k = stat("multiattach", "checkpointed"), stat("copy", "checkpointed")
    m_p, c_p = stat("multiattach", "project_added"), stat("copy", "project_added")
    ratio_created = paired_ratio(m_c.values, c_c.values)
    ratio_ckpt = paired_ratio(m_k.values, c_k.values)
    vdi = image.stat().st_size / 2**20

    def total(n: int, per_task: float, project: float) -> float:
        return vdi + project + n * per_task

    created_row = (
        f"| after `create()` (before boot) | {m_c.show('', 2)} | {c_c.show('', 1)} | "
        f"{ratio_created.show('', 4)} |"
    )
    rows = "\n".join(
        f"| {n} | {total(n, c_k.median, c_p.median):.0f} | {total(n, m_k.median, m_p.median):.0f} |"
        for n in (1, 2, 4, 8)
    )
    body = f"""
The image: the default guest image, {vdi:.1f} MiB as VDI. "Allocated" = blocks on disk
(`st_blocks`), which is what fills a disk; the slot's files are summed, `shared/` included.

| per task (slot), allocated MiB | multiattach | per-slot copy | ratio |
|---|---|---|---|
{created_row}
| after boot + one checkpoint | {m_k.show("", 1)} | {c_k.show("", 1)} | {ratio_ckpt.show("", 3)} |
| once per project (project dir gained) | {m_p.show("", 1)} | {c_p.show("", 1)} | |

QEMU cannot snapshot with a VDI open, so a VDI is converted to qcow2 once. With multiattach
the parent's conversion is made once in the project dir and the slot holds only its overlay
(`vm_disk.qcow2`). With a per-slot copy (`<copy_file/>`) the slot's VDI is now converted once
per image content into the project dir too (`vm_image.vdi.<sha256>.qcow2`, shared by every
task of the app version) and the copy is replaced by a BOINC link file to it, so the slot
again holds only its overlay; before this change it held the VDI copy plus its own
conversion: {BEFORE_COPY_CREATED} MiB before boot, {BEFORE_COPY_CHECKPOINTED} MiB after a
checkpoint (2026-11-27, same host and image). A checkpoint puts the VM's state (here a 256 MB
guest with 64 MiB written) into the slot's overlay in both modes.

Host total (project VDI + conversions + N tasks after one checkpoint each), MiB:

| tasks | per-slot copy | multiattach |
|---|---|---|
{rows}
"""
    return Result(
        key="disk_multiattach",
        title="Per-task disk use: multiattach vs per-slot copy",
        goal="(comparison; no goal set)",
        measured=(
            f"multiattach {m_c.median:.2f} MiB vs copy {c_c.median:.1f} MiB per slot before "
            f"boot; {m_k.median:.1f} vs {c_k.median:.1f} MiB after one checkpoint"
        ),
        ratio=f"{ratio_created.median:.4f} before boot; {ratio_ckpt.median:.3f} after a checkpoint",
        met=None,
        command=".venv/bin/python bench/bench_disk_multiattach.py",
        date=today(),
        machine=machine(),
        load=load.show(),
        body=body,
    )


if __name__ == "__main__":
    main()
