"""VmConfig + run options → the `qemu-system-<arch>` argv (pure: no processes, files or sockets).

The job model is VirtualBox's; this module says what each part of it becomes under QEMU:

======================  =====================================================================
job model               QEMU
======================  =====================================================================
memory, CPUs            ``-m``, ``-smp``
vm_image.vdi            a qcow2 overlay in the slot over it (``-blockdev``, virtio-blk); the
                        overlay is where snapshots live and the VDI is never written
multiattach_vdi_file    the same overlay, over the read-only parent in the project dir
shares                  virtio-9p (``-fsdev local,security_model=none`` + ``virtio-9p-pci``,
                        mount_tag = share name); a ``serial`` share: a virtio-serial port to
                        the wrapper's file service (shareport.py)
network off             ``-nic none``: the guest has no NIC at all
network on              user-mode NAT; ``hostfwd`` bound to 127.0.0.1 unless is_remote
ISO contextualization   a CD-ROM (IDE on x86_64, SCSI on aarch64); cache disk = a 2nd disk
floppy image            a read-only ISA floppy (host → guest only, as vboxwrapper uses it)
boot_iso                ``bootindex``: CD-ROM first instead of the disk
guest clock             ``-rtc base=utc|localtime``
remote desktop          VNC on 127.0.0.1 with ``password=on`` (the password is set over QMP)
guest panic             ``pvpanic`` + ``-action panic=exit-failure`` (QEMU exits 1, not 0)
reboot                  ``-no-reboot``: a reboot request ends the VM
console                 the first serial port to a file in the slot (the guest log)
QMP                     a Unix socket in the slot; TCP on 127.0.0.1 where there is none (Windows)
======================  =====================================================================

Architectures come from :data:`ARCHES` (x86_64 first; aarch64 is in the table with its
machine, CPU, firmware and device names, but no aarch64 guest image exists yet).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from vmwrapper.errors import BackendError
from vmwrapper.hypervisor.base import PortRule, VmConfig
from vmwrapper.hypervisor.qemu.shareport import serial_share_args

#: The first TCP port a VNC display can use (display N listens on 5900 + N).
VNC_BASE_PORT = 5900

# Node and device ids used in the argv; the back end refers to them over QMP.
DISK_NODE = "disk0"
CACHE_NODE = "cache0"
STATE_NODE = "vmstate0"
NETDEV_ID = "net0"
CONSOLE_ID = "console0"
QMP_ID = "qmp0"


class Accel(enum.Enum):
    """How QEMU runs guest code."""

    KVM = "kvm"
    WHPX = "whpx"  # Windows Hypervisor Platform (docs/windows.md#the-qemu-back-end-on-windows)
    TCG = "tcg"


@dataclass(frozen=True)
class ArchProfile:
    """What differs between guest architectures: binary, machine and device names."""

    name: str
    binary: str
    machine: str
    cpu_kvm: str
    cpu_tcg: str  # "" = QEMU's default CPU model
    disk_device: str
    nic_device: str
    cdrom_args: tuple[str, ...]  # devices a CD-ROM needs (e.g. a SCSI controller), once
    cdrom_device: str  # the CD-ROM device, "{drive}" and "{bootindex}" filled in
    floppy: bool
    pvpanic_device: str
    vga_device: str  # for VNC
    firmware: str  # -bios path, "" = the machine's default (SeaBIOS on x86_64)


ARCHES: dict[str, ArchProfile] = {
    "x86_64": ArchProfile(
        name="x86_64",
        binary="qemu-system-x86_64",
        machine="pc",
        cpu_kvm="host",
        cpu_tcg="",
        disk_device="virtio-blk-pci",
        nic_device="virtio-net-pci",
        cdrom_args=(),
        cdrom_device="ide-cd,drive={drive},bus=ide.1,unit=0,bootindex={bootindex}",
        floppy=True,
        pvpanic_device="pvpanic",
        vga_device="VGA",
        firmware="",
    ),
    "aarch64": ArchProfile(
        name="aarch64",
        binary="qemu-system-aarch64",
        machine="virt",
        cpu_kvm="host",
        cpu_tcg="max",
        disk_device="virtio-blk-pci",
        nic_device="virtio-net-pci",
        cdrom_args=("-device", "virtio-scsi-pci,id=scsi0"),
        cdrom_device="scsi-cd,drive={drive},bus=scsi0.0,bootindex={bootindex}",
        floppy=False,
        pvpanic_device="pvpanic-pci",
        vga_device="ramfb",
        firmware="/usr/share/qemu-efi-aarch64/QEMU_EFI.fd",
    ),
}

#: vm_network_driver (VirtualBox NIC types) → QEMU NIC models; anything else: the arch default.
NIC_MODELS: dict[str, str] = {
    "virtio": "virtio-net-pci",
    "82540EM": "e1000",
    "82543GC": "e1000",
    "82545EM": "e1000",
    "Am79C970A": "pcnet",
    "Am79C973": "pcnet",
}


@dataclass(frozen=True)
class QemuOptions:
    """Everything the argv needs beyond the VmConfig: decided by the back end at start."""

    accel: Accel
    qmp_socket: Path
    console_path: Path
    pidfile: Path
    disk_overlay: Path | None = None  # qcow2 over disk_image / multiattach_parent
    cache_overlay: Path | None = None  # qcow2 over cache_disk
    state_disk: Path | None = None  # qcow2 only for VM state (ISO mode without a cache disk)
    port_rules: tuple[PortRule, ...] = ()  # host ports resolved (none is 0)
    vnc_port: int | None = None
    loadvm: str | None = None
    share_service_port: int | None = None  # the file service of a "serial" share
    qmp_port: int | None = None  # QMP on 127.0.0.1:port instead of qmp_socket (Windows)
    data_dir: Path | None = None  # -L: firmware beside a QEMU that does not look there itself
    incoming: bool = False  # wait for a migration stream (a live checkpoint's RAM) over QMP


def arch_profile(arch: str) -> ArchProfile:
    try:
        return ARCHES[arch]
    except KeyError:
        known = ", ".join(ARCHES)
        raise BackendError(
            f"VmConfig.arch {arch!r} has no QEMU profile (known: {known}); fix the job's arch"
        ) from None


def qemu_binary(arch: str) -> str:
    return arch_profile(arch).binary


def opt(value: object) -> str:
    """A value inside a QEMU ``key=value,...`` option: commas are doubled."""
    return str(value).replace(",", ",,")


def build_argv(config: VmConfig, options: QemuOptions, binary: str | None = None) -> list[str]:
    """The full argv that starts ``config`` as a QEMU process."""
    arch = arch_profile(config.arch)
    return [
        binary or arch.binary,
        *_machine_args(config, options, arch),
        *_control_args(config, options),
        *_disk_args(config, options, arch),
        *_share_args(config, options),
        *_network_args(config, options, arch),
        *_display_args(config, options, arch),
        *(["-loadvm", options.loadvm] if options.loadvm else []),
        *(["-incoming", "defer"] if options.incoming else []),
    ]


def _machine_args(config: VmConfig, options: QemuOptions, arch: ArchProfile) -> list[str]:
    cpu = arch.cpu_kvm if options.accel is Accel.KVM else arch.cpu_tcg
    args = [
        "-name", f"guest={opt(config.name)},debug-threads=on",
        "-machine", arch.machine,
        "-accel", options.accel.value,
        *(["-cpu", cpu] if cpu else []),
        "-m", str(config.memory_mb),
        "-smp", str(config.cpus),
        "-nodefaults",
        "-no-user-config",
        "-rtc", "base=utc" if config.rtc_utc else "base=localtime",
        "-no-reboot",
        "-device", arch.pvpanic_device,
        "-action", "panic=exit-failure",
    ]  # fmt: skip
    if arch.firmware:
        args += ["-bios", arch.firmware]
    if options.data_dir is not None:
        args += ["-L", str(options.data_dir)]
    return args


def _control_args(config: VmConfig, options: QemuOptions) -> list[str]:
    """QMP socket, serial console file, pidfile: the back end's handles on the VM. QMP on TCP
    listens on loopback only: it controls the VM."""
    where = (
        f"host=127.0.0.1,port={options.qmp_port}"
        if options.qmp_port is not None
        else f"path={opt(options.qmp_socket)}"
    )
    return [
        "-chardev", f"socket,id={QMP_ID},{where},server=on,wait=off",
        "-mon", f"chardev={QMP_ID},mode=control",
        "-chardev", f"file,id={CONSOLE_ID},path={opt(options.console_path)},append=on",
        "-serial", f"chardev:{CONSOLE_ID}",
        "-pidfile", str(options.pidfile),
    ]  # fmt: skip


def _qcow2_node(node: str, path: Path) -> list[str]:
    return [
        "-blockdev",
        f"driver=qcow2,node-name={node},file.driver=file,file.filename={opt(path)}",
    ]


def _raw_ro_node(node: str, path: Path) -> list[str]:
    return [
        "-blockdev",
        f"driver=raw,node-name={node},read-only=on,file.driver=file,file.filename={opt(path)}",
    ]


def _disk_args(config: VmConfig, options: QemuOptions, arch: ArchProfile) -> list[str]:
    """Disk, cache disk, CD-ROM, floppy and the state-only node; boot order by bootindex."""
    disk_boot, cd_boot = (1, 0) if config.boot_iso else (0, 1)
    args: list[str] = []
    if options.disk_overlay is not None:
        args += _qcow2_node(DISK_NODE, options.disk_overlay)
        args += ["-device", f"{arch.disk_device},drive={DISK_NODE},bootindex={disk_boot}"]
    if config.iso_image is not None:
        args += _raw_ro_node("cd0", config.iso_image)
        args += [
            *arch.cdrom_args,
            "-device",
            arch.cdrom_device.format(drive="cd0", bootindex=cd_boot),
        ]
    if options.cache_overlay is not None:
        args += _qcow2_node(CACHE_NODE, options.cache_overlay)
        args += ["-device", f"{arch.disk_device},drive={CACHE_NODE},bootindex=2"]
    if config.floppy_image is not None:
        if not arch.floppy:
            raise BackendError(
                f"{arch.name} guests have no floppy controller; drop enable_floppyio from the job"
            )
        # read-only: a writable raw floppy would make QEMU refuse every snapshot
        args += _raw_ro_node("fd0", config.floppy_image)
        # on the machine's own controller: a second isa-fdc gets no CMOS entry, so Linux
        # would create no /dev/fd0 for it
        args += ["-device", "floppy,drive=fd0,unit=0"]
    if options.state_disk is not None:
        # attached to no device: the guest never sees it, savevm stores the VM state in it
        args += _qcow2_node(STATE_NODE, options.state_disk)
    return args


def _share_args(config: VmConfig, options: QemuOptions) -> list[str]:
    args: list[str] = []
    for index, share in enumerate(config.shares):
        if share.transport == "serial":
            if options.share_service_port is None:
                raise BackendError(f"share {share.name!r} is served over serial: no port given")
            args += serial_share_args(options.share_service_port)
            continue
        fsdev = f"fs{index}"
        readonly = ",readonly=on" if share.read_only else ""
        args += [
            "-fsdev",
            f"local,id={fsdev},path={opt(share.host_path)},security_model=none{readonly}",
            "-device",
            f"virtio-9p-pci,fsdev={fsdev},mount_tag={opt(share.name)}",
        ]
    return args


def hostfwd(rule: PortRule) -> str:
    """One user-mode NAT forward; an empty bind (is_remote) listens on every address."""
    return f"hostfwd=tcp:{rule.bind}:{rule.host_port}-:{rule.guest_port}"


def _network_args(config: VmConfig, options: QemuOptions, arch: ArchProfile) -> list[str]:
    net = config.network
    if not net.enabled:
        return ["-nic", "none"]
    for rule in options.port_rules:
        if rule.host_port <= 0:
            raise BackendError(f"port rule {rule} has no host port; the back end must pick one")
    netdev = ",".join([f"user,id={NETDEV_ID}", *(hostfwd(r) for r in options.port_rules)])
    model = NIC_MODELS.get(net.driver, arch.nic_device)
    return ["-netdev", netdev, "-device", f"{model},netdev={NETDEV_ID}"]


def _display_args(config: VmConfig, options: QemuOptions, arch: ArchProfile) -> list[str]:
    args = ["-display", "none"]
    if options.vnc_port is None:
        # A screen only for error screenshots: it changes the device set (and so what a
        # snapshot holds), so it is there from the first boot or never.
        return [*args, "-device", arch.vga_device] if config.screen else args
    display = options.vnc_port - VNC_BASE_PORT
    if display < 0:
        raise BackendError(
            f"VNC port {options.vnc_port} is below {VNC_BASE_PORT}; QEMU serves display N on "
            f"{VNC_BASE_PORT}+N, so pick a port >= {VNC_BASE_PORT} (or 0 for any free one)"
        )
    return [*args, "-device", arch.vga_device, "-vnc", f"127.0.0.1:{display},password=on"]
