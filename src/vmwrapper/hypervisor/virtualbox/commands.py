"""VmConfig + probed VirtualBox capabilities → VBoxManage argv lists (pure, built from tables).

The sequence and the options are vboxwrapper's (docs/compatibility.md#creating-the-vm), with
its rough edges fixed: argv lists instead of shell strings, the graphics controller from the
job, the bandwidth group attached to the NIC (docs/compatibility.md#network), VRDE bound to
loopback with a per-task password (docs/compatibility.md#remote-desktop), port forwards bound
to 127.0.0.1 unless the job says ``is_remote``.

Option spellings differ between VirtualBox 6 (``--nictype1``) and 7 (``--nic-type1``); which one a
host takes is decided by probing ``VBoxManage help modifyvm`` (see :func:`capabilities`), not by
a list of versions. Arguments never include ``VBoxManage -q``: the runner adds that.
"""

from __future__ import annotations

import enum
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

from vmwrapper.errors import HostNotReady
from vmwrapper.hypervisor.base import VmConfig
from vmwrapper.hypervisor.virtualbox import output
from vmwrapper.hypervisor.virtualbox.output import Version
from vmwrapper.outcome import VM_EXTENSIONS_TOKEN

HDD_CONTROLLER = "Hard Disk Controller"
FLOPPY_CONTROLLER = "Floppy Controller"
#: The VRDE user name whose password hash goes to VBoxAuthSimple (one user per VM).
VRDE_USER = "boinc"
#: vboxwrapper's "no limit" for the NIC bandwidth group (1 TiB/s), also used to lift a limit.
UNLIMITED = "1024G"


class Syntax(enum.Enum):
    """Option spelling family of ``VBoxManage modifyvm``."""

    V6 = "6"  # --nictype1, --cableconnected1 (VirtualBox up to 6.1)
    V7 = "7"  # --nic-type1, --cable-connected1 (VirtualBox 7; the old names are aliases)


#: logical option → (VirtualBox 6 spelling, VirtualBox 7 spelling)
_OPTION_NAMES: dict[str, tuple[str, str]] = {
    "nic_type": ("--nictype", "--nic-type"),
    "cable": ("--cableconnected", "--cable-connected"),
    "nat_dns_proxy": ("--natdnsproxy", "--nat-dns-proxy"),
    "nat_dns_host_resolver": ("--natdnshostresolver", "--nat-dns-host-resolver"),
    "nat_pf": ("--natpf", "--nat-pf"),
    "bridge_adapter": ("--bridgeadapter", "--bridge-adapter"),
    "nic_bandwidth_group": ("--nicbandwidthgroup", "--nic-bandwidth-group"),
    "rtc_use_utc": ("--rtcuseutc", "--rtc-use-utc"),
    "drag_and_drop": ("--draganddrop", "--drag-and-drop"),
    "vrde_extpack": ("--vrdeextpack", "--vrde-extpack"),
    "vrde_auth_library": ("--vrdeauthlibrary", "--vrde-auth-library"),
    "vrde_auth_type": ("--vrdeauthtype", "--vrde-auth-type"),
    "vrde_port": ("--vrdeport", "--vrde-port"),
    "vrde_address": ("--vrdeaddress", "--vrde-address"),
    "vrde_property": ("--vrdeproperty", "--vrde-property"),
}

#: Job controller types whose host I/O cache vboxwrapper turns off.
_NO_HOST_IO_CACHE = frozenset({"sata", "scsi", "sas"})


@dataclass(frozen=True)
class Capabilities:
    """What the installed VirtualBox understands, from probing it once per run."""

    version: Version | None = None
    version_text: str = ""  # raw `--version` output (stripped), for logs
    syntax: Syntax = Syntax.V7
    audio_enabled_option: bool = True  # `--audio-enabled off` (7.0.4+) vs `--audio none`
    hwvirtex_option: bool = False  # `--hwvirtex` still listed (gone in 6.1+)
    nic_types: tuple[str, ...] = ()  # NIC models `help modifyvm` lists
    guest_additions_iso: str = ""  # existing Guest Additions ISO, attached as an extra DVD
    lpt_ports: bool = True  # not on macOS hosts

    @property
    def display_version(self) -> str:
        shown = ".".join(str(p) for p in self.version) if self.version else "Unknown"
        return f"VirtualBox VboxManage Interface (Version: {shown})"

    def option(self, logical: str, index: int | None = None) -> str:
        v6, v7 = _OPTION_NAMES[logical]
        name = v7 if self.syntax is Syntax.V7 else v6
        return f"{name}{index}" if index is not None else name

    def accepts_nic_type(self, nic_type: str) -> bool:
        """vboxwrapper's check for `vm_network_driver`: the help text must list it."""
        return bool(nic_type) and nic_type in self.nic_types


_NIC_MODELS = ("Am79C970A", "Am79C973", "Am79C960", "82540EM", "82543GC", "82545EM", "virtio")


def capabilities(
    version_text: str,
    help_modifyvm: str,
    *,
    guest_additions_iso: str = "",
    macos: bool = False,
) -> Capabilities:
    """Decide syntax and features from `--version` and `help modifyvm` output.

    The help text decides; when it says nothing useful (empty, or a failed command) the version
    does (> 6.9.99 → 7 syntax), and an unparseable version counts as new, as in vboxwrapper.
    """
    version = output.parse_version(version_text)
    if output.help_mentions(help_modifyvm, "--nic-type"):
        syntax = Syntax.V7
    elif output.help_mentions(help_modifyvm, "--nictype"):
        syntax = Syntax.V6
    else:
        syntax = Syntax.V7 if output.is_newer(version, (6, 9, 99)) else Syntax.V6
    if output.help_mentions(help_modifyvm, "--audio-enabled"):
        audio_enabled = True
    elif output.help_mentions(help_modifyvm, "--audio"):
        audio_enabled = False
    else:
        audio_enabled = output.is_newer(version, (7, 0, 4))
    return Capabilities(
        version=version,
        version_text=version_text.strip(),
        syntax=syntax,
        audio_enabled_option=audio_enabled,
        hwvirtex_option=output.help_mentions(help_modifyvm, "--hwvirtex"),
        nic_types=tuple(m for m in _NIC_MODELS if m in help_modifyvm),
        guest_additions_iso=guest_additions_iso,
        lpt_ports=not macos,
    )


@dataclass(frozen=True)
class Step:
    """One VBoxManage call: its arguments, what it is for, and how to treat a failure."""

    args: tuple[str, ...]
    item: str  # for "Error in <item> for VM" log lines
    fatal: bool = True  # a failure aborts the operation
    retry: bool = True  # retried by the runner on any error (lock errors always are)
    log_error: bool = True


def _step(item: str, *args: str, fatal: bool = True, retry: bool = True) -> Step:
    return Step(args=tuple(args), item=item, fatal=fatal, retry=retry, log_error=fatal)


# ---- paths VirtualBox makes -------------------------------------------------------------


def vm_folder(config: VmConfig) -> Path:
    return config.slot_dir / config.name


def settings_file(config: VmConfig) -> Path:
    return vm_folder(config) / f"{config.name}.vbox"


def log_dir(config: VmConfig) -> Path:
    return vm_folder(config) / "Logs"


def bandwidth_group(config: VmConfig) -> str:
    return f"{config.name}_net"


def is_64bit_guest(config: VmConfig) -> bool:
    return "_64" in config.os_name


# ---- creation (docs/compatibility.md#creating-the-vm) ------------------------------------


def _createvm_args(config: VmConfig) -> list[str]:
    args = ["createvm", "--name", config.name, "--basefolder", str(config.slot_dir)]
    if config.os_name:
        args += ["--ostype", config.os_name]
    return [*args, "--register"]


def define_steps(config: VmConfig, caps: Capabilities) -> list[Step]:
    """createvm and the basic machine settings (docs/compatibility.md#creating-the-vm)."""
    vm = config.name
    boot = ("dvd", "disk") if config.boot_iso else ("disk", "dvd")
    return [
        # no `--ostype ""` for a job without os_name: VirtualBox then picks "Other"
        _step("create", *_createvm_args(config)),
        _step(
            "modifydescription",
            "modifyvm",
            vm,
            "--description",
            config.description,
            fatal=False,
            retry=False,
        ),
        _step("modifymem", "modifyvm", vm, "--memory", str(config.memory_mb)),
        _step("modifycpu", "modifyvm", vm, "--cpus", str(config.cpus)),
        _step(
            "modifychipset",
            "modifyvm",
            vm,
            "--acpi",
            "on",
            "--ioapic",
            "on",
            caps.option("rtc_use_utc"),
            "on" if config.rtc_utc else "off",
        ),
        _step(
            "modifygraphics",
            "modifyvm",
            vm,
            "--vram",
            str(config.vram_mb),
            "--graphicscontroller",
            config.graphics_controller,
        ),
        _step(
            "modifyboot",
            "modifyvm",
            vm,
            "--boot1",
            boot[0],
            "--boot2",
            boot[1],
            "--boot3",
            "none",
            "--boot4",
            "none",
        ),
    ]


def default_nic_type(nic_type1: str, paravirt_provider: str) -> str:
    """The NIC model to keep when the job names none: the VM's default, virtio under KVM."""
    return "virtio" if paravirt_provider.lower() == "kvm" else nic_type1


def network_steps(
    config: VmConfig, caps: Capabilities, nic_type: str, bridge_interface: str = ""
) -> list[Step]:
    """NIC 1: NAT or bridged, model, DNS, then the cable state
    (docs/compatibility.md#creating-the-vm)."""
    vm = config.name
    net = config.network
    args = ["modifyvm", vm, "--nic1", "bridged" if net.bridged else "nat"]
    if nic_type:
        args += [caps.option("nic_type", 1), nic_type]
    args += [caps.option("cable", 1), "off"]
    if not net.bridged:
        args += [caps.option("nat_dns_proxy", 1), "on"]
        if net.nat_dns_host_resolver:
            args += [caps.option("nat_dns_host_resolver", 1), "on"]
    steps = [_step("modifynetwork", *args)]
    if net.bridged:
        if not bridge_interface:
            raise HostNotReady(
                "the job asks for a bridged network (network_bridged_mode) but "
                "`VBoxManage list bridgedifs` lists no host interface; "
                "fix: connect a network interface or use NAT"
            )
        steps.append(
            _step(
                "modifybridge", "modifyvm", vm, caps.option("bridge_adapter", 1), bridge_interface
            )
        )
    steps.append(
        _step(
            "modifycable", "modifyvm", vm, caps.option("cable", 1), "on" if net.enabled else "off"
        )
    )
    return steps


def devices_off_steps(config: VmConfig, caps: Capabilities) -> list[Step]:
    """USB, serial, parallel, audio, clipboard, drag and drop off (best effort,
    docs/compatibility.md#creating-the-vm)."""
    vm = config.name
    steps = [
        _step("modifyusb", "modifyvm", vm, "--usb", "off", fatal=False, retry=False),
        _step(
            "modifyuart",
            "modifyvm",
            vm,
            "--uart1",
            "off",
            "--uart2",
            "off",
            fatal=False,
            retry=False,
        ),
    ]
    if caps.lpt_ports:
        steps.append(
            _step(
                "modifylpt",
                "modifyvm",
                vm,
                "--lpt1",
                "off",
                "--lpt2",
                "off",
                fatal=False,
                retry=False,
            )
        )
    audio = ("--audio-enabled", "off") if caps.audio_enabled_option else ("--audio", "none")
    steps += [
        _step("modifyaudio", "modifyvm", vm, *audio, fatal=False, retry=False),
        _step(
            "modifyclipboard", "modifyvm", vm, "--clipboard", "disabled", fatal=False, retry=False
        ),
        _step(
            "modifydragdrop",
            "modifyvm",
            vm,
            caps.option("drag_and_drop"),
            "disabled",
            fatal=False,
            retry=False,
        ),
    ]
    return steps


#: The last VirtualBox release that cannot use VT-x inside another hypervisor's VM.
LAST_VERSION_WITHOUT_NESTED = (7, 1, 99)


def hw_acceleration_usable(config: VmConfig, caps: Capabilities) -> bool:
    """The host's acceleration (``config.hw_acceleration``) minus vboxwrapper's rule for hosts
    that run under a hypervisor: VirtualBox up to 7.1 runs VMs there without VT-x (an unknown
    version counts as newer, as in vboxwrapper)."""
    if not config.hw_acceleration:
        return False
    nested_unsupported = caps.version is not None and caps.version <= LAST_VERSION_WITHOUT_NESTED
    return not (config.under_hypervisor and nested_unsupported)


def acceleration_steps(config: VmConfig, caps: Capabilities) -> list[Step]:
    """Hardware acceleration off when the host lacks it (docs/compatibility.md#creating-the-vm).

    A 64-bit guest cannot run without it, and VirtualBox 6.1+ has no `--hwvirtex` any more
    (docs/compatibility.md#vm-extensions): both are reported as HostNotReady carrying BOINC's
    ERR_CPU_VM_EXTENSIONS_DISABLED token instead of failing later at start.
    """
    if hw_acceleration_usable(config, caps):
        return []
    if is_64bit_guest(config) or not caps.hwvirtex_option:
        reason = (
            f"a 64-bit guest ({config.os_name})"
            if is_64bit_guest(config)
            else "this VirtualBox version (no --hwvirtex)"
        )
        raise HostNotReady(
            f"{VM_EXTENSIONS_TOKEN}: hardware acceleration (VT-x/AMD-V) is missing or "
            f"disabled on this host, and {reason} needs it; fix: enable VT-x/AMD-V in the BIOS",
            code=-148,
        )
    return [_step("modifyhwvirtex", "modifyvm", config.name, "--hwvirtex", "off")]


def controller_steps(config: VmConfig, caps: Capabilities) -> list[Step]:
    """storagectl for the disk controller and, with floppyio, the floppy controller
    (docs/compatibility.md#creating-the-vm)."""
    vm = config.name
    ctl_type, model = config.disk_controller_type, config.disk_controller_model
    if config.iso_image is not None and model == "PIIX4":
        ctl_type, model = "sata", "IntelAHCI"  # vboxwrapper's fix-up for ISO contextualization
    args = ["storagectl", vm, "--name", HDD_CONTROLLER, "--add", ctl_type, "--controller", model]
    if ctl_type.lower() in _NO_HOST_IO_CACHE:
        args += ["--hostiocache", "off"]
    if ctl_type.lower() == "sata":
        args += ["--portcount", "3"]
    steps = [_step("add storage controller", *args)]
    if config.floppy_image is not None:
        steps.append(
            _step(
                "add floppy controller",
                "storagectl",
                vm,
                "--name",
                FLOPPY_CONTROLLER,
                "--add",
                "floppy",
            )
        )
    return steps


def attach_step(
    config: VmConfig,
    port: int,
    kind: str,
    medium: str,
    *,
    item: str,
    setuuid: bool = False,
    mtype: str = "",
    controller: str = HDD_CONTROLLER,
) -> Step:
    """storageattach of one medium (``kind`` "hdd"/"dvddrive"/"" for the floppy)."""
    args = [
        "storageattach",
        config.name,
        "--storagectl",
        controller,
        "--port",
        str(port),
        "--device",
        "0",
    ]
    if kind:
        args += ["--type", kind]
    if mtype:
        args += ["--mtype", mtype]
    if setuuid:
        args += ["--setuuid", ""]
    args += ["--medium", medium]
    return _step(item, *args)


def media_steps(config: VmConfig, caps: Capabilities) -> list[Step]:
    """Disks, DVDs and the floppy, except the multiattach parent (done under its lock).

    ISO contextualization: the ISO on port 0, the cache disk on port 1, Guest Additions on 2.
    Otherwise: the slot's disk image on port 0, Guest Additions on port 1.
    """
    steps: list[Step] = []
    if config.iso_image is not None:
        steps.append(
            attach_step(
                config, 0, "dvddrive", str(config.iso_image), item="storage attach (ISO 9660 image)"
            )
        )
        if caps.guest_additions_iso:
            steps.append(
                attach_step(
                    config,
                    2,
                    "dvddrive",
                    caps.guest_additions_iso,
                    item="storage attach (guest additions image)",
                )
            )
        if config.cache_disk is not None:
            steps.append(
                attach_step(
                    config,
                    1,
                    "hdd",
                    str(config.cache_disk),
                    setuuid=True,
                    item="storage attach (cached disk)",
                )
            )
    else:
        if config.disk_image is not None and config.multiattach_parent is None:
            steps.append(
                attach_step(
                    config,
                    0,
                    "hdd",
                    str(config.disk_image),
                    setuuid=True,
                    item="storage attach (fixed disk)",
                )
            )
        if caps.guest_additions_iso and config.multiattach_parent is None:
            steps.append(
                attach_step(
                    config,
                    1,
                    "dvddrive",
                    caps.guest_additions_iso,
                    item="storage attach (guest additions image)",
                )
            )
    return steps


def guest_additions_after_multiattach(config: VmConfig, caps: Capabilities) -> list[Step]:
    if config.multiattach_parent is None or config.iso_image is not None:
        return []
    if not caps.guest_additions_iso:
        return []
    return [
        attach_step(
            config,
            1,
            "dvddrive",
            caps.guest_additions_iso,
            item="storage attach (guest additions image)",
        )
    ]


def floppy_steps(config: VmConfig) -> list[Step]:
    if config.floppy_image is None:
        return []
    return [
        attach_step(
            config,
            0,
            "",
            str(config.floppy_image),
            controller=FLOPPY_CONTROLLER,
            item="storage attach (floppy disk)",
        )
    ]


def bandwidth_steps(config: VmConfig, caps: Capabilities) -> list[Step]:
    """A network bandwidth group, attached to NIC 1 so that limits really apply
    (docs/compatibility.md#network)."""
    group = bandwidth_group(config)
    return [
        _step(
            "network throttle group",
            "bandwidthctl",
            config.name,
            "add",
            group,
            "--type",
            "network",
            "--limit",
            UNLIMITED,
        ),
        _step(
            "network throttle group (attach)",
            "modifyvm",
            config.name,
            caps.option("nic_bandwidth_group", 1),
            group,
        ),
    ]


def port_forward_steps(config: VmConfig, caps: Capabilities) -> list[Step]:
    """NAT rules ``name,tcp,bind,host,,guest`` (name empty as in vboxwrapper); none when the
    network is disabled or bridged."""
    net = config.network
    if not net.enabled or net.bridged:
        return []
    return [
        _step(
            "add updated port forward(s)",
            "modifyvm",
            config.name,
            caps.option("nat_pf", 1),
            f",tcp,{rule.bind},{rule.host_port},,{rule.guest_port}",
        )
        for rule in net.port_rules
    ]


def password_hash(password: str) -> str:
    """What VBoxAuthSimple compares with (``VBoxManage internalcommands passwordhash``)."""
    return hashlib.sha256(password.encode()).hexdigest()


def remote_desktop_steps(config: VmConfig, caps: Capabilities) -> list[Step]:
    """VRDE on loopback with a per-task password checked by VBoxAuthSimple
    (docs/compatibility.md#remote-desktop).

    VirtualBox's own way to give a VM a password: auth type `external`, auth library
    `VBoxAuthSimple`, and the SHA-256 of the password in the VM's extradata key
    ``VBoxAuthSimple/users/<user>``. The VRDE server itself comes from the Extension Pack.
    """
    rd = config.remote_desktop
    if rd is None:
        return []
    vm = config.name
    args = [
        "modifyvm",
        vm,
        "--vrde",
        "on",
        caps.option("vrde_extpack"),
        "default",
        caps.option("vrde_auth_library"),
        "VBoxAuthSimple",
        caps.option("vrde_auth_type"),
        "external",
        caps.option("vrde_port"),
        str(rd.port),
        caps.option("vrde_address"),
        rd.bind,
    ]
    if caps.syntax is Syntax.V7:
        args += [caps.option("vrde_property"), "Security/Method=RDP"]
    return [
        _step("remote desktop", *args),
        _step(
            "remote desktop (credential)",
            "setextradata",
            vm,
            f"VBoxAuthSimple/users/{VRDE_USER}",
            password_hash(rd.password),
        ),
    ]


def shared_folder_steps(config: VmConfig) -> list[Step]:
    steps = []
    for share in config.shares:
        args = [
            "sharedfolder",
            "add",
            config.name,
            "--name",
            share.name,
            "--hostpath",
            str(share.host_path),
        ]
        if share.read_only:
            args.append("--readonly")
        steps.append(_step(f"enable {share.name} dir", *args))
    return steps


# ---- queries and run-time control ---------------------------------------------------------


def showvminfo(vm: str) -> Step:
    return Step(("showvminfo", vm, "--machinereadable"), "showvminfo", retry=False, log_error=False)


def startvm(config: VmConfig) -> Step:
    args = ["startvm", config.name]
    if config.headless:
        args += ["--type", "headless"]
    return Step(tuple(args), "start VM", retry=False)


def controlvm(config: VmConfig, *action: str, retry: bool = True) -> Step:
    return Step(("controlvm", config.name, *action), f"controlvm {action[0]}", retry=retry)


def cpu_cap(config: VmConfig, percent: float) -> Step:
    """cpuexecutioncap from the client's cpu_usage_limit: 0 → 100, below 1 → 1
    (docs/compatibility.md#main-loop)."""
    value = 100 if percent <= 0 else max(1, min(100, int(percent)))
    return controlvm(config, "cpuexecutioncap", str(value))


def link_state(config: VmConfig, connected: bool) -> Step:
    """Plug or unplug the cable of a running VM (not modifyvm on a locked VM,
    docs/compatibility.md#network)."""
    return controlvm(config, "setlinkstate1", "on" if connected else "off")


def bandwidth_limit(bytes_per_sec: float) -> str:
    """A `--limit` value: whole KiB/s (at least 1), or the group's "unlimited" for 0."""
    if bytes_per_sec <= 0:
        return UNLIMITED
    return f"{max(1, math.ceil(bytes_per_sec / 1024))}K"


def set_bandwidth(config: VmConfig, bytes_per_sec: float) -> Step:
    return Step(
        (
            "bandwidthctl",
            config.name,
            "set",
            bandwidth_group(config),
            "--limit",
            bandwidth_limit(bytes_per_sec),
        ),
        "set network bandwidth",
    )


#: The NICs' byte counters in VirtualBox's statistics (STAM). vboxwrapper asks for
#: ``/Devices/*/TransmitBytes`` and ``/Devices/*/ReceiveBytes`` in two calls; STAM takes several
#: patterns separated by ``|``, so one call reads both from the same moment.
NET_STATISTICS_PATTERN = "/Devices/*/TransmitBytes|/Devices/*/ReceiveBytes"


def net_statistics(config: VmConfig) -> Step:
    """``debugvm <vm> statistics --pattern ...``: the NIC byte counters of the running VM
    (the debugger console exists only while the VM process does; otherwise VirtualBox refuses)."""
    return Step(
        ("debugvm", config.name, "statistics", "--pattern", NET_STATISTICS_PATTERN),
        "get network bytes",
        retry=False,
        log_error=False,
    )


def snapshot_take(config: VmConfig, name: str) -> Step:
    return Step(("snapshot", config.name, "take", name), "create snapshot")


def snapshot_list(config: VmConfig) -> Step:
    return Step(
        ("snapshot", config.name, "list"), "enumerate snapshot(s)", retry=False, log_error=False
    )


def snapshot_delete(config: VmConfig, uuid: str) -> Step:
    return Step(("snapshot", config.name, "delete", uuid), "delete stale snapshot")


def snapshot_restore(config: VmConfig, name: str | None) -> Step:
    """``restorecurrent`` (vboxwrapper's) or ``restore <name>`` for an older snapshot."""
    if name is None:
        return Step(("snapshot", config.name, "restorecurrent"), "restore current snapshot")
    return Step(("snapshot", config.name, "restore", name), "restore snapshot")


def showhdinfo(path: str) -> Step:
    return Step(("showhdinfo", path), "showhdinfo", retry=False, log_error=False)


def closemedium(kind: str, path: str, *, delete: bool = False) -> Step:
    args = ["closemedium", kind, path]
    if delete:
        args.append("--delete")
    return Step(tuple(args), "close medium", fatal=False, retry=False, log_error=False)


def teardown_steps(config: VmConfig, *, delete: bool = True) -> list[Step]:
    """Deregistration (docs/compatibility.md#creating-the-vm), best effort. Snapshots are deleted
    before these.

    ``delete`` adds ``unregistervm --delete`` (the VM's folder, logs, differencing disks and
    its own disk go); without it only the registration goes (a stale VM,
    docs/compatibility.md#creating-the-vm)."""
    vm = config.name
    # No `bandwidthctl remove` (vboxwrapper's): the group is attached to the NIC now, VirtualBox
    # refuses to remove a group in use, and unregistervm drops it with the VM anyway.
    steps: list[Step] = []
    if config.floppy_image is not None:
        steps.append(
            Step(
                ("storagectl", vm, "--name", FLOPPY_CONTROLLER, "--remove"),
                "remove floppy controller",
                fatal=False,
                retry=False,
                log_error=False,
            )
        )
    unregister = ("unregistervm", vm, "--delete") if delete else ("unregistervm", vm)
    steps.append(Step(unregister, "unregister VM", fatal=False, retry=False))
    return steps


def close_media_steps(config: VmConfig) -> list[Step]:
    """Forget the slot's media in VirtualBox's registry (files stay: the client owns the slot)."""
    steps = []
    if config.iso_image is not None:
        steps.append(closemedium("dvd", str(config.iso_image)))
        if config.cache_disk is not None:
            steps.append(closemedium("disk", str(config.cache_disk)))
    elif config.disk_image is not None and config.multiattach_parent is None:
        steps.append(closemedium("disk", str(config.disk_image)))
    if config.floppy_image is not None:
        steps.append(closemedium("floppy", str(config.floppy_image)))
    return steps


def create_steps(
    config: VmConfig,
    caps: Capabilities,
    *,
    nic_type: str,
    bridge_interface: str = "",
) -> list[Step]:
    """The whole creation sequence for a VM without a multiattach parent, in vboxwrapper's order
    (the back end runs the same pieces, with the probes and the multiattach lock between)."""
    return [
        *define_steps(config, caps),
        *network_steps(config, caps, nic_type, bridge_interface),
        *devices_off_steps(config, caps),
        *acceleration_steps(config, caps),
        *controller_steps(config, caps),
        *media_steps(config, caps),
        *guest_additions_after_multiattach(config, caps),
        *floppy_steps(config),
        *bandwidth_steps(config, caps),
        *port_forward_steps(config, caps),
        *remote_desktop_steps(config, caps),
        *shared_folder_steps(config),
    ]
