"""Checkpoint record, its crash-safe write, and when to take the next checkpoint.

The record is ``vbox_checkpoint.xml`` in the slot, readable by anything that reads
vboxwrapper's (docs/compatibility.md#checkpoints), plus our own elements::

    <vbox_checkpoint>
        <elapsed_time>%f</elapsed_time>
        <cpu_time>%f</cpu_time>
        <webapi_port>%d</webapi_port>
        <remote_desktop_port>%d</remote_desktop_port>
        <vmwrapper_snapshot>boinc_1234</vmwrapper_snapshot>   (ours: the snapshot to restore)
    </vbox_checkpoint>

Crash safety (the order matters, see docs/supervisor.md): the new snapshot is taken and then
verified through ``Backend.checkpoints()``; only then is the record replaced (temporary file,
fsync, rename, fsync of the directory); only then is the older snapshot deleted. A wrapper or
host killed at any point finds either the old record with its snapshot or the new one with its
snapshot; snapshots no record names are orphans and are deleted at the next start.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET

from vmwrapper.boinc.files import write_atomic

CHECKPOINT_FILE: Final = "vbox_checkpoint.xml"
WEBAPI_FILE: Final = "vbox_webapi.xml"
REMOTE_DESKTOP_FILE: Final = "vbox_remote_desktop.xml"
SNAPSHOT_PREFIX: Final = "boinc_"
#: vboxwrapper draws the first checkpoint's offset from [0, 600) s so that many tasks started
#: together do not all snapshot at once.
FIRST_OFFSET_RANGE: Final = 600.0
#: The API's checkpoint period when the client gives none.
DEFAULT_CLIENT_PERIOD: Final = 300.0
#: A refused snapshot (QEMU with the 9p share mounted in that instant) is retried this soon,
#: then twice as late each time it is refused again, up to REFUSED_MAX_DELAY.
REFUSED_RETRY_DELAY: Final = 2.0
REFUSED_MAX_DELAY: Final = 60.0
#: Refused this many times in a row, the guest keeps the share mounted: the next checkpoint is
#: taken of the disks alone (docs/compatibility.md#runtime).
REFUSED_LIMIT: Final = 8


def refused_retry_delay(refusals: int) -> float:
    """Seconds until the next try after ``refusals`` refusals in a row (1, 2, ...)."""
    return min(REFUSED_RETRY_DELAY * 2.0 ** max(refusals - 1, 0), REFUSED_MAX_DELAY)


@dataclass(frozen=True)
class CheckpointRecord:
    elapsed_time: float = 0.0
    cpu_time: float = 0.0
    webapi_port: int = 0
    remote_desktop_port: int = 0
    snapshot: str = ""  # "" = no snapshot to restore (first run, or checkpoints disabled)


def format_record(record: CheckpointRecord) -> str:
    """The file text: vboxwrapper's elements in its order and number formats, then ours."""
    lines = [
        "<vbox_checkpoint>",
        f"    <elapsed_time>{record.elapsed_time:f}</elapsed_time>",
        f"    <cpu_time>{record.cpu_time:f}</cpu_time>",
        f"    <webapi_port>{record.webapi_port:d}</webapi_port>",
        f"    <remote_desktop_port>{record.remote_desktop_port:d}</remote_desktop_port>",
    ]
    if record.snapshot:
        lines.append(f"    <vmwrapper_snapshot>{record.snapshot}</vmwrapper_snapshot>")
    lines.append("</vbox_checkpoint>")
    return "\n".join(lines) + "\n"


def _number(root: Element, tag: str) -> float:
    text = (root.findtext(tag) or "").strip()
    try:
        value = float(text) if text else 0.0
    except ValueError:
        return 0.0
    return value if value == value and value not in (float("inf"), float("-inf")) else 0.0


def parse_record(text: str) -> CheckpointRecord:
    """Parse a record; anything unreadable counts as 'no checkpoint' (all zero), like the API."""
    try:
        root = SafeET.fromstring(text)
    except Exception:  # a damaged file from an older, non-atomic writer
        return CheckpointRecord()
    if root.tag != "vbox_checkpoint":
        return CheckpointRecord()
    return CheckpointRecord(
        elapsed_time=max(_number(root, "elapsed_time"), 0.0),
        cpu_time=max(_number(root, "cpu_time"), 0.0),
        webapi_port=int(_number(root, "webapi_port")),
        remote_desktop_port=int(_number(root, "remote_desktop_port")),
        snapshot=(root.findtext("vmwrapper_snapshot") or "").strip(),
    )


def read_record(slot_dir: Path) -> CheckpointRecord:
    try:
        return parse_record((slot_dir / CHECKPOINT_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return CheckpointRecord()


def write_record(slot_dir: Path, record: CheckpointRecord) -> None:
    """Write the record atomically; also the two port files, only if absent (as vboxwrapper)."""
    write_atomic(slot_dir / CHECKPOINT_FILE, format_record(record))
    webapi = slot_dir / WEBAPI_FILE
    if not webapi.exists():
        write_atomic(
            webapi, f"<webapi>\n  <host_port>{record.webapi_port:d}</host_port>\n</webapi>\n"
        )
    remote = slot_dir / REMOTE_DESKTOP_FILE
    if not remote.exists():
        write_atomic(
            remote,
            "<remote_desktop>\n"
            f"  <host_port>{record.remote_desktop_port:d}</host_port>\n"
            "</remote_desktop>\n",
        )


def snapshot_name(elapsed: float, existing: Iterable[str]) -> str:
    """``boinc_<elapsed seconds>`` as vboxwrapper names them, made unique among ``existing``."""
    taken = set(existing)
    name = f"{SNAPSHOT_PREFIX}{int(elapsed)}"
    n = 1
    candidate = name
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    return candidate


def orphan_snapshots(existing: Iterable[str], keep: str) -> tuple[str, ...]:
    """Our snapshots that no record names (left by a wrapper killed mid-checkpoint)."""
    return tuple(s for s in existing if s.startswith(SNAPSHOT_PREFIX) and s != keep)


@dataclass(frozen=True)
class CheckpointPolicy:
    """When the next checkpoint is due, in the job's elapsed seconds."""

    interval: float
    first_offset: float
    automatic: bool  # False: disable_automatic_checkpoints (record only, no snapshot)

    def due(self, elapsed: float, last_elapsed: float, taken_this_run: bool) -> bool:
        offset = 0.0 if taken_this_run else self.first_offset
        return elapsed >= last_elapsed + self.interval + offset

    def with_client_period(self, client_period: float, minimum: float) -> CheckpointPolicy:
        return CheckpointPolicy(
            desired_interval(client_period, minimum, self.automatic),
            self.first_offset,
            self.automatic,
        )


def desired_interval(client_period: float, minimum: float, automatic: bool) -> float:
    """max(client checkpoint period, minimum_checkpoint_interval); disabled: the client's."""
    period = client_period if client_period > 0 else DEFAULT_CLIENT_PERIOD
    return max(period, minimum) if automatic else period


def make_policy(
    *, client_period: float, minimum: float, automatic: bool, seed: int | None
) -> CheckpointPolicy:
    """The policy for one run; the first offset is drawn from ``random.Random(seed)``.

    vboxwrapper draws it from [0, 600) s whatever the interval; we draw from
    [0, min(600, interval)) — the same for the default 600 s interval, and a job that asks
    for checkpoints every minute does not wait up to ten for its first one.
    """
    interval = desired_interval(client_period, minimum, automatic)
    spread = min(FIRST_OFFSET_RANGE, interval)
    offset = random.Random(seed).uniform(0.0, spread) if automatic else 0.0
    return CheckpointPolicy(interval, offset, automatic)
