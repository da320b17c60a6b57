"""VirtualBoxBackend against the VBoxManage simulator, and against real VirtualBox.

Tests taking ``vbox_host`` run twice: with the simulator (tests/vboxsim) first on PATH, and with
real VirtualBox when ``VMWRAPPER_REAL_VBOX=1`` and a real ``VBoxManage`` is on PATH (skipped
otherwise, the reason printed). Tests taking ``vbox_sim`` use simulator-only fault injection and
guest scripts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from helpers.common import wait_for
from helpers.vbox_fixtures import VBoxHost
from vmwrapper.errors import CheckpointError, HostNotReady
from vmwrapper.hypervisor.base import (
    Backend,
    Diagnosis,
    NetUsage,
    NetworkConfig,
    PortRule,
    RemoteDesktop,
    Share,
    VmConfig,
    VmState,
)
from vmwrapper.hypervisor.process import thread_nices
from vmwrapper.hypervisor.virtualbox import output
from vmwrapper.hypervisor.virtualbox.backend import VirtualBoxBackend
from vmwrapper.hypervisor.virtualbox.runner import VBoxManage, VBoxManageError
from vmwrapper.supervisor import backoff

pytestmark = pytest.mark.system


def make_disk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if shutil.which("qemu-img"):
        subprocess.run(["qemu-img", "create", "-q", "-f", "vdi", str(path), "64M"], check=True)
    else:
        path.write_bytes(b"<<< Oracle VM VirtualBox Disk Image >>>\n")
    return path


def make_config(root: Path, name: str = "boinc_0123456789abcdef", **changes: object) -> VmConfig:
    slot = root / "slots" / "0"
    project = root / "projects" / "example.org_app"
    (slot / "shared").mkdir(parents=True, exist_ok=True)
    (project / "scratch").mkdir(parents=True, exist_ok=True)
    config = VmConfig(
        name=name,
        description="wu_123_0",
        slot_dir=slot,
        project_dir=project,
        os_name="Linux26_64",
        memory_mb=256,
        cpus=1,
        disk_image=make_disk(slot / "vm_image.vdi"),
        shares=(Share("shared", slot / "shared"), Share("scratch", project / "scratch")),
        network=NetworkConfig(
            enabled=True,
            port_rules=(PortRule(48080, 80), PortRule(48022, 22, bind="")),
        ),
        remote_desktop=RemoteDesktop(port=45900, password="s3cret-task-pw"),
    )
    return replace(config, **changes)  # type: ignore[arg-type]


def fast_backend(config: VmConfig, **kwargs: object) -> VirtualBoxBackend:
    """A back end whose retry back-off does not really sleep (polls still wait a little)."""
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(min(seconds, 0.05))

    backend = VirtualBoxBackend(config, sleep=sleep, poll_interval=0.05, **kwargs)  # type: ignore[arg-type]
    backend.sleeps = sleeps  # type: ignore[attr-defined]
    return backend


def vminfo(host: VBoxHost, name: str) -> dict[str, str]:
    result = host.vboxmanage("showvminfo", name, "--machinereadable")
    assert result.returncode == 0, result.stderr
    return output.parse_machinereadable(result.stdout)


def usage_of(backend: VirtualBoxBackend) -> tuple[int, int] | None:
    usage = backend.net_usage()
    return None if usage is None else (usage.sent, usage.received)


def grew(now: NetUsage | None, then: NetUsage) -> bool:
    return now is not None and now.sent > then.sent and now.received > then.received


# ---- against the simulator and real VirtualBox ---------------------------------------------


def test_create_defines_the_vm_as_the_job_says(vbox_host: VBoxHost, tmp_path: Path) -> None:
    config = make_config(tmp_path)
    backend = fast_backend(config)
    assert isinstance(backend, Backend)
    assert not backend.exists()
    try:
        backend.create()
        assert backend.exists()
        info = vminfo(vbox_host, config.name)
        assert info["memory"] == "256"
        assert info["cpus"] == "1"
        assert info["acpi"] == "on" and info["ioapic"] == "on" and info["rtcuseutc"] == "on"
        assert info["graphicscontroller"] == "vboxvga"
        assert info["nic1"] == "nat"
        assert info["cableconnected1"] == "on"
        # docs/compatibility.md#network: the group is really attached (only the human-readable form
        # shows it)
        human = vbox_host.vboxmanage("showvminfo", config.name).stdout
        nic1 = next(line for line in human.splitlines() if line.startswith("NIC 1:"))
        assert f"Bandwidth group: {config.name}_net" in nic1
        rules = sorted(v for k, v in info.items() if k.startswith("Forwarding("))
        assert any(",tcp,127.0.0.1,48080,,80" in r for r in rules)
        assert any(",tcp,,48022,,22" in r for r in rules)
        assert info["Hard Disk Controller-0-0"] == str(config.disk_image)
        shares = {
            info[k]: info[k.replace("Name", "Path")]
            for k in info
            if k.startswith("SharedFolderNameMachineMapping")
        }
        assert shares == {
            "shared": str(config.slot_dir / "shared"),
            "scratch": str(config.project_dir / "scratch"),
        }
        assert info["usb"] == "off" and info["uart1"] == "off" and info["audio"] == "none"
        if info.get("vrde") == "on":  # only with the Extension Pack
            assert info["vrdeaddress"] == "127.0.0.1"
            assert info["vrdeauthtype"] == "external"
            extra = vbox_host.vboxmanage("getextradata", config.name, "VBoxAuthSimple/users/boinc")
            digest = hashlib.sha256(b"s3cret-task-pw").hexdigest()
            assert extra.stdout.strip() == f"Value: {digest}"
        assert backend.status().state is VmState.POWERED_OFF
        # every command went to the trace and replay files
        replay = (config.slot_dir / "vbox_replay.txt").read_text().splitlines()
        assert "VBoxManage -q --version" in replay
        assert any(
            line.startswith("VBoxManage -q createvm --name boinc_0123456789abcdef")
            for line in replay
        )
        trace = (config.slot_dir / "vbox_trace.txt").read_text()
        assert "\nCommand: VBoxManage -q createvm" in trace and "\nExit Code: 0\n" in trace
        # a second create reuses the registered VM
        backend.create()
        names = vbox_host.vboxmanage("list", "vms").stdout
        assert names.count(f'"{config.name}"') == 1
    finally:
        backend.cleanup()
    assert not backend.exists()
    assert backend.status().state is VmState.ABSENT
    assert not (config.slot_dir / config.name).exists()


def test_lifecycle_start_pause_snapshot_restore_save(vbox_host: VBoxHost, tmp_path: Path) -> None:
    config = make_config(tmp_path, remote_desktop=None)
    backend = fast_backend(config)
    backend.create()
    try:
        pid = backend.start()
        assert psutil.pid_exists(pid) and backend.pid() == pid
        assert backend.status().state is VmState.RUNNING
        assert backend.status().detail == "running"  # VirtualBox's own state name
        assert backend.cpu_time() > 0

        backend.pause()
        assert backend.status().state is VmState.PAUSED
        backend.resume()
        assert backend.status().state is VmState.RUNNING

        backend.checkpoint("boinc_10")
        backend.checkpoint("boinc_20")
        assert backend.status().state is VmState.RUNNING  # resumed after the snapshot
        assert backend.checkpoints() == ("boinc_10", "boinc_20")
        backend.delete_checkpoint("boinc_10")
        assert backend.checkpoints() == ("boinc_20",)

        backend.set_cpu_cap(40)
        assert vminfo(vbox_host, config.name)["cpuexecutioncap"] == "40"
        backend.set_network(False)
        assert vminfo(vbox_host, config.name)["cableconnected1"] == "off"
        backend.set_network(True)
        assert vminfo(vbox_host, config.name)["cableconnected1"] == "on"

        backend.poweroff(timeout=0)
        assert backend.status().state is VmState.POWERED_OFF
        assert backend.pid() is None
        cpu_after_first_run = backend.cpu_time()
        assert cpu_after_first_run > 0

        pid2 = backend.start(restore="boinc_20")
        assert pid2 != pid
        assert backend.status().state is VmState.RUNNING
        assert backend.cpu_time() >= cpu_after_first_run
        backend.save_state()
        assert backend.status().state is VmState.SAVED
        assert not psutil.pid_exists(pid2) or psutil.Process(pid2).status() == "zombie"
        backend.start()
        assert backend.status().state is VmState.RUNNING
        backend.poweroff(timeout=0)
        backend.poweroff(timeout=0)  # idempotent
    finally:
        backend.cleanup()
    assert backend.status().state is VmState.ABSENT


def test_bandwidth_limit_applies_and_is_lifted(vbox_host: VBoxHost, tmp_path: Path) -> None:
    config = make_config(tmp_path, remote_desktop=None)
    backend = fast_backend(config)
    backend.create()
    try:
        backend.set_bandwidth(0)  # no limit yet: nothing to do
        backend.set_bandwidth(100_000)
        group = vminfo(vbox_host, config.name)["BandwidthGroup0"]
        assert group == f"{config.name}_net,Network,{98 * 1024}"
        backend.set_bandwidth(0)
        group = vminfo(vbox_host, config.name)["BandwidthGroup0"]
        assert group == f"{config.name}_net,Network,{1024 << 30}"
    finally:
        backend.cleanup()


def test_net_usage_counts_while_the_vm_runs(vbox_host: VBoxHost, tmp_path: Path) -> None:
    config = make_config(tmp_path, remote_desktop=None)
    backend = fast_backend(config)
    assert backend.net_usage() is None  # no VM at all
    backend.create()
    try:
        assert backend.net_usage() is None  # defined, not running
        backend.start()
        first = backend.net_usage()
        assert first is not None
        assert isinstance(first.sent, int) and isinstance(first.received, int)
        assert first.sent >= 0 and first.received >= 0
        if vbox_host.simulated:  # a real guest without an OS may send nothing at all
            assert wait_for(lambda: grew(backend.net_usage(), first), 20)
        later = backend.net_usage()
        assert later is not None
        assert later.sent >= first.sent and later.received >= first.received  # never go back
        backend.poweroff(timeout=0)
        assert backend.net_usage() is None
    finally:
        backend.cleanup()


def test_net_usage_is_none_without_network(vbox_host: VBoxHost, tmp_path: Path) -> None:
    config = make_config(tmp_path, remote_desktop=None, network=NetworkConfig(enabled=False))
    backend = fast_backend(config)
    backend.create()
    try:
        backend.start()
        assert backend.status().state is VmState.RUNNING
        assert backend.net_usage() is None
    finally:
        backend.cleanup()


def test_set_priority_renices_every_thread_of_the_vm_process(
    vbox_host: VBoxHost, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path, remote_desktop=None)
    backend = fast_backend(config)
    backend.create()
    caplog.set_level(logging.INFO, logger="vmwrapper.hypervisor.process")
    try:
        backend.set_priority(10)  # not started: nothing to renice, no error
        pid = backend.start()
        assert wait_for(lambda: backend.status().state is VmState.RUNNING, 20)  # the EMTs are up
        before = thread_nices(pid)
        assert len(before) > 1  # VBoxHeadless (and the simulator) run EMT threads
        assert set(before.values()) != {10}
        backend.set_priority(10)
        backend.set_priority(10)  # every loop may call it: quiet on repeats
        assert set(thread_nices(pid).values()) == {10}
        assert set(thread_nices(pid)) >= set(before)  # the same threads, all reniced
        assert caplog.messages.count("VM process priority set to nice 10") == 1
        if os.geteuid() == 0:  # raising a priority again needs privilege
            normal = before[pid]
            backend.set_priority(normal)
            assert set(thread_nices(pid).values()) == {normal}
        backend.poweroff(timeout=0)
        assert backend.pid() is None
        caplog.clear()
        backend.set_priority(5)  # stopped: does nothing, does not raise
        assert not any("nice 5" in message for message in caplog.messages)
    finally:
        backend.cleanup()


# ---- simulator only: guest, faults, versions ------------------------------------------------


def test_nic_counters_are_exact_per_vm_process(vbox_sim: VBoxHost, tmp_path: Path) -> None:
    # no background traffic; two bursts from the guest at known guest times
    vbox_sim.configure(
        nic_bytes_per_s={"sent": 0, "received": 0},
        guest=[
            {"at": 0.2, "net": {"sent": 1000, "received": 5000}},
            {"at": 0.8, "net": {"sent": 2000, "received": 10000}},
        ],
    )
    config = make_config(tmp_path, remote_desktop=None)
    backend = fast_backend(config)
    backend.create()
    try:
        backend.start()
        assert wait_for(
            lambda: usage_of(backend) == (1000, 5000) or usage_of(backend) == (3000, 15000), 20
        )
        # sent = what left the guest
        assert wait_for(lambda: usage_of(backend) == (3000, 15000), 20)
        backend.poweroff(timeout=0)
        assert backend.net_usage() is None
        backend.start()  # a new VM process: its counters begin at 0 (the bursts are past)
        assert usage_of(backend) == (0, 0)
    finally:
        backend.cleanup()


def test_nic_counters_stop_while_paused_or_unplugged(vbox_sim: VBoxHost, tmp_path: Path) -> None:
    vbox_sim.configure(nic_bytes_per_s={"sent": 4000, "received": 40000})
    config = make_config(tmp_path, remote_desktop=None)
    backend = fast_backend(config)
    backend.create()
    try:
        backend.start()
        start = backend.net_usage()
        assert start is not None
        assert wait_for(lambda: grew(backend.net_usage(), start), 20)
        backend.pause()  # guest time stands still, so does the traffic
        paused = usage_of(backend)
        time.sleep(0.5)
        assert usage_of(backend) == paused
        backend.resume()
        backend.set_network(False)  # cable unplugged: nothing moves
        unplugged = usage_of(backend)
        time.sleep(0.5)
        assert usage_of(backend) == unplugged
        backend.set_network(True)
        plugged = backend.net_usage()
        assert plugged is not None
        assert wait_for(lambda: grew(backend.net_usage(), plugged), 20)
    finally:
        backend.cleanup()


def test_net_usage_is_none_when_virtualbox_cannot_count(
    vbox_sim: VBoxHost, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path, remote_desktop=None)
    backend = fast_backend(config)
    backend.create()
    try:
        backend.start()
        assert backend.net_usage() is not None
        vbox_sim.inject(lock_contention={"commands": ["debugvm"], "times": 100})
        caplog.set_level(logging.DEBUG, logger="vmwrapper.hypervisor.virtualbox.backend")
        assert backend.net_usage() is None  # never raises
        assert any("cannot read the VM's network counters" in m for m in caplog.messages)
        assert backend.status().state is VmState.RUNNING
    finally:
        vbox_sim.inject(lock_contention={"times": 0})
        backend.cleanup()


def test_guest_log_lines_and_guest_poweroff(vbox_sim: VBoxHost, tmp_path: Path) -> None:
    vbox_sim.configure(
        guest=[
            {"at": 0, "log": "hello from the guest"},
            {"at": 0.3, "log": "50% done"},
            {"at": 0.6, "poweroff": True},
        ]
    )
    config = make_config(tmp_path, remote_desktop=None)
    backend = fast_backend(config)
    backend.create()
    backend.start()
    assert wait_for(lambda: backend.status().state is VmState.POWERED_OFF, 20)
    assert backend.guest_log() == ["hello from the guest", "50% done"]
    assert backend.guest_log() == []
    assert backend.diagnose() == ()
    backend.cleanup()


def test_guru_meditation_is_a_crash_with_a_diagnosis(vbox_sim: VBoxHost, tmp_path: Path) -> None:
    vbox_sim.configure(guest=[{"at": 0.2, "guru": True}])
    config = make_config(tmp_path, remote_desktop=None)
    backend = fast_backend(config)
    backend.create()
    backend.start()
    assert wait_for(lambda: backend.status().state is VmState.CRASHED, 20)
    assert backend.status().detail == "gurumeditation"
    assert Diagnosis.GURU_MEDITATION in backend.diagnose()
    dump = backend.hypervisor_logs()
    assert "Guru Meditation" in dump["VM Execution Log"]
    assert "Command: VBoxManage -q startvm" in dump["VM Trace Log"]
    shot = backend.screenshot()
    assert shot is not None and shot.read_bytes().startswith(b"\x89PNG")
    backend.cleanup()
    assert not backend.exists()


def test_killed_vm_process_is_aborted(vbox_sim: VBoxHost, tmp_path: Path) -> None:
    config = make_config(tmp_path, remote_desktop=None)
    backend = fast_backend(config)
    backend.create()
    pid = backend.start()
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: backend.status().state is VmState.CRASHED, 20)
    assert backend.status().detail == "aborted"
    pid2 = backend.start()  # VirtualBox starts an aborted VM again
    assert pid2 != pid
    backend.cleanup()


@pytest.mark.parametrize(
    ("error", "diagnosis"),
    [
        ("VERR_VMX_MSR_ALL_VMX_DISABLED", Diagnosis.VM_EXTENSIONS_DISABLED),
        # Windows prints two lines, the NEM (Hyper-V API) fall-back first
        (
            ["VERR_NEM_NOT_AVAILABLE", "VERR_VMX_MSR_ALL_VMX_DISABLED"],
            Diagnosis.VM_EXTENSIONS_DISABLED,
        ),
        ("VERR_VMX_NO_VMX", Diagnosis.NO_VM_EXTENSIONS),
        ("VERR_SVM_IN_USE", Diagnosis.FOREIGN_HYPERVISOR),
        ("VERR_NEM_VM_CREATE_FAILED", Diagnosis.FOREIGN_HYPERVISOR),
        ("VERR_NO_MEMORY", Diagnosis.HOST_OUT_OF_MEMORY),
    ],
)
def test_start_failure_is_diagnosed_from_the_fresh_log(
    vbox_sim: VBoxHost, tmp_path: Path, error: str | list[str], diagnosis: Diagnosis
) -> None:
    config = make_config(tmp_path, remote_desktop=None)
    backend = fast_backend(config)
    backend.create()
    vbox_sim.inject(start_error=error)
    # a host problem (docs/compatibility.md#virtualbox-failures), not a start to retry
    with pytest.raises(HostNotReady) as info:
        backend.start()
    assert backoff.classify(info.value).error_class is backoff.ErrorClass.HOST_PROBLEM
    last = error[-1] if isinstance(error, list) else error
    assert last in str(info.value)
    assert backend.diagnose() == (diagnosis,)
    vbox_sim.inject(start_error="")
    backend.cleanup()


def test_lock_contention_is_retried_with_back_off(vbox_sim: VBoxHost, tmp_path: Path) -> None:
    config = make_config(tmp_path, remote_desktop=None)
    backend = fast_backend(config)
    vbox_sim.inject(lock_contention={"commands": ["modifyvm"], "times": 3})
    backend.create()
    assert vbox_sim.faults()["lock_contention"]["times"] == 0
    assert backend.sleeps[:3] == [1.0, 2.0, 4.0]  # type: ignore[attr-defined]
    trace = (config.slot_dir / "vbox_trace.txt").read_text()
    assert trace.count("VBOX_E_INVALID_OBJECT_STATE (0x80bb0007)") == 3
    assert "Exit Code: -2135228409" in trace
    backend.cleanup()


def test_persistent_lock_error_keeps_its_code(vbox_sim: VBoxHost, tmp_path: Path) -> None:
    config = make_config(tmp_path, remote_desktop=None)
    backend = fast_backend(config)
    backend.create()
    backend.start()
    vbox_sim.inject(lock_contention={"commands": ["controlvm"], "times": 50})
    with pytest.raises(VBoxManageError) as info:
        backend.pause()
    assert (
        info.value.hresult == output.VBOX_E_INVALID_OBJECT_STATE
    )  # not ERR_TIMEOUT (docs/compatibility.md#vboxmanage-runner)
    assert info.value.temporary  # vboxwrapper: "VM suspend failed", a temporary exit
    assert info.value.code == -2135228409
    assert info.value.result.attempts == 6
    assert "Another VirtualBox management application" in info.value.output
    vbox_sim.inject(lock_contention={"times": 0})
    backend.cleanup()


def test_hung_command_times_out_and_is_retried(vbox_sim: VBoxHost, tmp_path: Path) -> None:
    config = make_config(tmp_path, remote_desktop=None)
    backend = fast_backend(config)
    backend.create()
    backend.start()
    # a short timeout only for the hung command (a busy host may need seconds for the others)
    backend.runner = VBoxManage(config.slot_dir, timeout=5.0, sleep=lambda s: None)
    vbox_sim.inject(hang={"commands": ["controlvm"], "times": 1})
    started = time.monotonic()
    backend.set_cpu_cap(50)
    assert time.monotonic() - started < 60
    assert vminfo(vbox_sim, config.name)["cpuexecutioncap"] == "50"
    trace = (config.slot_dir / "vbox_trace.txt").read_text()
    assert "(timed out after 5 s)" in trace
    assert "Exit Code: -182" in trace
    backend.cleanup()


def test_service_down_is_retried(vbox_sim: VBoxHost, tmp_path: Path) -> None:
    config = make_config(tmp_path, remote_desktop=None)
    backend = fast_backend(config)
    backend.create()
    backend.sleeps.clear()  # type: ignore[attr-defined]
    vbox_sim.inject(service_down={"times": 2})
    # VBoxSVC unreachable: retried with back-off, even for a query that is otherwise not retried
    assert backend.checkpoints() == ()
    assert vbox_sim.faults()["service_down"]["times"] == 0
    assert backend.sleeps == [1.0, 2.0]  # type: ignore[attr-defined]
    trace = (config.slot_dir / "vbox_trace.txt").read_text()
    assert trace.count("CO_E_SERVER_EXEC_FAILURE (0x80080005)") == 2
    backend.cleanup()


@pytest.mark.parametrize(
    ("version", "marker"),
    [("6.1.50", "--nictype1"), ("7.0.14", "--nic-type1"), ("garbage", "--nic-type1")],
)
def test_syntax_follows_the_probed_virtualbox(
    vbox_sim: VBoxHost, tmp_path: Path, version: str, marker: str
) -> None:
    vbox_sim.configure(version=version)
    config = make_config(
        tmp_path, remote_desktop=None, network=NetworkConfig(enabled=True, driver="virtio")
    )
    backend = fast_backend(config)
    backend.create()  # the simulated 6.1 refuses 7-only spellings, like VirtualBox 6.1
    replay = (config.slot_dir / "vbox_replay.txt").read_text()
    assert f"{marker} virtio" in replay
    assert vminfo(vbox_sim, config.name)["nictype1"] == "virtio"
    backend.cleanup()


@pytest.mark.parametrize(
    ("version", "live"), [("7.0.14", True), ("6.1.50", True), ("4.1.22", False)]
)
def test_checkpoint_is_live_where_virtualbox_has_it(
    vbox_sim: VBoxHost, tmp_path: Path, version: str, live: bool
) -> None:
    """docs/compatibility.md#checkpoints: `snapshot take --live` keeps the guest running where
    `help snapshot` lists it; the simulated 4.1 lists only --pause (and refuses --live, see
    test_vbox_backend_simulator.py), so the VM is paused, snapshotted and resumed there."""
    vbox_sim.configure(version=version)
    config = make_config(tmp_path, remote_desktop=None)
    backend = fast_backend(config)
    backend.create()
    try:
        backend.start()
        assert backend.capabilities.live_snapshot is live
        backend.checkpoint("boinc_10")
        assert backend.status().state is VmState.RUNNING
        assert backend.checkpoints() == ("boinc_10",)
        replay = (config.slot_dir / "vbox_replay.txt").read_text().splitlines()
        take = [line for line in replay if " snapshot " in line and " take " in line]
        pauses = [line for line in replay if line.endswith(" pause")]
        log = (config.slot_dir / config.name / "Logs" / "VBox.log").read_text()
        if live:
            assert take == [f"VBoxManage -q snapshot {config.name} take boinc_10 --live"]
            assert pauses == []
            assert "Machine state changed to 'LiveSnapshotting'" in log
            assert "Machine state changed to 'Paused'" not in log  # the guest never stopped
        else:
            assert take == [f"VBoxManage -q snapshot {config.name} take boinc_10"]
            assert pauses == [f"VBoxManage -q controlvm {config.name} pause"]
            assert "Machine state changed to 'Paused'" in log
            assert "LiveSnapshotting" not in log
        # a paused VM is snapshotted as it is, and stays paused
        backend.pause()
        backend.checkpoint("boinc_20")
        assert backend.status().state is VmState.PAUSED
        assert backend.checkpoints() == ("boinc_10", "boinc_20")
        last_take = [
            line
            for line in (config.slot_dir / "vbox_replay.txt").read_text().splitlines()
            if " take boinc_20" in line
        ]
        assert last_take == [f"VBoxManage -q snapshot {config.name} take boinc_20"]
    finally:
        backend.cleanup()


def test_failed_live_snapshot_is_a_checkpoint_error_and_the_vm_runs_on(
    vbox_sim: VBoxHost, tmp_path: Path
) -> None:
    """A live snapshot that VirtualBox refuses raises CheckpointError (the supervisor's
    checkpoint-failure path) and leaves the VM running: it was never paused."""
    real_error = Path(__file__).resolve().parents[1] / "data" / "vbox" / "real" / "errors"
    text = (real_error / "hostonly_ns_error_failure.txt").read_text()
    config = make_config(tmp_path, remote_desktop=None)
    backend = fast_backend(config)
    backend.create()
    try:
        backend.start()
        assert backend.capabilities.live_snapshot
        vbox_sim.inject(output={"commands": ["snapshot"], "text": text, "exit": 1, "times": 100})
        with pytest.raises(CheckpointError) as info:
            backend.checkpoint("boinc_10")
        assert "--live" in info.value.argv
        vbox_sim.inject(output={"times": 0})
        assert backend.status().state is VmState.RUNNING
        replay = (config.slot_dir / "vbox_replay.txt").read_text().splitlines()
        assert not any(line.endswith((" pause", " resume")) for line in replay)
        assert backend.checkpoints() == ()
    finally:
        backend.cleanup()


def test_stale_vm_holding_the_slot_disk_is_removed(vbox_sim: VBoxHost, tmp_path: Path) -> None:
    old = make_config(tmp_path, name="boinc_old000000000000", remote_desktop=None)
    fast_backend(old).create()
    # the client cleaned the slot but VirtualBox still has the old VM on this slot's disk
    shutil.rmtree(old.slot_dir / old.name)
    new = make_config(tmp_path, name="boinc_new000000000000", remote_desktop=None)
    backend = fast_backend(new)
    backend.create()
    names = {vm["name"] for vm in vbox_sim.registry()["vms"].values()}
    assert names == {"boinc_new000000000000"}
    assert new.disk_image is not None and new.disk_image.exists()  # the disk was kept
    backend.cleanup()


def test_settings_left_in_the_slot_are_registered_again(vbox_sim: VBoxHost, tmp_path: Path) -> None:
    config = make_config(tmp_path, remote_desktop=None)
    fast_backend(config).create()
    vbox_sim.vboxmanage("unregistervm", config.name)
    backend = fast_backend(config)
    assert not backend.exists()  # only the .vbox file is left in the slot
    backend.create()
    assert backend.exists()
    replay = (config.slot_dir / "vbox_replay.txt").read_text()
    assert "VBoxManage -q registervm" in replay
    assert vminfo(vbox_sim, config.name)["memory"] == "256"
    backend.cleanup()


def test_two_tasks_share_a_multiattach_parent(vbox_sim: VBoxHost, tmp_path: Path) -> None:
    parent = make_disk(tmp_path / "projects" / "example.org_app" / "parent.vdi")
    before = parent.read_bytes()
    configs = []
    for i in (1, 2):
        base = make_config(tmp_path / f"host{i}", name=f"boinc_multi{i:011d}", remote_desktop=None)
        configs.append(replace(base, disk_image=None, multiattach_parent=parent))
    backends = [fast_backend(c, lock_dir=tmp_path / "locks") for c in configs]
    for backend in backends:
        backend.create()
    info = output.parse_hdinfo(vbox_sim.vboxmanage("showhdinfo", str(parent)).stdout)
    assert info.multiattach
    assert len(info.child_uuids) == 2
    for config in configs:
        disk = vminfo(vbox_sim, config.name)["Hard Disk Controller-0-0"]
        assert disk.startswith(str(config.slot_dir / config.name / "Snapshots"))
    backends[0].cleanup()
    info = output.parse_hdinfo(vbox_sim.vboxmanage("showhdinfo", str(parent)).stdout)
    assert len(info.child_uuids) == 1
    # the second VM disappears without clean-up (unregistered, its child disk left behind)
    assert vbox_sim.vboxmanage("unregistervm", configs[1].name).returncode == 0
    orphan = output.parse_hdinfo(vbox_sim.vboxmanage("showhdinfo", str(parent)).stdout)
    orphan_file = output.parse_hdinfo(
        vbox_sim.vboxmanage("showhdinfo", orphan.child_uuids[0]).stdout
    ).location
    assert Path(orphan_file).is_file()
    # the next task on this parent removes the orphan before attaching its own child
    third = replace(
        make_config(tmp_path / "host3", name="boinc_multi00000000003", remote_desktop=None),
        disk_image=None,
        multiattach_parent=parent,
    )
    backend3 = fast_backend(third, lock_dir=tmp_path / "locks")
    backend3.create()
    info = output.parse_hdinfo(vbox_sim.vboxmanage("showhdinfo", str(parent)).stdout)
    assert len(info.child_uuids) == 1 and orphan.child_uuids[0] not in info.child_uuids
    assert not Path(orphan_file).exists()
    backend3.cleanup()
    assert parent.read_bytes() == before


def test_multiattach_registry_bug_removes_orphans_and_retries(
    vbox_sim: VBoxHost, tmp_path: Path
) -> None:
    parent = make_disk(tmp_path / "projects" / "example.org_app" / "parent.vdi")
    config = replace(
        make_config(tmp_path, remote_desktop=None), disk_image=None, multiattach_parent=parent
    )
    vbox_sim.inject(multiattach_registry_bug=True)
    backend = fast_backend(config, lock_dir=tmp_path / "locks")
    backend.create()
    replay = (config.slot_dir / "vbox_replay.txt").read_text()
    assert f"VBoxManage -q closemedium disk {parent}" in replay
    assert replay.count("--mtype multiattach") == 2
    assert vminfo(vbox_sim, config.name)["Hard Disk Controller-0-0"].endswith(".vdi")
    backend.cleanup()


def test_missing_medium_is_refused(vbox_sim: VBoxHost, tmp_path: Path) -> None:
    config = make_config(tmp_path, remote_desktop=None)
    config = replace(config, floppy_image=config.slot_dir / "vm_floppy_0.img")  # not written
    backend = fast_backend(config)
    with pytest.raises(VBoxManageError) as info:
        backend.create()
    assert info.value.hresult == output.VBOX_E_FILE_ERROR
    assert "VERR_FILE_NOT_FOUND" in info.value.output
    backend.cleanup()
    assert not backend.exists()


def test_restoring_a_missing_snapshot_is_a_checkpoint_error(
    vbox_sim: VBoxHost, tmp_path: Path
) -> None:
    config = make_config(tmp_path, remote_desktop=None)
    backend = fast_backend(config)
    backend.create()
    with pytest.raises(CheckpointError):
        backend.start(restore="boinc_999")
    backend.cleanup()


def test_a_vm_left_running_is_powered_off_before_start(vbox_sim: VBoxHost, tmp_path: Path) -> None:
    config = make_config(tmp_path, remote_desktop=None)
    first = fast_backend(config)
    first.create()
    old_pid = first.start()
    second = fast_backend(config)  # a new wrapper process for the same slot
    second.create()
    new_pid = second.start()
    assert new_pid != old_pid
    assert wait_for(
        lambda: not psutil.pid_exists(old_pid) or psutil.Process(old_pid).status() == "zombie", 20
    )
    second.cleanup()


def test_missing_kernel_module_is_host_not_ready(vbox_sim: VBoxHost, tmp_path: Path) -> None:
    config = make_config(tmp_path, remote_desktop=None)
    backend = fast_backend(config)
    backend.create()
    vbox_sim.configure(kernel_module_missing=True)
    with pytest.raises(HostNotReady, match="vboxdrv kernel module is not loaded"):
        fast_backend(config).start()  # a new wrapper run checks the host again
    other = make_config(tmp_path / "other", name="boinc_other00000000000", remote_desktop=None)
    with pytest.raises(HostNotReady):
        fast_backend(other).create()
    assert [vm["name"] for vm in vbox_sim.registry()["vms"].values()] == [config.name]
    vbox_sim.configure(kernel_module_missing=False)
    backend.cleanup()
