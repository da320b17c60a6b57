"""VmConfig + Capabilities → the VBoxManage steps that create a VM (pure, built from tables).

The sequence and the options are vboxwrapper's (docs/compatibility.md#creating-the-vm), with
its rough edges fixed: argv lists instead of shell strings, the graphics controller from the
job, the bandwidth group attached to the NIC (docs/compatibility.md#network), VRDE bound to
loopback with a per-task password (docs/compatibility.md#remote-desktop), port forwards bound
to 127.0.0.1 unless the job says ``is_remote``.
"""

from __future__ import annotations

import hashlib

from vmwrapper.errors import HostNotReady
from vmwrapper.hypervisor.base import VmConfig
from vmwrapper.hypervisor.virtualbox.capabilities import Capabilities, Syntax
from vmwrapper.hypervisor.virtualbox.commands import (
    FLOPPY_CONTROLLER,
    HDD_CONTROLLER,
    UNLIMITED,
    VRDE_USER,
    Step,
    bandwidth_group,
    is_64bit_guest,
    step,
)
from vmwrapper.hypervisor.virtualbox.options import DEFAULT_OPTIONS, VirtualBoxOptions
from vmwrapper.outcome import VM_EXTENSIONS_TOKEN

#: Job controller types whose host I/O cache vboxwrapper turns off.
_NO_HOST_IO_CACHE = frozenset({"sata", "scsi", "sas"})


def _createvm_args(config: VmConfig) -> list[str]:
    args = ["createvm", "--name", config.name, "--basefolder", str(config.slot_dir)]
    if config.os_name:
        args += ["--ostype", config.os_name]
    return [*args, "--register"]


def define_steps(config: VmConfig, caps: Capabilities, options: VirtualBoxOptions) -> list[Step]:
    """createvm and the basic machine settings (docs/compatibility.md#creating-the-vm)."""
    vm = config.name
    boot = ("dvd", "disk") if config.boot_iso else ("disk", "dvd")
    return [
        # no `--ostype ""` for a job without os_name: VirtualBox then picks "Other"
        step("create", *_createvm_args(config)),
        step(
            "modifydescription",
            "modifyvm",
            vm,
            "--description",
            config.description,
            fatal=False,
            retry=False,
        ),
        step("modifymem", "modifyvm", vm, "--memory", str(config.memory_mb)),
        step("modifycpu", "modifyvm", vm, "--cpus", str(config.cpus)),
        step(
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
        step(
            "modifygraphics",
            "modifyvm",
            vm,
            "--vram",
            str(options.vram_mb),
            "--graphicscontroller",
            options.graphics_controller,
        ),
        step(
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
    steps = [step("modifynetwork", *args)]
    if net.bridged:
        if not bridge_interface:
            raise HostNotReady(
                "the job asks for a bridged network (network_bridged_mode) but "
                "`VBoxManage list bridgedifs` lists no host interface; "
                "fix: connect a network interface or use NAT"
            )
        steps.append(
            step("modifybridge", "modifyvm", vm, caps.option("bridge_adapter", 1), bridge_interface)
        )
    steps.append(
        step("modifycable", "modifyvm", vm, caps.option("cable", 1), "on" if net.enabled else "off")
    )
    return steps


def devices_off_steps(config: VmConfig, caps: Capabilities) -> list[Step]:
    """USB, serial, parallel, audio, clipboard, drag and drop off (best effort,
    docs/compatibility.md#creating-the-vm)."""
    vm = config.name
    steps = [
        step("modifyusb", "modifyvm", vm, "--usb", "off", fatal=False, retry=False),
        step(
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
            step(
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
        step("modifyaudio", "modifyvm", vm, *audio, fatal=False, retry=False),
        step(
            "modifyclipboard", "modifyvm", vm, "--clipboard", "disabled", fatal=False, retry=False
        ),
        step(
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
    return [step("modifyhwvirtex", "modifyvm", config.name, "--hwvirtex", "off")]


def controller_steps(
    config: VmConfig, caps: Capabilities, options: VirtualBoxOptions
) -> list[Step]:
    """storagectl for the disk controller and, with floppyio, the floppy controller
    (docs/compatibility.md#creating-the-vm)."""
    vm = config.name
    ctl_type, model = options.disk_controller_type, options.disk_controller_model
    if config.iso_image is not None and model == "PIIX4":
        ctl_type, model = "sata", "IntelAHCI"  # vboxwrapper's fix-up for ISO contextualization
    args = ["storagectl", vm, "--name", HDD_CONTROLLER, "--add", ctl_type, "--controller", model]
    if ctl_type.lower() in _NO_HOST_IO_CACHE:
        args += ["--hostiocache", "off"]
    if ctl_type.lower() == "sata":
        args += ["--portcount", "3"]
    steps = [step("add storage controller", *args)]
    if config.floppy_image is not None:
        steps.append(
            step(
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
    return step(item, *args)


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
        step(
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
        step(
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
        step(
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
        step("remote desktop", *args),
        step(
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
        steps.append(step(f"enable {share.name} dir", *args))
    return steps


def create_steps(
    config: VmConfig,
    caps: Capabilities,
    *,
    nic_type: str,
    bridge_interface: str = "",
    options: VirtualBoxOptions = DEFAULT_OPTIONS,
) -> list[Step]:
    """The whole creation sequence for a VM without a multiattach parent, in vboxwrapper's order
    (the back end runs the same pieces, with the probes and the multiattach lock between)."""
    return [
        *define_steps(config, caps, options),
        *network_steps(config, caps, nic_type, bridge_interface),
        *devices_off_steps(config, caps),
        *acceleration_steps(config, caps),
        *controller_steps(config, caps, options),
        *media_steps(config, caps),
        *guest_additions_after_multiattach(config, caps),
        *floppy_steps(config),
        *bandwidth_steps(config, caps),
        *port_forward_steps(config, caps),
        *remote_desktop_steps(config, caps),
        *shared_folder_steps(config),
    ]
