"""Kernel modules: read ``.modinfo`` from a ``.ko`` and order modules by dependency (pure).

Debian's kernel package ships no ``modules.dep``; each module names what it needs in its
``.modinfo`` ELF section (``depends=a,b``). From that the builder computes the ``insmod``
order for the guest's /init and writes a ``modules.dep`` so busybox ``modprobe`` works for
modules loaded on demand.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from vmwrapper.errors import ImageError


@dataclass(frozen=True)
class KernelModule:
    name: str  # as the kernel names it: underscores ("pvpanic_mmio")
    path: str  # relative to /lib/modules/<version>/, e.g. "kernel/fs/9p/9p.ko"
    depends: tuple[str, ...] = ()


def module_name(filename: str) -> str:
    """'kernel/drivers/misc/pvpanic/pvpanic-mmio.ko' -> 'pvpanic_mmio'."""
    base = filename.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def _section(elf: bytes, wanted: bytes) -> bytes:
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ImageError("not a little-endian ELF64 kernel module")
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def header(index: int) -> tuple[int, int, int]:
        base = shoff + index * shentsize
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", elf, base)
        return name, offset, size

    _, str_off, str_size = header(shstrndx)
    names = elf[str_off : str_off + str_size]
    for index in range(shnum):
        name_off, offset, size = header(index)
        end = names.find(b"\0", name_off)
        if names[name_off:end] == wanted:
            return elf[offset : offset + size]
    return b""


def parse_modinfo(elf: bytes) -> dict[str, tuple[str, ...]]:
    """The ``key=value`` pairs of a module's .modinfo section; repeated keys collect values."""
    info: dict[str, list[str]] = {}
    for item in _section(elf, b".modinfo").split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return {key: tuple(values) for key, values in info.items()}


def module_from_elf(path: str, elf: bytes) -> KernelModule:
    info = parse_modinfo(elf)
    depends = tuple(d for v in info.get("depends", ()) for d in v.split(",") if d)
    name = info.get("name", (module_name(path),))[0]
    return KernelModule(name=name.replace("-", "_"), path=path, depends=depends)


def load_order(
    wanted: Iterable[str], index: Mapping[str, KernelModule]
) -> tuple[KernelModule, ...]:
    """Every module in ``wanted`` and what it needs, each after its dependencies, each once.

    Modules are named with '-' or '_' alike. Raises ImageError for a module the kernel
    package does not have (or that is built in: then it needs no loading — leave it out) and
    for a dependency cycle.
    """
    order: list[KernelModule] = []
    done: set[str] = set()
    visiting: list[str] = []

    def visit(raw: str) -> None:
        name = raw.replace("-", "_")
        if name in done:
            return
        if name in visiting:
            raise ImageError(f"kernel modules depend on each other in a cycle: {visiting}")
        module = index.get(name)
        if module is None:
            raise ImageError(
                f"kernel module {raw!r} is not in the kernel package "
                "(built in, misspelled, or the wrong kernel); remove it from the module list"
            )
        visiting.append(name)
        for dep in module.depends:
            visit(dep)
        visiting.pop()
        done.add(name)
        order.append(module)

    for name in wanted:
        visit(name)
    return tuple(order)


def format_modules_dep(modules: Sequence[KernelModule], index: Mapping[str, KernelModule]) -> str:
    """``modules.dep`` as depmod writes it: ``path: dep-path ...`` with every transitive
    dependency, the one to load first listed last."""
    lines = []
    for module in modules:
        needed = load_order([module.name], index)[:-1]
        deps = " ".join(m.path for m in reversed(needed))
        lines.append(f"{module.path}:{' ' + deps if deps else ''}")
    return "\n".join(lines) + "\n"
