"""`qemu-img` wrappers: info, convert, compact, and :class:`QemuImg`, a runner for one
qemu-img binary whose running call another thread can cut short (the QEMU back end's overlays
and snapshots go through it). We never write VDI or qcow2 by hand."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmwrapper import hostos
from vmwrapper.errors import ImageError
from vmwrapper.images import disk
from vmwrapper.images.mbr import read_partition_table
from vmwrapper.images.tools import run

#: MBR partition types holding FAT file systems (`compact` can zero their free space).
FAT_TYPES = frozenset({0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E})


@dataclass(frozen=True)
class ImageInfo:
    path: str
    fmt: str
    virtual_size: int
    actual_size: int
    snapshots: tuple[str, ...] = ()
    backing_file: str = ""  # as the image names it (may be relative to the image)
    full_backing_file: str = ""  # as qemu-img resolved it
    disk_only_snapshots: tuple[str, ...] = ()  # no VM state saved with them


def parse_info(text: str) -> ImageInfo:
    """`qemu-img info --output=json` -> ImageInfo (pure)."""
    try:
        data: dict[str, Any] = json.loads(text)
        return ImageInfo(
            path=str(data["filename"]),
            fmt=str(data["format"]),
            virtual_size=int(data["virtual-size"]),
            actual_size=int(data.get("actual-size", 0)),
            snapshots=tuple(str(s["name"]) for s in data.get("snapshots", [])),
            backing_file=str(data.get("backing-filename", "")),
            full_backing_file=str(data.get("full-backing-filename", "")),
            disk_only_snapshots=tuple(
                str(s["name"]) for s in data.get("snapshots", []) if not s.get("vm-state-size")
            ),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ImageError(f"qemu-img info gave unexpected output: {text[:300]!r}") from exc


class QemuImgFailed(ImageError):
    """A qemu-img call failed, timed out or was cancelled: what was run and what it said."""

    def __init__(
        self, message: str, argv: Sequence[str], exit_code: int | None = None, output: str = ""
    ) -> None:
        super().__init__(message)
        self.argv = tuple(argv)
        self.exit_code = exit_code
        self.output = output


class QemuImg:
    """Runs one ``qemu-img`` binary (the one a back end was given); :meth:`cancel` cuts the
    running call short from another thread (a conversion can take an hour)."""

    def __init__(self, binary: str = "qemu-img") -> None:
        self.binary = binary
        self._tool: subprocess.Popen[str] | None = None  # the qemu-img running now, if any

    def run(self, *args: str, timeout: float = 120.0) -> str:
        """Its stdout; :class:`QemuImgFailed` when it fails, times out or is cancelled."""
        argv = [self.binary, *args]
        out: str  # text=True
        err: str
        try:
            with hostos.spawn(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ) as proc:
                self._tool = proc
                try:
                    out, err = proc.communicate(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
                    raise
                finally:
                    self._tool = None
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise QemuImgFailed(f"qemu-img failed: {exc}", argv) from exc
        if proc.returncode != 0:
            raise QemuImgFailed("qemu-img failed", argv, proc.returncode, err)
        return out

    def info(self, path: Path) -> ImageInfo:
        """``qemu-img info`` (``-U``: QEMU may hold the image)."""
        return parse_info(self.run("info", "-U", "--output=json", str(path)))

    def cancel(self) -> None:
        tool = self._tool
        if tool is not None:
            with contextlib.suppress(OSError):
                tool.kill()


def info(path: Path) -> ImageInfo:
    if not path.exists():
        raise ImageError(f"{path}: no such image")
    return parse_info(run(["qemu-img", "info", "--output=json", "-U", str(path)]))


def convert(src: Path, dst: Path, fmt: str, *, compress: bool = False) -> None:
    """Convert ``src`` (any format qemu-img reads) to ``dst`` in ``fmt``, atomically."""
    if fmt not in ("vdi", "qcow2", "raw", "vmdk", "vhdx"):
        raise ImageError(f"cannot convert to {fmt!r}: use vdi, qcow2, raw, vmdk or vhdx")
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    argv = ["qemu-img", "convert", "-O", fmt]
    if compress and fmt == "qcow2":
        argv.append("-c")
    try:
        run([*argv, str(src), str(tmp)], timeout=1800)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def compact(src: Path, dst: Path | None = None, fmt: str | None = None) -> list[str]:
    """Zero the free space of every FAT partition, then convert (which drops zero blocks).

    Returns notes on what was done (partitions without a FAT file system are left as they
    are: zero them inside the guest, e.g. with zerofree, before compacting).
    """
    source_info = info(src)
    out_fmt = fmt or source_info.fmt
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="vmwrapper-compact-") as tmpdir:
        scratch = Path(tmpdir)
        raw = scratch / "disk.raw"
        run(["qemu-img", "convert", "-O", "raw", str(src), str(raw)], timeout=1800)
        with raw.open("rb") as fh:
            table = read_partition_table(fh.read(512))
        for number, part in enumerate(table, start=1):
            if part.ptype in FAT_TYPES:
                disk.zero_fat_free_space(raw, part.start_lba * 512, scratch)
                notes.append(f"partition {number}: zeroed the free space of its FAT file system")
            else:
                notes.append(f"partition {number}: type 0x{part.ptype:02x} left as is")
        convert(raw, dst or src, out_fmt)
    return notes
