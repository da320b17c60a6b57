"""What a VM's ``VBox.log`` says (pure): guest lines, the VM process id, and diagnoses.

The VM's state comes from ``showvminfo`` (docs/compatibility.md#virtualbox-state-and-logs); the log
is read only for ``Guest Log:`` lines (written by VMMDev for text the guest sends to port 0x504,
e.g. through vboxmonitor), for the ``Process ID:`` header line, and for error diagnoses
(docs/compatibility.md#vm-extensions), which are made from a fresh read each time
(docs/compatibility.md#virtualbox-state-and-logs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vmwrapper.hypervisor.base import GUEST_OOM_MARKER, Diagnosis

GUEST_LOG_MARK = "Guest Log:"

#: Log tokens → diagnosis, in vboxwrapper's order (vbox_common.cpp is_logged_failure_*).
_PATTERNS: tuple[tuple[Diagnosis, tuple[str, ...]], ...] = (
    (
        Diagnosis.VM_EXTENSIONS_DISABLED,
        (
            "VERR_VMX_MSR_LOCKED_OR_DISABLED",
            "VERR_SVM_DISABLED",
            "VERR_VMX_MSR_VMXON_DISABLED",
            "VERR_VMX_MSR_SMX_VMXON_DISABLED",
            "VERR_VMX_MSR_VMX_DISABLED",
            "VERR_VMX_MSR_ALL_VMX_DISABLED",
            "VERR_VMX_MSR_LOCKING_FAILED",
        ),
    ),
    (Diagnosis.NO_VM_EXTENSIONS, ("VERR_VMX_NO_VMX", "VERR_SVM_NO_SVM")),
    (
        Diagnosis.FOREIGN_HYPERVISOR,
        (
            "VERR_VMX_IN_VMX_ROOT_MODE",
            "VERR_SVM_IN_USE",
            # Hyper-V holds VT-x and VirtualBox's NEM mode over it failed (Windows 10/11 with
            # Hyper-V, WSL2, Device Guard); VERR_NEM_NOT_AVAILABLE alone only says "no
            # Hyper-V", printed before the real VT-x reason, so it is no diagnosis
            "VERR_NEM_VM_CREATE_FAILED",
            "VERR_NEM_INIT_FAILED",
            "VERR_SUPDRV_NO_RAW_MODE_HYPER_V_ROOT",
        ),
    ),
    (Diagnosis.HOST_OUT_OF_MEMORY, ("VERR_EM_NO_MEMORY", "VERR_NO_MEMORY")),
    (Diagnosis.GUEST_OUT_OF_MEMORY, (GUEST_OOM_MARKER,)),
    (Diagnosis.GURU_MEDITATION, ("Guru Meditation",)),
)

#: Diagnoses that say the host cannot run this VM now (the VM-extensions contract and the
#: foreign-hypervisor / memory notices), as opposed to what the guest did.
HOST_DIAGNOSES = frozenset(
    {
        Diagnosis.VM_EXTENSIONS_DISABLED,
        Diagnosis.NO_VM_EXTENSIONS,
        Diagnosis.FOREIGN_HYPERVISOR,
        Diagnosis.HOST_OUT_OF_MEMORY,
    }
)

_STATE_RE = re.compile(r"Console: Machine state changed to '([A-Za-z]+)'")
#: VBox.log's machine state names (MachineState_*) -> showvminfo's short names
_LOG_STATE_NAMES = {
    "PoweredOff": "poweroff",
    "Stuck": "gurumeditation",
    "DeletingSnapshotOnline": "deletingsnapshotlive",
    "DeletingSnapshotPaused": "deletingsnapshotlivepaused",
}


def machine_state(log_text: str) -> str:
    """The VM's last state the log recorded, as showvminfo names it ("" when none): newer
    vboxwrapper reads the state here when VBoxManage cannot tell
    (docs/compatibility.md#virtualbox-failures)."""
    found = _STATE_RE.findall(log_text)
    if not found:
        return ""
    last: str = found[-1]
    return _LOG_STATE_NAMES.get(last, last.lower())


_PID_RE = re.compile(r"^\S*\s*Process ID: (\d+)\s*$", re.MULTILINE)
_TIMESTAMP_RE = re.compile(r"^\s*\d+:\d+:\d+\.\d+\s+")


def diagnose(log_text: str) -> tuple[Diagnosis, ...]:
    """Every problem the log shows, in a fixed order, each once."""
    found: list[Diagnosis] = []
    for diagnosis, tokens in _PATTERNS:
        if any(token in log_text for token in tokens):
            found.append(diagnosis)
    return tuple(found)


def process_id(log_text: str) -> int | None:
    """The VM process id from the log header (``00:00:00.000123 Process ID: 4242``)."""
    match = _PID_RE.search(log_text)
    return int(match.group(1)) if match else None


def guest_line(line: str) -> str | None:
    """The guest's text on a ``... VMMDev: Guest Log: <text>`` line, or None for other lines."""
    index = line.find(GUEST_LOG_MARK)
    if index < 0:
        return None
    return line[index + len(GUEST_LOG_MARK) :].strip("\r\n").removeprefix(" ")


@dataclass(frozen=True)
class LogChunk:
    """New complete lines since the last read, and where to continue."""

    lines: tuple[str, ...]
    offset: int  # byte offset just after the last complete line


def split_new(data: bytes, offset: int) -> LogChunk:
    """Complete lines in ``data`` (the log from ``offset`` on). A partial last line stays unread,
    so the next read starts at its beginning (vboxwrapper's tellg() = -1 bug,
    docs/compatibility.md#virtualbox-state-and-logs)."""
    end = data.rfind(b"\n")
    if end < 0:
        return LogChunk(lines=(), offset=offset)
    text = data[: end + 1].decode("utf-8", errors="replace")
    return LogChunk(lines=tuple(text.splitlines()), offset=offset + end + 1)


def guest_lines(lines: tuple[str, ...] | list[str]) -> list[str]:
    """The ``Guest Log:`` texts among log lines, in order."""
    out: list[str] = []
    for line in lines:
        text = guest_line(line)
        if text is not None:
            out.append(text)
    return out


def strip_timestamp(line: str) -> str:
    """Drop VirtualBox's ``HH:MM:SS.ffffff`` uptime prefix."""
    return _TIMESTAMP_RE.sub("", line, count=1)
