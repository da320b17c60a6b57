"""Parsing what apt-cache and qemu-img print."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmwrapper.errors import ImageError
from vmwrapper.images.debs import PackageId, deb_filename_prefix, parse_depends, parse_show
from vmwrapper.images.qemu_img import parse_info

APT_DEPENDS = """linux-image-amd64
  Depends: linux-image-6.1.0-56-amd64
"""

APT_SHOW = """Package: busybox-static
Version: 1:1.35.0-4+deb12u1+b1
Description: Standalone rescue shell
 with tons of builtin utilities
SHA256: 3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744

Package: busybox-static
Version: 1:1.30.0
SHA256: 00
"""


def test_kernel_package_from_the_metapackage() -> None:
    assert parse_depends(APT_DEPENDS, "linux-image-") == "linux-image-6.1.0-56-amd64"
    assert parse_depends("linux-image-amd64\n", "linux-image-") is None


def test_show_takes_the_first_record() -> None:
    assert parse_show(APT_SHOW) == PackageId(
        "busybox-static",
        "1:1.35.0-4+deb12u1+b1",
        "3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744",
    )


def test_show_without_digest_is_an_error() -> None:
    with pytest.raises(ImageError, match="SHA256"):
        parse_show("Package: x\nVersion: 1\n")


def test_download_file_name_escapes_the_epoch() -> None:
    assert deb_filename_prefix("busybox-static", "1:1.35.0") == "busybox-static_1%3a1.35.0_"


def test_qemu_img_info() -> None:
    text = json.dumps(
        {"filename": "ov.qcow2", "format": "qcow2", "virtual-size": 16777216,
         "actual-size": 200704, "backing-filename": "vm_image.vdi",
         "snapshots": [{"name": "boinc_1", "id": "1"}]}
    )  # fmt: skip
    info = parse_info(text)
    assert (info.fmt, info.virtual_size, info.backing_file) == ("qcow2", 16777216, "vm_image.vdi")
    assert info.snapshots == ("boinc_1",)


def test_qemu_img_info_garbage() -> None:
    with pytest.raises(ImageError):
        parse_info("qemu-img: Could not open")


def test_qemu_img_info_of_a_real_overlay_with_a_full_and_a_disk_only_snapshot() -> None:
    """Real `qemu-img info` output (tests/data/qemu/README.md): `savevm` saved VM state with
    boinc_120; disk_only has none, so a restore boots from it."""
    data = Path(__file__).parent.parent / "data" / "qemu"
    info = parse_info((data / "qemu-img-info-overlay-two-snapshots.json").read_text())
    assert info.snapshots == ("disk_only", "boinc_120")
    assert info.disk_only_snapshots == ("disk_only",)
    assert (info.backing_file, info.full_backing_file) == ("base.qcow2", "base.qcow2")
