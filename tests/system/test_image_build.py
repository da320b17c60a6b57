"""The built guest image, inspected without booting it: disk layout, boot files, initramfs,
and `vmwrapper image convert|compact|info` on it."""

from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path

import pytest

from vmwrapper.cli.main import main as cli_main
from vmwrapper.images import convert, info
from vmwrapper.images.disk import MTOOLS_ENV
from vmwrapper.images.mbr import FAT16_LBA, read_partition_table

pytestmark = pytest.mark.system


def _mtools(*argv: str) -> str:
    return subprocess.run(
        list(argv), env={**os.environ, **MTOOLS_ENV}, capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture(scope="module")
def raw_copy(default_guest_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("raw") / "disk.img"
    convert(default_guest_image, raw, "raw")
    return raw


def test_default_image_is_a_small_vdi(default_guest_image: Path) -> None:
    details = info(default_guest_image)
    assert details.fmt == "vdi"
    assert details.virtual_size <= 64 * 1024 * 1024
    assert details.actual_size < 32 * 1024 * 1024


def test_disk_has_an_active_fat16_partition_with_syslinux_and_the_kernel(raw_copy: Path) -> None:
    with raw_copy.open("rb") as fh:
        sector0 = fh.read(512)
    (part,) = read_partition_table(sector0)
    assert part.bootable and part.ptype == FAT16_LBA
    mbr_bin = Path("/usr/lib/syslinux/mbr/mbr.bin").read_bytes()
    assert sector0[:400] == mbr_bin[:400]  # syslinux's MBR boot code
    listing = _mtools(
        "mdir", "-a", "-b", "-i", f"{raw_copy}@@{part.start_lba * 512}", "::/"
    ).lower()
    for name in ("ldlinux.sys", "ldlinux.c32", "vmlinuz", "initrd.gz", "syslinux.cfg"):
        assert f"::/{name}" in listing
    cfg = _mtools("mtype", "-i", f"{raw_copy}@@{part.start_lba * 512}", "::/syslinux.cfg")
    assert "console=ttyS0" in cfg and "INITRD /initrd.gz" in cfg


def test_initramfs_has_busybox_our_scripts_and_the_modules(raw_copy: Path, tmp_path: Path) -> None:
    with raw_copy.open("rb") as fh:
        (part,) = read_partition_table(fh.read(512))
    initrd = tmp_path / "initrd.gz"
    _mtools("mcopy", "-i", f"{raw_copy}@@{part.start_lba * 512}", "::/initrd.gz", str(initrd))
    # The host's cpio reads what our writer wrote: the format is really newc.
    names = subprocess.run(
        ["cpio", "-it", "--quiet"], input=gzip.decompress(initrd.read_bytes()),
        capture_output=True, check=True,
    ).stdout.decode().split()  # fmt: skip
    for needed in ("init", "bin/busybox", "bin/sh", "dev/console", "root/shared",
                   "opt/vmwrapper/vmwrapper-boot", "opt/vmwrapper/vmwrapper-lib.sh",
                   "etc/vmwrapper/boot-modules"):  # fmt: skip
        assert needed in names
    # Every file of the vmwrapper.guest package data ships under /opt/vmwrapper.
    guest_dir = Path(__file__).resolve().parents[2] / "src" / "vmwrapper" / "guest"
    for path in guest_dir.iterdir():
        if path.is_file() and not path.name.startswith("."):
            assert f"opt/vmwrapper/{path.name}" in names
    modules = {Path(n).name for n in names if n.endswith(".ko")}
    assert {"9p.ko", "9pnet_virtio.ko", "virtio_pci.ko", "virtio_blk.ko", "virtio_net.ko",
            "pvpanic-mmio.ko", "isofs.ko", "cdrom.ko", "vfat.ko", "fat.ko", "nls_cp437.ko",
            "nls_ascii.ko", "floppy.ko", "vboxguest.ko", "vboxsf.ko"} <= modules  # fmt: skip


def test_compact_drops_deleted_data_from_the_free_space(raw_copy: Path, tmp_path: Path) -> None:
    raw = tmp_path / "dirty.img"
    raw.write_bytes(raw_copy.read_bytes())
    with raw.open("rb") as fh:
        (part,) = read_partition_table(fh.read(512))
    target = f"{raw}@@{part.start_lba * 512}"
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(3 * 1024 * 1024))
    _mtools("mcopy", "-i", target, str(junk), "::/JUNK.BIN")
    _mtools("mdel", "-i", target, "::/JUNK.BIN")  # deleted, but its clusters keep the bytes
    dirty = tmp_path / "dirty.vdi"
    convert(raw, dirty, "vdi")
    compacted = tmp_path / "compact.vdi"
    assert cli_main(["image", "compact", str(dirty), str(compacted)]) == 0
    before, after = info(dirty).actual_size, info(compacted).actual_size
    assert after < before - 2 * 1024 * 1024
    assert info(compacted).fmt == "vdi"


def test_cli_convert_and_info(default_guest_image: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "guest.qcow2"
    assert cli_main(["image", "convert", str(default_guest_image), str(out)]) == 0
    assert info(out).fmt == "qcow2"
    assert cli_main(["image", "info", str(out)]) == 0
    assert "qcow2" in capsys.readouterr().out
    assert cli_main(["image", "info", str(tmp_path / "missing.vdi")]) == 1
