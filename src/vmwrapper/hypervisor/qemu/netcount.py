"""Counting a QEMU NIC's bytes from ``filter-dump`` pcap files (pure: bytes in, counts out).

QEMU's user-mode NAT keeps no byte counters that QMP can read, but a ``filter-dump`` netfilter
on the netdev writes every frame it sees as a pcap record whose header carries the frame's
original length. With ``maxlen=1`` a record costs 17 bytes whatever the frame's size, so the
files stay small; the back end reads them incrementally and starts new ones now and then.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

#: pcap's magic number; QEMU writes the file in the host's byte order.
PCAP_MAGIC = 0xA1B2C3D4
FILE_HEADER_SIZE = 24
RECORD_HEADER_SIZE = 16


@dataclass(frozen=True)
class PcapProgress:
    """How far a pcap file has been read and what it held so far."""

    offset: int = 0  # bytes of the file consumed (whole records only)
    frames: int = 0
    octets: int = 0  # sum of the frames' original lengths
    byte_order: str = ""  # "<" or ">" once the file header was read


def byte_order(header: bytes) -> str:
    """The struct byte order of a pcap file header, or "" when it is not one."""
    if len(header) < FILE_HEADER_SIZE:
        return ""
    for order in ("<", ">"):
        if struct.unpack_from(f"{order}I", header)[0] == PCAP_MAGIC:
            return order
    raise ValueError(f"not a pcap file (magic {header[:4].hex()})")


def advance(progress: PcapProgress, data: bytes) -> PcapProgress:
    """Count the whole records in ``data``, the file's bytes from ``progress.offset`` on.

    A record still being written (a short tail) is left for the next call.
    """
    pos = 0
    order = progress.byte_order
    if not order:
        order = byte_order(data)
        if not order:
            return progress
        pos = FILE_HEADER_SIZE
    record = struct.Struct(f"{order}IIII")
    frames, octets = progress.frames, progress.octets
    while pos + RECORD_HEADER_SIZE <= len(data):
        _sec, _usec, captured, original = record.unpack_from(data, pos)
        end = pos + RECORD_HEADER_SIZE + captured
        if end > len(data):
            break
        frames += 1
        octets += original
        pos = end
    return PcapProgress(progress.offset + pos, frames, octets, order)


__all__ = ["PcapProgress", "advance", "byte_order"]
