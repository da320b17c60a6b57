"""Parsers for VBoxManage output (formats from VirtualBox 6.1 / 7.0 sources)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmwrapper.hypervisor.base import NetUsage, VmState
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


#: `VBoxManage debugvm <vm> statistics --descriptions` of VirtualBox 7 (STAM.cpp's snapshot, as
#: VBoxManageDebugVM.cpp prints it: a blank line after the document), three NICs.
STATISTICS_V7 = """<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<Statistics>
<Counter c="9423150" unit="bytes" name="/Devices/e1000#0/ReceiveBytes"/>
<Counter c="397229" unit="bytes" name="/Devices/e1000#0/TransmitBytes"/>
<Counter c="64" unit="bytes" name="/Devices/pcnet#0/TransmitBytes" desc="Amount of data sent"/>
<Counter c="256" unit="bytes" vis="used" name="/Devices/virtio-net#0/ReceiveBytes"/>
<Counter c="128" unit="bytes" name="/Devices/virtio-net#0/TransmitBytes"/>
<Counter c="9423150" unit="bytes" name="/Public/NetAdapter/0/BytesReceived"/>
<Counter c="397229" unit="bytes" name="/Public/NetAdapter/0/BytesTransmitted"/>
<U32 val="0" unit="" name="/Public/NetAdapter/0/e1000"/>
</Statistics>

"""


def test_net_statistics_sums_every_nic_by_direction() -> None:
    usage = output.parse_net_statistics(STATISTICS_V7)
    # /Public/ repeats the same counters for the GUI: counted once, under /Devices/ only
    assert usage == NetUsage(sent=397229 + 64 + 128, received=9423150 + 256)


def test_net_statistics_of_older_virtualbox_and_after_warnings() -> None:
    # the device names before 6.1 (vboxwrapper's comment shows this shape); a warning first
    text = (
        "WARNING: The vboxdrv kernel module is not loaded.\n"
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n<Statistics>\n'
        '<Counter c="397229" unit="bytes" name="/Devices/PCNet0/TransmitBytes"/>\n'
        '<Counter c="256" unit="bytes" name="/Devices/PCNet1/TransmitBytes"/>\n'
        "</Statistics>\n\n"
    )
    assert output.parse_net_statistics(text) == NetUsage(sent=397485, received=0)


def test_net_statistics_without_a_nic_or_without_statistics() -> None:
    empty = '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n<Statistics>\n</Statistics>\n'
    assert output.parse_net_statistics(empty) == NetUsage(0, 0)
    assert output.parse_net_statistics("") is None
    refused = "VBoxManage: error: Machine 'boinc_0123456789abcdef' is not currently running.\n"
    assert output.parse_net_statistics(refused) is None


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["e1000", "pcnet", "virtio-net"]),
            st.integers(0, 7),
            st.sampled_from(["TransmitBytes", "ReceiveBytes", "Packets/Transmit"]),
            st.integers(0, 2**63 - 1),
        ),
        max_size=12,
    )
)
def test_net_statistics_adds_exactly_the_byte_counters(
    counters: list[tuple[str, int, str, int]],
) -> None:
    body = "".join(
        f'<Counter c="{value}" unit="bytes" name="/Devices/{dev}#{inst}/{leaf}"/>\n'
        for dev, inst, leaf, value in counters
    )
    text = f'<?xml version="1.0"?>\n<Statistics>\n{body}</Statistics>\n\n'
    expected = NetUsage(
        sent=sum(v for _, _, leaf, v in counters if leaf == "TransmitBytes"),
        received=sum(v for _, _, leaf, v in counters if leaf == "ReceiveBytes"),
    )
    assert output.parse_net_statistics(text) == expected


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("4.2.6r82870", True),
        ("4.2.18r88780", True),
        ("4.3.0r89960", True),
        ("4.2.60r1", False),  # vboxwrapper's substring test would refuse it
        ("4.3.40r117224", False),
        ("7.0.14r161095", False),
        ("garbage", False),
    ],
)
def test_known_bad_virtualbox_versions(text: str, bad: bool) -> None:
    assert output.is_known_bad(output.parse_version(text)) is bad


def test_startvm_success_line_is_recognised() -> None:
    text = 'Waiting for VM "boinc_x" to power on...\nVM "boinc_x" has been successfully started.\n'
    assert output.reports_started(text)
    assert not output.reports_started("VBoxManage: error: VT-x is not available (VERR_VMX_NO_VMX)")
