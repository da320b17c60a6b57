"""Parsers for VBoxManage output (formats from VirtualBox 6.1 / 7.0 sources)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmwrapper.hypervisor.base import VmState
from vmwrapper.hypervisor.virtualbox import output

SHOWVMINFO = r"""name="boinc_0123456789abcdef"
groups="/"
ostype="Linux 2.6 / 3.x / 4.x / 5.x (64-bit)"
UUID="6d1e1b1c-6f0b-4a52-8a8e-1c8e1a4f3b20"
CfgFile="/var/lib/boinc/slots/3/boinc_0123456789abcdef/boinc_0123456789abcdef.vbox"
memory=2048
vram=16
cpuexecutioncap=100
cpus=4
effparavirtprovider="kvm"
VMState="running"
VMStateChangeTime="2026-11-27T06:00:00.123000000"
"Hard Disk Controller-0-0"="/var/lib/boinc/slots/3/vm_image.vdi"
"Hard Disk Controller-ImageUUID-0-0"="0f8e4e9e-2f7b-4a51-9ab6-8a8e2d2c9d11"
nic1="nat"
nictype1="82540EM"
Forwarding(0)="tcp_31416_80,tcp,127.0.0.1,31416,,80"
BandwidthGroup0="boinc_0123456789abcdef_net",Network,1099511627776
description="a \"quoted\" and a back\\slash"
SnapshotName="boinc_600"
SnapshotUUID="aa"
SnapshotName-1="boinc_1200"
SnapshotUUID-1="bb"
CurrentSnapshotName="boinc_1200"
CurrentSnapshotUUID="bb"
CurrentSnapshotNode="SnapshotName-1"
"""


def test_machinereadable_names_values_and_escapes() -> None:
    values = output.parse_machinereadable(SHOWVMINFO)
    assert values["memory"] == "2048"
    assert values["Hard Disk Controller-0-0"] == "/var/lib/boinc/slots/3/vm_image.vdi"
    assert values["Forwarding(0)"] == "tcp_31416_80,tcp,127.0.0.1,31416,,80"
    assert values["BandwidthGroup0"] == "boinc_0123456789abcdef_net,Network,1099511627776"
    assert values["description"] == 'a "quoted" and a back\\slash'
    assert values["ostype"] == "Linux 2.6 / 3.x / 4.x / 5.x (64-bit)"


def test_vminfo_fields() -> None:
    info = output.parse_vminfo(SHOWVMINFO)
    assert info.name == "boinc_0123456789abcdef"
    assert info.state is VmState.RUNNING and info.state_name == "running"
    assert info.nic_type == "82540EM" and info.paravirt_provider == "kvm"
    assert info.current_snapshot == "boinc_1200"


def test_machinereadable_skips_warnings() -> None:
    text = 'WARNING: The vboxdrv kernel module is not loaded.\nVMState="poweroff"\n'
    assert output.parse_machinereadable(text) == {"VMState": "poweroff"}


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=40))
def test_machinereadable_round_trips_any_value(value: str) -> None:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    assert output.parse_machinereadable(f'description="{escaped}"\n') == {"description": value}


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("poweroff", VmState.POWERED_OFF),
        ("saved", VmState.SAVED),
        ("aborted", VmState.CRASHED),
        ("aborted-saved", VmState.CRASHED),
        ("gurumeditation", VmState.CRASHED),
        ("running", VmState.RUNNING),
        ("paused", VmState.PAUSED),
        ("starting", VmState.STARTING),
        ("stopping", VmState.RUNNING),
        ("saving", VmState.SAVING),
        ("livesnapshotting", VmState.SAVING),
        ("onlinesnapshotting", VmState.SAVING),
        ("restoring", VmState.RESTORING),
        ("deletingsnapshotlive", VmState.RUNNING),
        ("deletingsnapshotlivepaused", VmState.PAUSED),
        ("something-new", VmState.POWERED_OFF),
    ],
)
def test_vm_states(raw: str, state: VmState) -> None:
    assert output.vm_state(raw) is state


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("7.0.14r161095\n", (7, 0, 14)),
        ("6.1.50_Ubuntur161033\r\n", (6, 1, 50)),
        ("WARNING: The vboxdrv kernel module is not loaded.\n7.1.4r165100\n", (7, 1, 4)),
        ("garbage\n", None),
        ("", None),
    ],
)
def test_versions(text: str, version: tuple[int, int, int] | None) -> None:
    assert output.parse_version(text) == version


def test_is_newer_counts_unknown_as_newer() -> None:
    assert output.is_newer(None, (6, 9, 99))
    assert output.is_newer((7, 0, 0), (6, 9, 99))
    assert not output.is_newer((6, 9, 99), (6, 9, 99))


def test_error_code_and_name() -> None:
    text = (
        "VBoxManage: error: The machine 'x' is already locked for a session\n"
        "VBoxManage: error: Details: code VBOX_E_INVALID_OBJECT_STATE (0x80bb0007), component "
        "MachineWrap, interface IMachine, callee nsISupports\n"
    )
    assert output.error_code(text) == output.VBOX_E_INVALID_OBJECT_STATE
    assert output.error_name(text) == "VBOX_E_INVALID_OBJECT_STATE"
    assert output.error_code("error: RPC_S_SERVER_UNAVAILABLE") == output.RPC_S_SERVER_UNAVAILABLE
    assert output.error_code("VBoxManage: error: Machine 'x' is not currently running") is None


HDINFO = """UUID:           0f8e4e9e-2f7b-4a51-9ab6-8a8e2d2c9d11
State:          created
Type:           multiattach
Location:       /var/lib/boinc/projects/example.org/parent.vdi
Storage format: VDI
Format variant: dynamic default
Capacity:       2048 MBytes
Size on disk:   11 MBytes
Encryption:     disabled
In use by VMs:  boinc_aaaa (UUID: 11111111-1111-1111-1111-111111111111)
                boinc_bbbb (UUID: 22222222-2222-2222-2222-222222222222) [snap (UUID: 3)]
Child UUIDs:    c1c1c1c1-0000-0000-0000-000000000001
                c2c2c2c2-0000-0000-0000-000000000002
"""


def test_hdinfo() -> None:
    info = output.parse_hdinfo(HDINFO)
    assert info.multiattach
    assert info.location == "/var/lib/boinc/projects/example.org/parent.vdi"
    assert info.in_use_by == (
        ("boinc_aaaa", "11111111-1111-1111-1111-111111111111"),
        ("boinc_bbbb", "22222222-2222-2222-2222-222222222222"),
    )
    assert info.child_uuids == (
        "c1c1c1c1-0000-0000-0000-000000000001",
        "c2c2c2c2-0000-0000-0000-000000000002",
    )
    plain = output.parse_hdinfo("UUID: x\nParent UUID:    base\nType:           normal (base)\n")
    assert not plain.multiattach and plain.in_use_by == () and plain.child_uuids == ()


def test_snapshot_tree() -> None:
    text = (
        "   Name: boinc_600 (UUID: aaaaaaaa-0000-0000-0000-000000000001)\n"
        "      Name: boinc_1200 (UUID: aaaaaaaa-0000-0000-0000-000000000002)\n"
        "         Name: boinc (weird) name (UUID: aaaaaaaa-0000-0000-0000-000000000003) *\n"
        "         Description: text\n"
    )
    entries = output.parse_snapshot_list(text)
    assert [(e.name, e.depth, e.current) for e in entries] == [
        ("boinc_600", 0, False),
        ("boinc_1200", 1, False),
        ("boinc (weird) name", 2, True),
    ]
    assert output.parse_snapshot_list("This machine does not have any snapshots\n") == ()


def test_hostinfo() -> None:
    good = output.parse_hostinfo("Host Information:\n\nProcessor count: 8\n")
    assert good.ready and good.processor_count == 8
    bad = output.parse_hostinfo(
        "WARNING: The vboxdrv kernel module is not loaded. Either there is no module\n"
        "Host Information:\n\nProcessor count: 8\n"
    )
    assert not bad.ready
    assert not output.parse_hostinfo("").ready


def test_list_helpers() -> None:
    props = "API version: 7_0\nDefault Guest Additions ISO:     /usr/share/vb/Add.iso\n"
    assert output.guest_additions_iso(props) == "/usr/share/vb/Add.iso"
    assert output.guest_additions_iso("API version: 7_0\n") == ""
    bridged = "Name:            eth0\nGUID: 1\n\nName:            wlan0\n"
    assert output.first_bridged_interface(bridged) == "eth0"
    assert output.has_vrde_extpack(
        "Pack no. 0: Oracle VirtualBox Extension Pack\nVRDE Module: VBoxVRDP"
    )
    assert not output.has_vrde_extpack("Extension Packs: 0\n")
    assert output.help_mentions("[--nic-type<1-N>= virtio ]", "--nic-type")
    assert not output.help_mentions("[--nic-type<1-N>= virtio ]", "--nic")
