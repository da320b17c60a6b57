"""Write a BIOS-bootable raw disk: MBR + one FAT16 partition with syslinux, without root.

``mkfs.fat --offset`` formats the partition inside the file, mtools copies files into it,
``syslinux --install --offset`` writes its boot sector and ldlinux, and the MBR (syslinux's
``mbr.bin`` + our partition table) goes into sector 0.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from vmwrapper.errors import ImageError
from vmwrapper.images.mbr import DiskLayout, master_boot_record
from vmwrapper.images.tools import run

MBR_BIN_CANDIDATES = (
    Path("/usr/lib/syslinux/mbr/mbr.bin"),
    Path("/usr/lib/SYSLINUX/mbr.bin"),
    Path("/usr/share/syslinux/mbr.bin"),
)
#: mtools checks the BIOS geometry of a "drive"; an offset image has none worth checking.
MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0"}
VOLUME_LABEL = "VMWRAPPER"
#: A fixed FAT volume id keeps the image reproducible (mkfs.fat picks a random one).
VOLUME_ID = "766d7772"


def mbr_code() -> bytes:
    for candidate in MBR_BIN_CANDIDATES:
        if candidate.is_file():
            return candidate.read_bytes()[:440]
    raise ImageError("syslinux's mbr.bin is missing; install the Debian package syslinux-common")


def mtools_target(raw: Path, offset: int) -> str:
    return f"{raw}@@{offset}"


def make_boot_disk(
    raw: Path, layout: DiskLayout, files: Mapping[str, Path], *, disk_signature: int
) -> None:
    """Create ``raw`` with ``files`` (name in the FAT root -> host file) and make it boot."""
    with raw.open("wb") as fh:
        fh.truncate(layout.total_bytes)
    offset = layout.partition_offset_bytes
    run(
        [
            "mkfs.fat", "-F", "16", "-n", VOLUME_LABEL, "-i", VOLUME_ID, "--invariant",
            "-h", str(layout.partition_start), "--offset", str(layout.partition_start),
            str(raw), str(layout.partition_kib),
        ]
    )  # fmt: skip
    target = mtools_target(raw, offset)
    for name, src in files.items():
        run(["mcopy", "-o", "-i", target, str(src), f"::/{name}"], env=MTOOLS_ENV)
    run(["syslinux", "--install", "--offset", str(offset), str(raw)])
    with raw.open("r+b") as fh:
        fh.write(master_boot_record(mbr_code(), layout, disk_signature=disk_signature))


def fat_free_bytes(raw: Path, offset: int) -> int:
    out = run(["mdir", "-i", mtools_target(raw, offset), "::/"], env=MTOOLS_ENV)
    match = re.search(r"([\d ]+) bytes free", out)
    if not match:
        raise ImageError(f"mdir did not report the free space of the FAT partition:\n{out}")
    return int(match.group(1).replace(" ", ""))


def zero_fat_free_space(raw: Path, offset: int, scratch: Path) -> None:
    """Fill the free clusters of the FAT file system at ``offset`` with zeros (a zero file as
    large as the free space, then deleted), so a later conversion can drop them."""
    free = fat_free_bytes(raw, offset)
    if free <= 0:
        return
    filler = scratch / "zero.fill"
    with filler.open("wb") as fh:
        fh.truncate(free)  # sparse on the host, read back as zeros
    target = mtools_target(raw, offset)
    try:
        run(["mcopy", "-o", "-i", target, str(filler), "::/ZEROFILL.TMP"], env=MTOOLS_ENV)
    except ImageError:
        pass  # the disk filled up before the last cluster: what was written is zeroed
    finally:
        os.unlink(filler)
    run(["mdel", "-i", target, "::/ZEROFILL.TMP"], env=MTOOLS_ENV)
