"""The newc cpio writer: what the kernel's initramfs unpacker reads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmwrapper.images.cpio import CpioEntry, EntryKind, normalize, with_parent_dirs, write_newc


def read_newc(blob: bytes) -> list[dict[str, object]]:
    """A minimal independent reader (the format as the kernel's init/initramfs.c reads it)."""
    members: list[dict[str, object]] = []
    pos = 0
    while True:
        assert blob[pos : pos + 6] == b"070701", f"bad magic at {pos}"
        fields = [int(blob[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name_start = pos + 110
        name = blob[name_start : name_start + namesize - 1].decode()
        assert blob[name_start + namesize - 1] == 0
        data_start = (name_start + namesize + 3) & ~3
        data = blob[data_start : data_start + filesize]
        pos = (data_start + filesize + 3) & ~3
        if name == "TRAILER!!!":
            assert pos == len(blob)
            return members
        members.append(
            {"name": name, "mode": fields[1], "uid": fields[2], "nlink": fields[4],
             "mtime": fields[5], "data": data, "rdev": (fields[9], fields[10]), "ino": fields[0]}
        )  # fmt: skip


def test_file_symlink_and_device_round_trip() -> None:
    blob = write_newc(
        [
            CpioEntry.directory("bin"),
            CpioEntry.file("bin/busybox", b"\x7fELF...", 0o755),
            CpioEntry.symlink("bin/sh", "/bin/busybox"),
            CpioEntry.chardev("dev/console", 5, 1),
        ]
    )
    members = read_newc(blob)
    assert [m["name"] for m in members] == ["bin", "bin/busybox", "bin/sh", "dev/console"]
    assert members[0]["mode"] == 0o040755 and members[0]["nlink"] == 2
    assert members[1]["mode"] == 0o100755 and members[1]["data"] == b"\x7fELF..."
    assert members[2]["mode"] == 0o120777 and members[2]["data"] == b"/bin/busybox"
    assert members[3]["mode"] == 0o020600 and members[3]["rdev"] == (5, 1)
    assert all(m["uid"] == 0 and m["mtime"] == 0 for m in members)
    assert len({m["ino"] for m in members}) == 4  # distinct inodes: no accidental hard links


def test_output_is_reproducible_and_aligned() -> None:
    entries = [CpioEntry.file("a", b"x" * n) for n in range(1, 6)]
    first, second = write_newc(entries), write_newc(entries)
    assert first == second
    assert len(first) % 4 == 0


@given(
    st.dictionaries(
        st.text("abcxyz019_-.", min_size=1, max_size=12).filter(lambda s: s not in (".", "..")),
        st.binary(max_size=300),
        max_size=8,
    )
)
def test_any_files_round_trip(files: dict[str, bytes]) -> None:
    blob = write_newc(CpioEntry.file(f"d/{name}", data) for name, data in files.items())
    members = read_newc(blob)
    assert {m["name"]: m["data"] for m in members} == {f"d/{k}": v for k, v in files.items()}


def test_parent_directories_are_added_before_their_children() -> None:
    ordered = with_parent_dirs(
        [CpioEntry.file("usr/lib/x/libfoo.so", b"1"), CpioEntry.file("init", b"#!/bin/sh")]
    )
    names = [e.path for e in ordered]
    assert names.index("usr") < names.index("usr/lib") < names.index("usr/lib/x")
    assert names.index("usr/lib/x") < names.index("usr/lib/x/libfoo.so")
    assert {e.path for e in ordered if e.kind is EntryKind.DIR} == {"usr", "usr/lib", "usr/lib/x"}


def test_later_entries_replace_earlier_ones() -> None:
    ordered = with_parent_dirs(
        [CpioEntry.file("etc/motd", b"old"), CpioEntry.file("etc/motd", b"new")]
    )
    assert [e.data for e in ordered if e.path == "etc/motd"] == [b"new"]


@pytest.mark.parametrize(
    ("raw", "expected"), [("/usr//bin/", "usr/bin"), ("a/./b", "a/b"), ("/../../etc", "etc")]
)
def test_normalize_keeps_paths_inside_the_root(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


def test_normalize_refuses_the_root() -> None:
    with pytest.raises(ValueError):
        normalize("/")
