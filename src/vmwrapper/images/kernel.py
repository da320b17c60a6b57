"""The parts of Debian's kernel package the guest needs, cached per package.

Unpacking the kernel package (400 MB of files, ~4000 modules) and reading every module's
``.modinfo`` is most of a build. The first build of a kernel package keeps what it found in
``<cache>/kernels/<sha256 of the .deb>/``: ``vmlinuz``, ``index.json`` (every module's path
and dependencies) and the ``.ko`` files images used so far. Later builds (another ``--add``,
another format) take them from there; only a module never used before needs a new unpack.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vmwrapper.errors import ImageError
from vmwrapper.images.debs import DebStore, PackageId, locked, unpack
from vmwrapper.images.modules import KernelModule, load_order, module_from_elf

log = logging.getLogger(__name__)

INDEX = "index.json"
#: Bump when the layout of a kernel cache entry changes.
LAYOUT = 1
EXTRA_FILES = ("modules.builtin", "modules.order")


@dataclass(frozen=True)
class KernelParts:
    version: str  # "6.1.0-56-amd64"
    vmlinuz: Path
    index: dict[str, KernelModule]
    module_root: Path  # holds <module path> for every module of the closure asked for
    extra_files: dict[str, bytes]  # modules.builtin, modules.order


def _scan(unpacked: Path) -> tuple[str, Path, dict[str, KernelModule]]:
    bases = sorted((unpacked / "lib" / "modules").glob("*"))
    if not bases:
        raise ImageError("the kernel package has no /lib/modules directory")
    base = bases[-1]
    index: dict[str, KernelModule] = {}
    for ko in base.rglob("*.ko"):
        module = module_from_elf(str(ko.relative_to(base)), ko.read_bytes())
        index[module.name] = module
    return base.name, base, index


def _load(entry: Path) -> KernelParts | None:
    try:
        data = json.loads((entry / INDEX).read_text())
    except (OSError, ValueError):
        return None
    if data.get("layout") != LAYOUT:
        return None
    index = {
        name: KernelModule(name, path, tuple(deps))
        for name, (path, deps) in data["modules"].items()
    }
    extras = {n: (entry / n).read_bytes() for n in EXTRA_FILES if (entry / n).is_file()}
    return KernelParts(data["version"], entry / "vmlinuz", index, entry / "modules", extras)


def _complete(parts: KernelParts, wanted: Iterable[str]) -> bool:
    try:
        needed = load_order(wanted, parts.index)
    except ImageError:
        return True  # a module the package lacks: let load_order report it to the caller
    return parts.vmlinuz.is_file() and all((parts.module_root / m.path).is_file() for m in needed)


def kernel_parts(
    store: DebStore, package: PackageId, wanted: Iterable[str], cache_root: Path
) -> KernelParts:
    """vmlinuz, the module index and (at least) the ``.ko`` files of ``wanted`` and their
    dependencies, from the cache or from the unpacked package."""
    wanted = tuple(wanted)
    entry = cache_root / package.sha256[:32]
    parts = _load(entry)
    if parts is not None and _complete(parts, wanted):
        return parts
    with locked(cache_root / ".lock"):
        parts = _load(entry)
        if parts is not None and _complete(parts, wanted):
            return parts
        with tempfile.TemporaryDirectory(prefix="vmwrapper-kernel-") as tmpdir:
            unpacked = Path(tmpdir) / "root"
            unpack(store.fetch(package), unpacked)
            version, base, index = _scan(unpacked)
            vmlinuz = next((unpacked / "boot").glob("vmlinuz-*"), None)
            if vmlinuz is None:
                raise ImageError(f"{package.name} has no /boot/vmlinuz-*")
            entry.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(vmlinuz, entry / "vmlinuz")
            for name in EXTRA_FILES:
                if (base / name).is_file():
                    shutil.copyfile(base / name, entry / name)
            for module in load_order(wanted, index):
                target = entry / "modules" / module.path
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(base / module.path, target)
            document = {
                "layout": LAYOUT,
                "package": str(package),
                "version": version,
                "modules": {m.name: [m.path, list(m.depends)] for m in index.values()},
            }
            tmp = entry / f".{INDEX}.{os.getpid()}"
            tmp.write_text(json.dumps(document))
            os.replace(tmp, entry / INDEX)  # written last: an entry with an index is usable
        log.info("kernel %s cached in %s", version, entry, extra={"event": "image_kernel_cached"})
    parts = _load(entry)
    assert parts is not None
    return parts
