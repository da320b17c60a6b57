"""QemuBackend against real QEMU (TCG) with blank disks: QMP lifecycle, snapshots, devices.

SeaBIOS idles on a blank disk, so each VM here starts in a fraction of a second; the tests
that need a real guest (jobs, counters, NICs) are in test_qemu_guest.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from helpers.common import make_image, make_slot, vm_config, wait_for
from helpers.qemu_fixtures import (
    listening_addresses,
    non_loopback_ipv4,
    qemu_backend,
    sha256,
    tcp_connects,
)
from vmwrapper.errors import CheckpointError, VmStartError, VmWrapperError
from vmwrapper.hostports import free_port
from vmwrapper.hypervisor.base import (
    Diagnosis,
    NetworkConfig,
    PortRule,
    RemoteDesktop,
    Share,
    VmState,
)
from vmwrapper.hypervisor.qemu.accel import AccelSetting, choose_accel, probe_kvm_boot
from vmwrapper.hypervisor.qemu.backend import (
    SAVED_STATE_TAG,
    CgroupCpuCap,
    DutyCycleCpuCap,
    QemuBackend,
)
from vmwrapper.hypervisor.qemu.cmdline import Accel
from vmwrapper.hypervisor.qemu.ports import VNC_PORTS

pytestmark = pytest.mark.system


def test_lifecycle_pause_checkpoint_kill_restore(tmp_path: Path) -> None:
    """With savevm (the fallback where live checkpoints cannot be taken; those are in
    test_qemu_live_checkpoints.py)."""
    slot, project = make_slot(tmp_path)
    config = vm_config(slot, project)
    with qemu_backend(config, checkpoint_method="savevm") as vm:
        assert vm.status().state is VmState.ABSENT
        vm.create()
        assert vm.exists()
        assert vm.status().state is VmState.POWERED_OFF
        pid = vm.start()
        assert vm.pid() == pid and psutil.pid_exists(pid)
        assert vm.status().state is VmState.RUNNING
        assert vm.accel is not None and vm.accel.accel is Accel.TCG

        vm.pause()
        assert vm.status().state is VmState.PAUSED
        vm.resume()
        assert vm.status().state is VmState.RUNNING

        vm.checkpoint("ckpt_1")
        vm.checkpoint("ckpt_2")
        assert vm.checkpoints() == ("ckpt_1", "ckpt_2")  # read over QMP while running
        vm.delete_checkpoint("ckpt_1")
        vm.delete_checkpoint("ckpt_1")  # already gone: no error
        assert vm.checkpoints() == ("ckpt_2",)
        assert vm.cpu_time() > 0

        os.kill(pid, signal.SIGKILL)  # QEMU dies without a word
        assert wait_for(lambda: vm.status().state is VmState.CRASHED, 10, 0.05)
        status = vm.status()
        assert status.exit_code == -9 and "signal 9" in status.detail
        assert vm.pid() is None
        assert vm.checkpoints() == ("ckpt_2",)  # read from the overlay by qemu-img
        check = subprocess.run(
            ["qemu-img", "check", str(vm.files.disk_overlay)], capture_output=True, check=False
        )
        assert check.returncode == 0, check.stdout

        new_pid = vm.start(restore="ckpt_2")
        assert new_pid != pid
        assert "-loadvm" in vm.argv and vm.argv[vm.argv.index("-loadvm") + 1] == "ckpt_2"
        assert vm.status().state is VmState.RUNNING
        with pytest.raises(CheckpointError, match="not usable"):
            vm.checkpoint("two words")


def test_restore_of_a_missing_checkpoint_is_refused(tmp_path: Path) -> None:
    slot, project = make_slot(tmp_path)
    with qemu_backend(vm_config(slot, project)) as vm:
        vm.create()
        with pytest.raises(CheckpointError, match="nope"):
            vm.start(restore="nope")
        assert vm.pid() is None


def test_save_state_then_start_resumes_once(tmp_path: Path) -> None:
    slot, project = make_slot(tmp_path)
    config = vm_config(slot, project)
    with qemu_backend(config, checkpoint_method="savevm") as vm:
        vm.start()
        vm.save_state()
        assert vm.pid() is None
        assert vm.status().state is VmState.SAVED
        # A new wrapper process (a new back end object) sees the saved state in the overlay.
        again = QemuBackend(config, accel="tcg")
        assert again.status().state is VmState.SAVED
        vm.start()
        assert vm.argv[vm.argv.index("-loadvm") + 1] == SAVED_STATE_TAG
        assert vm.status().state is VmState.RUNNING
        assert SAVED_STATE_TAG not in vm.checkpoints()  # used once, as VirtualBox's is


def test_a_start_from_a_checkpoint_supersedes_the_saved_state(tmp_path: Path) -> None:
    slot, project = make_slot(tmp_path)
    with qemu_backend(vm_config(slot, project)) as vm:
        vm.start()
        vm.checkpoint("ckpt_1")
        vm.save_state()
        vm.start(restore="ckpt_1")  # the supervisor's record names a checkpoint
        assert vm.checkpoints() == ("ckpt_1",)
        vm.poweroff(timeout=0)
        vm.start()  # a plain start must not go back to the old saved state
        assert "-loadvm" not in vm.argv


@pytest.mark.parametrize("method", ["savevm", "live"])
def test_a_snapshot_qemu_cannot_load_is_a_checkpoint_error(tmp_path: Path, method: str) -> None:
    """QEMU fails loading it (here: taken with 256 MB of RAM, loaded into 512); the
    supervisor then boots afresh, so this must be CheckpointError, not VmStartError."""
    slot, project = make_slot(tmp_path)
    config = vm_config(slot, project)
    with qemu_backend(config, checkpoint_method=method) as first:
        first.start()
        first.checkpoint("small")
        first.poweroff(timeout=0)
        bigger = replace(config, memory_mb=2 * config.memory_mb)
        with qemu_backend(bigger, checkpoint_method=method) as vm:
            with pytest.raises(CheckpointError, match="small") as info:
                vm.start(restore="small")
            if method == "savevm":  # QEMU exits; a live restore's QEMU is stopped by us
                assert info.value.exit_code not in (0, None)
            assert vm.pid() is None
            vm.start()
            assert vm.status().state is VmState.RUNNING


def test_a_disk_only_snapshot_is_restored_by_booting_from_its_disks(tmp_path: Path) -> None:
    """One made without VM state (checkpoint_disks, or qemu-img here): start(restore=...)
    puts the disks back and boots without -loadvm."""
    slot, project = make_slot(tmp_path)
    with qemu_backend(vm_config(slot, project)) as vm:
        vm.create()
        subprocess.run(
            ["qemu-img", "snapshot", "-c", "disk_only", str(vm.files.disk_overlay)], check=True
        )
        vm.start(restore="disk_only")
        assert "-loadvm" not in vm.argv
        assert vm.status().state is VmState.RUNNING


def test_poweroff_is_idempotent_and_cleanup_removes_everything(tmp_path: Path) -> None:
    slot, project = make_slot(tmp_path)
    before = set(slot.iterdir())
    vm = QemuBackend(vm_config(slot, project), accel="tcg")
    try:
        pid = vm.start()
        vm.checkpoint("ckpt_1")  # live: a RAM file, a manifest, disk layers (all removed too)
        vm.checkpoint("ckpt_2")
        vm.poweroff(timeout=1.0)  # SeaBIOS ignores ACPI: quit follows
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
        assert vm.status().state is VmState.POWERED_OFF
        assert vm.status().detail == "stopped by the wrapper"
        vm.poweroff()
        vm.poweroff(timeout=0)
        assert vm.cpu_time() > 0  # from the reaped process's rusage
    finally:
        vm.cleanup()
    vm.cleanup()
    assert set(slot.iterdir()) == before
    assert vm.status().state is VmState.ABSENT


WRAPPER_SCRIPT = """
import sys
from pathlib import Path
from vmwrapper.hypervisor.base import VmConfig
from vmwrapper.hypervisor.qemu.backend import QemuBackend
slot, project = Path(sys.argv[1]), Path(sys.argv[2])
config = VmConfig(name="boinc_wrapper_kill", description="r", slot_dir=slot,
                  project_dir=project, memory_mb=256, disk_image=slot / "vm_image.vdi")
vm = QemuBackend(config, accel="tcg")
print(vm.start(), flush=True)
vm.checkpoint("ckpt_1")
print("checkpointed", flush=True)
sys.stdin.read()  # until killed
"""


def test_killed_wrapper_leaves_a_checkpoint_and_its_qemu_is_stopped_on_restart(
    tmp_path: Path,
) -> None:
    """A wrapper process dies by SIGKILL after a checkpoint; its QEMU lives on (own session),
    holding the overlay's lock. The next wrapper stops that QEMU and restores."""
    slot, project = make_slot(tmp_path)
    wrapper = subprocess.Popen(
        [sys.executable, "-c", WRAPPER_SCRIPT, str(slot), str(project)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    old_pid = 0
    try:
        assert wrapper.stdout is not None
        old_pid = int(wrapper.stdout.readline())
        assert wrapper.stdout.readline().strip() == "checkpointed"
        wrapper.kill()
        wrapper.wait(timeout=10)
        assert psutil.pid_exists(old_pid)  # the orphaned QEMU still runs

        config = vm_config(slot, project, name="boinc_wrapper_kill")
        with qemu_backend(config) as vm:
            assert vm.status().state is VmState.POWERED_OFF
            assert vm.checkpoints() == ("ckpt_1",)  # read from the (locked) overlay
            vm.start(restore="ckpt_1")
            assert _gone(old_pid)
            assert vm.status().state is VmState.RUNNING
    finally:
        wrapper.kill()
        wrapper.wait(timeout=10)
        if old_pid and psutil.pid_exists(old_pid):
            os.kill(old_pid, signal.SIGKILL)


def test_a_slot_path_too_long_for_a_unix_socket(tmp_path: Path) -> None:
    """sun_path holds 108 bytes: the QMP socket moves to a short path derived from the slot."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    slot, project = make_slot(deep)
    with qemu_backend(vm_config(slot, project)) as vm:
        assert not vm.files.qmp_socket.is_relative_to(slot)
        vm.start()
        assert vm.files.qmp_socket.exists()
        assert vm.status().state is VmState.RUNNING
        socket_path = vm.files.qmp_socket
    assert not socket_path.exists()


def test_every_device_of_the_job_model(tmp_path: Path) -> None:
    """ISO + cache disk + floppy + 3 shares + NAT + VNC: QEMU accepts it and can snapshot."""
    slot, project = make_slot(tmp_path, with_blank_disk=False)
    make_image(slot / "vm_cache.vdi")
    (slot / "vm_isocontext.iso").write_bytes(bytes(2048 * 20))
    (slot / "vm_floppy_0.img").write_bytes(bytes(1474560))
    for name in ("shared", "scratch"):
        (slot / name).mkdir()
    config = vm_config(
        slot,
        project,
        disk_image=None,
        iso_image=slot / "vm_isocontext.iso",
        cache_disk=slot / "vm_cache.vdi",
        floppy_image=slot / "vm_floppy_0.img",
        boot_iso=True,
        rtc_utc=False,
        shares=(
            Share("shared", slot / "shared"),
            Share("project", project, read_only=True),
            Share("scratch", slot / "scratch"),
        ),
        network=NetworkConfig(enabled=True, port_rules=(PortRule(0, 80),)),
        remote_desktop=RemoteDesktop(port=0, password="task-secret"),
    )
    with qemu_backend(config) as vm:
        vm.start()
        block = {
            dev["qdev"] if "qdev" in dev else dev["device"]: dev for dev in _qmp(vm, "query-block")
        }
        nodes = {n["node-name"] for n in _qmp(vm, "query-named-block-nodes")}
        assert {"cd0", "cache0", "fd0"} <= nodes
        assert len(block) >= 3
        vnc = _qmp(vm, "query-vnc")
        assert vnc["enabled"] and vnc["host"] == "127.0.0.1" and vnc["auth"] == "vnc"
        assert int(vnc["service"]) == vm.ports().vnc
        assert _rfb_security_types(vm.ports().vnc) == [2]  # VNC password auth, no "None"
        tags = _hmp(vm, "info qtree")
        for tag in ('mount_tag = "shared"', 'mount_tag = "project"', 'mount_tag = "scratch"'):
            assert tag in tags
        vm.set_network(False)
        vm.set_network(True)
        vm.set_bandwidth(1000.0)  # unsupported: logged, not fatal
        vm.checkpoint("all_devices")  # the ISO and floppy are read-only: no snapshot refusal
        assert vm.checkpoints() == ("all_devices",)
        assert not vm.files.disk_overlay.exists() and vm.files.cache_overlay.exists()


def test_iso_only_vm_keeps_its_state_in_a_hidden_qcow2(tmp_path: Path) -> None:
    slot, project = make_slot(tmp_path, with_blank_disk=False)
    (slot / "vm_isocontext.iso").write_bytes(bytes(2048 * 20))
    config = vm_config(slot, project, disk_image=None, iso_image=slot / "vm_isocontext.iso")
    with qemu_backend(config) as vm:
        vm.start()
        vm.checkpoint("ckpt_1")
        vm.poweroff(timeout=0)
        assert vm.files.state_disk.exists()
        assert vm.checkpoints() == ("ckpt_1",)
        vm.start(restore="ckpt_1")
        assert vm.status().state is VmState.RUNNING


def test_port_forward_listens_on_loopback_only(tmp_path: Path) -> None:
    slot, project = make_slot(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        fixed = taken.getsockname()[1]
    network = NetworkConfig(
        enabled=True, port_rules=(PortRule(0, 80), PortRule(fixed, 22), PortRule(0, 8080, bind=""))
    )
    with qemu_backend(vm_config(slot, project, network=network)) as vm:
        pid = vm.start()
        picked, kept, remote = vm.ports().forwards
        assert picked.host_port > 0 and picked.guest_port == 80
        assert kept.host_port == fixed
        listening = listening_addresses(pid)
        assert ("127.0.0.1", picked.host_port) in listening
        assert ("127.0.0.1", fixed) in listening
        assert ("0.0.0.0", remote.host_port) in listening  # is_remote: every address
        assert tcp_connects("127.0.0.1", picked.host_port)
        other = non_loopback_ipv4()
        if other is not None:
            assert not tcp_connects(other, picked.host_port)
            assert tcp_connects(other, remote.host_port)


class TakenFirst:
    """The port picker, but its first offer for forwards and for VNC is a port another
    program holds: the race between our pick and QEMU's bind, made certain."""

    def __init__(self, *held: socket.socket) -> None:
        self.offers: list[int] = [sock.getsockname()[1] for sock in held]

    def __call__(self, bind: str, **options: Any) -> int:
        candidates = options.get("candidates")
        for port in self.offers:
            if candidates is None or port in candidates:
                self.offers.remove(port)
                return port
        return free_port(bind, **options)


def _listening(port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_a_picked_port_taken_before_qemu_binds_it_is_picked_anew(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    slot, project = make_slot(tmp_path)
    network = NetworkConfig(enabled=True, port_rules=(PortRule(0, 80),))
    desktop = RemoteDesktop(port=0, password="task-secret")
    config = vm_config(slot, project, network=network, remote_desktop=desktop)
    with (
        _listening(0) as fwd_taken,
        _listening(free_port(candidates=VNC_PORTS)) as vnc_taken,
        qemu_backend(config, port_picker=TakenFirst(fwd_taken, vnc_taken)) as vm,
    ):
        held = [fwd_taken.getsockname()[1], vnc_taken.getsockname()[1]]
        pid = vm.start()  # QEMU refuses each held port once; the start still succeeds
        ports = vm.ports()
        (forward,) = ports.forwards
        assert forward.host_port != held[0]
        assert ports.vnc is not None and ports.vnc != held[1]
        listening = listening_addresses(pid)
        assert ("127.0.0.1", forward.host_port) in listening
        assert ("127.0.0.1", ports.vnc) in listening
    repicked = [r for r in caplog.records if getattr(r, "event", "") == "qemu_ports_repicked"]
    assert [r.lost for r in repicked] == [[held[0]], [held[1]]]  # type: ignore[attr-defined]


def test_a_fixed_port_taken_fails_the_start_unchanged(tmp_path: Path) -> None:
    slot, project = make_slot(tmp_path)
    with _listening(0) as taken:
        fixed = taken.getsockname()[1]
        network = NetworkConfig(enabled=True, port_rules=(PortRule(fixed, 80),))
        with qemu_backend(vm_config(slot, project, network=network)) as vm:
            with pytest.raises(VmStartError, match="Could not set up host forwarding rule"):
                vm.start()
            assert vm.ports().forwards == (PortRule(fixed, 80),)  # the job's port is kept


def test_network_off_means_no_nic(tmp_path: Path) -> None:
    slot, project = make_slot(tmp_path)
    rules = (PortRule(0, 80),)
    config = vm_config(slot, project, network=NetworkConfig(enabled=False, port_rules=rules))
    with qemu_backend(config) as vm:
        pid = vm.start()
        assert vm.argv[vm.argv.index("-nic") + 1] == "none"
        assert "No network devices" in _hmp(vm, "info network") or not _hmp(vm, "info network")
        assert not listening_addresses(pid) - {(str(vm.files.qmp_socket), 0)}
        vm.set_network(False)  # nothing to unplug: no error


def test_multiattach_parent_is_shared_read_only(tmp_path: Path) -> None:
    """Two VMs on one parent at once; the parent is never written (bytes and mtime)."""
    parent = make_image(tmp_path / "projects" / "example.org" / "shared_image.vdi")
    digest, mtime = sha256(parent), parent.stat().st_mtime_ns
    backends = []
    try:
        for n in range(2):
            slot = tmp_path / "slots" / str(n)
            slot.mkdir(parents=True)
            config = vm_config(
                slot, parent.parent, name=f"boinc_vm{n}", disk_image=None, multiattach_parent=parent
            )
            vm = QemuBackend(config, accel="tcg")
            backends.append(vm)
            vm.start()
            vm.checkpoint("ckpt_1")
        assert all(vm.status().state is VmState.RUNNING for vm in backends)
    finally:
        for vm in backends:
            vm.cleanup()
    assert sha256(parent) == digest and parent.stat().st_mtime_ns == mtime


def test_host_out_of_memory_is_diagnosed(tmp_path: Path) -> None:
    if Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1":
        pytest.skip("overcommit_memory=1: the host never refuses guest memory")
    slot, project = make_slot(tmp_path)
    with qemu_backend(vm_config(slot, project, memory_mb=4_000_000)) as vm:
        with pytest.raises(VmStartError, match="Cannot allocate memory"):
            vm.start()
        assert Diagnosis.HOST_OUT_OF_MEMORY in vm.diagnose()


def test_kvm_probe_boot_works_and_auto_never_picks_unusable_kvm() -> None:
    # The probe program itself is right: under TCG it reaches the exit port.
    assert probe_kvm_boot("qemu-system-x86_64", Accel.TCG, timeout=20.0)
    choice = choose_accel(AccelSetting.AUTO, "x86_64", "qemu-system-x86_64")
    flags = Path("/proc/cpuinfo").read_text()
    if " vmx" not in flags and " svm" not in flags:  # e.g. kvm_pvm: /dev/kvm but no VT-x
        assert choice.accel is Accel.TCG
    assert choose_accel(AccelSetting.TCG, "x86_64", "qemu-system-x86_64").accel is Accel.TCG


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _busy_process() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _cpu_share(pid: int, seconds: float = 2.0) -> float:
    proc = psutil.Process(pid)
    start = sum(proc.cpu_times()[:2])
    time.sleep(seconds)
    return (sum(proc.cpu_times()[:2]) - start) / seconds


def test_duty_cycle_cpu_cap_limits_a_busy_process() -> None:
    busy = _busy_process()
    cap = DutyCycleCpuCap(busy.pid)
    try:
        cap.set(20)
        assert _cpu_share(busy.pid) < 0.45
        with cap.hold():  # a QMP call meets a running process
            assert psutil.Process(busy.pid).status() != psutil.STATUS_STOPPED
    finally:
        cap.close()
        busy.kill()
        busy.wait()


def test_cgroup_cpu_cap_limits_a_busy_process() -> None:
    busy = _busy_process()
    try:
        try:
            cap = CgroupCpuCap(busy.pid, cpus=1, name=f"vmwrapper-test-{busy.pid}")
        except OSError as exc:
            pytest.skip(f"no cgroup can be made here: {exc}")
        cap.set(20)
        assert _cpu_share(busy.pid) < 0.45
        cap.set(100)
    finally:
        busy.kill()
        busy.wait()
    cap.close()
    assert not cap.dir.exists()


@pytest.mark.parametrize("method", ["auto", "duty-cycle"])
def test_set_cpu_cap_applies_to_the_running_qemu(tmp_path: Path, method: str) -> None:
    slot, project = make_slot(tmp_path)
    with qemu_backend(vm_config(slot, project), cpu_cap_method=method) as vm:
        vm.set_cpu_cap(40)  # before start: applied at start
        pid = vm.start()
        if method == "duty-cycle":
            assert vm.cpu_cap_in_use == "duty-cycle"
        assert vm.cpu_cap_in_use in ("cgroup", "duty-cycle")
        if vm.cpu_cap_in_use == "cgroup":
            assert f"vmwrapper-{pid}" in Path(f"/proc/{pid}/cgroup").read_text()
        for _ in range(10):  # QMP keeps answering under the cap (SIGSTOPped phases too)
            assert vm.status().state is VmState.RUNNING
        vm.pause()
        vm.resume()
        vm.checkpoint("capped")
        vm.set_cpu_cap(100)
        assert vm.status().state is VmState.RUNNING


def _qmp(vm: QemuBackend, cmd: str) -> Any:
    return vm.qmp(cmd)


def _hmp(vm: QemuBackend, line: str) -> str:
    return vm.hmp(line)


def _rfb_security_types(port: int | None) -> list[int]:
    """The security types a VNC server offers (RFB 3.8 handshake)."""
    assert port is not None
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        version = sock.recv(12)
        assert version.startswith(b"RFB ")
        sock.sendall(b"RFB 003.008\n")
        count = sock.recv(1)[0]
        return list(sock.recv(count))


def test_aarch64_guest_runs_from_the_same_table(tmp_path: Path) -> None:
    """aarch64 (virt, UEFI, pvpanic-pci, SCSI CD-ROM): QEMU takes the argv; QMP works."""
    if shutil.which("qemu-system-aarch64") is None:
        pytest.fail("qemu-system-aarch64 is missing: run `make deps` (scripts/install-deps.sh)")
    slot, project = make_slot(tmp_path)
    (slot / "vm_isocontext.iso").write_bytes(bytes(2048 * 20))
    config = vm_config(
        slot,
        project,
        arch="aarch64",
        iso_image=slot / "vm_isocontext.iso",
        shares=(Share("shared", slot),),
        network=NetworkConfig(enabled=True, port_rules=(PortRule(0, 80),)),
    )
    with qemu_backend(config, accel="auto") as vm:
        vm.start()
        assert vm.argv[0] == "qemu-system-aarch64"
        assert vm.accel is not None and vm.accel.accel is Accel.TCG  # on this x86_64 host
        assert vm.status().state is VmState.RUNNING
        vm.checkpoint("ckpt_1")
        assert vm.checkpoints() == ("ckpt_1",)
        # the firmware's console, whenever it gets to it on this host (guest_log() hands each
        # line out once, so keep them)
        lines: list[str] = []

        def firmware_spoke() -> bool:
            lines.extend(vm.guest_log())
            return any("UEFI" in line for line in lines)

        assert wait_for(firmware_spoke, 180, 0.5), lines[-20:]
        vm.poweroff(timeout=0)


def test_cancel_cuts_a_long_conversion_short(tmp_path: Path) -> None:
    """The supervisor calls cancel() from its own thread when the client asks for a quit or
    an abort while create() converts the image (up to an hour for a big one): the running
    qemu-img is killed, create() raises at once and leaves no temporary file."""
    slot, project = make_slot(tmp_path)
    slow = tmp_path / "slow-qemu-img"  # qemu-img, but its conversion never ends
    slow.write_text('#!/bin/sh\n[ "$1" = convert ] && exec sleep 600\nexec qemu-img "$@"\n')
    slow.chmod(0o755)
    errors: list[Exception] = []

    def create(vm: QemuBackend) -> None:
        try:
            vm.create()
        except VmWrapperError as exc:
            errors.append(exc)

    with qemu_backend(vm_config(slot, project), qemu_img=str(slow)) as vm:
        worker = threading.Thread(target=create, args=(vm,))
        worker.start()
        deadline = time.monotonic() + 60
        while not [p for p in psutil.Process().children(recursive=True) if p.name() == "sleep"]:
            assert time.monotonic() < deadline, "the conversion never started"
            time.sleep(0.05)
        cancelled = time.monotonic()
        vm.cancel()
        worker.join(30)
        assert not worker.is_alive() and time.monotonic() - cancelled < 10
        assert errors and "qemu-img failed" in str(errors[0])
        assert not list(project.glob("*.tmp")) and not list(slot.glob("*.tmp"))
