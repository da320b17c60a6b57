"""QEMU replies understood: run states, snapshot lists, snapshot errors, diagnoses (pure)."""

from __future__ import annotations

import pytest

from vmwrapper.errors import CheckpointError, CheckpointRefused
from vmwrapper.hypervisor.base import Diagnosis, VmState
from vmwrapper.hypervisor.qemu import monitor
from vmwrapper.hypervisor.qemu.console import ConsoleLines
from vmwrapper.hypervisor.qemu.monitor import StopCause

# The reply text QEMU 7.2 gives to HMP `savevm` while a 9p export is mounted in the guest.
REFUSAL = (
    "Error: Migration is disabled when VirtFS export path '/slots/0/shared' is mounted in "
    "the guest using mount_tag 'shared'\r\n"
)


def test_run_states() -> None:
    assert monitor.vm_state("running") is VmState.RUNNING
    assert monitor.vm_state("paused") is VmState.PAUSED
    assert monitor.vm_state("save-vm") is VmState.SAVING
    assert monitor.vm_state("restore-vm") is VmState.RESTORING
    assert monitor.vm_state("guest-panicked") is VmState.CRASHED
    assert monitor.vm_state("inmigrate") is VmState.STARTING


def test_9p_refusal_is_retryable() -> None:
    failure = monitor.snapshot_failure(REFUSAL, "take checkpoint", "c1")
    assert isinstance(failure, CheckpointRefused)
    assert "VirtFS" in failure.output


def test_other_snapshot_errors_are_final() -> None:
    text = "Error: Device 'fd0' is writable but does not support snapshots\r\n"
    failure = monitor.snapshot_failure(text, "take checkpoint", "c1")
    assert isinstance(failure, CheckpointError)
    assert not isinstance(failure, CheckpointRefused)


def test_empty_reply_is_success() -> None:
    assert monitor.snapshot_failure("", "take checkpoint", "c1") is None
    assert monitor.snapshot_failure("\r\n", "delete checkpoint", "c1") is None


def test_snapshot_names_from_qemu_img_and_qmp() -> None:
    qemu_img_info = {"format": "qcow2", "snapshots": [{"id": "1", "name": "a"}, {"name": "b"}]}
    assert monitor.snapshot_names(qemu_img_info) == ("a", "b")
    assert monitor.snapshot_names({"format": "qcow2"}) == ()
    nodes = [
        {"node-name": "#block123", "image": {"snapshots": [{"name": "parent-only"}]}},
        {"node-name": "disk0", "image": {"snapshots": [{"name": "c1"}]}},
    ]
    assert monitor.node_snapshot_names(nodes, "disk0") == ("c1",)
    assert monitor.node_snapshot_names(nodes, "cache0") == ()


def test_diagnose_host_and_guest_out_of_memory() -> None:
    stderr = "qemu-system-x86_64: cannot set up guest memory 'pc.ram': Cannot allocate memory\n"
    assert monitor.diagnose(stderr, "") == (Diagnosis.HOST_OUT_OF_MEMORY,)
    assert monitor.diagnose("", "app: EXIT_OUT_OF_MEMORY\n") == (Diagnosis.GUEST_OUT_OF_MEMORY,)
    assert monitor.diagnose("", "all fine\n") == ()


def test_exit_detail_prefers_the_guest_error() -> None:
    assert monitor.exit_detail(1, "share not mountable", "x") == "guest error: share not mountable"
    assert monitor.exit_detail(-9, None, "") == "QEMU killed by signal 9"
    assert monitor.exit_detail(1, None, "a\nqemu: bad thing\n") == (
        "QEMU exited with code 1: qemu: bad thing"
    )


def test_exited_status_why_it_stopped_comes_first() -> None:
    console = ConsoleLines()
    console.feed(b"VMWRAPPER_GUEST_DONE status=0\n")
    saved = monitor.exited_status(0, StopCause.SAVED, console, "")
    assert (saved.state, saved.detail) == (VmState.SAVED, "state saved in a snapshot")
    stopped = monitor.exited_status(-9, StopCause.WRAPPER, console, "")
    assert (stopped.state, stopped.detail) == (VmState.POWERED_OFF, "stopped by the wrapper")
    assert stopped.exit_code == -9


def test_exited_status_by_itself() -> None:
    console = ConsoleLines()
    off = monitor.exited_status(0, StopCause.NONE, console, "")
    assert off.state is VmState.POWERED_OFF
    assert off.detail == "guest powered off (no VMWRAPPER_GUEST_DONE line)"
    console.feed(b"VMWRAPPER_GUEST_DONE status=3\nVMWRAPPER_GUEST_ERROR: disk full\n")
    done = monitor.exited_status(0, StopCause.NONE, console, "")
    assert done.detail == "guest powered off (VMWRAPPER_GUEST_DONE status=3)"
    crashed = monitor.exited_status(1, StopCause.NONE, console, "qemu: boom\n")
    assert (crashed.state, crashed.detail) == (VmState.CRASHED, "guest error: disk full")


def test_checkpoint_tags() -> None:
    monitor.check_tag("ckpt_1.a:b-c")
    for bad in ("", "with space", "x" * 129, "semi;colon"):
        with pytest.raises(CheckpointError, match="not usable as a QEMU snapshot tag"):
            monitor.check_tag(bad)
