"""The built guest image under QemuBackend (TCG): real jobs through the shared directory.

Each test boots the image once (about 10-15 s under TCG). The guest runs
``/root/shared/boinc_app`` (a busybox sh script written here) and powers off; its console
lines come back through ``guest_log()``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from helpers.qemu_fixtures import (
    GuestWatch,
    counts,
    make_guest_slot,
    non_loopback_ipv4,
    qemu_backend,
    sha256,
)
from vmwrapper.errors import CheckpointRefused
from vmwrapper.hypervisor.base import NetworkConfig, PortRule, Share, VmState
from vmwrapper.hypervisor.qemu.backend import QemuBackend

pytestmark = pytest.mark.system


@pytest.fixture
def guest_image(default_guest_image: Path) -> Path:
    """The default guest image (built once per session through the image cache)."""
    return default_guest_image


JOB_APP = """#!/bin/sh
echo "interfaces: $(ls /sys/class/net | tr '\\n' ' ')"
read -r line < in
echo "input: $line"
# write the VM's own disk (8 MiB in): the write must land in the overlay only
dd if=/dev/urandom of=/dev/vda bs=4096 seek=2048 count=16 2>/dev/null && echo "disk written"
i=0
while [ $i -lt 15 ]; do i=$((i+1)); echo "count $i"; sleep 0.2; done
echo "result of $line after $i steps" > out
"""


def test_job_runs_pauses_resumes_and_leaves_the_multiattach_parent_alone(
    tmp_path: Path, guest_image: Path
) -> None:
    slot, project, config = make_guest_slot(
        tmp_path, guest_image, JOB_APP, {"in": "forty-two\n"}, multiattach=True
    )
    parent = project / "vm_parent.vdi"
    digest = sha256(parent)
    with qemu_backend(config) as vm:
        vm.start()
        watch = GuestWatch(vm)
        watch.wait_line(lambda line: line == "count 3")
        vm.pause()
        assert vm.status().state is VmState.PAUSED
        watch.poll()
        paused_at = max(counts(watch.lines))
        time.sleep(1.5)  # 7 steps' worth of guest time: none may pass while paused
        assert vm.status().state is VmState.PAUSED
        watch.poll()
        assert max(counts(watch.lines)) <= paused_at + 1  # a line in flight may still land
        vm.resume()
        status = watch.wait_stopped()

        assert status.state is VmState.POWERED_OFF and status.exit_code == 0, status
        assert (slot / "shared" / "out").read_text() == "result of forty-two after 15 steps\n"
        assert "input: forty-two" in watch.lines
        assert "interfaces: lo" in watch.lines  # network off: no NIC at all, only loopback
        assert "disk written" in watch.lines
        assert counts(watch.lines) == list(range(1, 16))
        assert "VMWRAPPER_GUEST_DONE status=0" in watch.lines
        assert vm.guest_done_status == 0 and "status=0" in status.detail
        assert vm.cpu_time() > 1.0
        assert vm.diagnose() == ()
        # The guest's disk write is in the overlay (it differs from the parent) ...
        compare = subprocess.run(
            ["qemu-img", "compare", "-U", str(parent), str(vm.files.disk_overlay)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert compare.returncode == 1, compare.stdout + compare.stderr
    # ... and the parent's bytes are unchanged.
    assert sha256(parent) == digest


COUNTER_APP = """#!/bin/sh
read -r start < in
i=$start
while [ $i -lt 60 ]; do i=$((i+1)); echo "count $i"; echo $i > progress; sleep 0.25; done
echo "counted from $start to $i" > out
"""


def _checkpoint_with_retries(vm: QemuBackend, name: str, attempts: int = 40) -> int:
    """Take a checkpoint, retrying while the guest holds its share mounted; the refusals."""
    for refused in range(attempts):
        try:
            vm.checkpoint(name)
            return refused
        except CheckpointRefused:
            time.sleep(0.3)
    raise AssertionError(f"checkpoint refused {attempts} times")


def test_checkpoint_mid_job_survives_killing_qemu_and_the_wrapper(
    tmp_path: Path, guest_image: Path
) -> None:
    slot, _project, config = make_guest_slot(tmp_path, guest_image, COUNTER_APP, {"in": "0\n"})
    with qemu_backend(config) as first:
        pid = first.start()
        watch = GuestWatch(first)
        watch.wait_line(lambda line: line == "count 12")
        watch.poll()
        before = max(counts(watch.lines))
        _checkpoint_with_retries(first, "ckpt_mid")
        assert (slot / "live_ckpt_mid.ram").is_file()  # live: the guest ran on meanwhile
        watch.poll()
        after = max(counts(watch.lines))
        watch.wait_line(lambda line: line == f"count {after + 12}")
        killed_at = max(counts(watch.lines))
        # QEMU is killed, and the wrapper with it: nothing of `first` is used again.
        os.kill(pid, signal.SIGKILL)
        assert watch.wait_stopped(10).state is VmState.CRASHED

        with qemu_backend(config) as second:  # a new wrapper process: state only from files
            assert "ckpt_mid" in second.checkpoints()
            second.start(restore="ckpt_mid")
            assert "-incoming" in second.argv
            resumed = GuestWatch(second)
            status = resumed.wait_stopped()
            assert status.state is VmState.POWERED_OFF, status
            numbers = counts(resumed.lines)
            # The guest continued from the snapshot: not from 1, not from where it was killed.
            assert before <= numbers[0] - 1 <= after + 1, (before, after, numbers[:3])
            assert numbers[0] < killed_at
            assert numbers == list(range(numbers[0], 61))
            assert (slot / "shared" / "out").read_text() == "counted from 0 to 60\n"
            assert (slot / "shared" / "progress").read_text() == "60\n"


PORT_APP = """#!/bin/sh
echo "interfaces: $(ls /sys/class/net | tr '\\n' ' ')"
# report the NIC's link state on each change until it went down and up again (set_network)
last=x; down=0; n=0
while [ $n -lt 300 ]; do
    c=$(cat /sys/class/net/eth0/carrier 2>/dev/null)
    if [ "$c" != "$last" ]; then echo "carrier $c"; last=$c; fi
    [ "$c" = 0 ] && down=1
    [ $down = 1 ] && [ "$c" = 1 ] && break
    n=$((n+1)); sleep 0.1
done
printf 'HTTP/1.0 200 OK\\r\\n\\r\\nhello from the guest\\n' > /tmp/reply
echo "serving"
nc -l -p 8080 < /tmp/reply > /dev/null
echo "served"
"""


def _http_get(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=3) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        sock.settimeout(3)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        return data


def test_network_switch_and_port_forward_on_loopback_only(
    tmp_path: Path, guest_image: Path
) -> None:
    _slot, _project, config = make_guest_slot(tmp_path, guest_image, PORT_APP, {})
    network = NetworkConfig(enabled=True, port_rules=(PortRule(0, 8080),))
    config = replace(config, network=network)
    with qemu_backend(config) as vm:
        vm.start()
        host_port = vm.ports().forwards[0].host_port
        watch = GuestWatch(vm)
        watch.wait_line(lambda line: line == "carrier 1")
        vm.set_network(False)  # the client suspends network use: the guest loses its link
        watch.wait_line(lambda line: line == "carrier 0", timeout=20)
        vm.set_network(True)
        watch.wait_line(lambda line: line == "serving", timeout=20)
        assert watch.lines[-3:-1] == ["carrier 0", "carrier 1"]
        assert any(line.startswith("interfaces: ") and "eth0" in line for line in watch.lines)
        other = non_loopback_ipv4()
        if other is not None:
            with pytest.raises(OSError):
                _http_get(other, host_port)
        reply = b""
        deadline = time.monotonic() + 30
        while b"hello from the guest" not in reply and time.monotonic() < deadline:
            try:
                reply = _http_get("127.0.0.1", host_port)
            except OSError:
                reply = b""
            time.sleep(0.3)
        assert b"hello from the guest" in reply
        assert watch.wait_stopped().state is VmState.POWERED_OFF
        assert "served" in watch.lines


def test_guest_error_makes_a_crash_with_the_guests_words(tmp_path: Path, guest_image: Path) -> None:
    """No `shared` share: the guest says why and panics; pvpanic makes QEMU exit non-zero."""
    _slot, _project, config = make_guest_slot(tmp_path, guest_image, "#!/bin/sh\n", {})
    config = replace(config, shares=())
    with qemu_backend(config) as vm:
        vm.start()
        status = GuestWatch(vm).wait_stopped()
        assert status.state is VmState.CRASHED
        assert status.exit_code not in (0, None)
        assert status.detail.startswith("guest error: ") and "shared" in status.detail


# A guest that mounts the 9p share itself and keeps it (as an image without our sync agent
# may): QEMU refuses every savevm while it is mounted. It writes to the host share directly.
KEEP_MOUNTED_APP = """#!/bin/sh
mkdir -p /mnt/keep
mount -t 9p -o trans=virtio,version=9p2000.L,cache=none shared /mnt/keep || exit 1
echo boot >> /mnt/keep/boots
echo "share kept mounted"
i=0
while [ $i -lt 1200 ]; do i=$((i+1)); echo "tick $i"; sleep 0.5; done
"""


def test_a_share_kept_mounted_refuses_snapshots_but_not_a_disk_checkpoint(
    tmp_path: Path, guest_image: Path
) -> None:
    slot, _project, config = make_guest_slot(tmp_path, guest_image, KEEP_MOUNTED_APP, {})
    with qemu_backend(config) as vm:
        vm.start()
        watch = GuestWatch(vm)
        watch.wait_line(lambda line: line == "share kept mounted")
        with pytest.raises(CheckpointRefused):
            vm.checkpoint("full")
        vm.checkpoint_disks("disks1")
        assert "disks1" in vm.checkpoints()
        assert (slot / "live_disks1.json").is_file()  # a disk layer, no RAM file
        assert not (slot / "live_disks1.ram").exists()
        assert vm.status().state is VmState.RUNNING  # paused only while the disks were saved
        ticks = max(int(x.split()[1]) for x in watch.poll() + watch.lines if x.startswith("tick"))
        watch.wait_line(lambda line: line == f"tick {ticks + 2}")  # and the guest goes on
        vm.poweroff(0.0)
        # the restore boots afresh from the saved disks (no VM state to load)
        vm.start(restore="disks1")
        watch = GuestWatch(vm)
        watch.wait_line(lambda line: line == "share kept mounted")
        assert (slot / "shared" / "boots").read_text() == "boot\nboot\n"
        assert "disks1" in vm.checkpoints()  # still there for the next restore
        vm.poweroff(0.0)


ECHO_APP = """#!/bin/sh
read -r line < in
echo "got $line" >> out
"""


def test_a_slots_vdi_is_converted_once_per_image_in_the_project_dir(
    tmp_path: Path, guest_image: Path
) -> None:
    """A task's disk is its overlay and snapshots: the slot's VDI copy (the client's
    copy_file) is converted once into the project dir and replaced by a link to it."""
    slot, project, config = make_guest_slot(tmp_path, guest_image, ECHO_APP, {"in": "one\n"})
    with qemu_backend(config) as vm:
        vm.create()
        converted = list(project.glob("vm_image.vdi.*.qcow2"))
        assert len(converted) == 1
        link = (slot / "vm_image.vdi").read_text()
        assert link == f"<soft_link>../../projects/example.org/{converted[0].name}</soft_link>\n"
        assert not list(slot.glob("*.qcow2.*")) and not list(slot.glob("vm_image.vdi.*"))
        assert sum(p.stat().st_size for p in slot.iterdir() if p.is_file()) < 1 << 20
        vm.start()
        status = GuestWatch(vm).wait_stopped()
        assert status.state is VmState.POWERED_OFF and status.exit_code == 0, status
        assert (slot / "shared" / "out").read_text() == "got one\n"
        vm.start()  # a restart: the slot's link leads to the same conversion
        assert GuestWatch(vm).wait_stopped().state is VmState.POWERED_OFF
        assert (slot / "shared" / "out").read_text() == "got one\ngot one\n"
    # a second task of the same app version: its copy is not converted again
    other = tmp_path / "slots" / "1"
    (other / "shared").mkdir(parents=True)
    (other / "shared" / "boinc_app").write_text(ECHO_APP)
    (other / "shared" / "in").write_text("two\n")
    shutil.copyfile(guest_image, other / "vm_image.vdi")
    mtime = converted[0].stat().st_mtime_ns
    second = replace(
        config,
        slot_dir=other,
        disk_image=other / "vm_image.vdi",
        shares=(Share("shared", other / "shared"),),
    )
    with qemu_backend(second) as vm:
        vm.create()
        assert list(project.glob("vm_image.vdi.*.qcow2")) == converted
        assert converted[0].stat().st_mtime_ns == mtime
        assert (other / "vm_image.vdi").read_text().startswith("<soft_link>")
