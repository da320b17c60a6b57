# ruff: noqa: E501  (help texts are VirtualBox's, line for line)
"""A VBoxManage simulator: VirtualBox's registry, output formats, errors and refusals, for tests.

The tests put ``tests/vboxsim`` first on PATH; ``VBoxManage`` there runs :func:`main`. State lives
in the directory named by ``VBOXSIM_STATE`` (created on first use):

* ``registry.json`` — VMs (settings, storage, NICs, shares, bandwidth groups, snapshots, state),
  media (location, type, parent/children, attachments); changed under ``registry.lock`` (an
  advisory lock: ``flock``, or a ``msvcrt.locking`` region on Windows).
* ``config.json`` (optional) — ``version`` ("7.0.14", "6.1.50", "4.1.22" (no ``snapshot take
  --live``), or anything unparseable),
  ``extpack`` (bool), ``bridged_interfaces``, ``guest_additions_iso``, ``kernel_module_missing``,
  ``guest`` (the default guest script, below), ``nic_bytes_per_s`` (``{"sent": n, "received": n}``:
  the traffic of each NIC with its cable plugged while the guest runs; default below).
* ``faults.json`` (optional, counters decremented as they fire) —
  ``lock_contention: {"commands": [...], "times": N}`` (VBOX_E_INVALID_OBJECT_STATE),
  ``service_down: {"times": N, "host": "windows"|"linux"}`` (VBoxSVC unreachable: Windows
  prints CO_E_SERVER_EXEC_FAILURE, Linux NS_BASE_STREAM_WOULD_BLOCK),
  ``output: {"commands": [...], "text": "...", "exit": 1, "times": N}`` (the command prints
  ``text`` and exits with ``exit``: replays a real VBoxManage error, see tests/data/vbox/real/),
  ``hang: {"commands": [...], "times": N}`` (the command sleeps for an hour),
  ``lying_exit: {"commands": [...], "times": N}`` (the command works but exits 1, as
  VirtualBox 5.0.10's ``startvm`` does),
  ``start_error: "VERR_..."`` or a list of them (startvm fails with those VirtualBox statuses,
  one line each as on Windows, logged in VBox.log),
  ``multiattach_registry_bug: true`` (VirtualBox's "4.0 or later" MultiAttach error until the
  parent is closed and reopened).

A started VM is a real process (this file run with ``__vm__``), so PIDs, CPU time, kill -9 and
"aborted" behave as with VBoxHeadless.

It runs on Windows too (docs/windows.md#the-vboxmanage-simulator-on-windows): the host-specific
parts (locks, liveness, pausing the guest app, killing a process) go through the wrapper's
``vmwrapper.hostos``, and frozen as ``VBoxManage.exe`` (scripts/build-vboxsim-windows.sh) the exe
is its own VM process (``VBoxManage.exe __vm__ <uuid>``) and guest app runner (``__app__``). It writes ``<basefolder>/<vm>/Logs/VBox.log`` with
VirtualBox's header, ``Console: Machine state changed to '<State>'`` lines and
``VMMDev: Guest Log: <text>`` lines, following a guest script: a list of events
``{"at": guest_seconds, "log": text}``, ``{"at": s, "poweroff": true}``, ``{"at": s, "guru": true}``,
or ``{"run_shared_app": true}`` to run ``<shared folder "shared">/boinc_app`` as the guest's job
(its output becomes guest log lines; the guest powers off when it exits; a ``boinc_app`` whose
first line names python, and any on Windows, runs as Python source, others with ``/bin/sh``), or
``{"at": s, "net": {"sent": n, "received": n}}`` (a burst of n bytes through NIC 1).

The VM process has threads like VBoxHeadless (one EMT per vCPU and a worker), so per-thread
properties such as the nice value are observable. Its NICs count the bytes in VirtualBox's
statistics (``debugvm <vm> statistics``, STAM's XML): they start at 0 in each VM process and grow
with guest time while the cable is plugged (``nic_bytes_per_s``) and with ``net`` events.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import queue
import re
import runpy
import signal
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

#: Frozen by PyInstaller (VBoxManage.exe): sys.executable is the simulator itself.
FROZEN = bool(getattr(sys, "frozen", False))
if not FROZEN:  # run with ``python -S``: the wrapper's hostos comes from this checkout's src/
    sys.path.append(str(Path(__file__).resolve().parents[2] / "src"))

from vmwrapper import hostos  # noqa: E402
from vmwrapper.hostos import locks  # noqa: E402

VBOX_E_OBJECT_NOT_FOUND = ("VBOX_E_OBJECT_NOT_FOUND", 0x80BB0001)
VBOX_E_INVALID_VM_STATE = ("VBOX_E_INVALID_VM_STATE", 0x80BB0002)
VBOX_E_FILE_ERROR = ("VBOX_E_FILE_ERROR", 0x80BB0004)
VBOX_E_INVALID_OBJECT_STATE = ("VBOX_E_INVALID_OBJECT_STATE", 0x80BB0007)
VBOX_E_OBJECT_IN_USE = ("VBOX_E_OBJECT_IN_USE", 0x80BB000C)
E_INVALIDARG = ("E_INVALIDARG", 0x80070057)
NS_ERROR_FAILURE = ("NS_ERROR_FAILURE", 0x80004005)

RTEXITCODE_FAILURE = 1
RTEXITCODE_SYNTAX = 2
ONLINE = (
    "running",
    "paused",
    "starting",
    "stopping",
    "saving",
    "restoring",
    "livesnapshotting",
    "onlinesnapshotting",
    "gurumeditation",
)
RUNNING_ISH = (
    "running",
    "paused",
    "starting",
    "stopping",
    "saving",
    "restoring",
    "livesnapshotting",
    "onlinesnapshotting",
    "gurumeditation",
)
STATE_LOG_NAMES = {
    "poweroff": "PoweredOff",
    "saved": "Saved",
    "aborted": "Aborted",
    "running": "Running",
    "paused": "Paused",
    "gurumeditation": "Stuck",
    "starting": "Starting",
    "stopping": "Stopping",
    "saving": "Saving",
    "restoring": "Restoring",
    "livesnapshotting": "LiveSnapshotting",
    "onlinesnapshotting": "OnlineSnapshotting",
}
START_ERRORS = {
    "VERR_VMX_MSR_ALL_VMX_DISABLED": "VT-x is disabled in the BIOS for all CPU modes",
    "VERR_SVM_DISABLED": "AMD-V is disabled in the BIOS (or by the host OS)",
    "VERR_VMX_NO_VMX": "VT-x is not available",
    "VERR_SVM_NO_SVM": "AMD-V is not available",
    "VERR_VMX_IN_VMX_ROOT_MODE": "VirtualBox can't operate in VMX root mode. Please disable the "
    "KVM kernel extension, recompile your kernel and reboot",
    "VERR_SVM_IN_USE": "AMD-V is being used by another hypervisor",
    "VERR_NO_MEMORY": "Failed to allocate memory for the guest",
    "VERR_EM_NO_MEMORY": "Unable to allocate and lock memory. The virtual machine will be paused",
    "VERR_NEM_NOT_AVAILABLE": "Not in a hypervisor partition (HVP=0)",
    "VERR_NEM_VM_CREATE_FAILED": "Call to WHvSetupPartition failed: ERROR_SUCCESS (Last=0xc000000d/87)",
    "VERR_VMX_MSR_LOCKED_OR_DISABLED": "VT-x is disabled in the BIOS",
}


class Fail(Exception):
    """A VBoxManage failure: message lines, optional (name, hresult), exit code."""

    def __init__(
        self,
        text: str,
        code: tuple[str, int] | None = None,
        exit_code: int = RTEXITCODE_FAILURE,
        component: str = "MachineWrap",
        interface: str = "IMachine",
        context: str = "",
    ) -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.exit_code = exit_code
        self.component = component
        self.interface = interface
        self.context = context

    def render(self) -> str:
        """VirtualBox's error block (VBoxManage's GlueHandleComError): the message lines, the
        ``Details:`` line (``callee`` only for calls through a COM proxy: not for a powering-up
        console), and ``Context: "<call>" at line N of file VBoxManage<Command>.cpp``."""
        lines = [f"VBoxManage: error: {line}" for line in self.text.splitlines()]
        if self.code is not None:
            name, value = self.code
            callee = "" if self.component == "ConsoleWrap" else ", callee nsISupports"
            lines.append(
                f"VBoxManage: error: Details: code {name} (0x{value:08x}), component "
                f"{self.component}, interface {self.interface}{callee}"
            )
        if self.context:
            source, line = CONTEXT_SOURCE
            lines.append(
                f'VBoxManage: error: Context: "{self.context}" at line {line} of file {source}'
            )
        return "\n".join(lines) + "\n"


#: VBoxManage's source file per command (for the ``Context:`` line), with a plausible line.
SOURCE_FILES = {
    "modifyvm": ("VBoxManageModifyVM.cpp", 462),
    "startvm": ("VBoxManageMisc.cpp", 727),
    "controlvm": ("VBoxManageControlVM.cpp", 217),
    "snapshot": ("VBoxManageSnapshot.cpp", 433),
    "storageattach": ("VBoxManageStorageController.cpp", 1048),
    "storagectl": ("VBoxManageStorageController.cpp", 1048),
    "showvminfo": ("VBoxManageInfo.cpp", 2861),
    "sharedfolder": ("VBoxManageMisc.cpp", 1002),
    "bandwidthctl": ("VBoxManageBandwidthControl.cpp", 201),
    "unregistervm": ("VBoxManageMisc.cpp", 197),
}
CONTEXT_SOURCE: tuple[str, int] = ("VBoxManage.cpp", 1)


def syntax_error(text: str) -> Fail:
    return Fail(text, exit_code=RTEXITCODE_SYNTAX)


# ---- state ------------------------------------------------------------------------------


def state_dir() -> Path:
    value = os.environ.get("VBOXSIM_STATE")
    if not value:
        sys.stderr.write("vboxsim: VBOXSIM_STATE is not set\n")
        sys.exit(3)
    path = Path(value)
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def save_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(sdir: Path) -> Iterator[None]:
    with open(sdir / "registry.lock", "a+") as handle:
        locks.lock(handle.fileno())
        try:
            yield
        finally:
            locks.unlock(handle.fileno())


class Registry:
    def __init__(self, sdir: Path) -> None:
        self.sdir = sdir
        data = load_json(sdir / "registry.json", {})
        self.vms: dict[str, dict[str, Any]] = data.get("vms", {})
        self.media: dict[str, dict[str, Any]] = data.get("media", {})

    def save(self) -> None:
        save_json(self.sdir / "registry.json", {"vms": self.vms, "media": self.media})

    def find_vm(self, name_or_uuid: str) -> dict[str, Any]:
        for vm in self.vms.values():
            if name_or_uuid in (vm["name"], vm["uuid"]):
                refresh_liveness(vm)
                return vm
        raise Fail(
            f"Could not find a registered machine named '{name_or_uuid}'",
            VBOX_E_OBJECT_NOT_FOUND,
            component="VirtualBoxWrap",
            interface="IVirtualBox",
            context="FindMachine(Bstr(VMNameOrUuid).raw(), machine.asOutParam())",
        )

    def find_medium(self, ref: str) -> dict[str, Any] | None:
        path = os.path.abspath(ref) if any(c in ref for c in "/\\.") else ref
        for medium in self.media.values():
            if ref == medium["uuid"] or path == medium["location"]:
                return medium
        return None

    def open_medium(self, ref: str, kind: str, *, new_uuid: bool = False) -> dict[str, Any]:
        medium = self.find_medium(ref)
        if medium is not None:
            return medium
        location = os.path.abspath(ref)
        if not os.path.isfile(location):
            raise Fail(
                f"Could not find file for the medium '{location}' (VERR_FILE_NOT_FOUND)",
                VBOX_E_FILE_ERROR,
                component="MediumWrap",
                interface="IMedium",
                context="OpenMedium(Bstr(pszFilenameOrUuid).raw(), enmDevType, enmAccessMode, "
                "fForceNewUuidOnOpen, pMedium.asOutParam())",
            )
        medium = {
            "uuid": str(uuidlib.uuid4()),
            "location": location,
            "kind": kind,
            "type": "normal",
            "parent": None,
            "children": [],
            "attached": [],
            "registry_bug": False,
        }
        self.media[medium["uuid"]] = medium
        return medium


def refresh_liveness(vm: dict[str, Any]) -> None:
    """A VM whose process died while online is 'aborted' (VBoxSVC notices the session end)."""
    if vm["state"] in RUNNING_ISH and vm.get("pid") and not pid_alive(vm["pid"]):
        vm["state"] = "aborted"
        vm["state_change"] = now_iso()
        vm["pid"] = None


def pid_alive(pid: int) -> bool:
    if not hostos.pid_alive(pid):
        return False
    if hostos.WINDOWS:  # an ended process is gone (a handle still open to it aside)
        return True
    try:  # a zombie child of ours is dead too
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000")


def config() -> dict[str, Any]:
    return load_json(state_dir() / "config.json", {})  # type: ignore[no-any-return]


def version_string() -> str:
    return str(config().get("version", "7.0.14"))


def version_tuple() -> tuple[int, int, int]:
    """The configured version's numbers; a distribution suffix ("6.1.38_Ubuntu") is allowed."""
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", version_string())
    if match is None:
        return (7, 0, 14)
    return (int(match.group(1)), int(match.group(2)), int(match.group(3)))


#: What VBoxManage prints before any output when the vboxdrv module is not loaded (a real one:
#: tests/data/vbox/real/version/6.0.12_after_module_warning.txt).
MODULE_WARNING = (
    "WARNING: The vboxdrv kernel module is not loaded. Either there is no module\n"
    "         available for the current kernel (6.1.0-28-amd64) or it failed to\n"
    "         load. Please recompile the kernel module and install it by\n"
    "\n"
    "           sudo /sbin/vboxconfig\n"
    "\n"
    "         You will not be able to start VMs until this problem is fixed.\n"
)


def is_v7() -> bool:
    return version_tuple() >= (7, 0, 0)


def take_fault(sdir: Path, kind: str, command: str) -> dict[str, Any] | str | bool | None:
    """Consume one firing of fault ``kind`` for ``command`` (counters live in faults.json)."""
    path = sdir / "faults.json"
    faults = load_json(path, {})
    fault = faults.get(kind)
    if fault is None:
        return None
    if isinstance(fault, dict):
        commands = fault.get("commands")
        if commands and command not in commands:
            return None
        times = int(fault.get("times", 1))
        if times <= 0:
            return None
        fault["times"] = times - 1
        save_json(path, faults)
        return fault
    return fault  # type: ignore[no-any-return]


def peek_fault(sdir: Path, kind: str) -> Any:
    return load_json(sdir / "faults.json", {}).get(kind)


# ---- VBox.log ---------------------------------------------------------------------------


def log_path(vm: dict[str, Any]) -> Path:
    return Path(str(vm["basefolder"])) / str(vm["name"]) / "Logs" / "VBox.log"


def log_line(vm: dict[str, Any], text: str) -> None:
    path = log_path(vm)
    path.parent.mkdir(parents=True, exist_ok=True)
    started = vm.get("log_started") or time.time()
    up = max(0.0, time.time() - started)
    hours, rest = divmod(up, 3600)
    minutes, seconds = divmod(rest, 60)
    with open(path, "a") as handle:
        for line in text.splitlines() or [""]:
            handle.write(f"{int(hours):02d}:{int(minutes):02d}:{seconds:09.6f} {line}\n")


def set_state(vm: dict[str, Any], state: str) -> None:
    if vm["state"] == state:
        return
    vm["state"] = state
    vm["state_change"] = now_iso()
    if state in STATE_LOG_NAMES and (state in ONLINE or vm.get("pid")):
        log_line(vm, f"Console: Machine state changed to '{STATE_LOG_NAMES[state]}'")


def rotate_logs(vm: dict[str, Any]) -> None:
    path = log_path(vm)
    path.parent.mkdir(parents=True, exist_ok=True)
    for i in (2, 1):
        older = path.with_name(f"VBox.log.{i}")
        if older.exists():
            older.replace(path.with_name(f"VBox.log.{i + 1}"))
    if path.exists():
        path.replace(path.with_name("VBox.log.1"))


def log_header(vm: dict[str, Any], pid: int) -> None:
    vm["log_started"] = time.time()
    ver = version_string()
    # the host's build, as a real VBox.log names it (Windows: win.amd64, WINDOWS_64BITS_GENERIC)
    build, product, package = (
        ("win.amd64", "Windows 10", "WINDOWS")
        if hostos.WINDOWS
        else ("linux.amd64", "Linux", "LINUX")
    )
    log_line(vm, f"VirtualBox VM {ver} r161095 {build} (Jan 15 2024 14:21:53) release log")
    log_line(vm, f"Log opened {now_iso()}Z")
    log_line(vm, "Build Type: release")
    log_line(vm, f"OS Product: {product}")
    log_line(vm, f"Process ID: {pid}")
    log_line(vm, f"Package type: {package}_64BITS_GENERIC")


# ---- output -----------------------------------------------------------------------------


def mr(name: str, value: object, quote_name: bool = False) -> str:
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    key = f'"{name}"' if quote_name or "=" in name else name
    return f'{key}="{text}"'


def showvminfo_mr(reg: Registry, vm: dict[str, Any]) -> str:
    s = vm["settings"]
    folder = Path(vm["basefolder"]) / vm["name"]
    lines = [mr("name", vm["name"])]
    if version_tuple()[:2] == (7, 0):
        # 7.0 prints this human-readable line even with --machinereadable (a real 7.0 output:
        # tests/data/vbox/real/showvminfo/vbox70_linux_poweroff_encryption_line.txt)
        lines.append("Encryption:     disabled")
    lines += [
        mr("groups", "/"),
        mr("ostype", vm["ostype"]),
        mr("UUID", vm["uuid"]),
        mr("CfgFile", folder / f"{vm['name']}.vbox"),
        mr("SnapFldr", folder / "Snapshots"),
        mr("LogFldr", folder / "Logs"),
        mr("hardwareuuid", vm["uuid"]),
        f"memory={s['memory']}",
        mr("pagefusion", "off"),
        f"vram={s['vram']}",
        f"cpuexecutioncap={vm.get('cpuexecutioncap', 100)}",
        mr("hpet", "off"),
        mr("cpu-profile", "host"),
        mr("chipset", "piix3"),
        mr("firmware", "BIOS"),
        f"cpus={s['cpus']}",
        mr("pae", "on"),
        mr("longmode", "on" if "_64" in vm["ostype"] else "off"),
        mr("acpi", s["acpi"]),
        mr("ioapic", s["ioapic"]),
        mr("rtcuseutc", s["rtcuseutc"]),
        mr("hwvirtex", s["hwvirtex"]),
        mr("paravirtprovider", "default"),
        mr("effparavirtprovider", "kvm" if is_linux(vm["ostype"]) else "none"),
        mr("VMState", vm["state"]),
        mr("VMStateChangeTime", vm["state_change"]),
        mr("graphicscontroller", s["graphicscontroller"].lower()),
        "monitorcount=1",
    ]
    for i in range(1, 5):
        lines.append(mr(f"boot{i}", s.get(f"boot{i}", "none")))
    for index, (name, ctl) in enumerate(vm["storage"].items()):
        lines += [
            mr(f"storagecontrollername{index}", name),
            mr(f"storagecontrollertype{index}", ctl["controller"]),
            mr(f"storagecontrollerinstance{index}", 0),
            mr(f"storagecontrollermaxportcount{index}", 30 if ctl["bus"] == "sata" else 2),
            mr(f"storagecontrollerportcount{index}", ctl["portcount"]),
            mr(f"storagecontrollerbootable{index}", "on"),
        ]
        for port in range(int(ctl["portcount"])):
            att = ctl["attachments"].get(f"{port}-0")
            key = f"{name}-{port}-0"
            if att is None:
                lines.append(mr(key, "none", True))
                continue
            medium = reg.media.get(att["medium"])
            lines.append(mr(key, medium["location"] if medium else "emptydrive", True))
            if medium:
                lines.append(mr(f"{name}-ImageUUID-{port}-0", medium["uuid"], True))
    for n in range(1, 9):
        if n == 1 and s.get("nic1", "nat") != "none":
            nic = s.get("nic1", "nat")
            if nic == "nat":
                lines.append(mr("natnet1", "nat"))
            elif nic == "bridged":
                lines.append(mr("bridgeadapter1", s.get("bridgeadapter1", "")))
            lines += [
                mr("macaddress1", "080027" + vm["uuid"].replace("-", "")[:6].upper()),
                mr("cableconnected1", s.get("cableconnected1", "on")),
                mr("nic1", nic),
                mr("nictype1", s.get("nictype1", "82540EM")),
                mr("nicspeed1", 0),
            ]
            for i, rule in enumerate(s.get("natpf1", [])):
                lines.append(mr(f"Forwarding({i})", rule))
        else:
            lines.append(mr(f"nic{n}", "none"))
    lines += [
        mr("uart1", s.get("uart1", "off")),
        mr("uart2", s.get("uart2", "off")),
        mr("lpt1", s.get("lpt1", "off")),
        mr("lpt2", s.get("lpt2", "off")),
        mr("audio", "none" if s.get("audio") in ("none", "off") else "pulse"),
        mr("clipboard", s.get("clipboard", "disabled")),
        mr("draganddrop", s.get("draganddrop", "disabled")),
    ]
    if s.get("vrde") == "on":
        lines += [
            mr("vrde", "on"),
            f"vrdeport={s.get('vrdeport', 3389)}",
            mr("vrdeports", s.get("vrdeport", "3389")),
            mr("vrdeaddress", s.get("vrdeaddress", "")),
            mr("vrdeauthtype", s.get("vrdeauthtype", "null")),
            mr("vrdeauthlibrary", s.get("vrdeauthlibrary", "default")),
        ]
    else:
        lines.append(mr("vrde", "off"))
    lines += [mr("usb", s.get("usb", "off")), mr("ehci", "off"), mr("xhci", "off")]
    for i, share in enumerate(vm["shared_folders"], start=1):
        lines.append(mr(f"SharedFolderNameMachineMapping{i}", share["name"]))
        lines.append(mr(f"SharedFolderPathMachineMapping{i}", share["hostpath"]))
    for i, (name, group) in enumerate(vm["bandwidth_groups"].items()):
        # VirtualBox's "condensed" format: only the name is quoted
        lines.append(mr(f"BandwidthGroup{i}", name) + f",{group['type']},{group['limit']}")
    lines += snapshot_mr(vm)
    if s.get("description"):
        lines.append(mr("description", s["description"]))
    return "\n".join(lines) + "\n"


def is_linux(ostype: str) -> bool:
    return any(k in ostype for k in ("Linux", "Ubuntu", "Debian", "Fedora", "RedHat", "ArchLinux"))


def snapshot_children(vm: dict[str, Any], parent: str | None) -> list[dict[str, Any]]:
    return [s for s in vm["snapshots"] if s["parent"] == parent]


def snapshot_mr(vm: dict[str, Any]) -> list[str]:
    lines: list[str] = []

    def walk(snap: dict[str, Any], prefix: str) -> None:
        lines.append(mr(f"SnapshotName{prefix}", snap["name"]))
        lines.append(mr(f"SnapshotUUID{prefix}", snap["uuid"]))
        if snap["uuid"] == vm["current_snapshot"]:
            lines.append(mr("CurrentSnapshotName", snap["name"]))
            lines.append(mr("CurrentSnapshotUUID", snap["uuid"]))
            lines.append(mr("CurrentSnapshotNode", f"SnapshotName{prefix}"))
        for i, child in enumerate(snapshot_children(vm, snap["uuid"]), start=1):
            walk(child, f"{prefix}-{i}")

    roots = snapshot_children(vm, None)
    if roots:
        walk(roots[0], "")
    return lines


def snapshot_tree(vm: dict[str, Any]) -> str:
    lines: list[str] = []

    def walk(snap: dict[str, Any], prefix: str) -> None:
        star = " *" if snap["uuid"] == vm["current_snapshot"] else ""
        lines.append(f"   {prefix}Name: {snap['name']} (UUID: {snap['uuid']}){star}")
        for child in snapshot_children(vm, snap["uuid"]):
            walk(child, prefix + "   ")

    for root in snapshot_children(vm, None):
        walk(root, "")
    return "\n".join(lines) + "\n"


def hdinfo(reg: Registry, medium: dict[str, Any]) -> str:
    if medium["type"] == "multiattach":
        kind = "multiattach"
    elif medium["parent"]:
        kind = "normal (differencing)"
    else:
        kind = "normal (base)"
    lines = [f"UUID:           {medium['uuid']}"]
    if medium["parent"]:
        lines.append(f"Parent UUID:    {medium['parent']}")
    size = os.path.getsize(medium["location"]) if os.path.exists(medium["location"]) else 0
    lines += [
        f"State:          {'created' if os.path.exists(medium['location']) else 'inaccessible'}",
        f"Type:           {kind}",
        f"Location:       {medium['location']}",
        f"Storage format: {'VDI' if medium['location'].endswith('.vdi') else 'RAW'}",
        "Format variant: dynamic default",
        "Capacity:       2048 MBytes",
        f"Size on disk:   {size >> 20} MBytes",
        "Encryption:     disabled",
    ]
    users = [reg.vms[u] for u in medium["attached"] if u in reg.vms]
    for i, vm in enumerate(users):
        label = "In use by VMs:  " if i == 0 else "                "
        lines.append(f"{label}{vm['name']} (UUID: {vm['uuid']})")
    for i, child in enumerate(medium["children"]):
        label = "Child UUIDs:    " if i == 0 else "                "
        lines.append(f"{label}{child}")
    return "\n".join(lines) + "\n"


# ---- commands ---------------------------------------------------------------------------


class Args:
    """A cursor over argv with VBoxManage-style option parsing (both spellings accepted)."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.pos = 0

    def more(self) -> bool:
        return self.pos < len(self.argv)

    def next(self, what: str) -> str:
        if self.pos >= len(self.argv):
            raise syntax_error(f"Missing argument: {what}")
        value = self.argv[self.pos]
        self.pos += 1
        return value


def require_unlocked(vm: dict[str, Any], context: str) -> None:
    if vm["state"] in RUNNING_ISH:
        raise Fail(
            f"The machine '{vm['name']}' is already locked for a session (or being unlocked)",
            VBOX_E_INVALID_OBJECT_STATE,
            context=context,
        )


def require_running(vm: dict[str, Any]) -> None:
    if vm["state"] not in RUNNING_ISH:
        raise Fail(f"Machine '{vm['name']}' is not currently running")


#: modifyvm options: canonical key → (VirtualBox 7 name, VirtualBox 6 name or None if same).
MODIFYVM_OPTIONS: dict[str, tuple[str, str | None]] = {
    "description": ("--description", None),
    "memory": ("--memory", None),
    "cpus": ("--cpus", None),
    "acpi": ("--acpi", None),
    "ioapic": ("--ioapic", None),
    "rtcuseutc": ("--rtc-use-utc", "--rtcuseutc"),
    "vram": ("--vram", None),
    "graphicscontroller": ("--graphicscontroller", None),
    "hwvirtex": ("--hwvirtex", None),
    "boot": ("--boot", None),
    "nic": ("--nic", None),
    "nictype": ("--nic-type", "--nictype"),
    "cableconnected": ("--cable-connected", "--cableconnected"),
    "natdnsproxy": ("--nat-dns-proxy", "--natdnsproxy"),
    "natdnshostresolver": ("--nat-dns-host-resolver", "--natdnshostresolver"),
    "bridgeadapter": ("--bridge-adapter", "--bridgeadapter"),
    "nicbandwidthgroup": ("--nic-bandwidth-group", "--nicbandwidthgroup"),
    "natpf": ("--nat-pf", "--natpf"),
    "usb": ("--usb", None),
    "uart": ("--uart", None),
    "lpt": ("--lpt", None),
    "audio": ("--audio", None),
    "audioenabled": ("--audio-enabled", "--audioenabled"),
    "clipboard": ("--clipboard", None),
    "draganddrop": ("--drag-and-drop", "--draganddrop"),
    "vrde": ("--vrde", None),
    "vrdeextpack": ("--vrde-extpack", "--vrdeextpack"),
    "vrdeauthlibrary": ("--vrde-auth-library", "--vrdeauthlibrary"),
    "vrdeauthtype": ("--vrde-auth-type", "--vrdeauthtype"),
    "vrdeport": ("--vrde-port", "--vrdeport"),
    "vrdeaddress": ("--vrde-address", "--vrdeaddress"),
    "vrdeproperty": ("--vrde-property", "--vrdeproperty"),
    "nicspeed": ("--nic-speed", "--nicspeed"),
}
INDEXED = {
    "boot",
    "nic",
    "nictype",
    "cableconnected",
    "natdnsproxy",
    "natdnshostresolver",
    "bridgeadapter",
    "nicbandwidthgroup",
    "natpf",
    "uart",
    "lpt",
    "nicspeed",
}
NIC_TYPES = ("Am79C970A", "Am79C973", "Am79C960", "82540EM", "82543GC", "82545EM", "virtio")
ONOFF = ("on", "off")


def resolve_option(token: str) -> tuple[str, str]:
    """``--nic-type1`` → ("nictype", "1"). Version 6 knows only the old spellings, and
    VirtualBox 6.1 dropped ``--hwvirtex``; 7 knows both spellings (OPT2 aliases)."""
    v7 = is_v7()
    for key, (new, old) in MODIFYVM_OPTIONS.items():
        names = [new] + ([old] if old else [])
        if not v7:
            names = [old or new]
            if key in ("audioenabled",):
                names = []
        if key == "hwvirtex" and version_tuple() >= (6, 1, 0):
            names = []
        for name in names:
            if key in INDEXED:
                if token.startswith(name) and token[len(name) :].isdigit():
                    return key, token[len(name) :]
            elif token == name:
                return key, ""
    raise syntax_error(f"Unknown option: {token}")


def cmd_modifyvm(reg: Registry, args: Args) -> str:
    vm = reg.find_vm(args.next("VM"))
    require_unlocked(vm, "LockMachine(a->session, LockType_Write)")
    s = vm["settings"]
    while args.more():
        key, index = resolve_option(args.next("option"))
        value = args.next(key)
        if (
            key
            in (
                "acpi",
                "ioapic",
                "rtcuseutc",
                "hwvirtex",
                "cableconnected",
                "natdnsproxy",
                "natdnshostresolver",
                "usb",
                "vrde",
                "audioenabled",
            )
            and value not in ONOFF
        ):
            raise syntax_error(f"Invalid --{key} argument '{value}'")
        if key in ("memory", "cpus", "vram"):
            if not value.isdigit():
                raise syntax_error(f"Invalid {key} value '{value}'")
            if key == "vram" and not 0 <= int(value) <= 256:
                raise Fail(
                    f"Invalid VRAM size: {value} MB (must be in range [0, 256] MB)", E_INVALIDARG
                )
        if key == "nictype" and value not in NIC_TYPES:
            raise syntax_error(f"Invalid NIC type '{value}' specified for NIC {index}")
        if key == "graphicscontroller" and value.lower() not in (
            "none",
            "vboxvga",
            "vmsvga",
            "vboxsvga",
        ):
            raise syntax_error(f"Invalid --graphicscontroller argument '{value}'")
        if key == "nicbandwidthgroup" and value != "none" and value not in vm["bandwidth_groups"]:
            raise Fail(
                f"The bandwidth group '{value}' does not exist",
                VBOX_E_OBJECT_NOT_FOUND,
                component="BandwidthControlWrap",
                interface="IBandwidthControl",
            )
        if key == "natpf":
            if value == "delete":
                args.next("rule name")
                continue
            fields = value.split(",")
            if len(fields) != 6 or fields[1] not in ("tcp", "udp"):
                raise syntax_error(f"Invalid NAT port-forwarding rule '{value}'")
            for existing in s.setdefault("natpf1", []):
                if existing.split(",")[3] == fields[3]:
                    raise Fail(
                        "A NAT rule for this host port and this host IP already exists",
                        E_INVALIDARG,
                        component="NATEngineWrap",
                        interface="INATEngine",
                    )
            name = fields[0] or f"{fields[1]}_{fields[3]}_{fields[5]}"
            s["natpf1"].append(",".join([name, *fields[1:]]))
            continue
        if key == "boot":
            s[f"boot{index}"] = value
        elif key == "audioenabled":
            s["audio"] = "none" if value == "off" else "pulse"
        else:
            s[f"{key}{index}"] = value
    return ""


def cmd_createvm(reg: Registry, args: Args) -> str:
    opts: dict[str, str] = {}
    register = False
    while args.more():
        token = args.next("option")
        if token == "--register":
            register = True
        elif token in ("--name", "--basefolder", "--ostype", "--uuid", "--groups"):
            opts[token[2:]] = args.next(token)
        else:
            raise syntax_error(f"Invalid parameter '{token}'")
    name = opts.get("name")
    if not name:
        raise syntax_error("Parameter --name is required")
    base = opts.get("basefolder", str(Path.home() / "VirtualBox VMs"))
    folder = Path(base) / name
    cfg = folder / f"{name}.vbox"
    if cfg.exists():
        raise Fail(
            f"Machine settings file '{cfg}' already exists",
            VBOX_E_FILE_ERROR,
            interface="IVirtualBox",
            component="VirtualBoxWrap",
            context="CreateMachine(bstrSettingsFile.raw(), bstrName.raw(), ...)",
        )
    if any(vm["name"] == name for vm in reg.vms.values()):
        raise Fail(f"Machine '{name}' already exists", VBOX_E_OBJECT_IN_USE)
    ostype = opts.get("ostype", "Other")
    if ostype == "":
        ostype = "Other"
    vm_uuid = opts.get("uuid") or str(uuidlib.uuid4())
    vm: dict[str, Any] = {
        "name": name,
        "uuid": vm_uuid,
        "ostype": ostype,
        "basefolder": base,
        "state": "poweroff",
        "state_change": now_iso(),
        "pid": None,
        "settings": {
            "memory": 128,
            "cpus": 1,
            "vram": 8,
            "acpi": "on",
            "ioapic": "off",
            "rtcuseutc": "off",
            "hwvirtex": "on",
            "graphicscontroller": "VBoxVGA",
            "nic1": "nat",
            "nictype1": "82540EM",
            "cableconnected1": "on",
            "boot1": "floppy",
            "boot2": "dvd",
            "boot3": "disk",
            "boot4": "none",
        },
        "storage": {},
        "shared_folders": [],
        "bandwidth_groups": {},
        "snapshots": [],
        "current_snapshot": None,
        "extradata": {},
        "guest_time": 0.0,
        "registered": register,
    }
    folder.mkdir(parents=True, exist_ok=True)
    cfg.write_text(json.dumps({"uuid": vm_uuid, "name": name}))
    if register:
        reg.vms[vm_uuid] = vm
    else:
        save_json(folder / ".vboxsim-unregistered.json", vm)
    return (
        f"Virtual machine '{name}' is created{' and registered' if register else ''}.\n"
        f"UUID: {vm_uuid}\nSettings file: '{cfg}'\n"
    )


def cmd_registervm(reg: Registry, args: Args) -> str:
    path = Path(args.next("settings file"))
    if not path.is_file():
        raise Fail(
            f"Could not find file for the machine '{path}' (VERR_FILE_NOT_FOUND)",
            VBOX_E_FILE_ERROR,
            component="VirtualBoxWrap",
            interface="IVirtualBox",
        )
    stash = path.parent / ".vboxsim-unregistered.json"
    vm = load_json(stash, None)
    if vm is None:
        raise Fail(f"Machine settings file '{path}' is not a vboxsim machine", E_INVALIDARG)
    if vm["uuid"] in reg.vms:
        raise Fail(
            f"Trying to open a VM config '{path}' which has the same UUID as an existing "
            "virtual machine",
            VBOX_E_OBJECT_IN_USE,
        )
    vm["state"] = "saved" if vm.get("state") == "saved" else "poweroff"
    vm["pid"] = None
    reg.vms[vm["uuid"]] = vm
    stash.unlink()
    return ""


def detach_all(reg: Registry, vm: dict[str, Any]) -> list[dict[str, Any]]:
    hard_disks = []
    for ctl in vm["storage"].values():
        for att in ctl["attachments"].values():
            medium = reg.media.get(att["medium"])
            if medium and vm["uuid"] in medium["attached"]:
                medium["attached"].remove(vm["uuid"])
                if medium["kind"] == "hdd":
                    hard_disks.append(medium)
        ctl["attachments"] = {}
    return hard_disks


def remove_medium(reg: Registry, medium: dict[str, Any], delete: bool) -> None:
    parent = reg.media.get(medium["parent"] or "")
    if parent and medium["uuid"] in parent["children"]:
        parent["children"].remove(medium["uuid"])
    reg.media.pop(medium["uuid"], None)
    if delete:
        with contextlib.suppress(OSError):
            os.unlink(medium["location"])


def cmd_unregistervm(reg: Registry, args: Args) -> str:
    vm = reg.find_vm(args.next("VM"))
    delete = False
    while args.more():
        token = args.next("option")
        if token in ("--delete", "--delete-all"):
            delete = True
        else:
            raise syntax_error(f"Invalid parameter '{token}'")
    if vm["state"] in RUNNING_ISH:
        raise Fail(
            f"Cannot unregister the machine '{vm['name']}' while it is locked",
            VBOX_E_INVALID_OBJECT_STATE,
            context="Unregister(CleanupMode_...)",
        )
    disks = detach_all(reg, vm)
    folder = Path(vm["basefolder"]) / vm["name"]
    del reg.vms[vm["uuid"]]
    if delete:
        for medium in disks:
            if medium["type"] == "multiattach" or medium["attached"]:
                continue  # shared parents stay; only this VM's disks go
            remove_medium(reg, medium, True)
        for name in ("VBox.log", "VBox.log.1", "VBox.log.2", "VBox.log.3"):
            with contextlib.suppress(OSError):
                (folder / "Logs" / name).unlink()
        for sub in ("Logs", "Snapshots"):
            d = folder / sub
            if d.is_dir():
                for f in d.iterdir():
                    with contextlib.suppress(OSError):
                        f.unlink()
                with contextlib.suppress(OSError):
                    d.rmdir()
        with contextlib.suppress(OSError):
            (folder / f"{vm['name']}.vbox").unlink()
        with contextlib.suppress(OSError):
            folder.rmdir()
    elif folder.is_dir():  # the settings stay for a later registervm
        save_json(folder / ".vboxsim-unregistered.json", vm)
    return ""


def cmd_storagectl(reg: Registry, args: Args) -> str:
    vm = reg.find_vm(args.next("VM"))
    require_unlocked(vm, "LockMachine(a->session, LockType_Write)")
    opts: dict[str, str] = {}
    remove = False
    while args.more():
        token = args.next("option")
        if token == "--remove":
            remove = True
        elif token in (
            "--name",
            "--add",
            "--controller",
            "--hostiocache",
            "--portcount",
            "--sataportcount",
            "--bootable",
        ):
            opts[token[2:]] = args.next(token)
        else:
            raise syntax_error(f"Invalid parameter '{token}'")
    name = opts.get("name", "")
    if remove:
        if name not in vm["storage"]:
            raise Fail(
                f"Could not find a storage controller named '{name}'", VBOX_E_OBJECT_NOT_FOUND
            )
        detach_ctl = vm["storage"].pop(name)
        for att in detach_ctl["attachments"].values():
            medium = reg.media.get(att["medium"])
            if medium and vm["uuid"] in medium["attached"]:
                medium["attached"].remove(vm["uuid"])
        return ""
    bus = opts.get("add", "").lower()
    if bus not in ("ide", "sata", "scsi", "floppy", "sas", "usb", "pcie", "virtio"):
        raise syntax_error(f"Invalid --add argument '{opts.get('add')}'")
    if name in vm["storage"]:
        raise Fail(f"Storage controller named '{name}' already exists", VBOX_E_OBJECT_IN_USE)
    models = {
        "sata": ("IntelAhci",),
        "ide": ("PIIX3", "PIIX4", "ICH6"),
        "scsi": ("LsiLogic", "BusLogic"),
        "sas": ("LSILogicSAS",),
        "floppy": ("I82078",),
        "usb": ("USB",),
        "pcie": ("NVMe",),
        "virtio": ("VirtIO",),
    }[bus]
    model = opts.get("controller", models[0])
    canonical = next((m for m in models if m.lower() == model.lower()), None)
    if canonical is None:
        raise syntax_error(f"Invalid --type argument '{model}'")
    ports = int(opts.get("portcount", opts.get("sataportcount", "1" if bus == "floppy" else "2")))
    vm["storage"][name] = {
        "bus": bus,
        "controller": canonical,
        "portcount": ports,
        "hostiocache": opts.get("hostiocache", "on"),
        "attachments": {},
    }
    return ""


def cmd_storageattach(reg: Registry, args: Args) -> str:
    vm = reg.find_vm(args.next("VM"))
    require_unlocked(vm, "LockMachine(a->session, LockType_Write)")
    opts: dict[str, str] = {}
    while args.more():
        token = args.next("option")
        if token in (
            "--storagectl",
            "--port",
            "--device",
            "--type",
            "--mtype",
            "--medium",
            "--setuuid",
            "--comment",
            "--nonrotational",
            "--discard",
        ):
            opts[token[2:]] = args.next(token)
        else:
            raise syntax_error(f"Invalid parameter '{token}'")
    ctl = vm["storage"].get(opts.get("storagectl", ""))
    if ctl is None:
        raise Fail(
            f"Could not find a controller named '{opts.get('storagectl')}'", VBOX_E_OBJECT_NOT_FOUND
        )
    port = int(opts.get("port", "0"))
    if port >= int(ctl["portcount"]):
        raise Fail(
            f"Invalid port number {port}: must be between 0 and {int(ctl['portcount']) - 1}",
            E_INVALIDARG,
        )
    slot = f"{port}-{opts.get('device', '0')}"
    ref = opts.get("medium", "")
    if ref in ("none", ""):
        old = ctl["attachments"].pop(slot, None)
        if old:
            medium = reg.media.get(old["medium"])
            if medium and vm["uuid"] in medium["attached"]:
                medium["attached"].remove(vm["uuid"])
        return ""
    kind = {"hdd": "hdd", "dvddrive": "dvd", "fdd": "floppy"}.get(opts.get("type", ""), "")
    if ctl["bus"] == "floppy":
        kind = "floppy"
    if not kind:
        raise syntax_error("Argument --type must be specified")
    medium = reg.open_medium(ref, kind)
    if "setuuid" in opts:
        new = opts["setuuid"] or str(uuidlib.uuid4())
        reg.media.pop(medium["uuid"])
        medium["uuid"] = new
        reg.media[new] = medium
    mtype = opts.get("mtype", "")
    attach = medium
    if mtype:
        if mtype != "multiattach" and mtype not in (
            "normal",
            "immutable",
            "writethrough",
            "shareable",
            "readonly",
        ):
            raise syntax_error(f"Invalid --mtype argument '{mtype}'")
        if medium["type"] != mtype:
            if medium["attached"]:
                raise Fail(
                    f"Cannot change the type of medium '{medium['location']}' because it "
                    f"is attached to {len(medium['attached'])} virtual machines",
                    VBOX_E_OBJECT_IN_USE,
                    component="MediumWrap",
                    interface="IMedium",
                )
            if medium["children"]:
                raise Fail(
                    f"Cannot change type for medium '{medium['location']}' since it has "
                    f"{len(medium['children'])} child media",
                    VBOX_E_OBJECT_IN_USE,
                    component="MediumWrap",
                    interface="IMedium",
                )
            medium["type"] = mtype
    if medium["type"] == "multiattach":
        if peek_fault(reg.sdir, "multiattach_registry_bug"):
            medium["registry_bug"] = True
            raise Fail(
                f"Cannot attach medium '{medium['location']}' {{{medium['uuid']}}}: the media "
                "type 'MultiAttach' can only be attached to machines that were created with "
                "VirtualBox 4.0 or later",
                VBOX_E_INVALID_OBJECT_STATE,
                context="AttachDevice(...)",
            )
        child_path = (
            Path(vm["basefolder"]) / vm["name"] / "Snapshots" / f"{{{uuidlib.uuid4()}}}.vdi"
        )
        child_path.parent.mkdir(parents=True, exist_ok=True)
        child_path.write_bytes(b"vboxsim differencing image\n")
        attach = {
            "uuid": str(uuidlib.uuid4()),
            "location": str(child_path),
            "kind": "hdd",
            "type": "normal",
            "parent": medium["uuid"],
            "children": [],
            "attached": [],
            "registry_bug": False,
        }
        reg.media[attach["uuid"]] = attach
        medium["children"].append(attach["uuid"])
    elif kind == "hdd" and medium["type"] == "normal":
        others = [u for u in medium["attached"] if u != vm["uuid"]]
        if others:
            owner = reg.vms.get(others[0], {}).get("name", others[0])
            raise Fail(
                f"Medium '{medium['location']}' is already attached to the virtual "
                f"machine '{owner}' and is not shareable",
                VBOX_E_OBJECT_IN_USE,
                component="MediumWrap",
                interface="IMedium",
            )
    attach["attached"].append(vm["uuid"])
    ctl["attachments"][slot] = {"medium": attach["uuid"], "kind": kind}
    return ""


def cmd_showhdinfo(reg: Registry, args: Args) -> str:
    ref = args.next("disk")
    medium = reg.open_medium(ref, "hdd")
    return hdinfo(reg, medium)


def cmd_closemedium(reg: Registry, args: Args) -> str:
    tokens = []
    delete = False
    while args.more():
        token = args.next("arg")
        if token == "--delete":
            delete = True
        else:
            tokens.append(token)
    ref = tokens[-1] if tokens else ""
    kind = (
        {"disk": "hdd", "dvd": "dvd", "floppy": "floppy"}.get(tokens[0], "hdd") if tokens else "hdd"
    )
    medium = reg.find_medium(ref) or reg.open_medium(ref, kind)
    if medium.get("registry_bug"):  # closing the broken entry repairs VirtualBox's registry
        faults = load_json(reg.sdir / "faults.json", {})
        faults.pop("multiattach_registry_bug", None)
        save_json(reg.sdir / "faults.json", faults)
    if medium["attached"]:
        raise Fail(
            f"Medium '{medium['location']}' cannot be closed because it is still "
            f"attached to {len(medium['attached'])} virtual machines",
            VBOX_E_OBJECT_IN_USE,
            component="MediumWrap",
            interface="IMedium",
        )
    if medium["children"]:
        raise Fail(
            f"Cannot close medium '{medium['location']}' because it has "
            f"{len(medium['children'])} child media",
            VBOX_E_OBJECT_IN_USE,
            component="MediumWrap",
            interface="IMedium",
        )
    remove_medium(reg, medium, delete)
    return ""


def cmd_sharedfolder(reg: Registry, args: Args) -> str:
    action = args.next("add|remove")
    vm = reg.find_vm(args.next("VM"))
    opts: dict[str, str] = {}
    flags = set()
    while args.more():
        token = args.next("option")
        if token in ("--name", "--hostpath", "--auto-mount-point"):
            opts[token[2:]] = args.next(token)
        elif token in ("--readonly", "--automount", "--transient"):
            flags.add(token[2:])
        else:
            raise syntax_error(f"Invalid parameter '{token}'")
    if "transient" not in flags:
        require_unlocked(vm, "LockMachine(a->session, LockType_Write)")
    if action == "add":
        host = opts.get("hostpath", "")
        if not os.path.isabs(host):
            raise Fail(f"Shared folder path '{host}' is not absolute", E_INVALIDARG)
        if any(s["name"] == opts.get("name") for s in vm["shared_folders"]):
            raise Fail(
                f"Shared folder named '{opts.get('name')}' already exists", VBOX_E_OBJECT_IN_USE
            )
        vm["shared_folders"].append(
            {"name": opts.get("name", ""), "hostpath": host, "readonly": "readonly" in flags}
        )
    elif action == "remove":
        vm["shared_folders"] = [s for s in vm["shared_folders"] if s["name"] != opts.get("name")]
    else:
        raise syntax_error(f"Invalid parameter '{action}'")
    return ""


def parse_limit(text: str) -> int:
    mult = {"G": 1 << 30, "M": 1 << 20, "K": 1 << 10, "g": 125000000, "m": 125000, "k": 125}
    if text and text[-1] in mult:
        number, factor = text[:-1], mult[text[-1]]
    else:
        number, factor = text, 1 << 20
    if not number.isdigit():
        raise Fail("Invalid limit specifier\n".strip(), exit_code=RTEXITCODE_FAILURE)
    return int(number) * factor


def cmd_bandwidthctl(reg: Registry, args: Args) -> str:
    vm = reg.find_vm(args.next("VM"))
    action = args.next("add|set|remove|list")
    groups = vm["bandwidth_groups"]
    if action == "list":
        return "".join(
            f"Name: '{n}', Type: {g['type']}, Limit: {g['limit']} bytes/sec\n"
            for n, g in groups.items()
        )
    name = args.next("name")
    opts: dict[str, str] = {}
    while args.more():
        token = args.next("option")
        if token in ("--type", "--limit"):
            opts[token[2:]] = args.next(token)
        else:
            raise syntax_error(f"Invalid parameter '{token}'")
    if action == "add":
        if vm["state"] in RUNNING_ISH:
            raise Fail("Bandwidth groups cannot be created while the VM is running")
        if name in groups:
            raise Fail(f"Bandwidth group named '{name}' already exists", VBOX_E_OBJECT_IN_USE)
        if opts.get("type", "").lower() not in ("disk", "network"):
            raise Fail("Invalid bandwidth group type")
        groups[name] = {
            "type": opts["type"].capitalize(),
            "limit": parse_limit(opts.get("limit", "0")),
        }
    elif action == "set":
        if name not in groups:
            raise Fail(
                f"The bandwidth group '{name}' does not exist",
                VBOX_E_OBJECT_NOT_FOUND,
                component="BandwidthControlWrap",
                interface="IBandwidthControl",
            )
        groups[name]["limit"] = parse_limit(opts.get("limit", "0"))
    elif action == "remove":
        if vm["state"] in RUNNING_ISH:
            raise Fail("Bandwidth groups cannot be deleted while the VM is running")
        if name not in groups:
            raise Fail(f"The bandwidth group '{name}' does not exist", VBOX_E_OBJECT_NOT_FOUND)
        if vm["settings"].get("nicbandwidthgroup1") == name:
            raise Fail(f"The bandwidth group '{name}' is still in use", VBOX_E_OBJECT_IN_USE)
        del groups[name]
    else:
        raise syntax_error(f"Invalid parameter '{action}'")
    return ""


def cmd_setextradata(reg: Registry, args: Args) -> str:
    target = args.next("VM")
    key = args.next("key")
    value = args.next("value") if args.more() else None
    store = reg.find_vm(target)["extradata"] if target != "global" else {}
    if value is None:
        store.pop(key, None)
    else:
        store[key] = value
    return ""


def cmd_getextradata(reg: Registry, args: Args) -> str:
    vm = reg.find_vm(args.next("VM"))
    key = args.next("key")
    if key in vm["extradata"]:
        return f"Value: {vm['extradata'][key]}\n"
    return "No value set!\n"


def cmd_startvm(reg: Registry, args: Args) -> str:
    vm = reg.find_vm(args.next("VM"))
    while args.more():
        token = args.next("option")
        if token == "--type":
            if args.next("type") not in ("gui", "headless", "sdl", "separate"):
                raise syntax_error("Invalid session type")
        else:
            raise syntax_error(f"Invalid parameter '{token}'")
    if vm["state"] in RUNNING_ISH:
        raise Fail(
            f"The machine '{vm['name']}' is already locked by a session (or being locked "
            "or unlocked)",
            VBOX_E_INVALID_OBJECT_STATE,
            context="LaunchVMProcess(a->session, sessionType.raw(), ...)",
        )
    for ctl in vm["storage"].values():
        for att in ctl["attachments"].values():
            medium = reg.media.get(att["medium"])
            if medium and not os.path.exists(medium["location"]):
                raise Fail(
                    f"Could not open the medium '{medium['location']}'.\n"
                    "VD: error VERR_FILE_NOT_FOUND opening image file",
                    VBOX_E_FILE_ERROR,
                    component="MediumWrap",
                    interface="IMedium",
                )
    rotate_logs(vm)
    error = peek_fault(reg.sdir, "start_error")
    if error:
        # one status, or several (Windows: "VERR_NEM_NOT_AVAILABLE" first, then the VT-x reason)
        names = [str(e) for e in error] if isinstance(error, list) else [str(error)]
        log_header(vm, os.getpid())
        set_state(vm, "starting")
        text = "\n".join(f"{START_ERRORS.get(n, 'Failed to start the VM')} ({n})" for n in names)
        for line in text.splitlines():
            log_line(vm, line)
        log_line(vm, f"Power up failed (vrc={names[-1]}, rc=E_FAIL (0X80004005))")
        set_state(vm, "poweroff")
        raise Fail(text, NS_ERROR_FAILURE, component="ConsoleWrap", interface="IConsole")
    resume_saved = vm["state"] == "saved"
    vm["net"] = {}  # STAM counters live in the VM process: each start begins at 0
    vm["state"] = "starting"
    vm["state_change"] = now_iso()
    proc = subprocess.Popen(
        [*self_command(), "__vm__", vm["uuid"]],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "VBOXSIM_RESUME": "1" if resume_saved else ""},
        **detached(),
    )
    vm["pid"] = proc.pid
    log_header(vm, proc.pid)
    log_line(vm, "Console: Machine state changed to 'Starting'")
    if resume_saved:
        log_line(vm, "Console: Machine state changed to 'Restoring'")
    return (
        f'Waiting for VM "{vm["name"]}" to power on...\n'
        f'VM "{vm["name"]}" has been successfully started.\n'
    )


def self_command() -> list[str]:
    """How to run this simulator again: the frozen exe, or this file with this Python."""
    if FROZEN:
        return [sys.executable]
    return [sys.executable, "-S", os.path.abspath(__file__)]


def detached() -> dict[str, Any]:
    """``Popen`` arguments for the VM process, which outlives the ``startvm`` that started
    it (VBoxHeadless is VBoxSVC's child, not VBoxManage's): a session of its own on POSIX; on
    Windows a process group of its own and no console window."""
    if hostos.WINDOWS:
        flags = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) | hostos.NO_CONSOLE_WINDOW
        return {"creationflags": flags}
    return {"start_new_session": True}


def wait_state(sdir: Path, vm_uuid: str, states: tuple[str, ...], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with locked(sdir):
            reg = Registry(sdir)
            vm = reg.vms.get(vm_uuid)
            if vm is None:
                return
            refresh_liveness(vm)
            if vm["state"] in states:
                reg.save()
                return
        time.sleep(0.05)


def cmd_controlvm(reg: Registry, args: Args) -> str:
    vm = reg.find_vm(args.next("VM"))
    action = args.next("action")
    require_running(vm)
    state = vm["state"]
    if action == "pause":
        if state != "running":
            raise Fail(
                f"Invalid machine state: {STATE_LOG_NAMES.get(state, state)}",
                VBOX_E_INVALID_VM_STATE,
                component="ConsoleWrap",
                interface="IConsole",
                context="Pause()",
            )
        set_state(vm, "paused")
    elif action == "resume":
        if state != "paused":
            raise Fail(
                "Cannot resume the machine as it is not paused (machine state: "
                f"{STATE_LOG_NAMES.get(state, state)})",
                VBOX_E_INVALID_VM_STATE,
                component="ConsoleWrap",
                interface="IConsole",
                context="Resume()",
            )
        set_state(vm, "running")
    elif action == "poweroff":
        set_state(vm, "stopping")
        vm["request"] = "poweroff"
    elif action == "savestate":
        if state not in ("running", "paused"):
            raise Fail(
                f"Machine in invalid state {state} -- not running or paused",
                VBOX_E_INVALID_VM_STATE,
            )
        set_state(vm, "saving")
        vm["request"] = "savestate"
    elif action == "acpipowerbutton":
        if state != "running":
            raise Fail(
                "Invalid machine state: "
                + STATE_LOG_NAMES.get(state, state)
                + " (must be Running)",
                VBOX_E_INVALID_VM_STATE,
                component="ConsoleWrap",
                interface="IConsole",
            )
        vm["request"] = "acpi"
    elif action == "cpuexecutioncap":
        value = args.next("percent")
        if not value.isdigit() or not 1 <= int(value) <= 100:
            raise Fail(
                f"Invalid CPU execution cap value: {value} (must be in range [1, 100])",
                E_INVALIDARG,
            )
        vm["cpuexecutioncap"] = int(value)
    elif action.startswith("setlinkstate"):
        value = args.next("on|off")
        if value not in ONOFF:
            raise syntax_error(f"Invalid link state '{value}'")
        vm["settings"][f"cableconnected{action[len('setlinkstate') :]}"] = value
    elif action == "keyboardputscancode":
        while args.more():
            args.next("scancode")
    elif action == "screenshotpng":
        Path(args.next("file")).write_bytes(b"\x89PNG\r\n\x1a\n")
    else:
        raise syntax_error(f"Invalid parameter '{action}'")
    return ""


# ---- debugvm statistics (STAM) ------------------------------------------------------------

#: The default traffic of a NIC with its cable plugged, per second of guest time.
NIC_BYTES_PER_S = {"sent": 1500.0, "received": 24000.0}
#: NIC model → (device name in VirtualBox 6.1+, the name before 6.1) under /Devices/.
NIC_DEVICES = {
    "Am79C970A": ("pcnet", "PCNet"),
    "Am79C973": ("pcnet", "PCNet"),
    "Am79C960": ("pcnet", "PCNet"),
    "82540EM": ("e1000", "E1k"),
    "82543GC": ("e1000", "E1k"),
    "82545EM": ("e1000", "E1k"),
    "virtio": ("virtio-net", "VNet"),
}


def nic_indices(vm: dict[str, Any]) -> list[str]:
    s = vm["settings"]
    return [str(n) for n in range(1, 9) if s.get(f"nic{n}", "nat" if n == 1 else "none") != "none"]


def add_traffic(vm: dict[str, Any], nic: str, sent: float, received: float) -> None:
    counters = vm.setdefault("net", {}).setdefault(nic, {"sent": 0.0, "received": 0.0})
    counters["sent"] += sent
    counters["received"] += received


def nic_traffic(vm: dict[str, Any], seconds: float) -> None:
    """``seconds`` of running guest: every NIC whose cable is plugged moves its bytes."""
    rate = {**NIC_BYTES_PER_S, **(config().get("nic_bytes_per_s") or {})}
    for nic in nic_indices(vm):
        if vm["settings"].get(f"cableconnected{nic}", "on") == "on":
            add_traffic(vm, nic, float(rate["sent"]) * seconds, float(rate["received"]) * seconds)


class Sample(NamedTuple):
    """One STAM sample; ``counter`` = (NIC index, "sent"|"received") for the NIC byte counters."""

    name: str
    element: str  # "Counter" (c="...") or "U32" (val="...")
    value: int
    unit: str
    desc: str
    counter: tuple[str, str] | None = None


def stam_samples(vm: dict[str, Any]) -> list[Sample]:
    """The VM's statistics this simulator keeps, sorted by name as STAM enumerates them. A NIC's
    ``TransmitBytes`` counts what left the guest; VirtualBox 6.1+ names a device sample
    ``/Devices/<device>#<instance>/...`` and also shows the byte counters to the GUI under
    ``/Public/NetAdapter/<n>/``."""
    new_names = version_tuple() >= (6, 1, 0)
    samples: list[Sample] = []
    instances: dict[str, int] = {}
    for public_no, nic in enumerate(nic_indices(vm)):
        model = vm["settings"].get(f"nictype{nic}", "82540EM")
        name, old_name = NIC_DEVICES.get(model, ("e1000", "E1k"))
        instance = instances.get(name, 0)
        instances[name] = instance + 1
        counters = vm.get("net", {}).get(nic, {})
        sent, received = int(counters.get("sent", 0)), int(counters.get("received", 0))
        prefix = f"/Devices/{name}#{instance}" if new_names else f"/Devices/{old_name}{instance}"
        rx_desc, tx_desc = "Amount of data received", "Amount of data transmitted"
        samples += [
            Sample(
                f"{prefix}/ReceiveBytes", "Counter", received, "bytes", rx_desc, (nic, "received")
            ),
            Sample(f"{prefix}/TransmitBytes", "Counter", sent, "bytes", tx_desc, (nic, "sent")),
        ]
        if new_names:
            public = f"/Public/NetAdapter/{public_no}"
            samples += [
                Sample(
                    f"{public}/BytesReceived",
                    "Counter",
                    received,
                    "bytes",
                    rx_desc,
                    (nic, "received"),
                ),
                Sample(
                    f"{public}/BytesTransmitted", "Counter", sent, "bytes", tx_desc, (nic, "sent")
                ),
                Sample(f"{public}/{name}", "U32", instance, "", "Device instance number"),
            ]
    return sorted(samples)


def stam_match(patterns: str | None, name: str) -> bool:
    """STAM's patterns: ``*`` and ``?`` wildcards (``*`` crosses ``/``), alternatives split
    by ``|``; no pattern selects everything."""
    if not patterns:
        return True
    for pattern in patterns.split("|"):
        regex = "".join(
            ".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern
        )
        if re.fullmatch(regex, name):
            return True
    return False


def xml_escape(text: str) -> str:
    for bad, good in (
        ("&", "&amp;"),
        ("<", "&lt;"),
        (">", "&gt;"),
        ('"', "&quot;"),
        ("'", "&apos;"),
    ):
        text = text.replace(bad, good)
    return text


def stam_snapshot(vm: dict[str, Any], pattern: str | None, descriptions: bool) -> str:
    """STAMR3Snapshot's document as VBoxManage prints it (RTPrintf("%ls\\n"): a blank line
    follows ``</Statistics>``)."""
    lines = ['<?xml version="1.0" encoding="UTF-8" standalone="no"?>', "<Statistics>"]
    for name, element, value, unit, desc, _ in stam_samples(vm):
        if not stam_match(pattern, name):
            continue
        attribute = f'c="{value}"' if element == "Counter" else f'val="{value}"'
        line = f'<{element} {attribute} unit="{unit}" name="{name}"'
        if descriptions:
            line += f' desc="{xml_escape(desc)}"'
        lines.append(line + "/>")
    lines.append("</Statistics>")
    return "\n".join(lines) + "\n\n"


def cmd_debugvm(reg: Registry, args: Args) -> str:
    """``debugvm <vm> statistics [--pattern p] [--descriptions] [--reset]`` (VBoxManageDebugVM.cpp:
    FindMachine, a shared lock, then the console's debugger, which exists only while the VM
    process runs)."""
    if len(args.argv) < 2:
        raise syntax_error("No subcommand specified")
    ref = args.next("VM")
    vm = reg.find_vm(ref)
    sub = args.next("subcommand")
    if vm["state"] not in RUNNING_ISH:
        raise Fail(f"Machine '{ref}' is not currently running.")
    if sub != "statistics":
        raise syntax_error(f"Invalid parameter '{sub}'")
    pattern: str | None = None
    descriptions = reset = False
    while args.more():
        token = args.next("option")
        if token in ("--descriptions", "-d"):
            descriptions = True
        elif token in ("--reset", "-r"):
            reset = True
        elif token in ("--pattern", "-p") or token.startswith("--pattern="):
            if pattern is not None:
                raise syntax_error("Multiple --pattern options are not permitted")
            pattern = token.partition("=")[2] if "=" in token else args.next("pattern")
        else:
            raise syntax_error(f"Unknown option: {token}")
    if reset and descriptions:
        raise syntax_error("The --reset and --descriptions options does not mix")
    if reset:  # ResetStats: the matching counters start again at 0
        for sample in stam_samples(vm):
            if sample.counter is not None and stam_match(pattern, sample.name):
                nic, key = sample.counter
                vm.get("net", {}).get(nic, {})[key] = 0.0
        return ""
    return stam_snapshot(vm, pattern, descriptions)


def snapshot_by_ref(vm: dict[str, Any], ref: str) -> dict[str, Any]:
    snapshots: list[dict[str, Any]] = vm["snapshots"]
    for snap in snapshots:
        if ref in (snap["uuid"], snap["name"]):
            return snap
    raise Fail(
        f"Could not find a snapshot named '{ref}'",
        VBOX_E_OBJECT_NOT_FOUND,
        interface="IMachine",
        context="FindSnapshot(Bstr(a->argv[2]).raw(), ...)",
    )


#: The first release whose ``snapshot take`` has ``--live`` (4.1's VBoxManage knew only
#: ``--pause`` and paused a running VM itself; from 4.2 pausing is the default and ``--live``
#: keeps the VM running).
FIRST_VERSION_WITH_LIVE = (4, 2, 0)

#: ``VBoxManage help snapshot`` of VirtualBox 4.1 (the usage a 4.1.22 prints) and of later releases.
HELP_SNAPSHOT_OLD = """Usage:

VBoxManage snapshot         <uuid>|<name>
                            take <name> [--description <desc>] [--pause] |
                            delete <uuid>|<name> |
                            restore <uuid>|<name> |
                            restorecurrent |
                            edit <uuid>|<name>|--current
                                 [--name <name>]
                                 [--description <desc>] |
                            list [--details|--machinereadable]
                            showvminfo <uuid>|<name>
"""
HELP_SNAPSHOT = """Usage:

VBoxManage snapshot         <uuid|vmname>
                            take <name> [--description <desc>] [--live]
                                 [--uniquename Number,Timestamp,Space,Force] |
                            delete <uuid|snapname> |
                            restore <uuid|snapname> |
                            restorecurrent |
                            edit <uuid|snapname>|--current
                                 [--name <name>]
                                 [--description <desc>] |
                            list [--details|--machinereadable]
                            showvminfo <uuid|snapname>
"""


def has_live_snapshots() -> bool:
    return version_tuple() >= FIRST_VERSION_WITH_LIVE


def help_snapshot() -> str:
    return HELP_SNAPSHOT if has_live_snapshots() else HELP_SNAPSHOT_OLD


def take_snapshot(vm: dict[str, Any], args: Args) -> str:
    """``snapshot <vm> take <name> [--description d] [--pause] [--live]``.

    From 4.2 a running VM is paused for the snapshot unless ``--live`` is given: the machine
    state is then LiveSnapshotting and the guest keeps running, otherwise OnlineSnapshotting
    with the guest stopped. 4.1's VBoxManage refuses ``--live`` (usage, then the error; exit 1)
    and pauses a running VM itself (Paused, then Running again)."""
    name = args.next("name")
    live = False
    while args.more():
        token = args.next("option")
        if token == "--description":
            args.next("description")
        elif token == "--live" and not has_live_snapshots():
            raise Fail(help_snapshot().rstrip() + "\nUnknown option: --live")
        elif token == "--live":
            live = True
        elif token != "--pause":
            raise syntax_error(f"Invalid parameter '{token}'")
    if vm["state"] in ("saving", "restoring", "starting", "stopping", "gurumeditation"):
        raise Fail(
            f"Cannot take a snapshot of the machine while it is changing the state "
            f"(machine state: {STATE_LOG_NAMES.get(vm['state'], vm['state'])})",
            VBOX_E_INVALID_VM_STATE,
        )
    was = vm["state"]
    if was == "running":
        if live:
            set_state(vm, "livesnapshotting")
        elif has_live_snapshots():
            set_state(vm, "onlinesnapshotting")
        else:
            set_state(vm, "paused")
    snap = {
        "name": name,
        "uuid": str(uuidlib.uuid4()),
        "parent": vm["current_snapshot"],
        "online": was in ("running", "paused"),
        "live": live and was == "running",
        "guest_time": vm.get("guest_time", 0.0),
    }
    vm["snapshots"].append(snap)
    vm["current_snapshot"] = snap["uuid"]
    if was in RUNNING_ISH:
        kind = "live" if snap["live"] else "online"
        log_line(vm, f"Snapshot: taking {kind} snapshot '{name}'")
    set_state(vm, was)
    return f"Snapshot taken. UUID: {snap['uuid']}\n"


def cmd_snapshot(reg: Registry, args: Args) -> str:
    vm = reg.find_vm(args.next("VM"))
    action = args.next("action")
    if action == "list":
        if not vm["snapshots"]:
            raise Fail("", exit_code=RTEXITCODE_FAILURE)  # printed on stdout, see main()
        return snapshot_tree(vm)
    if action == "take":
        return take_snapshot(vm, args)
    if action in ("delete", "restore", "restorecurrent"):
        if action == "restorecurrent":
            if vm["current_snapshot"] is None:
                raise Fail("", exit_code=RTEXITCODE_FAILURE)
            snap = snapshot_by_ref(vm, vm["current_snapshot"])
        else:
            snap = snapshot_by_ref(vm, args.next("snapshot"))
        if action == "delete":
            children = snapshot_children(vm, snap["uuid"])
            if len(children) > 1:
                raise Fail(
                    f"Snapshot '{snap['name']}' of the machine '{vm['name']}' has more "
                    f"than one child snapshot ({len(children)})",
                    VBOX_E_INVALID_OBJECT_STATE,
                    component="SessionMachine",
                    context="DeleteSnapshot(bstrSnapGuid.raw(), pProgress.asOutParam())",
                )
            for child in children:
                child["parent"] = snap["parent"]
            vm["snapshots"].remove(snap)
            if vm["current_snapshot"] == snap["uuid"]:
                vm["current_snapshot"] = snap["parent"]
            return (
                f"Deleting snapshot '{snap['name']}' ({snap['uuid']})\n"
                "0%...10%...20%...30%...40%...50%...60%...70%...80%...90%...100%\n"
            )
        if vm["state"] in RUNNING_ISH:
            raise Fail(
                f"Cannot delete the current state of the running machine (machine state: "
                f"{STATE_LOG_NAMES.get(vm['state'], vm['state'])})",
                VBOX_E_INVALID_VM_STATE,
                component="SessionMachine",
                context="RestoreSnapshot(pSnapshot, pProgress.asOutParam())",
            )
        vm["current_snapshot"] = snap["uuid"]
        vm["guest_time"] = snap["guest_time"]
        vm["state"] = "saved" if snap["online"] else "poweroff"
        vm["state_change"] = now_iso()
        return (
            f"Restoring snapshot '{snap['name']}' ({snap['uuid']})\n"
            "0%...10%...20%...30%...40%...50%...60%...70%...80%...90%...100%\n"
        )
    raise syntax_error(f"Invalid parameter '{action}'")


HELP_V7 = """Usage - Change settings for a virtual machine:

  VBoxManage modifyvm <uuid|vmname> [--name=name] [--groups=group [,group...]]
      [--description=description] [--os-type=OS-type] [--icon-file=filename]
      [--memory=size-in-MB] [--page-fusion= on | off ] [--vram=size-in-MB]
      [--acpi= on | off ] [--ioapic= on | off ] [--hardware-uuid=UUID]
      [--cpus=CPU-count] [--cpu-hotplug= on | off ] [--cpu-execution-cap=percentage]
      [--rtc-use-utc= on | off ] [--graphicscontroller= none | vboxvga | vmsvga | vboxsvga ]
      [--boot<1-4>= none | floppy | dvd | disk | net ]
      [--nic<1-N>= none | null | nat | bridged | intnet | hostonly | generic | natnetwork ]
      [--nic-type<1-N>= Am79C970A | Am79C973 | 82540EM | 82543GC | 82545EM | virtio ]
      [--cable-connected<1-N>= on | off ] [--nic-trace<1-N>= on | off ]
      [--nic-speed<1-N>=kbps] [--nic-boot-prio<1-N>=priority]
      [--nic-promisc<1-N>= deny | allow-vms | allow-all ]
      [--nic-bandwidth-group<1-N>= none | name ] [--bridge-adapter<1-N>= none | device-name ]
      [--nat-pf<1-N>=[rule-name],tcp | udp,[host-IP],hostport,[guest-IP],guestport ]
      [--nat-pf<1-N>=delete=rule-name] [--nat-dns-proxy<1-N>= on | off ]
      [--nat-dns-host-resolver<1-N>= on | off ] [--mac-address<1-N>= auto | MAC-address ]
      [--uart<1-N>= off | IO-base IRQ ] [--lpt<1-N>= off | IO-base IRQ ]
      [--audio-controller= ac97 | hda | sb16 ] [--audio-enabled= on | off ]
      [--clipboard-mode= disabled | hosttoguest | guesttohost | bidirectional ]
      [--drag-and-drop= disabled | hosttoguest | guesttohost | bidirectional ]
      [--vrde= on | off ] [--vrde-property=property-name= [property-value] ]
      [--vrde-extpack= default | name ] [--vrde-port=port] [--vrde-address=hostip]
      [--vrde-auth-type= null | external | guest ] [--vrde-auth-library= default | name ]
      [--usb-ohci= on | off ] [--usb-ehci= on | off ] [--usb-xhci= on | off ]
"""

HELP_V6 = """Usage:

VBoxManage modifyvm         <uuid|vmname>
                            [--name <name>]
                            [--groups <group>, ...]
                            [--description <desc>]
                            [--ostype <ostype>]
                            [--memory <memorysize in MB>]
                            [--vram <vramsize in MB>]
                            [--acpi on|off]
                            [--ioapic on|off]
                            [--cpus <number>]
                            [--rtcuseutc on|off]
                            [--graphicscontroller none|vboxvga|vmsvga|vboxsvga]
                            [--boot<1-4> none|floppy|dvd|disk|net>]
                            [--nic<1-N> none|null|nat|bridged|intnet|hostonly|generic|natnetwork]
                            [--nictype<1-N> Am79C970A|Am79C973|Am79C960|82540EM|82543GC|82545EM|virtio]
                            [--cableconnected<1-N> on|off]
                            [--nicspeed<1-N> <kbps>]
                            [--nicbandwidthgroup<1-N> none|<name>]
                            [--bridgeadapter<1-N> none|<devicename>]
                            [--natpf<1-N> [<rulename>],tcp|udp,[<hostip>],<hostport>,[<guestip>],<guestport>]
                            [--natdnsproxy<1-N> on|off]
                            [--natdnshostresolver<1-N> on|off]
                            [--uart<1-N> off|<I/O base> <IRQ>]
                            [--lpt<1-N> off|<I/O base> <IRQ>]
                            [--audio none|null|oss|alsa|pulse]
                            [--clipboard disabled|hosttoguest|guesttohost|bidirectional]
                            [--draganddrop disabled|hosttoguest|guesttohost|bidirectional]
                            [--vrde on|off]
                            [--vrdeextpack default|<name>]
                            [--vrdeproperty <name=[value]>]
                            [--vrdeport <hostport>]
                            [--vrdeaddress <hostip>]
                            [--vrdeauthtype null|external|guest]
                            [--vrdeauthlibrary default|<name>]
                            [--usb on|off]
"""


def help_modifyvm() -> str:
    if is_v7():
        return HELP_V7
    if version_tuple() < (6, 1, 0):  # --hwvirtex went away in 6.1
        return HELP_V6.replace(
            "[--acpi on|off]", "[--acpi on|off]\n" + " " * 28 + "[--hwvirtex on|off]"
        )
    return HELP_V6


def cmd_list(reg: Registry, args: Args) -> str:
    what = args.next("what")
    cfg = config()
    if what == "hostinfo":
        return (
            f"Host Information:\n\nHost time: {now_iso()}\nProcessor online count: "
            f"{os.cpu_count()}\nProcessor count: {os.cpu_count()}\nProcessor online core count: "
            f"{os.cpu_count()}\nProcessor core count: {os.cpu_count()}\n"
            "Processor supports HW virtualization: yes\nProcessor supports PAE: yes\n"
            "Processor supports long mode: yes\nMemory size: 24000 MByte\n"
            "Operating system: Linux\nOperating system version: 6.1.0\n"
        )
    if what == "systemproperties":
        iso = cfg.get("guest_additions_iso", "/usr/share/virtualbox/VBoxGuestAdditions.iso")
        return (
            "API version:                     7_0\nMinimum guest RAM size:          4 Megabytes\n"
            "Maximum guest RAM size:          2097152 Megabytes\n"
            f"Default machine folder:          {Path.home() / 'VirtualBox VMs'}\n"
            f"Default Guest Additions ISO:     {iso}\n"
            "Logging Level:                   all\n"
        )
    if what == "bridgedifs":
        return "".join(
            f"Name:            {n}\nGUID:            0000\nDHCP:            Disabled\n"
            f"IPAddress:       0.0.0.0\n\n"
            for n in cfg.get("bridged_interfaces", ["eth0"])
        )
    if what == "extpacks":
        if not cfg.get("extpack", True):
            return "Extension Packs: 0\n"
        return (
            "Extension Packs: 1\nPack no. 0:   Oracle VM VirtualBox Extension Pack\n"
            f"Version:        {version_string()}\nRevision:       161095\n"
            "Edition:\nDescription:    Oracle Cloud Infrastructure integration, USB 2.0 and "
            "USB 3.0 Host Controller, Host Webcam, VirtualBox RDP, PXE ROM, Disk Encryption, "
            "NVMe.\nVRDE Module:    VBoxVRDP\nUsable:         true\nWhy unusable:\n"
        )
    if what == "vms":
        return "".join(f'"{vm["name"]}" {{{vm["uuid"]}}}\n' for vm in reg.vms.values())
    if what == "runningvms":
        return "".join(
            f'"{vm["name"]}" {{{vm["uuid"]}}}\n'
            for vm in reg.vms.values()
            if vm["state"] in RUNNING_ISH
        )
    if what == "hdds":
        return "\n".join(
            f"UUID:           {m['uuid']}\nParent UUID:    {m['parent'] or 'base'}\n"
            f"Location:       {m['location']}\nType:           {m['type']}\n"
            for m in reg.media.values()
            if m["kind"] == "hdd"
        )
    raise syntax_error(f"Unknown subcommand: {what}")


COMMANDS = {
    "createvm": cmd_createvm,
    "registervm": cmd_registervm,
    "unregistervm": cmd_unregistervm,
    "modifyvm": cmd_modifyvm,
    "storagectl": cmd_storagectl,
    "storageattach": cmd_storageattach,
    "showhdinfo": cmd_showhdinfo,
    "closemedium": cmd_closemedium,
    "sharedfolder": cmd_sharedfolder,
    "bandwidthctl": cmd_bandwidthctl,
    "setextradata": cmd_setextradata,
    "getextradata": cmd_getextradata,
    "startvm": cmd_startvm,
    "controlvm": cmd_controlvm,
    "debugvm": cmd_debugvm,
    "snapshot": cmd_snapshot,
    "list": cmd_list,
}


def run_command(argv: list[str]) -> tuple[str, int]:
    sdir = state_dir()
    while argv and argv[0] in ("-q", "--nologo", "-nologo"):
        argv = argv[1:]
    if not argv:
        return "Oracle VM VirtualBox Command Line Management Interface (vboxsim)\n", 2
    if config().get("kernel_module_missing"):
        out, status = run_command_quietly(sdir, argv)
        return MODULE_WARNING + out, status
    return run_command_quietly(sdir, argv)


def run_command_quietly(sdir: Path, argv: list[str]) -> tuple[str, int]:
    """One command's output, without the module warning VBoxManage may print first."""
    command = argv[0]
    global CONTEXT_SOURCE
    CONTEXT_SOURCE = SOURCE_FILES.get(command, ("VBoxManage.cpp", 1))
    if command in ("--version", "-v", "-version"):
        return version_string() + "r161095\n", 0
    down = take_fault(sdir, "service_down", command)
    if down:
        linux = isinstance(down, dict) and down.get("host") == "linux"
        code = (
            "NS_BASE_STREAM_WOULD_BLOCK (0x80470007) - Stream operation would block"
            if linux
            else "CO_E_SERVER_EXEC_FAILURE (0x80080005) - Server execution failed"
        )
        return (
            "VBoxManage: error: Failed to create the VirtualBox object!\n"
            f"VBoxManage: error: Code {code} (extended info not available)\n"
            "VBoxManage: error: Most likely, the VirtualBox COM server is not running or "
            "failed to start.\n",
            1,
        )
    replay = take_fault(sdir, "output", command)
    if isinstance(replay, dict):
        return str(replay.get("text", "")), int(replay.get("exit", 1))
    if take_fault(sdir, "hang", command):
        time.sleep(3600)
    if command == "help":
        topic = argv[1] if len(argv) > 1 else ""
        if topic == "modifyvm":
            return help_modifyvm(), 0
        if topic == "snapshot":
            return help_snapshot(), 0
        return "Usage: VBoxManage [<general option>] <command>\n", 0
    if take_fault(sdir, "lock_contention", command):
        name = argv[1] if len(argv) > 1 else "?"
        return Fail(
            f"The machine '{name}' is already locked for a session (or being unlocked)",
            VBOX_E_INVALID_OBJECT_STATE,
            context="LockMachine(a->session, LockType_Write)",
        ).render(), 1
    if command == "showvminfo":
        return showvminfo(sdir, argv[1:])
    handler = COMMANDS.get(command)
    if handler is None:
        return f"VBoxManage: error: Unknown command '{command}'\n", RTEXITCODE_SYNTAX
    with locked(sdir):
        reg = Registry(sdir)
        try:
            out = handler(reg, Args(argv[1:]))
        except Fail as failure:
            reg.save()  # liveness refreshes and side effects before the failure stick
            if command == "snapshot" and not failure.text:
                return "This machine does not have any snapshots\n", failure.exit_code
            return failure.render(), failure.exit_code
        reg.save()
    if command == "controlvm" and len(argv) > 2 and argv[2] in ("poweroff", "savestate"):
        vm_ref = argv[1]
        with locked(sdir):
            vm = Registry(sdir).find_vm(vm_ref)
        wait_state(sdir, vm["uuid"], ("poweroff", "saved", "aborted"), 20.0)
        if argv[2] == "poweroff":
            out += "0%...10%...20%...30%...40%...50%...60%...70%...80%...90%...100%\n"
    if command == "startvm":
        vm_ref = argv[1]
        with locked(sdir):
            vm = Registry(sdir).find_vm(vm_ref)
        wait_state(sdir, vm["uuid"], ("running", "poweroff", "aborted", "gurumeditation"), 20.0)
    if take_fault(sdir, "lying_exit", command):
        return out, 1  # VirtualBox 5.0.10's startvm: exit 1 after a successful start
    return out, 0


def showvminfo(sdir: Path, argv: list[str]) -> tuple[str, int]:
    if not argv:
        return syntax_error("Missing VM name").render(), RTEXITCODE_SYNTAX
    with locked(sdir):
        reg = Registry(sdir)
        try:
            vm = reg.find_vm(argv[0])
        except Fail as failure:
            return failure.render(), failure.exit_code
        reg.save()
        if "--machinereadable" in argv:
            return showvminfo_mr(reg, vm), 0
        return showvminfo_human(vm), 0


def showvminfo_human(vm: dict[str, Any]) -> str:
    """An abridged human-readable showvminfo: name, UUID, state and VirtualBox's NIC 1 line."""
    s = vm["settings"]
    nic = s.get("nic1", "nat")
    attachment = {"nat": "NAT", "bridged": f"Bridged Interface '{s.get('bridgeadapter1', '')}'"}
    mac = "080027" + vm["uuid"].replace("-", "")[:6].upper()
    lines = [
        f"{'Name:':<28} {vm['name']}",
        f"{'UUID:':<28} {vm['uuid']}",
        f"{'Memory size:':<28} {s['memory']}MB",
        f"{'Number of CPUs:':<28} {s['cpus']}",
        f"{'State:':<28} {STATE_LOG_NAMES.get(vm['state'], vm['state']).lower()} "
        f"(since {vm['state_change']})",
    ]
    if nic != "none":
        lines.append(
            f"{'NIC 1:':<28} MAC: {mac}, Attachment: {attachment.get(nic, nic)}, Cable connected: "
            f"{s.get('cableconnected1', 'on')}, Trace: off (file: none), Type: "
            f"{s.get('nictype1', '82540EM')}, Reported speed: 0 Mbps, Boot priority: 0, Promisc "
            f"Policy: deny, Bandwidth group: {s.get('nicbandwidthgroup1') or 'none'}"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if argv[:1] == ["__vm__"]:
        vm_process(argv[1])
    if argv[:1] == ["__app__"]:  # the frozen exe runs a Python guest app (app_command)
        sys.argv = argv[1:]
        runpy.run_path(argv[1], run_name="__main__")
        return 0
    try:
        out, code = run_command(list(argv))
    except Fail as failure:
        out, code = failure.render(), failure.exit_code
    stream = sys.stdout if code == 0 else sys.stderr
    if code != 0 and out.startswith("This machine does not have any snapshots"):
        stream = sys.stdout
    stream.write(out)
    stream.flush()
    return code


# ---- the VM process ----------------------------------------------------------------------


def vm_process(vm_uuid: str) -> NoReturn:
    """The simulated VBoxHeadless: follows the guest script while the registry says running."""
    sdir = state_dir()
    app: GuestApp | None = None
    app_buffer = b""
    app_stopped = False
    last = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    idle = threading.Event()

    def update(fn: Any) -> Any:
        with locked(sdir):
            reg = Registry(sdir)
            vm = reg.vms.get(vm_uuid)
            if vm is None:
                return None
            result = fn(reg, vm)
            reg.save()
            return result

    def cpus(reg: Registry, vm: dict[str, Any]) -> int:
        return int(vm["settings"].get("cpus", 1))

    def boot(reg: Registry, vm: dict[str, Any]) -> None:
        set_state(vm, "running")

    # VBoxHeadless's threads: an EMT per vCPU and a worker (they idle; the loop below is the
    # guest). They exist before the machine state says running, as VirtualBox's do.
    for name in [f"EMT-{i}" for i in range(update(cpus) or 1)] + ["NAT"]:
        threading.Thread(target=idle.wait, name=name, daemon=True).start()
    update(boot)
    while True:
        time.sleep(0.1)  # the guest clock ticks at 10 Hz
        now = time.monotonic()
        step = now - last
        last = now

        def tick(reg: Registry, vm: dict[str, Any], step: float = step) -> str:
            nonlocal app, app_buffer, app_stopped
            if vm.get("pid") != os.getpid():
                return "exit"
            request = vm.pop("request", None)
            if request in ("poweroff", "savestate"):
                if app is not None:
                    app.proc.kill()
                if request == "savestate":
                    vm["state"] = "saved"
                    log_line(vm, "Console: Machine state changed to 'Saved'")
                else:
                    vm["state"] = "poweroff"
                    log_line(vm, "Console: Machine state changed to 'PoweredOff'")
                vm["state_change"] = now_iso()
                vm["pid"] = None
                return "exit"
            if request == "acpi":
                return guest_shutdown(vm)
            script = vm.get("guest") or config().get("guest") or []
            # the guest app stops with the VM's CPUs (once: Windows counts suspensions)
            if vm["state"] == "paused" and app is not None and not app_stopped:
                app_stopped = hostos.stop_process(app.proc.pid)
            if vm["state"] != "running":
                return ""
            if app is not None and app_stopped:
                hostos.continue_process(app.proc.pid)
                app_stopped = False
            before = float(vm.get("guest_time", 0.0))
            after = before + step
            vm["guest_time"] = after
            nic_traffic(vm, step)
            for event in script:
                if event.get("run_shared_app") and app is None and not vm.get("app_done"):
                    app = start_app(vm)
                    if app is None:
                        log_line(vm, "VMMDev: Guest Log: VMWRAPPER_GUEST_ERROR: no boinc_app")
                        return guest_shutdown(vm)
                at = float(event.get("at", 0))
                if not before <= at < after and not (before == 0 and at == 0):
                    continue
                if "log" in event:
                    log_line(vm, f"VMMDev: Guest Log: {event['log']}")
                if "net" in event and "1" in nic_indices(vm):
                    burst = event["net"]
                    add_traffic(
                        vm, "1", float(burst.get("sent", 0)), float(burst.get("received", 0))
                    )
                if event.get("guru"):
                    log_line(vm, "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!")
                    log_line(
                        vm, "!!         VCPU0: Guru Meditation -2701 (VERR_VMX_INVALID_GUEST_STATE)"
                    )
                    set_state(vm, "gurumeditation")
                    return ""
                if event.get("crash"):
                    return "crash"
                if event.get("poweroff"):
                    return guest_shutdown(vm)
            if app is not None:
                chunk = app.read()
                app_buffer += chunk
                *lines, app_buffer = app_buffer.split(b"\n")
                for raw in lines:
                    log_line(vm, "VMMDev: Guest Log: " + raw.decode(errors="replace"))
                if app.proc.poll() is not None:
                    rest = app.read_rest()
                    for raw in (app_buffer + rest).splitlines():
                        log_line(vm, "VMMDev: Guest Log: " + raw.decode(errors="replace"))
                    status = app.proc.returncode
                    log_line(vm, f"VMMDev: Guest Log: VMWRAPPER_GUEST_DONE status={status}")
                    vm["app_done"] = True
                    return guest_shutdown(vm)
            return ""

        outcome = update(tick)
        if outcome in ("exit", None):
            os._exit(0)
        if outcome == "crash":
            hostos.kill_process(os.getpid())  # SIGKILL, or TerminateProcess on Windows


def guest_shutdown(vm: dict[str, Any]) -> str:
    set_state(vm, "stopping")
    vm["state"] = "poweroff"
    vm["state_change"] = now_iso()
    log_line(vm, "Console: Machine state changed to 'PoweredOff'")
    vm["pid"] = None
    return "exit"


class GuestApp:
    """The guest's job: ``boinc_app`` running, its output collected by a thread (a pipe
    cannot be read without blocking on every host)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.chunks: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.reader = threading.Thread(target=self._pump, daemon=True)
        self.reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        for chunk in iter(lambda: os.read(fd, 65536), b""):
            self.chunks.put(chunk)

    def read(self) -> bytes:
        """What the app wrote since the last read."""
        out = b""
        while not self.chunks.empty():
            out += self.chunks.get()
        return out

    def read_rest(self) -> bytes:
        """Once the app has ended: the rest of its output."""
        self.reader.join(timeout=5)
        return self.read()


def app_command(path: str) -> list[str]:
    """How the guest runs ``boinc_app``: Python source (a first line naming python, and on
    Windows any app: it has no /bin/sh) with Python (the frozen exe's ``__app__``, or this
    Python); a shell script with /bin/sh."""
    with open(path, "rb") as handle:
        first = handle.readline()
    if hostos.WINDOWS or (first.startswith(b"#!") and b"python" in first):
        return [sys.executable, "__app__", path] if FROZEN else [sys.executable, path]
    return ["/bin/sh", path]


def start_app(vm: dict[str, Any]) -> GuestApp | None:
    shared = next((s["hostpath"] for s in vm["shared_folders"] if s["name"] == "shared"), None)
    if shared is None or not os.path.isfile(os.path.join(shared, "boinc_app")):
        return None
    proc = subprocess.Popen(
        app_command(os.path.join(shared, "boinc_app")),
        cwd=shared,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        creationflags=hostos.NO_CONSOLE_WINDOW,
    )
    return GuestApp(proc)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
