"""Kernel module metadata and load order."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmwrapper.errors import ImageError
from vmwrapper.images.modules import (
    KernelModule,
    format_modules_dep,
    load_order,
    module_from_elf,
    module_name,
    parse_modinfo,
)


def make_elf(sections: dict[bytes, bytes]) -> bytes:
    """A minimal little-endian ELF64 relocatable with the given sections (and .shstrtab)."""
    names = [b"", *sections, b".shstrtab"]
    shstrtab = b"\0".join(names) + b"\0"
    name_offsets = []
    offset = 0
    for name in names:
        name_offsets.append(offset)
        offset += len(name) + 1
    body = bytearray(64)  # ELF header, filled below
    placed = []
    for data in [b"", *sections.values(), shstrtab]:
        placed.append((len(body), len(data)))
        body += data
    shoff = len(body)
    for index, (off, size) in enumerate(placed):
        body += struct.pack("<IIQQQQIIQQ", name_offsets[index], 1, 0, 0, off, size, 0, 0, 1, 0)
    header = b"\x7fELF" + bytes((2, 1, 1)) + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, len(names),
                          len(names) - 1)  # fmt: skip
    body[:64] = header
    return bytes(body)


MODINFO_9P = b"license=GPL\0alias=fs-9p\0depends=9pnet,netfs,fscache\0name=9p\0vermagic=6.1.0\0"


def test_parse_modinfo_reads_the_section() -> None:
    elf = make_elf({b".text": b"\x90" * 16, b".modinfo": MODINFO_9P})
    info = parse_modinfo(elf)
    assert info["depends"] == ("9pnet,netfs,fscache",)
    assert info["name"] == ("9p",)
    assert info["alias"] == ("fs-9p",)


def test_module_from_elf_splits_depends_and_normalizes_names() -> None:
    elf = make_elf({b".modinfo": b"depends=pvpanic\0name=pvpanic_mmio\0"})
    module = module_from_elf("kernel/drivers/misc/pvpanic/pvpanic-mmio.ko", elf)
    assert module == KernelModule("pvpanic_mmio", "kernel/drivers/misc/pvpanic/pvpanic-mmio.ko",
                                  ("pvpanic",))  # fmt: skip


def test_empty_depends_means_none() -> None:
    module = module_from_elf("kernel/x/virtio.ko", make_elf({b".modinfo": b"depends=\0"}))
    assert module.depends == () and module.name == "virtio"


def test_not_an_elf_is_an_image_error() -> None:
    with pytest.raises(ImageError):
        parse_modinfo(b"not an elf at all, clearly")


@pytest.mark.parametrize(
    ("path", "name"),
    [("a/pvpanic-mmio.ko", "pvpanic_mmio"), ("9p.ko", "9p"), ("x/nls_cp437.ko.xz", "nls_cp437")],
)
def test_module_name(path: str, name: str) -> None:
    assert module_name(path) == name


# The 9p + virtio chain as lab.md measured it on Debian's 6.1 kernel.
INDEX = {
    m.name: m
    for m in [
        KernelModule("9pnet", "kernel/net/9p/9pnet.ko"),
        KernelModule("netfs", "kernel/fs/netfs/netfs.ko"),
        KernelModule("fscache", "kernel/fs/fscache/fscache.ko", ("netfs",)),
        KernelModule("9p", "kernel/fs/9p/9p.ko", ("9pnet", "netfs", "fscache")),
        KernelModule("virtio_ring", "kernel/drivers/virtio/virtio_ring.ko"),
        KernelModule("virtio", "kernel/drivers/virtio/virtio.ko"),
        KernelModule("9pnet_virtio", "kernel/net/9p/9pnet_virtio.ko",
                     ("virtio_ring", "9pnet", "virtio")),
        KernelModule("virtio_pci_modern_dev", "kernel/drivers/virtio/virtio_pci_modern_dev.ko"),
        KernelModule("virtio_pci_legacy_dev", "kernel/drivers/virtio/virtio_pci_legacy_dev.ko"),
        KernelModule("virtio_pci", "kernel/drivers/virtio/virtio_pci.ko",
                     ("virtio_pci_modern_dev", "virtio_ring", "virtio", "virtio_pci_legacy_dev")),
    ]
}  # fmt: skip


def test_load_order_puts_dependencies_first_each_once() -> None:
    order = [m.name for m in load_order(["9p", "9pnet_virtio", "virtio-pci"], INDEX)]
    assert sorted(order) == sorted(INDEX)
    for module in INDEX.values():
        for dep in module.depends:
            assert order.index(dep) < order.index(module.name)
    assert order[:4] == ["9pnet", "netfs", "fscache", "9p"]


def test_unknown_module_is_named_in_the_error() -> None:
    with pytest.raises(ImageError, match="no_such_mod"):
        load_order(["no_such_mod"], INDEX)


def test_cycle_is_reported() -> None:
    index = {"a": KernelModule("a", "a.ko", ("b",)), "b": KernelModule("b", "b.ko", ("a",))}
    with pytest.raises(ImageError, match="cycle"):
        load_order(["a"], index)


def test_modules_dep_lists_transitive_deps_first_loaded_last() -> None:
    text = format_modules_dep(load_order(["9p"], INDEX), INDEX)
    lines = dict(line.split(":", 1) for line in text.splitlines())
    assert lines["kernel/net/9p/9pnet.ko"] == ""
    deps = lines["kernel/fs/9p/9p.ko"].split()
    assert deps == ["kernel/fs/fscache/fscache.ko", "kernel/fs/netfs/netfs.ko",
                    "kernel/net/9p/9pnet.ko"]  # fmt: skip


@given(st.data())
def test_load_order_respects_any_dependency_dag(data: st.DataObject) -> None:
    count = data.draw(st.integers(min_value=1, max_value=12))
    names = [f"m{i}" for i in range(count)]
    # Each module may depend only on modules with a smaller number: always a DAG.
    index = {
        name: KernelModule(
            name,
            f"kernel/{name}.ko",
            tuple(data.draw(st.lists(st.sampled_from(names[:i]), unique=True)) if i else ()),
        )
        for i, name in enumerate(names)
    }
    wanted = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
    order = [m.name for m in load_order(wanted, index)]
    assert len(order) == len(set(order))
    assert set(wanted) <= set(order)
    for module in order:
        for dep in index[module].depends:
            assert dep in order and order.index(dep) < order.index(module)
