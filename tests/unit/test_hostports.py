"""The one free-port picker and the QEMU back end's port plan (pure), including the clash that
failed CI: a picked port equal to another rule's fixed port."""

from __future__ import annotations

import socket
from collections.abc import Collection

import pytest

from vmwrapper.errors import BackendError
from vmwrapper.hostports import free_port
from vmwrapper.hypervisor.base import PortRule, RemoteDesktop
from vmwrapper.hypervisor.qemu.ports import (
    VNC_PORTS,
    QemuPorts,
    pick_ports,
    unbound_picked_ports,
)

# QEMU 7.2's own words when a bind fails at start (run here against held sockets).
HOSTFWD_FAILED = (
    "qemu-system-x86_64: -netdev user,id=n0,hostfwd=tcp:127.0.0.1:34417-:80: "
    "Could not set up host forwarding rule 'tcp:127.0.0.1:34417-:80'\n"
)
HOSTFWD_ANY_FAILED = (
    "qemu-system-x86_64: -netdev user,id=n0,hostfwd=tcp::40001-:8080: "
    "Could not set up host forwarding rule 'tcp::40001-:8080'\n"
)
VNC_FAILED = (
    "qemu-system-x86_64: -vnc 127.0.0.1:7,password=on: "
    "Failed to find an available port: Address already in use\n"
)


class Lowest:
    """A picker that always offers the lowest port of its list not avoided: the kernel's
    worst case, handing out a port that another rule already uses."""

    def __init__(self, *ports: int) -> None:
        self.ports = ports
        self.calls: list[tuple[str, frozenset[int]]] = []

    def __call__(
        self, bind: str, *, avoid: Collection[int] = (), candidates: range | None = None
    ) -> int:
        self.calls.append((bind, frozenset(avoid)))
        pool = self.ports if candidates is None else [p for p in candidates]
        return next(p for p in pool if p not in avoid)


def test_a_picked_port_never_equals_a_fixed_port_or_another_pick() -> None:
    # the CI failure: rule 1 picked, rule 2 fixed at 51289, and the picker offered 51289 first
    rules = (PortRule(0, 80), PortRule(51289, 22), PortRule(0, 8080, bind=""))
    ports = pick_ports(rules, None, Lowest(51289, 51290, 51291))
    hosts = [rule.host_port for rule in ports.forwards]
    assert hosts == [51290, 51289, 51291]
    assert ports.picked == {51290, 51291}
    assert ports.vnc is None


def test_vnc_is_picked_in_the_display_range_apart_from_the_forwards() -> None:
    rules = (PortRule(VNC_PORTS.start, 80),)  # a fixed forward on display 0's port
    ports = pick_ports(rules, RemoteDesktop(0, "pw"), Lowest())
    assert ports.vnc == VNC_PORTS.start + 1
    assert ports.picked == {VNC_PORTS.start + 1}
    fixed = pick_ports((), RemoteDesktop(5999, "pw"), Lowest())
    assert fixed.vnc == 5999 and not fixed.picked


def test_repick_changes_only_the_lost_ports_and_never_offers_them_again() -> None:
    rules = (PortRule(0, 80), PortRule(0, 81), PortRule(7000, 22))
    first = pick_ports(rules, RemoteDesktop(0, "pw"), Lowest(6000, 6001, 6002, 6003))
    assert [r.host_port for r in first.forwards] == [6000, 6001, 7000]
    picker = Lowest(6000, 6001, 6002, 6003)
    again = pick_ports(rules, RemoteDesktop(0, "pw"), picker, keep=first, lost={6000})
    assert [r.host_port for r in again.forwards] == [6002, 6001, 7000]
    assert again.vnc == first.vnc  # not lost: kept
    assert again.picked == {6002, 6001, first.vnc}
    ((_, avoided),) = picker.calls
    assert {6000, 6001, 7000} <= avoided


def test_qemu_bind_failures_name_the_picked_ports_only() -> None:
    ports = QemuPorts(
        forwards=(PortRule(34417, 80), PortRule(40001, 8080, bind="")),
        vnc=5907,
        picked=frozenset({34417, 40001, 5907}),
    )
    assert unbound_picked_ports(HOSTFWD_FAILED, ports) == {34417}
    assert unbound_picked_ports(HOSTFWD_ANY_FAILED, ports) == {40001}
    assert unbound_picked_ports(VNC_FAILED, ports) == {5907}
    fixed = QemuPorts(forwards=(PortRule(34417, 80),), vnc=5907, picked=frozenset())
    assert not unbound_picked_ports(HOSTFWD_FAILED + VNC_FAILED, fixed)  # a fixed port: no re-pick
    assert not unbound_picked_ports("qemu-system-x86_64: some other start failure\n", ports)


def test_free_port_is_bindable_and_outside_avoid() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # free when picked
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        # a range of two: the held one is skipped, the avoided one is never offered
        with pytest.raises(BackendError, match="no free TCP port"):
            free_port(candidates=range(busy, busy + 2), avoid={busy + 1})


def test_free_port_never_returns_an_avoided_port() -> None:
    # every port avoided: the kernel's ephemeral offers are all refused, so it gives up
    with pytest.raises(BackendError, match="outside"):
        free_port(avoid=range(1, 65536))
