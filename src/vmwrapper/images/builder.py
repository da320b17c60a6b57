"""Build a guest image from Debian packages: kernel + busybox + our scripts in an initramfs,
booted by syslinux from a FAT16 partition of a small raw disk, converted with qemu-img.

Nothing here needs root: packages are unpacked with ``dpkg-deb -x`` into a temporary
directory, the initramfs is a cpio archive written in Python (device nodes included), and the
disk is formatted at an offset inside a plain file (see :mod:`vmwrapper.images.disk`).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from vmwrapper.errors import ImageError
from vmwrapper.images import disk, qemu_img
from vmwrapper.images.cpio import CpioEntry, with_parent_dirs, write_newc
from vmwrapper.images.debs import BUSYBOX_PACKAGE, DebStore, PackageId, sha256_file, unpack
from vmwrapper.images.kernel import KernelParts, kernel_parts
from vmwrapper.images.mbr import plan_layout
from vmwrapper.images.modules import KernelModule, format_modules_dep, load_order
from vmwrapper.images.recipe import (
    BuildInputs,
    ImageRecipe,
    cache_key,
    syslinux_config,
    tree_digest,
)

log = logging.getLogger(__name__)

GUEST_DIR_IN_IMAGE = "opt/vmwrapper"
HOST_BUSYBOX = Path("/bin/busybox")
BASE_INITRD = "initrd.gz"
EXTRA_INITRD = "extra.gz"

#: Device nodes the kernel needs before devtmpfs is mounted (console for PID 1's stdio).
DEVICE_NODES = (
    CpioEntry.chardev("dev/console", 5, 1),
    CpioEntry.chardev("dev/null", 1, 3, 0o666),
    CpioEntry.chardev("dev/ttyS0", 4, 64, 0o620),
)
SKELETON_DIRS = ("proc", "sys", "dev", "run", "tmp", "root", "root/shared", "mnt", "etc/vmwrapper")
ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "etc/group": "root:x:0:\n",
    "etc/hostname": "vmwrapper-guest\n",
    "etc/hosts": "127.0.0.1 localhost vmwrapper-guest\n",
}


# ----- inputs -------------------------------------------------------------------------------


def guest_files() -> dict[str, Traversable]:
    """Every file of the ``vmwrapper.guest`` package data, by relative path. All of them go to
    /opt/vmwrapper/ in the image (so helpers other modules add there ship automatically)."""
    found: dict[str, Traversable] = {}

    def walk(node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            if child.name.startswith(".") or child.name == "__pycache__":
                continue
            rel = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, rel + "/")
            elif not child.name.endswith((".pyc", ".py")):
                found[rel] = child

    walk(resources.files("vmwrapper").joinpath("guest"), "")
    if "init" not in found or "vmwrapper-boot" not in found:
        raise ImageError("the vmwrapper.guest package data is incomplete (no init script)")
    return dict(sorted(found.items()))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _walk_host(src: Path) -> Iterator[tuple[str, Path]]:
    """(relative path, host path) for ``src`` itself ("" when a file) and all below it."""
    if src.is_symlink() or not src.is_dir():
        yield "", src
        return
    yield "", src
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(dirs) + sorted(files):
            path = Path(root) / name
            yield str(path.relative_to(src)), path


def _host_tree_digest(src: Path) -> str:
    if not src.exists() and not src.is_symlink():
        raise ImageError(f"--add {src}: no such file or directory on the host")
    entries: dict[str, str] = {}
    for rel, path in _walk_host(src):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            entries[rel] = f"link:{os.readlink(path)}"
        elif stat.S_ISDIR(st.st_mode):
            entries[rel] = f"dir:{st.st_mode & 0o7777:o}"
        else:
            entries[rel] = f"{st.st_mode & 0o7777:o}:{sha256_file(path)}"
    return tree_digest(entries)


@dataclass(frozen=True)
class ResolvedInputs:
    """Where the builder takes each input from, plus their identities for the cache key."""

    inputs: BuildInputs
    kernel: PackageId
    busybox: PackageId | None  # None: the host's /bin/busybox (from busybox-static)


def resolve_inputs(recipe: ImageRecipe, store: DebStore) -> ResolvedInputs:
    """Identify every input of ``recipe`` without downloading anything (apt's lists give the
    packages' digests), so a cached image is found in well under a second."""
    kernel = store.identify(store.kernel_package(recipe.kernel_package))
    busybox: PackageId | None
    try:
        busybox = store.identify(BUSYBOX_PACKAGE)
        busybox_id = str(busybox)
    except ImageError:
        if not HOST_BUSYBOX.is_file():
            raise
        busybox = None
        busybox_id = f"host:{HOST_BUSYBOX} sha256:{sha256_file(HOST_BUSYBOX)}"
    guest = {name: _sha256(node.read_bytes()) for name, node in guest_files().items()}
    extras = {f"{e.src}:{e.dest}": _host_tree_digest(e.src) for e in recipe.extra_files}
    debs: dict[str, str] = {}
    for deb in recipe.debs:
        if not deb.is_file():
            raise ImageError(f"--deb {deb}: no such file")
        debs[deb.name] = sha256_file(deb)
    boot = {
        "mbr.bin": _sha256(disk.mbr_code()),
        "syslinux": _sha256(_syslinux_version().encode()),
    }
    inputs = BuildInputs(
        kernel=str(kernel),
        busybox=busybox_id,
        guest_files=guest,
        extra_files=extras,
        debs=debs,
        boot_files=boot,
    )
    return ResolvedInputs(inputs, kernel, busybox)


def _syslinux_version() -> str:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "syslinux"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


# ----- the initramfs ------------------------------------------------------------------------


def _busybox_entries(busybox: Path) -> list[CpioEntry]:
    """busybox at /bin/busybox and one symlink per applet (as `busybox --install -s` would)."""
    try:
        listing = subprocess.run(
            [str(busybox), "--list-full"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ImageError(f"cannot list the applets of {busybox}: {exc}") from exc
    entries = [CpioEntry.file("bin/busybox", busybox.read_bytes(), 0o755)]
    for applet in listing.split():
        if applet != "bin/busybox":
            entries.append(CpioEntry.symlink(applet, "/bin/busybox"))
    return entries


def _module_entries(
    recipe: ImageRecipe, parts: KernelParts
) -> tuple[list[CpioEntry], tuple[KernelModule, ...]]:
    index = parts.index
    boot = load_order(recipe.boot_modules, index)
    everything = load_order((*recipe.boot_modules, *recipe.optional_modules), index)
    prefix = f"lib/modules/{parts.version}"
    entries = [
        CpioEntry.file(f"{prefix}/{m.path}", (parts.module_root / m.path).read_bytes())
        for m in everything
    ]
    entries.append(
        CpioEntry.file(f"{prefix}/modules.dep", format_modules_dep(everything, index).encode())
    )
    for name, data in parts.extra_files.items():
        entries.append(CpioEntry.file(f"{prefix}/{name}", data))
    boot_list = "".join(f"{m.path}\n" for m in boot)
    entries.append(CpioEntry.file("etc/vmwrapper/boot-modules", boot_list.encode()))
    return entries, everything


def _guest_entries() -> list[CpioEntry]:
    entries = []
    for name, node in guest_files().items():
        data = node.read_bytes()
        executable = data.startswith(b"#!")
        entries.append(
            CpioEntry.file(f"{GUEST_DIR_IN_IMAGE}/{name}", data, 0o755 if executable else 0o644)
        )
    init = guest_files()["init"].read_bytes()
    entries.append(CpioEntry.file("init", init, 0o755))
    return entries


def _tree_entries(src: Path, dest: str) -> list[CpioEntry]:
    """Entries for a host file or directory tree placed at ``dest`` in the image."""
    entries = []
    for rel, path in _walk_host(src):
        if dest == "/" and not rel:
            continue  # a package's root directory is the image's root: nothing to add
        target = f"{dest.rstrip('/')}/{rel}" if rel else dest
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            entries.append(CpioEntry.symlink(target, os.readlink(path)))
        elif stat.S_ISDIR(st.st_mode):
            entries.append(CpioEntry.directory(target, st.st_mode & 0o7777))
        elif stat.S_ISREG(st.st_mode):
            entries.append(CpioEntry.file(target, path.read_bytes(), st.st_mode & 0o7777))
        # sockets, fifos and device files in a package or --add tree are skipped
    return entries


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


# ----- the build ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildReport:
    path: Path
    key: str
    kernel_version: str
    modules: tuple[str, ...]
    base_initrd_bytes: int
    extra_initrd_bytes: int
    disk_mib: int


def build_image(
    recipe: ImageRecipe, out: Path, *, store: DebStore, resolved: ResolvedInputs | None = None
) -> BuildReport:
    """Build the image for ``recipe`` at ``out`` (written atomically)."""
    resolved = resolved or resolve_inputs(recipe, store)
    key = cache_key(recipe, resolved.inputs)
    with tempfile.TemporaryDirectory(prefix="vmwrapper-image-") as tmpdir:
        tmp = Path(tmpdir)
        parts = kernel_parts(
            store,
            resolved.kernel,
            (*recipe.boot_modules, *recipe.optional_modules),
            store.directory.parent / "kernels",
        )
        kernel_version = parts.version
        if resolved.busybox is None:
            busybox = HOST_BUSYBOX
        else:
            unpack(store.fetch(resolved.busybox), tmp / "busybox")
            busybox = tmp / "busybox" / "bin" / "busybox"
        module_entries, modules = _module_entries(recipe, parts)
        base_entries = [
            *(CpioEntry.directory(d) for d in SKELETON_DIRS),
            *DEVICE_NODES,
            *(CpioEntry.file(p, text.encode()) for p, text in ETC_FILES.items()),
            *_busybox_entries(busybox),
            *module_entries,
            *_guest_entries(),
            CpioEntry.file("etc/vmwrapper/image", f"key={key}\nkernel={kernel_version}\n".encode()),
        ]
        base_initrd = _gzip(write_newc(with_parent_dirs(base_entries)))
        (tmp / BASE_INITRD).write_bytes(base_initrd)
        boot_files = {BASE_INITRD: tmp / BASE_INITRD}

        extra_entries: list[CpioEntry] = []
        for number, deb in enumerate(recipe.debs):
            root = tmp / f"deb{number}"
            unpack(deb, root)
            extra_entries += _tree_entries(root, "/")
        for extra in recipe.extra_files:
            extra_entries += _tree_entries(extra.src, extra.dest)
        extra_bytes = 0
        if extra_entries:
            extra_initrd = _gzip(write_newc(with_parent_dirs(extra_entries)))
            extra_bytes = len(extra_initrd)
            (tmp / EXTRA_INITRD).write_bytes(extra_initrd)
            boot_files[EXTRA_INITRD] = tmp / EXTRA_INITRD

        vmlinuz = parts.vmlinuz
        cfg = tmp / "syslinux.cfg"
        cfg.write_text(syslinux_config(recipe.cmdline, tuple(boot_files)))
        files = {"vmlinuz": vmlinuz, **boot_files, "syslinux.cfg": cfg}
        payload = sum(p.stat().st_size for p in files.values()) + 128 * 1024  # + ldlinux
        layout = plan_layout(payload)
        raw = tmp / "disk.raw"
        disk.make_boot_disk(raw, layout, files, disk_signature=int(key[:8], 16))
        out.parent.mkdir(parents=True, exist_ok=True)
        if recipe.fmt == "raw":
            staging = out.with_name(f".{out.name}.tmp")
            shutil.copyfile(raw, staging)
            os.replace(staging, out)
        else:
            qemu_img.convert(raw, out, recipe.fmt)
    log.info(
        "built guest image %s (kernel %s, %d modules)", out, kernel_version, len(modules),
        extra={"event": "image_built", "key": key, "path": str(out)},
    )  # fmt: skip
    return BuildReport(
        path=out,
        key=key,
        kernel_version=kernel_version,
        modules=tuple(m.name for m in modules),
        base_initrd_bytes=len(base_initrd),
        extra_initrd_bytes=extra_bytes,
        disk_mib=layout.total_bytes // (1024 * 1024),
    )
