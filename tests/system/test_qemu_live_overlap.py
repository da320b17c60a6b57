"""Live checkpoints whose migration starts while the guest runs, the guest stopped a lead
later (docs/qemu-backend.md#the-stopped-window), on the guest image: an app that keeps a
counter in its RAM and the same counter on its disk, and says so when the two differ.

A checkpoint whose disk is of another instant than its RAM would show after a restore: the
app reads the disk back at the top of each turn and finds a number other than its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import pytest

from helpers.qemu_fixtures import GuestWatch, counts, make_guest_slot, qemu_backend
from vmwrapper.errors import CheckpointRefused
from vmwrapper.hypervisor.qemu.backend import QemuBackend
from vmwrapper.hypervisor.qemu.livestate import SetupLead

pytestmark = pytest.mark.system

LIVE_LOG = "vmwrapper.hypervisor.qemu.live"

# From 8 MiB into the VM's disk, past what the guest image uses (as test_qemu_guest.py
# writes): turn i writes the number i to sector i of that area, direct, before it prints
# "count i". At the top of a turn the disk holds exactly the turns the RAM has done: sector i
# holds i and sector i+1 is empty. A disk from a later instant than the RAM has that next
# sector written already; one from an earlier instant lacks sector i.
APP = """#!/bin/sh
kib=$(awk '/MemTotal/ { print $2 }' /proc/meminfo)
yes 0123456789abcdef | head -c 1048576 > /tmp/b1
cat /tmp/b1 /tmp/b1 /tmp/b1 /tmp/b1 /tmp/b1 /tmp/b1 /tmp/b1 /tmp/b1 > /tmp/b8
n=0
while [ $n -lt $(( kib * 35 / 100 / 1024 / 8 )) ]; do cat /tmp/b8 >> /tmp/fill; n=$((n+1)); done
base=16384
dd if=/dev/zero of=/dev/vda bs=1M seek=8 count=16 oflag=direct 2>/dev/null
echo 0 | dd of=/dev/vda bs=512 seek=$base count=1 conv=sync oflag=direct 2>/dev/null
sector() {
  dd if=/dev/vda bs=512 skip=$((base + $1)) count=1 iflag=direct 2>/dev/null | tr -dc 0-9
}
i=0
echo "filled"
while [ $i -lt 30000 ]; do
  this=$(sector $i)
  next=$(sector $((i + 1)))
  [ "$this" = "$i" ] && [ -z "$next" ] || echo "MISMATCH ram=$i disk=$this next=$next"
  i=$((i+1))
  echo $i | dd of=/dev/vda bs=512 seek=$((base + i)) count=1 conv=sync oflag=direct 2>/dev/null
  echo "count $i"
done
"""


@pytest.fixture
def guest_image(default_guest_image: Path) -> Path:
    return default_guest_image


def _setup_lead(vm: QemuBackend) -> SetupLead:
    """The back end's timing of the stop, which these tests force."""
    return vm._snapshots._live.setup_lead


def _checkpoint(vm: QemuBackend, name: str) -> None:
    """As the supervisor does: a checkpoint refused (the guest's share mounted) is retried."""
    deadline = time.monotonic() + 60
    while True:
        try:
            vm.checkpoint(name)
            return
        except CheckpointRefused:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _events(caplog: pytest.LogCaptureFixture, event: str, name: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if getattr(r, "event", None) == event and isinstance(r.args, tuple) and r.args[0] == name
    ]


def _resumes_in_step(vm: QemuBackend, watch: GuestWatch, name: str) -> None:
    """QEMU killed, the guest restored from ``name``: it counts on, its disk in step."""
    watch.poll()
    before = counts(watch.lines)
    vm.poweroff(timeout=0)
    seen = len(watch.lines)
    vm.start(restore=name)
    watch.wait_line(lambda line: len(counts(watch.lines[seen:])) > 5, 120)
    after = watch.lines[seen:]
    assert not [line for line in after if line.startswith("MISMATCH")], after
    assert 1 < counts(after)[0] <= before[-1] + 1, (before[-3:], after)  # from the checkpoint


def test_a_checkpoint_that_overlaps_qemus_setup_restores_ram_and_disk_in_step(
    tmp_path: Path, guest_image: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _slot, _project, config = make_guest_slot(tmp_path, guest_image, APP, {})
    with qemu_backend(replace(config, memory_mb=1024)) as vm:
        watch = GuestWatch(vm)
        vm.start()
        watch.wait_line(lambda line: line == "filled", 240)
        _checkpoint(vm, "boinc_1")  # the guest stopped first; its setup time is measured
        lead = _setup_lead(vm)
        assert lead.setup is not None
        overlapped = None
        with caplog.at_level(logging.DEBUG, logger=LIVE_LOG):
            for n in range(2, 10):  # the RAM in 4 KiB pages: QEMU's setup takes ~20 ms
                # the guest stopped 1 ms after the migration's start, whatever an earlier
                # late stop taught the back end (a loaded host can delay the stop that much)
                lead.least, lead.share = 0.0, SetupLead.share
                lead.measured(2)
                _checkpoint(vm, f"boinc_{n}")
                windows = _events(caplog, "qemu_live_window", f"boinc_{n}")
                if windows and getattr(windows[-1], "lead_ms", 0) > 0:
                    overlapped = f"boinc_{n}"
                    break
        assert overlapped is not None, [r.getMessage() for r in caplog.records]
        assert overlapped in vm.checkpoints()
        _resumes_in_step(vm, watch, overlapped)


def test_a_stop_after_qemus_setup_takes_the_checkpoint_again_with_the_guest_stopped_first(
    tmp_path: Path, guest_image: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The lead longer than the whole migration: when the guest is stopped, QEMU has saved
    the devices long before, so that RAM and the disk frozen now are not of one instant."""
    _slot, _project, config = make_guest_slot(tmp_path, guest_image, APP, {})
    with qemu_backend(config) as vm:
        watch = GuestWatch(vm)
        vm.start()
        watch.wait_line(lambda line: line == "filled", 240)
        _checkpoint(vm, "boinc_1")
        lead = _setup_lead(vm)
        lead.measured(6000)  # a lead of 3 s
        with caplog.at_level(logging.INFO, logger=LIVE_LOG):
            _checkpoint(vm, "boinc_2")
        late = _events(caplog, "qemu_live_stop_late", "boinc_2")
        assert [getattr(r, "status", None) for r in late] == ["completed"]
        assert lead.share == SetupLead.share / 2
        assert vm.checkpoints() == ("boinc_1", "boinc_2")
        assert not list(vm.config.slot_dir.glob("live_*.tmp"))
        _resumes_in_step(vm, watch, "boinc_2")
