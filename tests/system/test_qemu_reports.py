"""QemuBackend's error-report and accounting calls on a real guest (TCG): the VM process's
priority, NIC byte counts (daily_xfer_limit_mb), the error screenshot and the log dump.

One guest boots for the whole module: it waits for one TCP exchange through a port forward
(receiving a known amount and sending a larger one) and then idles until it is stopped.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from helpers.qemu_fixtures import GuestWatch, make_guest_slot, qemu_backend
from vmwrapper.hypervisor.base import NetworkConfig, PortRule
from vmwrapper.hypervisor.process import thread_nices
from vmwrapper.hypervisor.qemu.backend import NET_ROTATE_BYTES, QemuBackend

pytestmark = pytest.mark.system

TO_GUEST = 100_000  # bytes the host sends to the guest
FROM_GUEST = 300_000  # bytes the guest sends back

EXCHANGE_APP = f"""#!/bin/sh
head -c {FROM_GUEST} /dev/zero > /tmp/reply
echo "serving"
nc -l -p 8080 < /tmp/reply > /dev/null
while true; do sleep 1; done
"""


#: the counter files present right after start(), before anything asked for a count
ARMED_BY_START: list[str] = []


@pytest.fixture(scope="module")
def running_vm(
    tmp_path_factory: pytest.TempPathFactory,
    default_guest_image: Path,
) -> Iterator[tuple[QemuBackend, GuestWatch]]:
    root = tmp_path_factory.mktemp("reports")
    _slot, _project, config = make_guest_slot(root, default_guest_image, EXCHANGE_APP, {})
    config = replace(
        config,
        # count_bytes: a daily transfer limit is set, so start() arms the counters
        network=NetworkConfig(enabled=True, port_rules=(PortRule(0, 8080),), count_bytes=True),
        screen=True,  # enable_screenshots_on_error
    )
    with qemu_backend(config) as vm:
        vm.start()
        ARMED_BY_START.extend(sorted(p.name for p in config.slot_dir.glob("qemu-net-*.pcap")))
        watch = GuestWatch(vm)
        watch.wait_line(lambda line: line == "serving")
        yield vm, watch


def _exchange(port: int) -> int:
    """Send TO_GUEST bytes, then read the guest's reply; the reply's length. (No half-close:
    busybox nc stops at its peer's EOF, even with its own data still to send.)"""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"x" * TO_GUEST)
        got = 0
        while got < FROM_GUEST and (chunk := sock.recv(65536)):
            got += len(chunk)
        return got


def test_net_usage_counts_each_direction_from_the_guests_side(
    running_vm: tuple[QemuBackend, GuestWatch],
) -> None:
    vm, _watch = running_vm
    assert ARMED_BY_START == ["qemu-net-received.0.pcap", "qemu-net-sent.0.pcap"]
    before = vm.net_usage()  # counted since start()
    assert before is not None
    got = 0
    deadline = time.monotonic() + 30
    while got < FROM_GUEST and time.monotonic() < deadline:
        try:
            got = _exchange(vm.ports().forwards[0].host_port)
        except OSError:
            time.sleep(0.3)  # nc not listening yet
    assert got == FROM_GUEST
    after = vm.net_usage()
    deadline = time.monotonic() + 10  # the last frames may still be on their way
    while after is not None and after.received < TO_GUEST and time.monotonic() < deadline:
        time.sleep(0.2)
        after = vm.net_usage()
    assert after is not None
    sent, received = after.sent - before.sent, after.received - before.received
    # Ethernet/IP/TCP headers and ACKs come on top; the big stream goes out of the guest.
    assert FROM_GUEST <= sent < FROM_GUEST * 1.3, after
    assert TO_GUEST <= received < FROM_GUEST, after
    again = vm.net_usage()
    assert again is not None and again.sent >= after.sent and again.received >= after.received
    pcaps = list(vm.config.slot_dir.glob("qemu-net-*.pcap"))
    assert len(pcaps) == 2 and all(p.stat().st_size < NET_ROTATE_BYTES for p in pcaps)


def test_set_priority_renices_every_thread_of_qemu(
    running_vm: tuple[QemuBackend, GuestWatch],
) -> None:
    vm, _watch = running_vm
    pid = vm.pid()
    assert pid is not None
    target = min(os.getpriority(os.PRIO_PROCESS, 0) + 5, 19)  # lowering is always allowed
    vm.set_priority(target)
    nices = thread_nices(pid)
    assert len(nices) > 1, "QEMU runs vCPU and I/O threads"
    assert set(nices.values()) == {target}


def test_screenshot_is_a_png_of_the_vms_screen(
    running_vm: tuple[QemuBackend, GuestWatch],
) -> None:
    vm, _watch = running_vm
    path = vm.screenshot()
    assert path == vm.config.slot_dir / "vbox_screenshot.png"
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 100


def test_hypervisor_logs_hold_this_runs_console_tail(
    running_vm: tuple[QemuBackend, GuestWatch],
) -> None:
    vm, _watch = running_vm
    logs = vm.hypervisor_logs(limit=2048)
    console = logs["VM Console Log (qemu-console.log)"]
    assert "serving" in console or len(console) > 1500  # a tail, cut to whole lines
    assert all(len(text) <= 2048 for text in logs.values())
    assert console.endswith("\n")
    vm.poweroff(timeout=0)
    assert vm.screenshot() is None and vm.net_usage() is None
