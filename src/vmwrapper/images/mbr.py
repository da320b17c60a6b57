"""The disk layout of a guest image: MBR, one bootable FAT16 partition (pure).

The image is built without root, loop devices or mounts: ``mkfs.fat`` formats the partition at
an offset inside the raw file, and this module computes the sizes and writes the 512-byte
master boot record (boot code from syslinux's ``mbr.bin``, then the partition table).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SECTOR = 512
#: The first partition starts at 1 MiB, as every modern partitioner does.
PARTITION_START_LBA = 2048
#: FAT16 with LBA addressing; understood by syslinux's mbr.bin, SeaBIOS and VirtualBox's BIOS.
FAT16_LBA = 0x0E
#: Below this FAT16 has too few clusters for mkfs.fat's default cluster size.
MIN_PARTITION_MIB = 15
BOOT_CODE_SIZE = 440
_HEADS = 255
_SECTORS_PER_TRACK = 63


@dataclass(frozen=True)
class DiskLayout:
    """Sizes in 512-byte sectors."""

    partition_start: int
    partition_sectors: int

    @property
    def total_sectors(self) -> int:
        return self.partition_start + self.partition_sectors

    @property
    def total_bytes(self) -> int:
        return self.total_sectors * SECTOR

    @property
    def partition_offset_bytes(self) -> int:
        return self.partition_start * SECTOR

    @property
    def partition_kib(self) -> int:
        """The size argument mkfs.fat takes (1 KiB blocks)."""
        return self.partition_sectors * SECTOR // 1024


def plan_layout(payload_bytes: int, *, slack_percent: int = 25, slack_mib: int = 2) -> DiskLayout:
    """A partition large enough for ``payload_bytes`` of files plus FAT overhead and slack,
    rounded up to whole MiB (at least :data:`MIN_PARTITION_MIB`)."""
    if payload_bytes < 0:
        raise ValueError("payload size cannot be negative")
    mib = 1024 * 1024
    wanted = payload_bytes * (100 + slack_percent) // 100 + slack_mib * mib
    size_mib = max(MIN_PARTITION_MIB, -(-wanted // mib))
    return DiskLayout(PARTITION_START_LBA, size_mib * mib // SECTOR)


def chs(lba: int) -> bytes:
    """The 3-byte cylinder/head/sector address of ``lba`` (255 heads, 63 sectors per track);
    addresses past cylinder 1023 get the conventional all-ones value."""
    cylinder, rest = divmod(lba, _HEADS * _SECTORS_PER_TRACK)
    if cylinder > 1023:
        return b"\xfe\xff\xff"
    head, sector0 = divmod(rest, _SECTORS_PER_TRACK)
    sector = sector0 + 1
    return bytes((head, ((cylinder >> 2) & 0xC0) | sector, cylinder & 0xFF))


def partition_entry(start_lba: int, sectors: int, ptype: int, *, bootable: bool) -> bytes:
    """One 16-byte MBR partition table entry."""
    if sectors <= 0 or start_lba <= 0:
        raise ValueError("a partition needs a positive start and size")
    return (
        bytes((0x80 if bootable else 0x00,))
        + chs(start_lba)
        + bytes((ptype,))
        + chs(start_lba + sectors - 1)
        + struct.pack("<II", start_lba, sectors)
    )


def master_boot_record(boot_code: bytes, layout: DiskLayout, *, disk_signature: int) -> bytes:
    """The first sector: boot code, disk signature, one active FAT16 partition, 0x55AA."""
    if len(boot_code) > BOOT_CODE_SIZE:
        raise ValueError(f"MBR boot code is {len(boot_code)} bytes; at most 440 fit")
    table = partition_entry(
        layout.partition_start, layout.partition_sectors, FAT16_LBA, bootable=True
    ) + bytes(16 * 3)
    sector = (
        boot_code.ljust(BOOT_CODE_SIZE, b"\0")
        + struct.pack("<IH", disk_signature & 0xFFFFFFFF, 0)
        + table
        + b"\x55\xaa"
    )
    assert len(sector) == SECTOR
    return sector


@dataclass(frozen=True)
class PartitionEntry:
    bootable: bool
    ptype: int
    start_lba: int
    sectors: int


def read_partition_table(sector: bytes) -> tuple[PartitionEntry, ...]:
    """The used entries of an MBR (for `image compact`, which zeroes FAT partitions)."""
    if len(sector) < SECTOR or sector[510:512] != b"\x55\xaa":
        return ()
    entries = []
    for i in range(4):
        raw = sector[446 + 16 * i : 446 + 16 * (i + 1)]
        start, count = struct.unpack("<II", raw[8:16])
        if raw[4] != 0 and count:
            entries.append(PartitionEntry(raw[0] == 0x80, raw[4], start, count))
    return tuple(entries)
