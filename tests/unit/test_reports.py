"""Pure reporting pieces: the pcap byte counter behind QEMU's network accounting, the VM's nice
value, the error report text, and log tails."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmwrapper.hypervisor.qemu import netcount
from vmwrapper.hypervisor.text import whole_lines_tail
from vmwrapper.supervisor import report


def pcap(frames: list[int], order: str = "<", caplen: int = 1) -> bytes:
    """A pcap file as QEMU's filter-dump writes it with maxlen=caplen."""
    head = struct.pack(f"{order}IHHiIII", netcount.PCAP_MAGIC, 2, 4, 0, 0, caplen, 1)
    body = b"".join(
        struct.pack(f"{order}IIII", 0, 0, min(n, caplen), n) + b"\0" * min(n, caplen)
        for n in frames
    )
    return head + body


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcap_counts_original_lengths_in_either_byte_order(order: str) -> None:
    progress = netcount.advance(netcount.PcapProgress(), pcap([60, 1514, 42], order))
    assert (progress.frames, progress.octets, progress.byte_order) == (3, 1616, order)
    assert progress.offset == len(pcap([60, 1514, 42], order))


@given(st.lists(st.integers(1, 65535), max_size=40), st.integers(0, 2000))
def test_pcap_read_in_pieces_counts_each_frame_once(frames: list[int], cut: int) -> None:
    data = pcap(frames, caplen=3)
    first = netcount.advance(netcount.PcapProgress(), data[:cut])
    whole = netcount.advance(first, data[first.offset :])
    assert (whole.frames, whole.octets, whole.offset) == (len(frames), sum(frames), len(data))


def test_pcap_short_or_foreign_header() -> None:
    assert netcount.advance(netcount.PcapProgress(), b"\xd4\xc3") == netcount.PcapProgress()
    with pytest.raises(ValueError, match="not a pcap"):
        netcount.advance(netcount.PcapProgress(), b"GIF89a" + b"\0" * 30)


@pytest.mark.parametrize(
    ("no_change", "priority", "own", "expected"),
    [
        (False, -1, 0, report.VM_NICE),  # vboxwrapper's PROCESS_MEDIUM_PRIORITY
        (True, -1, 0, None),  # cc_config no_priority_change: leave the VM alone
        (False, 0, 0, 19),  # cc_config process_priority "lowest"
        (False, 2, 0, 0),  # "normal"
        (False, -1, 19, 19),  # never better than the wrapper's own priority
        (False, 5, 10, 10),
    ],
)
def test_vm_nice(no_change: bool, priority: int, own: int, expected: int | None) -> None:
    assert report.vm_nice(no_change, priority, own) == expected


def test_error_report_layout() -> None:
    png = b"\x89PNG\r\n\x1a\nscreen"
    text = report.error_report(png, {"Hypervisor Log": "line 1\nline 2"}, exit_code=-6)
    assert text.startswith("Screen Shot Information (Base64 Encoded PNG):\n")
    assert f"MD5 Signature: {hashlib.md5(png).hexdigest()}\n" in text
    assert f"Data: {base64.b64encode(png).decode()}\n" in text
    assert "Hypervisor Log:\n\nline 1\nline 2\n" in text
    assert text.endswith("VM Exit Code: -6 (0xfffffffa)\n")
    assert report.error_report(None, {}, 0) == ""


def test_whole_lines_tail() -> None:
    text = "".join(f"line {i}\n" for i in range(100))
    tail = whole_lines_tail(text, 50)
    assert len(tail) <= 50 and tail.startswith("line ") and tail.endswith("line 99\n")
    assert whole_lines_tail("short\n", 50) == "short\n"
