"""`vmwrapper image build|info|convert|compact`: the guest image and qemu-img's helpers.

`build` makes the default guest (Debian kernel + busybox, our boot script) plus what the
admin adds (`--add SRC:DEST`, `--deb PKG.deb`), through the cache, and copies it to `-o OUT`
when given. Exit 0 on success, 1 when the image cannot be built or read.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from vmwrapper.errors import ImageError
from vmwrapper.images import (
    ExtraFile,
    ImageRecipe,
    compact,
    convert,
    ensure_image_report,
    info,
)
from vmwrapper.images.recipe import DEFAULT_CMDLINE, FORMATS, ImageFormat

NAME = "image"
HELP = "build the guest image (Debian kernel + busybox), or inspect/convert/compact a disk image"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="image_command", metavar="ACTION", required=True)

    build = sub.add_parser("build", help="build (or take from the cache) a bootable guest image")
    build.add_argument(
        "--add", action="append", default=[], metavar="SRC:DEST",
        help="copy a host file or directory into the image at DEST (repeatable)",
    )  # fmt: skip
    build.add_argument(
        "--deb", action="append", default=[], type=Path, metavar="PKG.deb",
        help="unpack a Debian package into the image's root (dpkg-deb -x; repeatable)",
    )  # fmt: skip
    build.add_argument(
        "--format", choices=FORMATS, help="default: from -o's suffix (.vdi, .qcow2, .img), else vdi"
    )
    build.add_argument(
        "-o",
        "--output",
        type=Path,
        help="copy the image here (default: print the cached path only)",
    )
    build.add_argument("--cmdline", default=DEFAULT_CMDLINE, help="kernel command line")
    build.add_argument(
        "--kernel-package",
        default="",
        help="Debian kernel package (default: what linux-image-amd64 depends on)",
    )

    show = sub.add_parser("info", help="qemu-img info: format, sizes, snapshots")
    show.add_argument("path", type=Path)
    show.add_argument("--json", action="store_true")

    conv = sub.add_parser("convert", help="convert between vdi, qcow2, raw, vmdk, vhdx")
    conv.add_argument("src", type=Path)
    conv.add_argument("dst", type=Path)
    conv.add_argument("--format", help="output format (default: from DST's suffix)")

    pack = sub.add_parser("compact", help="zero the free space of FAT partitions, then convert")
    pack.add_argument("src", type=Path)
    pack.add_argument("dst", type=Path, nargs="?", help="default: replace SRC")
    pack.add_argument("--format", help="output format (default: SRC's)")


def _format_from_suffix(path: Path) -> str:
    suffix = path.suffix.lstrip(".").lower()
    return {"img": "raw", "qcow": "qcow2"}.get(suffix, suffix)


def _build_format(args: argparse.Namespace) -> ImageFormat:
    """--format, else the output's suffix, else vdi; a contradiction is an error."""
    implied = _format_from_suffix(args.output) if args.output else ""
    known: dict[str, ImageFormat] = {f: f for f in FORMATS}
    if args.format and implied in known and implied != args.format:
        raise ImageError(
            f"-o {args.output} says {implied} but --format says {args.format}; "
            "make them agree (QEMU and VirtualBox go by the suffix)"
        )
    chosen: ImageFormat = args.format or known.get(implied, "vdi")
    return chosen


def _build(args: argparse.Namespace) -> int:
    recipe = ImageRecipe(
        extra_files=tuple(ExtraFile.parse(text) for text in args.add),
        debs=tuple(path.resolve() for path in args.deb),
        fmt=_build_format(args),
        cmdline=args.cmdline,
        kernel_package=args.kernel_package,
    )
    started = time.monotonic()
    print(
        "image: resolving inputs (Debian kernel and busybox-static from apt's lists)",
        file=sys.stderr,
    )
    path, report = ensure_image_report(recipe)
    if report is None:
        print(f"image: found in the cache: {path}", file=sys.stderr)
    else:
        print(
            f"image: built in {time.monotonic() - started:.0f} s: kernel {report.kernel_version}, "
            f"{len(report.modules)} modules, initramfs {report.base_initrd_bytes // 1024} KiB"
            + (
                f" + extras {report.extra_initrd_bytes // 1024} KiB"
                if report.extra_initrd_bytes
                else ""
            )
            + f", disk {report.disk_mib} MiB",
            file=sys.stderr,
        )
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, args.output)
        path = args.output
    print(path)
    return 0


def _info(args: argparse.Namespace) -> int:
    details = info(args.path)
    if args.json:
        print(json.dumps(asdict(details), indent=2))
        return 0
    print(
        f"{details.path}: {details.fmt}, virtual size {details.virtual_size // (1024 * 1024)} "
        f"MiB, on disk {details.actual_size // 1024} KiB"
    )
    if details.backing_file:
        print(f"  backing file: {details.backing_file}")
    for name in details.snapshots:
        print(f"  snapshot: {name}")
    return 0


def main(args: argparse.Namespace) -> int:
    try:
        if args.image_command == "build":
            return _build(args)
        if args.image_command == "info":
            return _info(args)
        if args.image_command == "convert":
            convert(args.src, args.dst, args.format or _format_from_suffix(args.dst))
            print(args.dst)
            return 0
        if args.image_command == "compact":
            before = info(args.src).actual_size
            notes = compact(args.src, args.dst, args.format)
            target = args.dst or args.src
            for note in notes:
                print(f"  {note}", file=sys.stderr)
            print(f"{target}: {before // 1024} KiB -> {info(target).actual_size // 1024} KiB")
            return 0
    except ImageError as exc:
        print(f"vmwrapper image: error: {exc}", file=sys.stderr)
        return 1
    raise AssertionError(f"unknown image action {args.image_command}")
