"""Parsers for what VBoxManage prints (pure: text in, values out).

Formats are VirtualBox's own (VBoxManageInfo.cpp, VBoxManageDisk.cpp, VBoxManageList.cpp,
VBoxManageSnapshot.cpp, VBoxManageDebugVM.cpp + VMM/STAM.cpp): ``showvminfo --machinereadable``
is ``name="value"`` lines with ``\\`` and ``"`` escaped; ``showhdinfo`` and the ``list`` commands
are ``Label:   value`` lines; the snapshot tree is indented three spaces per level with `` *`` on
the current snapshot; ``debugvm statistics`` is STAM's XML snapshot, one element per line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vmwrapper.hypervisor.base import NetUsage, VmState

#: HRESULTs vboxwrapper names (vbox_common.h) and the ones we map ourselves.
VBOX_E_OBJECT_NOT_FOUND = 0x80BB0001
VBOX_E_INVALID_VM_STATE = 0x80BB0002
VBOX_E_FILE_ERROR = 0x80BB0004
VBOX_E_INVALID_OBJECT_STATE = 0x80BB0007
VBOX_E_OBJECT_IN_USE = 0x80BB000C
CO_E_SERVER_EXEC_FAILURE = 0x80080005
RPC_S_SERVER_UNAVAILABLE = 0x800706BA
E_FAIL = 0x80004005

Version = tuple[int, int, int]

_VERSION_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)")
_HRESULT_RE = re.compile(r"\(0x([0-9a-fA-F]{1,8})\)")
_CODE_NAME_RE = re.compile(r"code ([A-Z][A-Z0-9_]+) \(0x")


def parse_version(text: str) -> Version | None:
    """``VBoxManage --version`` output (``7.0.14r161095``, maybe after warning lines) → (7, 0, 14).

    The last line that holds a version wins (VirtualBox prints kernel-module warnings first);
    None when no line does (the caller then treats the version as unknown).
    """
    for line in reversed(text.replace("\r", "").splitlines()):
        match = _VERSION_RE.match(line.strip())
        if match:
            major, minor, patch = (int(g) for g in match.groups())
            return (major, minor, patch)
    return None


#: VirtualBox releases vboxwrapper refuses: 4.2.6 crashes while taking snapshots, 4.2.18
#: restores them wrongly, 4.3.0 likewise (docs/compatibility.md#virtualbox-failures).
KNOWN_BAD_VERSIONS: frozenset[Version] = frozenset({(4, 2, 6), (4, 2, 18), (4, 3, 0)})


def is_known_bad(version: Version | None) -> bool:
    """A release no job may run on (exact match; vboxwrapper's substring test also caught
    4.2.60 and 14.3.0)."""
    return version in KNOWN_BAD_VERSIONS


def is_newer(version: Version | None, than: Version) -> bool:
    """vboxwrapper's ``is_virtualbox_version_newer``: strictly greater, and True when unknown."""
    return version is None or version > than


_STARTED_RE = re.compile(r'^VM "[^"]*" has been successfully started\.\s*$', re.MULTILINE)


def reports_started(text: str) -> bool:
    """``startvm`` printed its success line (VirtualBox 5.0.10 exits 1 even then)."""
    return _STARTED_RE.search(text) is not None


def error_code(output: str) -> int | None:
    """The HRESULT of a failed command: the first ``(0x...)`` in the output (vboxwrapper's rule),
    or RPC_S_SERVER_UNAVAILABLE when that name appears. None when the output names no code."""
    if "RPC_S_SERVER_UNAVAILABLE" in output:
        return RPC_S_SERVER_UNAVAILABLE
    match = _HRESULT_RE.search(output)
    return int(match.group(1), 16) if match else None


def error_name(output: str) -> str:
    """The symbolic name VirtualBox printed with the code (``VBOX_E_OBJECT_NOT_FOUND``), or ""."""
    match = _CODE_NAME_RE.search(output)
    return match.group(1) if match else ""


def _unescape(value: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            out.append(value[i + 1])
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _split_quoted(text: str, start: int) -> tuple[str, int]:
    """Read a ``"..."`` token starting at ``text[start] == '"'``; return (raw content, end)."""
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return text[start + 1 : i], i + 1
        i += 1
    return text[start + 1 :], len(text)


def _closed(quoted: str) -> bool:
    """Does the ``"...`` token starting ``quoted`` end (an unescaped quote) in this text?"""
    i = 1
    while i < len(quoted):
        if quoted[i] == "\\":
            i += 2
            continue
        if quoted[i] == '"':
            return True
        i += 1
    return False


def parse_machinereadable(text: str) -> dict[str, str]:
    """``showvminfo --machinereadable`` → {name: value}; names and values unescaped.

    Names may be quoted (``"SATA-0-0"="/path"``); values may be unquoted numbers
    (``memory=512``) and may span lines (a ``description`` with a line break). Lines that are
    not ``name=value`` (warnings, 7.0's stray ``Encryption:`` line) are skipped.
    """
    values: dict[str, str] = {}
    lines = text.replace("\r", "").splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line or "=" not in line:
            continue
        if line.startswith('"'):
            raw_name, end = _split_quoted(line, 0)
            name = _unescape(raw_name)
            if end >= len(line) or line[end] != "=":
                continue
            rest = line[end + 1 :]
        else:
            name, _, rest = line.partition("=")
            # vrdeproperty[TCP/Ports]=..., and 7.0's unquoted "BIOS NVRAM File=..."
            if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_\-().\[\]/ ]*", name):
                continue
        if rest.startswith('"'):
            # a value with a line break (a description) goes on until its closing quote
            while not _closed(rest) and index < len(lines):
                rest += "\n" + lines[index]
                index += 1
            raw_value, end = _split_quoted(rest, 0)
            # BandwidthGroupN="name",Network,1024: text after the quotes belongs to the value
            values[name] = _unescape(raw_value) + rest[end:].rstrip()
        else:
            values[name] = rest.strip()
    return values


#: ``VMState`` short names (VBoxManageInfo.cpp machineStateToName) → our state.
_VM_STATES: dict[str, VmState] = {
    "poweroff": VmState.POWERED_OFF,
    "saved": VmState.SAVED,
    "teleported": VmState.POWERED_OFF,
    "aborted": VmState.CRASHED,
    "aborted-saved": VmState.CRASHED,
    "running": VmState.RUNNING,
    "paused": VmState.PAUSED,
    "gurumeditation": VmState.CRASHED,
    "stuck": VmState.CRASHED,
    "teleporting": VmState.RUNNING,
    "livesnapshotting": VmState.SAVING,
    "onlinesnapshotting": VmState.SAVING,
    "snapshotting": VmState.SAVING,
    "starting": VmState.STARTING,
    "stopping": VmState.RUNNING,  # still online: vboxwrapper counts it as running
    "saving": VmState.SAVING,
    "restoring": VmState.RESTORING,
    "restoringsnapshot": VmState.RESTORING,
    "teleportingpausedvm": VmState.PAUSED,
    "teleportingin": VmState.RESTORING,
    "deletingsnapshotlive": VmState.RUNNING,
    "deletingsnapshotlivepaused": VmState.PAUSED,
    "deletingsnapshot": VmState.POWERED_OFF,
    "settingup": VmState.STARTING,
}


def vm_state(raw: str) -> VmState:
    """Map a ``VMState`` value to :class:`VmState`; unknown names count as powered off (offline),
    as vboxwrapper's "no longer in a running state"."""
    return _VM_STATES.get(raw.strip().lower(), VmState.POWERED_OFF)


@dataclass(frozen=True)
class VmInfo:
    """The parts of ``showvminfo --machinereadable`` the back end uses."""

    name: str
    uuid: str
    state_name: str
    nic_type: str
    paravirt_provider: str
    current_snapshot: str
    values: dict[str, str]

    @property
    def state(self) -> VmState:
        return vm_state(self.state_name)


def parse_vminfo(text: str) -> VmInfo:
    values = parse_machinereadable(text)
    return VmInfo(
        name=values.get("name", ""),
        uuid=values.get("UUID", ""),
        state_name=values.get("VMState", ""),
        nic_type=values.get("nictype1", ""),
        paravirt_provider=values.get("effparavirtprovider", ""),
        current_snapshot=values.get("CurrentSnapshotName", ""),
        values=values,
    )


def _labelled(text: str) -> list[tuple[str, str]]:
    """``Label:   value`` lines as pairs; continuation lines (blank label) get label ""."""
    pairs: list[tuple[str, str]] = []
    for line in text.replace("\r", "").splitlines():
        if not line.strip():
            continue
        if line.startswith(" ") and pairs:
            pairs.append(("", line.strip()))
            continue
        label, sep, value = line.partition(":")
        if not sep:
            continue
        pairs.append((label.strip(), value.strip()))
    return pairs


@dataclass(frozen=True)
class MediumInfo:
    """``showhdinfo`` of one disk image."""

    uuid: str = ""
    parent_uuid: str = ""
    state: str = ""
    type: str = ""  # "normal (base)", "normal (differencing)", "multiattach", "immutable", ...
    location: str = ""
    in_use_by: tuple[tuple[str, str], ...] = ()  # (vm name, vm uuid)
    child_uuids: tuple[str, ...] = ()

    @property
    def multiattach(self) -> bool:
        return "multiattach" in self.type


_IN_USE_RE = re.compile(r"^(.*?) \(UUID: ([0-9a-fA-F-]+)\)")


def parse_hdinfo(text: str) -> MediumInfo:
    fields: dict[str, str] = {}
    in_use: list[tuple[str, str]] = []
    children: list[str] = []
    current = ""
    for label, value in _labelled(text):
        if label:
            current = label
        if current == "In use by VMs":
            match = _IN_USE_RE.match(value)
            if match:
                in_use.append((match.group(1), match.group(2)))
        elif current == "Child UUIDs":
            children.append(value)
        elif label:
            fields.setdefault(label, value)
    return MediumInfo(
        uuid=fields.get("UUID", ""),
        parent_uuid=fields.get("Parent UUID", ""),
        state=fields.get("State", ""),
        type=fields.get("Type", ""),
        location=fields.get("Location", ""),
        in_use_by=tuple(in_use),
        child_uuids=tuple(c for c in children if c),
    )


@dataclass(frozen=True)
class SnapshotEntry:
    name: str
    uuid: str
    depth: int  # 0 = the root snapshot
    current: bool


_SNAPSHOT_RE = re.compile(r"^(\s*)Name: (.*) \(UUID: ([0-9a-fA-F-]+)\)( \*)?\s*$")
NO_SNAPSHOTS = "does not have any snapshots"


def parse_snapshot_list(text: str) -> tuple[SnapshotEntry, ...]:
    """``snapshot <vm> list`` → entries in tree order (parents before children)."""
    entries: list[SnapshotEntry] = []
    for line in text.replace("\r", "").splitlines():
        match = _SNAPSHOT_RE.match(line)
        if not match:
            continue
        indent, name, uuid, star = match.groups()
        depth = max(len(indent) - 3, 0) // 3
        entries.append(SnapshotEntry(name=name, uuid=uuid, depth=depth, current=bool(star)))
    return tuple(entries)


@dataclass(frozen=True)
class HostInfo:
    """``list hostinfo``: is the host ready (vboxwrapper's ``is_system_ready``)?"""

    processor_count: int | None
    problems: tuple[str, ...]

    @property
    def ready(self) -> bool:
        return not self.problems


_MODULE_WARNINGS = (
    "WARNING: The vboxdrv kernel module is not loaded.",
    "WARNING: The VirtualBox kernel modules are not loaded.",
)


def parse_hostinfo(text: str) -> HostInfo:
    problems: list[str] = []
    count: int | None = None
    match = re.search(r"^Processor count:\s*(\d+)", text, re.MULTILINE)
    if match:
        count = int(match.group(1))
    else:
        problems.append("`VBoxManage list hostinfo` did not report a processor count")
    problems.extend(w for w in _MODULE_WARNINGS if w in text)
    if "Warning: program compiled against " in text and " using older " in text:
        problems.append("VBoxManage was compiled against a newer VirtualBox library than installed")
    return HostInfo(processor_count=count, problems=tuple(problems))


def guest_additions_iso(systemproperties: str) -> str:
    """``list systemproperties`` → the ``Default Guest Additions ISO:`` path ("" if none)."""
    for label, value in _labelled(systemproperties):
        if label == "Default Guest Additions ISO":
            return value
    return ""


def first_bridged_interface(bridgedifs: str) -> str:
    """``list bridgedifs`` → the first interface's ``Name:`` ("" when the host has none)."""
    for label, value in _labelled(bridgedifs):
        if label == "Name":
            return value
    return ""


def has_vrde_extpack(extpacks: str) -> bool:
    """``list extpacks`` mentions the Extension Pack that provides the VRDE server."""
    return "VirtualBox Extension Pack" in extpacks and "VBoxVRDP" in extpacks


def help_mentions(help_text: str, option: str) -> bool:
    """Does ``help modifyvm`` list ``option`` (e.g. ``--nic-type``)? Word-bounded match."""
    return re.search(re.escape(option) + r"(?![a-z-])", help_text) is not None


#: One STAM counter line of ``debugvm <vm> statistics``, e.g.
#: ``<Counter c="397229" unit="bytes" name="/Devices/e1000#0/TransmitBytes"/>`` (STAM.cpp writes
#: ``c`` first, then ``unit``, maybe ``vis``, then ``name``, maybe ``desc``).
_STAM_COUNTER_RE = re.compile(r'<Counter c="(\d+)"[^>]*? name="([^"]*)"')


def parse_net_statistics(text: str) -> NetUsage | None:
    """``debugvm <vm> statistics`` → the bytes every NIC transmitted (``sent``: left the guest)
    and received, summed over the ``.../TransmitBytes`` and ``.../ReceiveBytes`` counters (as
    vboxwrapper sums every counter of its two queries). A VM without a NIC has an empty
    ``<Statistics>`` (0, 0). None when the text is no statistics snapshot at all."""
    if "<Statistics>" not in text:
        return None
    sent = received = 0
    for match in _STAM_COUNTER_RE.finditer(text):
        value, name = int(match.group(1)), match.group(2)
        if not name.startswith("/Devices/"):
            continue
        if name.endswith("/TransmitBytes"):
            sent += value
        elif name.endswith("/ReceiveBytes"):
            received += value
    return NetUsage(sent=sent, received=received)
