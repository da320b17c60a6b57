"""Bytes through the VM's NIC, counted by QEMU ``filter-dump`` objects writing pcap files
(read with the pure ``netcount``), a file rotated once it grows past NET_ROTATE_BYTES."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmwrapper.hypervisor.qemu import netcount
from vmwrapper.hypervisor.qemu.cmdline import NETDEV_ID

#: The netfilter queue that sees each direction: frames *to* the netdev (the "rx" queue) left
#: the guest; frames the netdev sends ("tx") reach it.
NET_QUEUES = {"sent": "rx", "received": "tx"}
#: A counting pcap file this big is replaced by a new one (17 bytes a frame: ~60k frames).
NET_ROTATE_BYTES = 1 << 20

#: Runs one QMP command on the running QEMU.
Execute = Callable[[str, dict[str, object]], Any]


@dataclass
class NetTap:
    """One direction's filter-dump: the current pcap file and the bytes of the earlier ones."""

    direction: str
    generation: int
    path: Path
    progress: netcount.PcapProgress
    earlier: int = 0

    @property
    def object_id(self) -> str:
        return f"vmw-net-{self.direction}-{self.generation}"

    @property
    def total(self) -> int:
        return self.earlier + self.progress.octets


class NetTaps:
    """Both directions' taps of one QEMU run; armed on the first :meth:`totals`."""

    def __init__(self, slot_dir: Path, execute: Execute) -> None:
        self.slot_dir = slot_dir
        self._execute = execute
        self._taps: dict[str, NetTap] = {}

    def reset(self) -> None:
        """A new QEMU counts from zero (the client's "episode" total): no taps, no files."""
        self._taps = {}
        remove_net_files(self.slot_dir)

    def totals(self) -> tuple[int, int]:
        """(sent, received) bytes since the taps were armed."""
        if not self._taps:
            for direction in NET_QUEUES:
                self._taps[direction] = self._add(direction, 0, 0)
        return self._read("sent"), self._read("received")

    def _add(self, direction: str, generation: int, earlier: int) -> NetTap:
        path = self.slot_dir / f"qemu-net-{direction}.{generation}.pcap"
        tap = NetTap(direction, generation, path, netcount.PcapProgress(), earlier)
        self._execute(
            "object-add",
            {
                "qom-type": "filter-dump",
                "id": tap.object_id,
                "netdev": NETDEV_ID,
                "queue": NET_QUEUES[direction],
                "file": str(path),
                "maxlen": 1,  # the record header keeps each frame's full length
            },
        )
        return tap

    def _read(self, direction: str) -> int:
        tap = self._taps[direction]
        _advance(tap)
        if tap.progress.offset >= NET_ROTATE_BYTES:
            # Stop the old filter before the new one starts: a frame in between is missed,
            # none is counted twice.
            self._execute("object-del", {"id": tap.object_id})
            _advance(tap)
            tap.path.unlink(missing_ok=True)
            tap = self._add(direction, tap.generation + 1, tap.total)
            self._taps[direction] = tap
        return tap.total


def _advance(tap: NetTap) -> None:
    try:
        with tap.path.open("rb") as fh:
            fh.seek(tap.progress.offset)
            data = fh.read()
    except FileNotFoundError:
        return  # QEMU creates it when the filter is added; nothing seen yet
    tap.progress = netcount.advance(tap.progress, data)


def remove_net_files(slot_dir: Path) -> None:
    for path in slot_dir.glob("qemu-net-*.pcap"):
        path.unlink(missing_ok=True)
