"""Serial console bytes → guest log lines and guest markers (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vmwrapper.hypervisor.qemu.console import MAX_LINE, ConsoleLines


def test_lines_are_split_and_a_partial_line_waits() -> None:
    console = ConsoleLines()
    assert console.feed(b"first\r\nsec") == ["first"]
    assert console.feed(b"ond\n\nthird") == ["second"]
    assert console.flush() == ["third"]
    assert console.flush() == []


def test_escape_sequences_and_bad_utf8_are_cleaned() -> None:
    console = ConsoleLines()
    assert console.feed(b"\x1b[1;32mgreen\x1b[0m \xff\n") == ["green \ufffd"]


def test_markers() -> None:
    console = ConsoleLines()
    console.feed(b"VMWRAPPER_GUEST: running boinc_app\n")
    assert console.guest_error is None and console.done_status is None
    console.feed(b"VMWRAPPER_GUEST_ERROR: cannot mount the 9p share 'shared'\n")
    console.feed(b"VMWRAPPER_GUEST_ERROR: a later one\n")
    console.feed(b"app says EXIT_OUT_OF_MEMORY\nVMWRAPPER_GUEST_DONE status=3\n")
    assert console.guest_error == "cannot mount the 9p share 'shared'"
    assert console.out_of_memory
    assert console.done_status == 3


def test_endless_line_is_cut() -> None:
    console = ConsoleLines()
    lines = console.feed(b"x" * (MAX_LINE + 10))
    assert lines == ["x" * (MAX_LINE + 10)]
    assert console.partial == b""


@given(st.lists(st.binary(max_size=50), max_size=20))
def test_chunking_does_not_change_the_lines(chunks: list[bytes]) -> None:
    data = b"".join(chunks).replace(b"\x1b", b"")
    whole = ConsoleLines()
    expected = whole.feed(data) + whole.flush()
    pieces = ConsoleLines()
    got: list[str] = []
    position = 0
    for chunk in chunks:
        part = data[position : position + len(chunk.replace(b"\x1b", b""))]
        position += len(part)
        got += pieces.feed(part)
    got += pieces.feed(data[position:]) + pieces.flush()
    assert got == expected


def test_firmware_mode_sequences_are_dropped() -> None:
    """UEFI (aarch64) prints ``ESC [=3h`` screen-mode sequences on their own lines."""
    console = ConsoleLines()
    assert console.feed(b"UEFI firmware\r\n\x1b[=3h\x1b[=3h\r\n") == ["UEFI firmware"]
