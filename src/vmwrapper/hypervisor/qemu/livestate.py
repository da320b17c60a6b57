"""Live checkpoints on QEMU, the pure part: file names, the manifest, and what to merge.

A live checkpoint ``NAME`` is three things in the slot (docs/qemu-backend.md#live-checkpoints):

    live_NAME.ram     the RAM and device state, a migration stream (background snapshot)
    live_NAME.json    the manifest: the RAM file and, per disk node, the frozen qcow2 layer
                      holding the disk as it was in the same stopped instant
    vm_disk.N.qcow2   layers: each checkpoint freezes the disk's top file and puts a new,
                      empty top over it (N grows); older layers are merged into vm_disk.qcow2

and ``vm_layers.json`` names the top file of each disk (absent: the overlays made by
``create()`` are the tops). The manifest is written last, after the RAM file is complete and
synced: a checkpoint without one is not a checkpoint.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from vmwrapper.errors import CheckpointError, CheckpointRefused

LAYERS_FILE: Final = "vm_layers.json"
MANIFEST_FORMAT: Final = 1
#: The first bytes of every QEMU migration stream ("QEVM", then version 3).
STREAM_MAGIC: Final = b"QEVM\x00\x00\x00\x03"
_LAYER = re.compile(r"^(?P<stem>vm_disk|vm_cache|vm_state)\.(?P<n>\d+)\.qcow2$")
_MANIFEST = re.compile(r"^live_(?P<name>.+)\.json$")


def ram_file(name: str) -> str:
    return f"live_{name}.ram"


def manifest_file(name: str) -> str:
    return f"live_{name}.json"


def manifest_name(filename: str) -> str | None:
    """The checkpoint a ``live_NAME.json`` file belongs to, or None for another file."""
    match = _MANIFEST.match(filename)
    return match.group("name") if match else None


def layer_number(filename: str) -> int | None:
    match = _LAYER.match(filename)
    return int(match.group("n")) if match else None


def is_layer(filename: str) -> bool:
    return layer_number(filename) is not None


def layer_file(bottom: str, number: int) -> str:
    """``vm_disk.qcow2`` → ``vm_disk.<number>.qcow2``."""
    stem = bottom.removesuffix(".qcow2")
    return f"{stem}.{number}.qcow2"


def next_layer_number(existing: Sequence[str]) -> int:
    """One more than the highest layer number in the slot (layers are never reused)."""
    return max((n for f in existing if (n := layer_number(f)) is not None), default=0) + 1


@dataclass(frozen=True)
class Manifest:
    """One live checkpoint: its RAM file (None: the disks alone) and its frozen disk layers
    (node name → file name in the slot)."""

    name: str
    ram: str | None
    disks: Mapping[str, str]

    def with_disk(self, node: str, filename: str) -> Manifest:
        return Manifest(self.name, self.ram, {**self.disks, node: filename})


def format_manifest(manifest: Manifest) -> str:
    return (
        json.dumps(
            {
                "format": MANIFEST_FORMAT,
                "name": manifest.name,
                "ram": manifest.ram,
                "disks": dict(sorted(manifest.disks.items())),
            },
            indent=2,
        )
        + "\n"
    )


def parse_manifest(text: str) -> Manifest | None:
    """The manifest, or None for a damaged or foreign file (that checkpoint does not exist)."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return None
    name, ram, disks = data.get("name"), data.get("ram"), data.get("disks")
    if not isinstance(name, str) or not (ram is None or isinstance(ram, str)):
        return None
    if not isinstance(disks, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in disks.items()
    ):
        return None
    return Manifest(name, ram, disks)


def format_layers(tops: Mapping[str, str]) -> str:
    return json.dumps(dict(sorted(tops.items())), indent=2) + "\n"


def parse_layers(text: str) -> dict[str, str]:
    """``vm_layers.json``: node → top file name; unreadable counts as none recorded."""
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


@dataclass(frozen=True)
class Merge:
    """Commit ``top`` (and every layer under it) into ``base``, the chain's bottom; then
    the checkpoint ``owner`` (if any) names ``base`` instead, and ``drop`` is deleted."""

    top: str
    base: str
    owner: str | None
    drop: tuple[str, ...]


def plan_merge(chain: Sequence[str], referenced: Mapping[str, str]) -> Merge | None:
    """What to merge in one disk's chain, or None (nothing to do, or not now).

    ``chain`` lists file names from the running top down to the bottom; ``referenced`` maps
    each file a live checkpoint's manifest names to that checkpoint. The layers between the
    top and the bottom are merged when at most one of them, and not the bottom, belongs to a
    checkpoint: a file a checkpoint names must keep what it shows, and a merge rewrites the
    bottom. (While an older checkpoint still exists, between a new record and the deletion
    of the old, nothing is merged.)
    """
    if len(chain) < 3:  # top over bottom: already short
        return None
    middle, bottom = list(chain[1:-1]), chain[-1]
    owned = [f for f in middle if f in referenced]
    if bottom in referenced or len(owned) > 1:
        return None
    top = owned[0] if owned else middle[0]
    drop = tuple(middle[middle.index(top) :])
    return Merge(top=top, base=bottom, owner=referenced.get(top), drop=drop)


def chain_from_node(nodes: Sequence[Mapping[str, Any]], node_name: str) -> list[str]:
    """File paths from node ``node_name`` down its backing chain, from a
    ``query-named-block-nodes`` reply (its ``image`` nests ``backing-image``)."""
    for node in nodes:
        if node.get("node-name") == node_name:
            chain: list[str] = []
            image: Mapping[str, Any] | None = node.get("image")
            while image:
                chain.append(str(image.get("filename", "")))
                image = image.get("backing-image")
            return chain
    return []


def virtual_size(nodes: Sequence[Mapping[str, Any]], node_name: str) -> int:
    """The disk size in bytes of node ``node_name`` in a ``query-named-block-nodes`` reply."""
    for node in nodes:
        if node.get("node-name") == node_name:
            return int((node.get("image") or {})["virtual-size"])
    raise CheckpointError(f"QEMU has no block node {node_name!r}")


def node_for_file(nodes: Sequence[Mapping[str, Any]], path: str) -> str | None:
    """The qcow2 format node opened on ``path`` (not its protocol node)."""
    for node in nodes:
        if node.get("drv") == "qcow2" and node.get("file") == path:
            return str(node["node-name"])
    return None


def migration_failure(reply: Mapping[str, Any], name: str) -> CheckpointError | None:
    """The error a finished ``query-migrate`` reply means, None for a completed one."""
    status = reply.get("status")
    if status == "completed":
        return None
    detail = str(reply.get("error-desc") or status)
    return CheckpointError(f"live checkpoint {name!r}: writing the RAM state failed: {detail}")


def migration_blocked(reply: Mapping[str, Any], name: str) -> CheckpointRefused | None:
    """A refusal when ``query-migrate`` lists reasons a migration is blocked now (a 9p
    export mounted in the guest); None when it may start."""
    reasons: Sequence[str] = reply.get("blocked-reasons") or ()
    if not reasons:
        return None
    return CheckpointRefused(
        f"QEMU refused live checkpoint {name!r} for now; retry shortly", output="; ".join(reasons)
    )


def stream_looks_whole(head: bytes, size: int) -> bool:
    """A RAM file a restore can start on: QEMU's stream header, and more than the header."""
    return head.startswith(STREAM_MAGIC) and size > len(STREAM_MAGIC)


#: The migration states in which QEMU's thread has not yet stopped the guest to save its
#: devices: it reads the RAM (``setup``) first, then marks the migration ``active`` (or
#: ``wait-unplug``) and only then takes the lock that stops the guest.
BEFORE_DEVICE_SAVE: Final = frozenset({"setup"})


@dataclass
class SetupLead:
    """How long to let QEMU set up a background snapshot while the guest still runs, before
    the wrapper stops the guest and freezes the disks (docs/qemu-backend.md#the-stopped-window).

    QEMU 7.2 reads every page of the RAM before it write-protects it, without its big lock:
    ~1 ms at 256 MB and 3 ms at 1 GB while the RAM is in huge pages, 9 and ~23 ms once the
    first snapshot has split them into 4 KiB pages; then it takes the lock to finish its setup
    and save the devices. Stopped before the migration starts, the guest stands still for all
    of it. Started with the guest running and stopped ``lead`` later (a ``share`` of the last
    setup time: the reading is ~60% of it), the guest stands still only for the rest. None
    (stop first) while no setup time is known or the lead would save too little. A stop that
    came too late (the devices may be saved already) is ``lost()`` and halves the share; one
    in time is ``won()`` and wins a quarter of it back, up to the first share."""

    share: float = 0.5
    least: float = 0.002  #: a smaller lead is not worth the risk of a checkpoint taken twice
    setup: float | None = None  #: the last measured setup time, seconds

    def lead(self) -> float | None:
        if self.setup is None:
            return None
        lead = self.setup * self.share
        return lead if lead >= self.least else None

    def measured(self, setup_ms: object) -> None:
        if isinstance(setup_ms, int | float) and setup_ms >= 0:
            self.setup = float(setup_ms) / 1000

    def won(self) -> None:
        self.share = min(SetupLead.share, self.share * 1.25)

    def lost(self) -> None:
        self.share /= 2

    def forget(self) -> None:
        """A new QEMU: its RAM's pages are as the guest made them (huge again, at first)."""
        self.setup = None
