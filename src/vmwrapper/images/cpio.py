"""A writer for the cpio "newc" format the Linux kernel unpacks as its initramfs (pure).

Writing the archive in Python (instead of running ``cpio`` over a directory tree) lets the
builder add device nodes and root-owned files without being root, and makes the archive
byte-for-byte reproducible: every entry gets uid/gid 0, a fixed mtime and an inode number
from a counter.
"""

from __future__ import annotations

import enum
import posixpath
import stat
from collections.abc import Iterable
from dataclasses import dataclass

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


class EntryKind(enum.Enum):
    FILE = stat.S_IFREG
    DIR = stat.S_IFDIR
    SYMLINK = stat.S_IFLNK
    CHARDEV = stat.S_IFCHR
    BLOCKDEV = stat.S_IFBLK


@dataclass(frozen=True)
class CpioEntry:
    """One archive member. ``path`` is relative to the root ("bin/sh", not "/bin/sh")."""

    path: str
    kind: EntryKind
    mode: int = 0o644  # permission bits only; the kind adds the file type
    data: bytes = b""  # file contents, or the target of a symlink
    rdev: tuple[int, int] = (0, 0)  # (major, minor) of a device node

    @classmethod
    def file(cls, path: str, data: bytes, mode: int = 0o644) -> CpioEntry:
        return cls(normalize(path), EntryKind.FILE, mode, data)

    @classmethod
    def directory(cls, path: str, mode: int = 0o755) -> CpioEntry:
        return cls(normalize(path), EntryKind.DIR, mode)

    @classmethod
    def symlink(cls, path: str, target: str) -> CpioEntry:
        return cls(normalize(path), EntryKind.SYMLINK, 0o777, target.encode())

    @classmethod
    def chardev(cls, path: str, major: int, minor: int, mode: int = 0o600) -> CpioEntry:
        return cls(normalize(path), EntryKind.CHARDEV, mode, b"", (major, minor))


def normalize(path: str) -> str:
    """'/usr//bin/' -> 'usr/bin'. Refuses paths that climb out of the root."""
    norm = posixpath.normpath("/" + path).lstrip("/")
    if not norm or norm == ".":
        raise ValueError(f"cpio path {path!r} names the root itself")
    return norm


def with_parent_dirs(entries: Iterable[CpioEntry]) -> list[CpioEntry]:
    """The entries, later ones replacing earlier ones with the same path, preceded by a
    directory entry for every parent that has none (the kernel does not create them)."""
    by_path: dict[str, CpioEntry] = {}
    for entry in entries:
        by_path[entry.path] = entry
    parents: dict[str, CpioEntry] = {}
    for path in by_path:
        parent = posixpath.dirname(path)
        while parent and parent not in by_path and parent not in parents:
            parents[parent] = CpioEntry.directory(parent)
            parent = posixpath.dirname(parent)
    # Directories first, shortest path first, so every parent precedes its children.
    ordered = sorted({**parents, **by_path}.values(), key=_order_key)
    return ordered


def _order_key(entry: CpioEntry) -> tuple[int, int, str]:
    is_dir = entry.kind is EntryKind.DIR
    return (0 if is_dir else 1, entry.path.count("/") if is_dir else 0, entry.path)


def _header(ino: int, entry: CpioEntry, name_size: int, mtime: int) -> bytes:
    nlink = 2 if entry.kind is EntryKind.DIR else 1
    trailer = entry.path == _TRAILER
    fields = (
        ino,
        0 if trailer else entry.kind.value | (entry.mode & 0o7777),
        0,  # uid
        0,  # gid
        nlink,
        mtime,
        len(entry.data),
        0,  # devmajor of the file system: irrelevant for an initramfs
        0,
        entry.rdev[0],
        entry.rdev[1],
        name_size,
        0,  # check: only used by the "crc" variant
    )
    return _MAGIC + b"".join(b"%08X" % value for value in fields)


def _pad4(size: int) -> bytes:
    return b"\0" * (-size % 4)


def write_newc(entries: Iterable[CpioEntry], *, mtime: int = 0) -> bytes:
    """The archive as bytes: each entry in order, then the trailer."""
    out = bytearray()
    for ino, entry in enumerate([*entries, CpioEntry(_TRAILER, EntryKind.FILE, 0)], start=1):
        name = entry.path.encode() + b"\0"
        header = _header(0 if entry.path == _TRAILER else ino, entry, len(name), mtime)
        out += header + name + _pad4(len(header) + len(name))
        out += entry.data + _pad4(len(entry.data))
    return bytes(out)
