"""Live checkpoints (background snapshot + a disk layer) on real QEMU (TCG), blank disks.

SeaBIOS idles on a blank disk, so these VMs start in a fraction of a second; the guest
that counts through a checkpoint and a kill is in test_qemu_live_guest.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from helpers.common import make_slot, vm_config, wait_for
from helpers.fault_fixtures import fill, tmpfs
from helpers.qemu_fixtures import qemu_backend
from vmwrapper.errors import CheckpointError
from vmwrapper.hypervisor.base import VmState
from vmwrapper.hypervisor.qemu.backend import SAVED_STATE_TAG, QemuBackend
from vmwrapper.hypervisor.qemu.livestate import STREAM_MAGIC

pytestmark = pytest.mark.system


def _layers(slot: Path) -> list[str]:
    return sorted(p.name for p in slot.glob("vm_disk.*.qcow2"))


def _backing(path: Path) -> str:
    info = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(json.loads(info.stdout).get("backing-filename", "")).name


def test_a_live_checkpoint_is_restored_after_qemu_is_killed(tmp_path: Path) -> None:
    slot, project = make_slot(tmp_path)
    with qemu_backend(vm_config(slot, project)) as vm:
        pid = vm.start()
        vm.checkpoint("ckpt_1")
        assert (slot / "live_ckpt_1.ram").read_bytes().startswith(STREAM_MAGIC)
        assert vm.checkpoints() == ("ckpt_1",)
        assert vm.status().state is VmState.RUNNING  # the guest ran on
        assert _hmp_snapshots(vm) == ""  # no savevm: nothing internal in the overlay
        vm.checkpoint("ckpt_2")
        assert vm.checkpoints() == ("ckpt_1", "ckpt_2")
        vm.delete_checkpoint("ckpt_1")
        assert vm.checkpoints() == ("ckpt_2",)
        assert not (slot / "live_ckpt_1.ram").exists()
        # the merge runs in the background; the chain is short again once it ends
        assert wait_for(lambda: vm.status() and len(_layers(slot)) == 1, 30)
        manifest = json.loads((slot / "live_ckpt_2.json").read_text())
        assert manifest["disks"] == {"disk0": "vm_disk.qcow2"}  # merged into the bottom

        os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: vm.status().state is VmState.CRASHED, 10, 0.05)
        assert vm.checkpoints() == ("ckpt_2",)  # read from the slot's files
        vm.start(restore="ckpt_2")
        assert vm.argv[vm.argv.index("-incoming") + 1] == "defer"
        assert "-loadvm" not in vm.argv
        assert vm.status().state is VmState.RUNNING
        top = _layers(slot)[-1]
        assert _backing(slot / top) == "vm_disk.qcow2"  # a new top over the frozen disk
        vm.checkpoint("ckpt_3")
        vm.delete_checkpoint("ckpt_2")
        assert wait_for(lambda: vm.status() and len(_layers(slot)) == 1, 30)
        vm.poweroff(timeout=0)
        vm.start(restore="ckpt_3")
        assert vm.status().state is VmState.RUNNING


def _hmp_snapshots(vm: QemuBackend) -> str:
    text = vm.hmp("info snapshots")
    return "" if "no snapshots" in text.lower() or "There is no" in text else text


def test_save_state_is_live_and_used_once(tmp_path: Path) -> None:
    slot, project = make_slot(tmp_path)
    config = vm_config(slot, project)
    with qemu_backend(config) as vm:
        vm.start()
        vm.save_state()
        assert vm.status().state is VmState.SAVED
        assert QemuBackend(config, accel="tcg").status().state is VmState.SAVED
        vm.start()
        assert "-incoming" in vm.argv
        assert vm.status().state is VmState.RUNNING
        assert SAVED_STATE_TAG not in vm.checkpoints()


def test_the_savevm_method_keeps_checkpoints_internal(tmp_path: Path) -> None:
    slot, project = make_slot(tmp_path)
    with qemu_backend(vm_config(slot, project), checkpoint_method="savevm") as vm:
        vm.start()
        vm.checkpoint("ckpt_1")
        assert not list(slot.glob("live_*"))
        assert "ckpt_1" in _hmp_snapshots(vm)


def test_a_paused_vm_stays_paused_through_a_live_checkpoint(tmp_path: Path) -> None:
    slot, project = make_slot(tmp_path)
    with qemu_backend(vm_config(slot, project)) as vm:
        vm.start()
        vm.pause()
        vm.checkpoint("ckpt_1")
        assert vm.status().state is VmState.PAUSED
        assert vm.checkpoints() == ("ckpt_1",)


def test_a_disks_only_live_checkpoint_boots_afresh_from_its_layer(tmp_path: Path) -> None:
    slot, project = make_slot(tmp_path)
    with qemu_backend(vm_config(slot, project)) as vm:
        vm.start()
        vm.checkpoint_disks("disks_1")
        assert vm.checkpoints() == ("disks_1",)
        assert not (slot / "live_disks_1.ram").exists()
        vm.poweroff(timeout=0)
        vm.start(restore="disks_1")
        assert "-incoming" not in vm.argv and "-loadvm" not in vm.argv
        assert vm.status().state is VmState.RUNNING


def test_a_damaged_ram_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    """The supervisor then boots afresh: CheckpointError, and no QEMU left waiting."""
    slot, project = make_slot(tmp_path)
    with qemu_backend(vm_config(slot, project)) as vm:
        vm.start()
        vm.checkpoint("ckpt_1")
        vm.poweroff(timeout=0)
        ram = slot / "live_ckpt_1.ram"
        ram.write_bytes(ram.read_bytes()[: len(STREAM_MAGIC) + 100])
        with pytest.raises(CheckpointError, match="ckpt_1"):
            vm.start(restore="ckpt_1")
        assert vm.pid() is None
        vm.start()
        assert vm.status().state is VmState.RUNNING


KILLED_WRAPPER = """
import sys
from pathlib import Path
from vmwrapper.hypervisor.base import VmConfig
from vmwrapper.hypervisor.qemu.backend import QemuBackend
slot, project, point = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
config = VmConfig(name="boinc_live_kill", description="r", slot_dir=slot,
                  project_dir=project, memory_mb=256, disk_image=slot / "vm_image.vdi")
vm = QemuBackend(config, accel="tcg")
vm.start()
vm.checkpoint("boinc_1")
print("checkpointed", flush=True)
if point == "ram":  # the RAM is written slowly: the test kills in the middle of it
    vm.qmp("migrate-set-parameters", {"max-bandwidth": 64 * 1024})
    vm.checkpoint("boinc_2")
while True:  # checkpoints written, recorded and merged over and over: killed anywhere
    vm.checkpoint("boinc_2")
    vm.checkpoint("boinc_3")
    vm.delete_checkpoint("boinc_2")
    vm.delete_checkpoint("boinc_3")
"""


@pytest.mark.parametrize("point", ["ram", "anywhere"])
@pytest.mark.parametrize("victim", ["wrapper", "qemu"])
def test_a_kill_during_the_next_checkpoint_leaves_the_previous_one(
    tmp_path: Path, victim: str, point: str
) -> None:
    """SIGKILL of the wrapper or of QEMU while the next checkpoint's RAM is half written,
    or at any moment of a loop that writes, records and merges checkpoints: the one taken
    before is restorable, and what the killed write left is cleared at the next start."""
    slot, project = make_slot(tmp_path)
    wrapper = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRAPPER, str(slot), str(project), point],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert wrapper.stdout is not None
        assert wrapper.stdout.readline().strip() == "checkpointed"
        qemu = _qemu_of(slot)
        if point == "ram":
            tmp = slot / "live_boinc_2.ram.tmp"
            assert wait_for(lambda: tmp.exists() and tmp.stat().st_size > 4096, 30, 0.01)
        else:
            assert wait_for(lambda: (slot / "live_boinc_3.json").exists(), 60, 0.01)
        (wrapper if victim == "wrapper" else qemu).kill()
        wrapper.kill()
        wrapper.wait(timeout=10)
        qemu.kill()
        qemu.wait(timeout=10)
        config = vm_config(slot, project, name="boinc_live_kill")
        with qemu_backend(config) as vm:
            assert "boinc_1" in vm.checkpoints()
            if point == "ram":
                assert "boinc_2" not in vm.checkpoints()  # half written: not a checkpoint
            for orphan in set(vm.checkpoints()) - {"boinc_1"}:  # as the supervisor does
                vm.delete_checkpoint(orphan)
            vm.start(restore="boinc_1")
            assert vm.status().state is VmState.RUNNING
            assert not list(slot.glob("live_*.tmp"))
            assert len(_layers(slot)) == 1  # the new top over boinc_1's disk: the rest cleared
    finally:
        wrapper.kill()
        wrapper.wait(timeout=10)


def _qemu_of(slot: Path) -> psutil.Process:
    pid = int((slot / "qemu.pid").read_text())
    return psutil.Process(pid)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_fails_the_checkpoint_and_keeps_the_previous_one(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", "64m") as root:
        slot, project = make_slot(root)
        with qemu_backend(vm_config(slot, project)) as vm:
            vm.start()
            vm.checkpoint("ckpt_1")
            filler = fill(slot)
            with pytest.raises(CheckpointError):
                vm.checkpoint("ckpt_2")
            assert vm.status().state is VmState.RUNNING  # the guest runs on
            assert vm.checkpoints() == ("ckpt_1",)
            assert not list(slot.glob("live_ckpt_2*"))
            filler.unlink()
            vm.poweroff(timeout=0)
            vm.start(restore="ckpt_1")
            assert "-incoming" in vm.argv
            assert vm.status().state is VmState.RUNNING
