"""The VBoxManage simulator itself: VirtualBox's formats, codes and refusals.

These pin down the simulator's fidelity (what the back-end tests rely on); they call it directly.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers.vbox_fixtures import VBoxHost
from vmwrapper.hypervisor.base import NetUsage
from vmwrapper.hypervisor.virtualbox import output

pytestmark = pytest.mark.system


def ok(host: VBoxHost, *args: str) -> str:
    result = host.vboxmanage(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def refused(host: VBoxHost, *args: str) -> tuple[int, str]:
    result = host.vboxmanage(*args)
    assert result.returncode != 0, result.stdout
    return result.returncode, result.stderr + result.stdout


def disk(path: Path) -> str:
    subprocess.run(["qemu-img", "create", "-q", "-f", "vdi", str(path), "16M"], check=True)
    return str(path)


def test_formats_codes_and_refusals(vbox_sim: VBoxHost, tmp_path: Path) -> None:
    code, text = refused(vbox_sim, "showvminfo", "nosuch", "--machinereadable")
    assert code == 1 and text.startswith("VBoxManage: error: Could not find a registered machine")
    assert output.error_code(text) == output.VBOX_E_OBJECT_NOT_FOUND

    created = ok(
        vbox_sim,
        "createvm",
        "--name",
        "vm1",
        "--basefolder",
        str(tmp_path),
        "--ostype",
        "Linux26_64",
        "--register",
    )
    assert "Virtual machine 'vm1' is created and registered." in created
    code, text = refused(
        vbox_sim, "createvm", "--name", "vm1", "--basefolder", str(tmp_path), "--register"
    )
    assert output.error_code(text) == output.VBOX_E_FILE_ERROR and "already exists" in text

    code, text = refused(vbox_sim, "modifyvm", "vm1", "--bogus-option", "1")
    assert code == 2 and "Unknown option: --bogus-option" in text

    ok(
        vbox_sim,
        "storagectl",
        "vm1",
        "--name",
        "SATA",
        "--add",
        "sata",
        "--controller",
        "IntelAHCI",
        "--portcount",
        "2",
    )
    code, text = refused(
        vbox_sim,
        "storageattach",
        "vm1",
        "--storagectl",
        "SATA",
        "--port",
        "0",
        "--device",
        "0",
        "--type",
        "hdd",
        "--medium",
        str(tmp_path / "no.vdi"),
    )
    assert "VERR_FILE_NOT_FOUND" in text and output.error_code(text) == output.VBOX_E_FILE_ERROR

    # a normal disk in use by one VM cannot become multiattach, nor be attached to a second VM
    shared = disk(tmp_path / "shared.vdi")
    ok(
        vbox_sim,
        "storageattach",
        "vm1",
        "--storagectl",
        "SATA",
        "--port",
        "0",
        "--device",
        "0",
        "--type",
        "hdd",
        "--medium",
        shared,
    )
    ok(vbox_sim, "createvm", "--name", "vm2", "--basefolder", str(tmp_path), "--register")
    ok(vbox_sim, "storagectl", "vm2", "--name", "SATA", "--add", "sata", "--portcount", "2")
    code, text = refused(
        vbox_sim,
        "storageattach",
        "vm2",
        "--storagectl",
        "SATA",
        "--port",
        "0",
        "--device",
        "0",
        "--type",
        "hdd",
        "--mtype",
        "multiattach",
        "--medium",
        shared,
    )
    assert output.error_code(text) == output.VBOX_E_OBJECT_IN_USE
    code, text = refused(
        vbox_sim,
        "storageattach",
        "vm2",
        "--storagectl",
        "SATA",
        "--port",
        "0",
        "--device",
        "0",
        "--type",
        "hdd",
        "--medium",
        shared,
    )
    assert output.error_code(text) == output.VBOX_E_OBJECT_IN_USE
    info = output.parse_hdinfo(ok(vbox_sim, "showhdinfo", shared))
    assert [name for name, _ in info.in_use_by] == ["vm1"] and info.type == "normal (base)"

    # snapshots: tree output, current marker, a snapshot with two children cannot be deleted
    code, text = refused(vbox_sim, "snapshot", "vm1", "list")
    assert "This machine does not have any snapshots" in text
    ok(vbox_sim, "snapshot", "vm1", "take", "a")
    ok(vbox_sim, "snapshot", "vm1", "take", "b")
    ok(vbox_sim, "snapshot", "vm1", "restore", "a")
    ok(vbox_sim, "snapshot", "vm1", "take", "c")
    entries = output.parse_snapshot_list(ok(vbox_sim, "snapshot", "vm1", "list"))
    assert [(e.name, e.depth, e.current) for e in entries] == [
        ("a", 0, False),
        ("b", 1, False),
        ("c", 1, True),
    ]
    code, text = refused(vbox_sim, "snapshot", "vm1", "delete", "a")
    assert "more than one child snapshot" in text
    assert output.error_code(text) == output.VBOX_E_INVALID_OBJECT_STATE
    ok(vbox_sim, "snapshot", "vm1", "delete", "b")
    ok(vbox_sim, "snapshot", "vm1", "delete", "a")
    values = output.parse_machinereadable(ok(vbox_sim, "showvminfo", "vm1", "--machinereadable"))
    assert values["CurrentSnapshotName"] == "c" and values["VMState"] == "poweroff"

    # a running VM is locked: modifyvm refused; controlvm of a stopped VM refused
    code, text = refused(vbox_sim, "controlvm", "vm1", "pause")
    assert "is not currently running" in text and output.error_code(text) is None
    ok(vbox_sim, "startvm", "vm1", "--type", "headless")
    try:
        code, text = refused(vbox_sim, "modifyvm", "vm1", "--memory", "512")
        assert output.error_code(text) == output.VBOX_E_INVALID_OBJECT_STATE
        assert "already locked for a session" in text
        code, text = refused(vbox_sim, "snapshot", "vm1", "restore", "c")
        assert output.error_code(text) == output.VBOX_E_INVALID_VM_STATE
        ok(vbox_sim, "controlvm", "vm1", "pause")
        code, text = refused(vbox_sim, "controlvm", "vm1", "pause")
        assert output.error_code(text) == output.VBOX_E_INVALID_VM_STATE
        log = (tmp_path / "vm1" / "Logs" / "VBox.log").read_text()
        assert "Process ID: " in log
        assert "Console: Machine state changed to 'Paused'" in log
    finally:
        vbox_sim.vboxmanage("controlvm", "vm1", "poweroff")
    values = output.parse_machinereadable(ok(vbox_sim, "showvminfo", "vm1", "--machinereadable"))
    assert values["VMState"] == "poweroff"


def test_version_6_refuses_version_7_spellings(vbox_sim: VBoxHost, tmp_path: Path) -> None:
    vbox_sim.configure(version="6.1.50")
    assert ok(vbox_sim, "--version").startswith("6.1.50r")
    assert "--nictype<1-N>" in ok(vbox_sim, "help", "modifyvm")
    ok(vbox_sim, "createvm", "--name", "old", "--basefolder", str(tmp_path), "--register")
    ok(vbox_sim, "modifyvm", "old", "--nictype1", "virtio")
    code, text = refused(vbox_sim, "modifyvm", "old", "--nic-type1", "virtio")
    assert code == 2 and "Unknown option: --nic-type1" in text
    code, text = refused(vbox_sim, "modifyvm", "old", "--hwvirtex", "off")  # gone in 6.1
    assert code == 2


@pytest.mark.parametrize(("version", "live"), [("7.0.14", True), ("4.1.22", False)])
def test_snapshot_take_live_as_the_version_has_it(
    vbox_sim: VBoxHost, tmp_path: Path, version: str, live: bool
) -> None:
    """`snapshot take --live` (4.2+) keeps a running VM running (LiveSnapshotting); 4.1 lists and
    knows only --pause, refuses --live with its usage and exit 1, and takes nothing then."""
    vbox_sim.configure(version=version)
    usage = ok(vbox_sim, "help", "snapshot")
    assert ("[--live]" in usage) is live and ("[--pause]" in usage) is not live
    ok(vbox_sim, "createvm", "--name", "vm1", "--basefolder", str(tmp_path), "--register")
    ok(vbox_sim, "startvm", "vm1", "--type", "headless")
    try:
        if live:
            assert ok(vbox_sim, "snapshot", "vm1", "take", "s1", "--live").startswith(
                "Snapshot taken. UUID: "
            )
        else:
            code, text = refused(vbox_sim, "snapshot", "vm1", "take", "s1", "--live")
            assert code == 1 and "Unknown option: --live" in text and "[--pause]" in text
            assert (
                "This machine does not have any snapshots"
                in refused(vbox_sim, "snapshot", "vm1", "list")[1]
            )
        ok(vbox_sim, "snapshot", "vm1", "take", "s2")  # pauses the guest for the snapshot
        values = output.parse_machinereadable(
            ok(vbox_sim, "showvminfo", "vm1", "--machinereadable")
        )
        assert values["VMState"] == "running" and values["CurrentSnapshotName"] == "s2"
        log = (tmp_path / "vm1" / "Logs" / "VBox.log").read_text()
        assert ("Machine state changed to 'LiveSnapshotting'" in log) is live
        stopped = "'OnlineSnapshotting'" if live else "'Paused'"
        assert f"Machine state changed to {stopped}" in log
    finally:
        vbox_sim.vboxmanage("controlvm", "vm1", "poweroff")


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


XML_HEAD = '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n<Statistics>\n'


def test_debugvm_statistics_is_stams_snapshot_of_a_running_vm(
    vbox_sim: VBoxHost, tmp_path: Path
) -> None:
    vbox_sim.configure(
        nic_bytes_per_s={"sent": 0, "received": 0},
        guest=[{"at": 0, "net": {"sent": 300, "received": 7000}}],
    )
    ok(vbox_sim, "createvm", "--name", "vm1", "--basefolder", str(tmp_path), "--register")
    # VBoxManageDebugVM.cpp: the machine is found, but a stopped VM has no console/debugger
    code, text = refused(vbox_sim, "debugvm", "vm1", "statistics", "--pattern", "/Devices/*")
    assert (code, text) == (1, "VBoxManage: error: Machine 'vm1' is not currently running.\n")
    code, text = refused(vbox_sim, "debugvm", "nosuch", "statistics")
    assert output.error_code(text) == output.VBOX_E_OBJECT_NOT_FOUND

    both = "/Devices/*/TransmitBytes|/Devices/*/ReceiveBytes"
    ok(vbox_sim, "startvm", "vm1", "--type", "headless")
    try:
        wait_until(
            lambda: (
                output.parse_net_statistics(
                    ok(vbox_sim, "debugvm", "vm1", "statistics", "--pattern", both)
                )
                == NetUsage(sent=300, received=7000)
            )
        )
        # exactly STAM's lines, one pattern as vboxwrapper asks, a blank line at the end
        sent = ok(vbox_sim, "debugvm", "vm1", "statistics", "--pattern", "/Devices/*/TransmitBytes")
        assert sent == (
            XML_HEAD + '<Counter c="300" unit="bytes" name="/Devices/e1000#0/TransmitBytes"/>\n'
            "</Statistics>\n\n"
        )
        everything = ok(vbox_sim, "debugvm", "vm1", "statistics", "--descriptions")
        assert (
            '<Counter c="7000" unit="bytes" name="/Public/NetAdapter/0/BytesReceived" '
            'desc="Amount of data received"/>\n' in everything
        )
        assert output.parse_net_statistics(everything) == NetUsage(sent=300, received=7000)
        code, text = refused(
            vbox_sim, "debugvm", "vm1", "statistics", "--pattern", "a", "--pattern", "b"
        )
        assert code == 2 and "Multiple --pattern options are not permitted" in text
        code, _ = refused(vbox_sim, "debugvm", "vm1", "statistics", "--reset", "--descriptions")
        assert code == 2
        # --reset zeroes only what the pattern selects; a paused VM still has its debugger
        ok(vbox_sim, "controlvm", "vm1", "pause")
        assert ok(vbox_sim, "debugvm", "vm1", "statistics", "--reset", "-p", "*Transmit*") == ""
        after = ok(vbox_sim, "debugvm", "vm1", "statistics", "--pattern=" + both)
        assert output.parse_net_statistics(after) == NetUsage(sent=0, received=7000)
    finally:
        vbox_sim.vboxmanage("controlvm", "vm1", "poweroff")
    code, text = refused(vbox_sim, "debugvm", "vm1", "statistics")
    assert code == 1 and "is not currently running." in text


def test_nic_statistics_names_follow_the_version_and_nic_model(
    vbox_sim: VBoxHost, tmp_path: Path
) -> None:
    vbox_sim.configure(version="6.0.24", nic_bytes_per_s={"sent": 0, "received": 0})
    ok(vbox_sim, "createvm", "--name", "old", "--basefolder", str(tmp_path), "--register")
    ok(vbox_sim, "modifyvm", "old", "--nictype1", "Am79C973")
    ok(vbox_sim, "startvm", "old", "--type", "headless")
    try:
        text = ok(vbox_sim, "debugvm", "old", "statistics")
        # before 6.1 devices registered their own absolute names, and no /Public/NetAdapter
        assert text == (
            XML_HEAD + '<Counter c="0" unit="bytes" name="/Devices/PCNet0/ReceiveBytes"/>\n'
            '<Counter c="0" unit="bytes" name="/Devices/PCNet0/TransmitBytes"/>\n'
            "</Statistics>\n\n"
        )
    finally:
        vbox_sim.vboxmanage("controlvm", "old", "poweroff")
