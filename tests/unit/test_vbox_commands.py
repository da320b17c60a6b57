"""VBoxManage argv tables: golden transcripts for a job that uses every option, and the rules."""

from __future__ import annotations

import hashlib
import os
import shlex
from dataclasses import replace
from pathlib import Path

import pytest

from vmwrapper.errors import HostNotReady
from vmwrapper.hypervisor.base import NetworkConfig, PortRule, RemoteDesktop, Share, VmConfig
from vmwrapper.hypervisor.virtualbox import capabilities as vbox_caps
from vmwrapper.hypervisor.virtualbox import commands as cmd
from vmwrapper.hypervisor.virtualbox import creation
from vmwrapper.hypervisor.virtualbox.capabilities import Capabilities, Syntax
from vmwrapper.hypervisor.virtualbox.options import VirtualBoxOptions

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "vbox"

HELP_V7 = (
    "  VBoxManage modifyvm <uuid|vmname> [--memory=size-in-MB] [--rtc-use-utc= on | off ]\n"
    "      [--nic-type<1-N>= Am79C970A | Am79C973 | 82540EM | 82543GC | 82545EM | virtio ]\n"
    "      [--cable-connected<1-N>= on | off ] [--audio-enabled= on | off ]\n"
)
HELP_V6 = (
    "VBoxManage modifyvm <uuid|vmname> [--memory <memorysize in MB>] [--hwvirtex on|off]\n"
    "   [--nictype<1-N> Am79C970A|Am79C973|82540EM|82543GC|82545EM|virtio]\n"
    "   [--cableconnected<1-N> on|off] [--audio none|null|oss|alsa|pulse]\n"
)


def every_option() -> VmConfig:
    """A job that uses every option the back end knows (except ISO mode, below)."""
    slot, project = Path("/var/lib/boinc/slots/3"), Path("/var/lib/boinc/projects/example.org")
    return VmConfig(
        name="boinc_0123456789abcdef",
        description='wu "quoted" name_0',
        slot_dir=slot,
        project_dir=project,
        os_name="Linux26",
        memory_mb=2048,
        cpus=4,
        disk_image=slot / "vm_image.vdi",
        floppy_image=slot / "vm_floppy_3.img",
        boot_iso=True,
        shares=(
            Share("shared", slot / "shared"),
            Share("project", project, read_only=True),
            Share("scratch", project / "scratch"),
        ),
        network=NetworkConfig(
            enabled=True,
            driver="virtio",
            nat_dns_host_resolver=True,
            port_rules=(PortRule(31416, 80), PortRule(31417, 22, bind="")),
        ),
        remote_desktop=RemoteDesktop(port=31418, password="pw-of-this-task"),
        rtc_utc=True,
        hw_acceleration=False,
    )


#: every_option()'s VirtualBox-only settings
OPTIONS = VirtualBoxOptions(
    vram_mb=32,
    graphics_controller="VMSVGA",
    disk_controller_type="sata",
    disk_controller_model="IntelAHCI",
)
PIIX4 = replace(OPTIONS, disk_controller_type="ide", disk_controller_model="PIIX4")


def caps(syntax: Syntax) -> Capabilities:
    help_text = HELP_V7 if syntax is Syntax.V7 else HELP_V6
    version = "7.0.14r161095" if syntax is Syntax.V7 else "6.0.24r139119"
    return vbox_caps.capabilities(
        version, help_text, guest_additions_iso="/usr/share/virtualbox/VBoxGuestAdditions.iso"
    )


def transcript(steps: list[cmd.Step]) -> str:
    return "".join(shlex.join(("VBoxManage", "-q", *s.args)) + "\n" for s in steps)


@pytest.mark.parametrize("syntax", [Syntax.V7, Syntax.V6])
def test_golden_create_transcript(syntax: Syntax) -> None:
    config = every_option()
    c = caps(syntax)
    if syntax is Syntax.V7:
        # VirtualBox 7 has no --hwvirtex: a 32-bit guest without VT-x cannot be defined
        with pytest.raises(HostNotReady, match="ERR_CPU_VM_EXTENSIONS_DISABLED"):
            creation.create_steps(config, c, nic_type="virtio", options=OPTIONS)
        config = replace(config, hw_acceleration=True)
    text = transcript(creation.create_steps(config, c, nic_type="virtio", options=OPTIONS))
    golden = GOLDEN / f"create_every_option_v{syntax.value}.txt"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()


def test_golden_iso_mode_transcript() -> None:
    slot = Path("/var/lib/boinc/slots/3")
    config = replace(
        every_option(),
        disk_image=None,
        iso_image=slot / "vm_isocontext.iso",
        cache_disk=slot / "vm_cache.vdi",
        floppy_image=None,
        remote_desktop=None,
        hw_acceleration=True,
        network=NetworkConfig(enabled=False, bridged=True),
    )
    steps = creation.create_steps(
        config, caps(Syntax.V7), nic_type="82540EM", bridge_interface="eth0", options=PIIX4
    )
    text = transcript(steps)
    golden = GOLDEN / "create_iso_mode_v7.txt"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text()


def test_port_forwards_bind_loopback_unless_remote() -> None:
    steps = creation.port_forward_steps(every_option(), caps(Syntax.V7))
    assert [s.args[-1] for s in steps] == [",tcp,127.0.0.1,31416,,80", ",tcp,,31417,,22"]
    off = replace(
        every_option(), network=NetworkConfig(enabled=False, port_rules=(PortRule(1, 2),))
    )
    assert creation.port_forward_steps(off, caps(Syntax.V7)) == []


def test_remote_desktop_is_loopback_with_a_task_password() -> None:
    steps = creation.remote_desktop_steps(every_option(), caps(Syntax.V7))
    args = steps[0].args
    assert args[args.index("--vrde-address") + 1] == "127.0.0.1"
    assert args[args.index("--vrde-auth-type") + 1] == "external"
    assert args[args.index("--vrde-auth-library") + 1] == "VBoxAuthSimple"
    assert args[args.index("--vrde-port") + 1] == "31418"
    digest = hashlib.sha256(b"pw-of-this-task").hexdigest()
    assert steps[1].args == (
        "setextradata",
        "boinc_0123456789abcdef",
        "VBoxAuthSimple/users/boinc",
        digest,
    )
    assert "pw-of-this-task" not in " ".join(args + steps[1].args)


def test_bandwidth_group_is_attached_to_the_nic() -> None:
    steps = creation.bandwidth_steps(every_option(), caps(Syntax.V6))
    assert steps[0].args[:4] == (
        "bandwidthctl",
        "boinc_0123456789abcdef",
        "add",
        "boinc_0123456789abcdef_net",
    )
    assert steps[1].args == (
        "modifyvm",
        "boinc_0123456789abcdef",
        "--nicbandwidthgroup1",
        "boinc_0123456789abcdef_net",
    )


@pytest.mark.parametrize(
    ("bps", "limit"),
    [(0, "1024G"), (-5, "1024G"), (1, "1K"), (1024, "1K"), (1025, "2K"), (10 * 1024**2, "10240K")],
)
def test_bandwidth_limits(bps: float, limit: str) -> None:
    assert cmd.bandwidth_limit(bps) == limit


@pytest.mark.parametrize(
    ("percent", "value"), [(0, "100"), (0.5, "1"), (40, "40"), (100, "100"), (250, "100")]
)
def test_cpu_cap(percent: float, value: str) -> None:
    assert cmd.cpu_cap(every_option(), percent).args[-1] == value


def test_runtime_network_uses_setlinkstate() -> None:
    assert cmd.link_state(every_option(), False).args == (
        "controlvm",
        "boinc_0123456789abcdef",
        "setlinkstate1",
        "off",
    )


def test_64bit_guest_without_acceleration_is_refused_with_the_client_token() -> None:
    config = replace(every_option(), os_name="Ubuntu_64")
    with pytest.raises(HostNotReady, match="ERR_CPU_VM_EXTENSIONS_DISABLED") as info:
        creation.acceleration_steps(config, caps(Syntax.V6))
    assert info.value.code == -148
    assert creation.acceleration_steps(replace(config, hw_acceleration=True), caps(Syntax.V6)) == []


def test_capabilities_from_help_text_not_from_version() -> None:
    # a 7.x version string with 6.x help text: the help text decides
    c = vbox_caps.capabilities("7.1.0r1", HELP_V6)
    assert c.syntax is Syntax.V6 and not c.audio_enabled_option and c.hwvirtex_option
    c = vbox_caps.capabilities("6.1.0r1", HELP_V7)
    assert c.syntax is Syntax.V7 and c.audio_enabled_option and not c.hwvirtex_option
    assert c.accepts_nic_type("virtio") and not c.accepts_nic_type("e1000")


@pytest.mark.parametrize(
    ("version", "syntax"),
    [("6.1.50r161033", Syntax.V6), ("7.0.2r1", Syntax.V7), ("garbage", Syntax.V7), ("", Syntax.V7)],
)
def test_capabilities_fall_back_to_the_version(version: str, syntax: Syntax) -> None:
    c = vbox_caps.capabilities(version, "")
    assert c.syntax is syntax
    if version == "garbage":
        assert c.version is None
        assert c.display_version == "VirtualBox VboxManage Interface (Version: Unknown)"


def test_iso_mode_piix4_is_fixed_up_to_sata() -> None:
    config = replace(
        every_option(),
        iso_image=Path("/s/vm_isocontext.iso"),
    )
    args = creation.controller_steps(config, caps(Syntax.V7), PIIX4)[0].args
    assert args[args.index("--add") + 1] == "sata"
    assert args[args.index("--controller") + 1] == "IntelAHCI"


def test_restore_current_or_named() -> None:
    config = every_option()
    assert cmd.snapshot_restore(config, None).args[-1] == "restorecurrent"
    assert cmd.snapshot_restore(config, "boinc_600").args[-2:] == ("restore", "boinc_600")


def test_teardown_keeps_a_stale_vms_disks() -> None:
    config = every_option()
    assert cmd.teardown_steps(config)[-1].args[-1] == "--delete"
    assert cmd.teardown_steps(config, delete=False)[-1].args == (
        "unregistervm",
        "boinc_0123456789abcdef",
    )


def test_net_statistics_reads_both_nic_counters_in_one_call() -> None:
    step = cmd.net_statistics(every_option())
    # vboxwrapper's two patterns, joined with STAM's "|" so both counters come from one moment
    assert step.args == (
        "debugvm",
        "boinc_0123456789abcdef",
        "statistics",
        "--pattern",
        "/Devices/*/TransmitBytes|/Devices/*/ReceiveBytes",
    )
    # a VM that is not running makes VirtualBox refuse: that is an answer, not worth retrying
    # or logging as an error (the back end returns None)
    assert not step.retry and not step.log_error


@pytest.mark.parametrize(
    ("version", "usable"),
    [("7.0.14r161095", False), ("7.1.6r167084", False), ("7.2.0r168464", True), ("junk", True)],
)
def test_host_under_a_hypervisor_needs_virtualbox_7_2(version: str, usable: bool) -> None:
    """vboxwrapper runs VMs without VT-x on a host that itself runs under a hypervisor when
    VirtualBox is 7.1.x or older; an unknown version counts as newer."""
    config = replace(every_option(), hw_acceleration=True, under_hypervisor=True)
    capabilities = vbox_caps.capabilities(version, HELP_V6)
    assert creation.hw_acceleration_usable(config, capabilities) is usable
    assert creation.hw_acceleration_usable(replace(config, under_hypervisor=False), capabilities)
    if usable:
        assert creation.acceleration_steps(config, capabilities) == []
    else:  # a 32-bit guest runs without it; a 64-bit one cannot
        assert "--hwvirtex" in transcript(creation.acceleration_steps(config, capabilities))
        with pytest.raises(HostNotReady, match="ERR_CPU_VM_EXTENSIONS_DISABLED"):
            creation.acceleration_steps(replace(config, os_name="Linux26_64"), capabilities)


# ---- live snapshots (docs/compatibility.md#checkpoints) -------------------------------------

REAL_HELP = Path(__file__).resolve().parents[1] / "data" / "vbox" / "real" / "help"


@pytest.mark.parametrize(
    ("version", "help_file", "live"),
    [
        # the help text decides, whatever the version says
        ("7.0.14r161095", "snapshot_synopsis_6.0.txt", True),
        ("7.0.14r161095", "snapshot_usage_4.1.22.txt", False),
        ("4.1.22r80657", "snapshot_usage_4.1.22.txt", False),
        ("4.1.22r80657", "snapshot_synopsis_6.0.txt", True),
    ],
)
def test_live_snapshot_follows_the_snapshot_help(version: str, help_file: str, live: bool) -> None:
    help_text = (REAL_HELP / help_file).read_text()
    assert vbox_caps.capabilities(version, HELP_V7, help_snapshot=help_text).live_snapshot is live


@pytest.mark.parametrize(
    ("version", "live"),
    [("4.1.22r80657", False), ("4.2.0r80737", True), ("7.0.14r161095", True), ("garbage", True)],
)
def test_live_snapshot_falls_back_to_the_version(version: str, live: bool) -> None:
    """No usable help text (empty, or a failed command): 4.2 and later, or an unknown version,
    have --live."""
    for nothing in ("", "VBoxManage: error: Unknown command 'help'"):
        assert vbox_caps.capabilities(version, HELP_V7, help_snapshot=nothing).live_snapshot is live


def test_snapshot_take_adds_live_only_when_asked() -> None:
    config = every_option()
    assert cmd.snapshot_take(config, "boinc_10").args == (
        "snapshot",
        config.name,
        "take",
        "boinc_10",
    )
    live = cmd.snapshot_take(config, "boinc_10", live=True)
    assert live.args == ("snapshot", config.name, "take", "boinc_10", "--live")
    assert live.item == "create snapshot" and live.fatal and live.retry
