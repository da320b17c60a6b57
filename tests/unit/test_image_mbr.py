"""MBR and partition layout of the guest disk."""

from __future__ import annotations

import struct

import pytest

from vmwrapper.images.mbr import (
    FAT16_LBA,
    MIN_PARTITION_MIB,
    PARTITION_START_LBA,
    DiskLayout,
    chs,
    master_boot_record,
    partition_entry,
    plan_layout,
    read_partition_table,
)

MIB = 1024 * 1024


def test_small_payload_gets_the_minimum_fat16_partition() -> None:
    layout = plan_layout(100_000)
    assert layout.partition_start == PARTITION_START_LBA
    assert layout.partition_sectors * 512 == MIN_PARTITION_MIB * MIB
    assert layout.total_bytes == (1 + MIN_PARTITION_MIB) * MIB
    assert layout.partition_kib == MIN_PARTITION_MIB * 1024


def test_large_payload_fits_with_slack_in_whole_mib() -> None:
    payload = 40 * MIB
    layout = plan_layout(payload)
    assert layout.partition_sectors * 512 >= payload * 1.25
    assert (layout.partition_sectors * 512) % MIB == 0


def test_chs_of_known_addresses() -> None:
    assert chs(0) == bytes((0, 1, 0))  # cylinder 0, head 0, sector 1
    assert chs(2048) == bytes((32, 33, 0))  # 2048 = 32 heads * 63 + 32 -> sector 33
    assert chs(255 * 63) == bytes((0, 1, 1))  # first sector of cylinder 1
    assert chs(1024 * 255 * 63) == b"\xfe\xff\xff"  # past CHS range


def test_partition_entry_fields() -> None:
    entry = partition_entry(2048, 30720, FAT16_LBA, bootable=True)
    assert len(entry) == 16
    assert entry[0] == 0x80 and entry[4] == FAT16_LBA
    assert struct.unpack("<II", entry[8:]) == (2048, 30720)
    with pytest.raises(ValueError):
        partition_entry(0, 10, FAT16_LBA, bootable=False)


def test_master_boot_record_layout_and_round_trip() -> None:
    code = b"\xfa\xeb\xfe" * 100
    layout = DiskLayout(2048, 30720)
    sector = master_boot_record(code, layout, disk_signature=0x12345678)
    assert len(sector) == 512
    assert sector[:300] == code and sector[300:440] == bytes(140)
    assert sector[440:444] == struct.pack("<I", 0x12345678)
    assert sector[510:] == b"\x55\xaa"
    (part,) = read_partition_table(sector)
    assert part.bootable and part.ptype == FAT16_LBA
    assert (part.start_lba, part.sectors) == (2048, 30720)


def test_boot_code_too_long_is_refused() -> None:
    with pytest.raises(ValueError):
        master_boot_record(bytes(441), DiskLayout(2048, 30720), disk_signature=0)


def test_sector_without_signature_has_no_partitions() -> None:
    assert read_partition_table(bytes(512)) == ()
