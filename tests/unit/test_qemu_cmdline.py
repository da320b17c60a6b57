"""Golden argv for the QEMU command line builder (pure: VmConfig + QemuOptions → argv)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from vmwrapper.errors import BackendError
from vmwrapper.hypervisor.base import (
    NetworkConfig,
    PortRule,
    RemoteDesktop,
    Share,
    VmConfig,
)
from vmwrapper.hypervisor.qemu.cmdline import (
    ARCHES,
    Accel,
    QemuOptions,
    build_argv,
    hostfwd,
    opt,
)

SLOT = Path("/var/lib/boinc/slots/3")
PROJECT = Path("/var/lib/boinc/projects/example.org")

CONFIG = VmConfig(
    name="boinc_0123456789abcdef",
    description="job_1_0",
    slot_dir=SLOT,
    project_dir=PROJECT,
    memory_mb=256,
    cpus=2,
    disk_image=SLOT / "vm_image.vdi",
)
OPTIONS = QemuOptions(
    accel=Accel.TCG,
    qmp_socket=SLOT / "qemu-qmp.sock",
    console_path=SLOT / "qemu-console.log",
    pidfile=SLOT / "qemu.pid",
    disk_overlay=SLOT / "vm_disk.qcow2",
)

GOLDEN_MINIMAL = [
    "qemu-system-x86_64",
    "-name", "guest=boinc_0123456789abcdef,debug-threads=on",
    "-machine", "pc",
    "-accel", "tcg",
    "-m", "256",
    "-smp", "2",
    "-nodefaults",
    "-no-user-config",
    "-rtc", "base=utc",
    "-no-reboot",
    "-device", "pvpanic",
    "-action", "panic=exit-failure",
    "-chardev", "socket,id=qmp0,path=/var/lib/boinc/slots/3/qemu-qmp.sock,server=on,wait=off",
    "-mon", "chardev=qmp0,mode=control",
    "-chardev", "file,id=console0,path=/var/lib/boinc/slots/3/qemu-console.log,append=on",
    "-serial", "chardev:console0",
    "-pidfile", "/var/lib/boinc/slots/3/qemu.pid",
    "-blockdev",
    "driver=qcow2,node-name=disk0,file.driver=file,"
    "file.filename=/var/lib/boinc/slots/3/vm_disk.qcow2",
    "-device", "virtio-blk-pci,drive=disk0,bootindex=0",
    "-nic", "none",
    "-display", "none",
]  # fmt: skip


def test_minimal_x86_64_job_golden() -> None:
    assert build_argv(CONFIG, OPTIONS) == GOLDEN_MINIMAL


def test_full_job_golden() -> None:
    """Every part of the job model at once: shares, NAT + forwards, ISO, cache, floppy, VNC."""
    config = replace(
        CONFIG,
        cpus=1,
        rtc_utc=False,
        disk_image=None,
        iso_image=SLOT / "vm_isocontext.iso",
        cache_disk=SLOT / "vm_cache.vdi",
        floppy_image=SLOT / "vm_floppy_3.img",
        boot_iso=True,
        shares=(
            Share("shared", SLOT / "shared"),
            Share("project", PROJECT, read_only=True),
            Share("scratch", SLOT / "scratch"),
        ),
        network=NetworkConfig(
            enabled=True,
            port_rules=(PortRule(0, 80), PortRule(5000, 5001, bind="")),
        ),
        remote_desktop=RemoteDesktop(port=0, password="pw"),
    )
    options = replace(
        OPTIONS,
        accel=Accel.KVM,
        disk_overlay=None,
        cache_overlay=SLOT / "vm_cache.qcow2",
        port_rules=(PortRule(41000, 80), PortRule(5000, 5001, bind="")),
        vnc_port=5907,
        loadvm="ckpt_12",
    )
    argv = build_argv(config, options, binary="/opt/qemu/bin/qemu-system-x86_64")
    assert argv[:13] == [
        "/opt/qemu/bin/qemu-system-x86_64",
        "-name", "guest=boinc_0123456789abcdef,debug-threads=on",
        "-machine", "pc",
        "-accel", "kvm",
        "-cpu", "host",
        "-m", "256",
        "-smp", "1",
    ]  # fmt: skip
    assert argv[argv.index("-rtc") + 1] == "base=localtime"
    tail = argv[argv.index("-pidfile") + 2 :]
    assert tail == [
        "-blockdev",
        "driver=raw,node-name=cd0,read-only=on,file.driver=file,"
        "file.filename=/var/lib/boinc/slots/3/vm_isocontext.iso",
        "-device", "ide-cd,drive=cd0,bus=ide.1,unit=0,bootindex=0",
        "-blockdev",
        "driver=qcow2,node-name=cache0,file.driver=file,"
        "file.filename=/var/lib/boinc/slots/3/vm_cache.qcow2",
        "-device", "virtio-blk-pci,drive=cache0,bootindex=2",
        "-blockdev",
        "driver=raw,node-name=fd0,read-only=on,file.driver=file,"
        "file.filename=/var/lib/boinc/slots/3/vm_floppy_3.img",
        "-device", "floppy,drive=fd0,unit=0",
        "-fsdev", "local,id=fs0,path=/var/lib/boinc/slots/3/shared,security_model=none",
        "-device", "virtio-9p-pci,fsdev=fs0,mount_tag=shared",
        "-fsdev",
        "local,id=fs1,path=/var/lib/boinc/projects/example.org,security_model=none,readonly=on",
        "-device", "virtio-9p-pci,fsdev=fs1,mount_tag=project",
        "-fsdev", "local,id=fs2,path=/var/lib/boinc/slots/3/scratch,security_model=none",
        "-device", "virtio-9p-pci,fsdev=fs2,mount_tag=scratch",
        "-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:41000-:80,hostfwd=tcp::5000-:5001",
        "-device", "virtio-net-pci,netdev=net0",
        "-display", "none",
        "-device", "VGA",
        "-vnc", "127.0.0.1:7,password=on",
        "-loadvm", "ckpt_12",
    ]  # fmt: skip


def test_disk_boots_first_unless_boot_iso() -> None:
    config = replace(CONFIG, iso_image=SLOT / "ctx.iso")
    argv = build_argv(config, OPTIONS)
    assert "virtio-blk-pci,drive=disk0,bootindex=0" in argv
    assert "ide-cd,drive=cd0,bus=ide.1,unit=0,bootindex=1" in argv
    argv = build_argv(replace(config, boot_iso=True), OPTIONS)
    assert "virtio-blk-pci,drive=disk0,bootindex=1" in argv
    assert "ide-cd,drive=cd0,bus=ide.1,unit=0,bootindex=0" in argv


def test_network_off_means_no_nic_and_no_forwards() -> None:
    options = replace(OPTIONS, port_rules=(PortRule(4000, 80),))
    argv = build_argv(CONFIG, options)
    assert argv[argv.index("-nic") + 1] == "none"
    assert not [a for a in argv if "hostfwd" in a or a == "-netdev"]


def test_nic_model_follows_vm_network_driver() -> None:
    config = replace(CONFIG, network=NetworkConfig(enabled=True, driver="82540EM"))
    argv = build_argv(config, OPTIONS)
    assert "e1000,netdev=net0" in argv
    config = replace(CONFIG, network=NetworkConfig(enabled=True, driver="unknown"))
    assert "virtio-net-pci,netdev=net0" in build_argv(config, OPTIONS)


def test_forward_without_host_port_is_refused() -> None:
    config = replace(CONFIG, network=NetworkConfig(enabled=True))
    with pytest.raises(BackendError, match="host port"):
        build_argv(config, replace(OPTIONS, port_rules=(PortRule(0, 80),)))


def test_hostfwd_binds_loopback_unless_remote() -> None:
    assert hostfwd(PortRule(8080, 80)) == "hostfwd=tcp:127.0.0.1:8080-:80"
    assert hostfwd(PortRule(8080, 80, bind="")) == "hostfwd=tcp::8080-:80"


def test_commas_in_paths_are_doubled() -> None:
    slot = Path("/tmp/a,b")
    config = replace(CONFIG, slot_dir=slot, shares=(Share("shared", slot / "shared"),))
    options = replace(OPTIONS, disk_overlay=slot / "d.qcow2", console_path=slot / "c.log")
    argv = build_argv(config, options)
    assert "file.filename=/tmp/a,,b/d.qcow2" in " ".join(argv)
    assert "path=/tmp/a,,b/c.log" in " ".join(argv)
    assert "path=/tmp/a,,b/shared" in " ".join(argv)
    assert opt("x,y,,z") == "x,,y,,,,z"


def test_state_disk_is_a_node_without_a_device() -> None:
    """ISO mode without a cache disk: savevm needs a qcow2; the guest must not see it."""
    config = replace(CONFIG, disk_image=None, iso_image=SLOT / "ctx.iso")
    options = replace(OPTIONS, disk_overlay=None, state_disk=SLOT / "vm_state.qcow2")
    argv = build_argv(config, options)
    assert any("node-name=vmstate0" in a for a in argv)
    assert not any("drive=vmstate0" in a for a in argv)


def test_vnc_port_below_5900_is_an_error() -> None:
    with pytest.raises(BackendError, match="5900"):
        build_argv(CONFIG, replace(OPTIONS, vnc_port=5000))


def test_aarch64_profile() -> None:
    config = replace(CONFIG, arch="aarch64", iso_image=SLOT / "ctx.iso")
    argv = build_argv(config, OPTIONS)
    assert argv[0] == "qemu-system-aarch64"
    assert argv[argv.index("-machine") + 1] == "virt"
    assert argv[argv.index("-cpu") + 1] == "max"  # the default would be a 32-bit CPU
    assert argv[argv.index("-bios") + 1] == ARCHES["aarch64"].firmware
    assert "pvpanic-pci" in argv
    assert "virtio-scsi-pci,id=scsi0" in argv
    assert "scsi-cd,drive=cd0,bus=scsi0.0,bootindex=1" in argv


def test_aarch64_has_no_floppy() -> None:
    config = replace(CONFIG, arch="aarch64", floppy_image=SLOT / "f.img")
    with pytest.raises(BackendError, match="floppy"):
        build_argv(config, OPTIONS)


def test_unknown_arch_names_the_known_ones() -> None:
    with pytest.raises(BackendError, match="x86_64, aarch64"):
        build_argv(replace(CONFIG, arch="riscv64"), OPTIONS)


def test_screen_for_error_screenshots_adds_a_display_device_without_vnc() -> None:
    plain = build_argv(CONFIG, OPTIONS)
    with_screen = build_argv(replace(CONFIG, screen=True), OPTIONS)
    assert "VGA" not in plain and "-vnc" not in with_screen
    assert with_screen[-2:] == ["-device", "VGA"]
    # with VNC the one display device serves both
    both = build_argv(replace(CONFIG, screen=True), replace(OPTIONS, vnc_port=5901))
    assert both.count("VGA") == 1 and "-vnc" in both


def test_a_serial_share_is_a_virtio_serial_port_to_the_file_service_not_9p() -> None:
    config = replace(
        CONFIG,
        shares=(
            Share("shared", SLOT / "shared", transport="serial"),
            Share("project", PROJECT, read_only=True),
        ),
    )
    argv = build_argv(config, replace(OPTIONS, share_service_port=41234))
    start = argv.index("-chardev", argv.index("-pidfile"))
    assert argv[start : start + 6] == [
        "-chardev", "socket,id=sharefs0,host=127.0.0.1,port=41234,server=off,nodelay=on",
        "-device", "virtio-serial-pci,id=vser0",
        "-device", "virtserialport,bus=vser0.0,chardev=sharefs0,name=org.boinc.vmwrapper.shared",
    ]  # fmt: skip
    # the project share stays 9p (mounted on demand); `shared` has no 9p export at all
    assert [a for a in argv if a.startswith("virtio-9p-pci")] == [
        "virtio-9p-pci,fsdev=fs1,mount_tag=project"
    ]
    with pytest.raises(BackendError, match="no port"):
        build_argv(config, OPTIONS)


def test_qmp_on_tcp_listens_on_loopback_only_and_names_no_socket() -> None:
    """Windows has no Unix socket QEMU and asyncio share: QMP on a loopback port instead."""
    argv = build_argv(CONFIG, replace(OPTIONS, qmp_port=45678))
    chardev = argv[argv.index("-mon") - 1]
    assert chardev == "socket,id=qmp0,host=127.0.0.1,port=45678,server=on,wait=off"
    assert "qemu-qmp.sock" not in " ".join(argv)


def test_data_dir_is_passed_as_minus_l() -> None:
    """A Windows QEMU unpacked on its own gets its firmware directory named."""
    data = Path("C:/qemu/share/qemu")
    argv = build_argv(CONFIG, replace(OPTIONS, data_dir=data))
    assert argv[argv.index("-L") + 1] == str(data)
    assert "-L" not in build_argv(CONFIG, OPTIONS)


def test_whpx_gets_the_default_cpu_model() -> None:
    argv = build_argv(CONFIG, replace(OPTIONS, accel=Accel.WHPX))
    assert argv[argv.index("-accel") + 1] == "whpx"
    assert "-cpu" not in argv  # "host" is KVM's; WHPX runs QEMU's default model


def test_a_live_restore_waits_for_its_ram_over_qmp() -> None:
    """A live checkpoint's restore: QEMU starts on the new top layer and waits (``-incoming
    defer``) for the RAM file the back end hands it; never with ``-loadvm`` as well."""
    top = SLOT / "vm_disk.7.qcow2"
    argv = build_argv(CONFIG, replace(OPTIONS, disk_overlay=top, incoming=True))
    assert argv[-2:] == ["-incoming", "defer"] and "-loadvm" not in argv
    assert f"file.filename={top}" in " ".join(argv)
    assert "-incoming" not in build_argv(CONFIG, OPTIONS)
