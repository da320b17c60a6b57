"""What QEMU answers, understood (pure): run states, snapshot lists, snapshot errors, logs.

Replies come from QMP (``query-status``, ``query-named-block-nodes``), from HMP through QMP's
``human-monitor-command`` (``savevm``/``delvm`` answer with text, "Error: ..." on failure), from
``qemu-img info --output=json`` and from QEMU's stderr.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from typing import Any

from vmwrapper.errors import CheckpointError, CheckpointRefused
from vmwrapper.hypervisor.base import (
    GUEST_DONE_MARKER,
    GUEST_OOM_MARKER,
    Diagnosis,
    VmState,
    VmStatus,
)
from vmwrapper.hypervisor.qemu.console import ConsoleLines


class StopCause(enum.Enum):
    """Why the QEMU of this run ended (or will): what status() reports once it has exited."""

    NONE = "none"  # by itself: the guest powered off, or QEMU crashed
    WRAPPER = "wrapper"  # poweroff() or save_state() stopped it
    SAVED = "saved"  # save_state() wrote its snapshot, then QEMU quit


_TAG_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def check_tag(name: str) -> None:
    """A checkpoint name QEMU takes as a snapshot tag, else CheckpointError."""
    if not _TAG_RE.match(name):
        raise CheckpointError(
            f"checkpoint name {name!r} is not usable as a QEMU snapshot tag "
            "(use letters, digits, '_', '.', ':' or '-', at most 128)"
        )


#: QMP RunState → our VmState (QEMU's qapi/run-state.json).
RUN_STATES: dict[str, VmState] = {
    "running": VmState.RUNNING,
    "paused": VmState.PAUSED,
    "suspended": VmState.PAUSED,  # guest ACPI S3
    "debug": VmState.PAUSED,
    "prelaunch": VmState.STARTING,
    "inmigrate": VmState.STARTING,
    "restore-vm": VmState.RESTORING,
    "save-vm": VmState.SAVING,
    "finish-migrate": VmState.SAVING,
    "postmigrate": VmState.PAUSED,
    "colo": VmState.RUNNING,
    "shutdown": VmState.POWERED_OFF,
    "guest-panicked": VmState.CRASHED,
    "internal-error": VmState.CRASHED,
    "io-error": VmState.CRASHED,
    "watchdog": VmState.CRASHED,
}

# QEMU's words when a snapshot is blocked for now (a 9p/virtio-fs export is mounted in the
# guest, a migration blocker); the guest agent unmounts within about a second.
_REFUSAL_TEXTS = ("Migration is disabled", "is mounted in the guest", "migration blocker")


def vm_state(run_status: str) -> VmState:
    return RUN_STATES.get(run_status, VmState.RUNNING)


def snapshot_names(image_info: Mapping[str, Any]) -> tuple[str, ...]:
    """Snapshot tags in a qemu-img/QMP ImageInfo (``{"snapshots": [{"name": ...}, ...]}``)."""
    snaps: Sequence[Mapping[str, Any]] = image_info.get("snapshots") or ()
    return tuple(str(s["name"]) for s in snaps)


def node_snapshot_names(nodes: Sequence[Mapping[str, Any]], node_name: str) -> tuple[str, ...]:
    """Snapshot tags of one node in a ``query-named-block-nodes`` reply."""
    for node in nodes:
        if node.get("node-name") == node_name:
            return snapshot_names(node.get("image") or {})
    return ()


def snapshot_failure(
    reply: str, action: str, tag: str
) -> CheckpointRefused | CheckpointError | None:
    """The error an HMP snapshot command's reply text means, or None when it succeeded."""
    text = reply.strip()
    if not text:
        return None
    if any(marker in text for marker in _REFUSAL_TEXTS):
        return CheckpointRefused(
            f"QEMU refused {action} {tag!r} for now; retry shortly", output=text
        )
    if "Error" in text or "error" in text or "not found" in text or "fail" in text.lower():
        return CheckpointError(f"QEMU could not {action} {tag!r}", output=text)
    return None  # informational text only


def diagnose(stderr_text: str, console_text: str) -> tuple[Diagnosis, ...]:
    """Host and guest problems recognisable in QEMU's stderr and the guest console."""
    found: list[Diagnosis] = []
    lowered = stderr_text.lower()
    if "cannot allocate memory" in lowered or "failed to allocate" in lowered:
        found.append(Diagnosis.HOST_OUT_OF_MEMORY)
    if "could not access kvm kernel module" in lowered:
        found.append(Diagnosis.NO_VM_EXTENSIONS)
    if GUEST_OOM_MARKER in console_text:
        found.append(Diagnosis.GUEST_OUT_OF_MEMORY)
    return tuple(found)


def exit_detail(exit_code: int, guest_error: str | None, stderr_tail: str) -> str:
    """Human text for a QEMU exit: the guest's own error first, else QEMU's last words."""
    if guest_error:
        return f"guest error: {guest_error}"
    if exit_code < 0:
        return f"QEMU killed by signal {-exit_code}"
    last = stderr_tail.strip().splitlines()[-1:] if stderr_tail.strip() else []
    return f"QEMU exited with code {exit_code}" + (f": {last[0]}" if last else "")


def exited_status(code: int, stop: StopCause, console: ConsoleLines, stderr: str) -> VmStatus:
    """The VM's status once QEMU has exited with ``code``: why it stopped decides first,
    then the exit code, the guest's console and QEMU's messages of this run."""
    if stop is StopCause.SAVED:
        return VmStatus(VmState.SAVED, "state saved in a snapshot", code)
    if stop is StopCause.WRAPPER:
        return VmStatus(VmState.POWERED_OFF, "stopped by the wrapper", code)
    if code == 0:
        if console.done_status is None:  # e.g. a panic before pvpanic was loaded
            detail = f"guest powered off (no {GUEST_DONE_MARKER} line)"
        else:
            detail = f"guest powered off ({GUEST_DONE_MARKER} status={console.done_status})"
        return VmStatus(VmState.POWERED_OFF, detail, code)
    detail = exit_detail(code, console.guest_error, stderr)
    return VmStatus(VmState.CRASHED, detail, code)
