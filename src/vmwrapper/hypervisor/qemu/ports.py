"""The host ports of one QEMU VM: which are fixed, which we pick, and which a failed start
could not bind (pure; the picking itself is the injected ``Picker``, normally
``vmwrapper.hostports.free_port``).

A port we pick is free when we pick it, but QEMU binds it a moment later: another program
can take it in between. QEMU then exits at start with one line naming the rule; the back end
re-picks exactly the picked ports that line names and starts again
(``docs/qemu-backend.md#host-ports``). A fixed port (the job's own ``host_port``) is never
changed: a clash there is the job's or the host's, and fails the start as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace

from vmwrapper.hypervisor.base import PortRule, RemoteDesktop
from vmwrapper.hypervisor.qemu.cmdline import VNC_BASE_PORT

#: ``picker(bind, avoid=..., candidates=...)`` → a free port (``hostports.free_port``).
Picker = Callable[..., int]

#: QEMU serves VNC display N on 5900+N; we pick among the first thousand displays.
VNC_PORTS = range(VNC_BASE_PORT, VNC_BASE_PORT + 1000)

# QEMU 7.2's words when a bind fails at start (checked against real QEMU in the tests):
#   -netdev user,...: Could not set up host forwarding rule 'tcp:127.0.0.1:34417-:80'
#   -vnc 127.0.0.1:7,password=on: Failed to find an available port: Address already in use
_HOSTFWD_FAILED = re.compile(r"Could not set up host forwarding rule '(?:tcp|udp):[^:']*:(\d+)-")
_VNC_FAILED = re.compile(r"-vnc [^:\s]*:(\d+)[^:]*: Failed to (?:find an available port|start)")


@dataclass(frozen=True)
class QemuPorts:
    """Host ports in use: the forwards in VmConfig order (0 replaced by the port picked), VNC.

    ``picked`` holds the ports we chose (and may choose again); the others are fixed.
    """

    forwards: tuple[PortRule, ...] = ()
    vnc: int | None = None
    picked: frozenset[int] = field(default=frozenset())


def pick_ports(
    rules: tuple[PortRule, ...],
    remote_desktop: RemoteDesktop | None,
    picker: Picker,
    *,
    keep: QemuPorts | None = None,
    lost: Collection[int] = (),
) -> QemuPorts:
    """Ports for every rule with host port 0 and for VNC when its port is 0, distinct from
    each other and from every fixed port. With ``keep``, its picked ports are kept except
    those in ``lost``, which are picked anew (never the lost one again)."""
    fixed = {rule.host_port for rule in rules if rule.host_port}
    if remote_desktop is not None and remote_desktop.port:
        fixed.add(remote_desktop.port)
    taken = fixed | set(lost)
    if keep is not None:
        taken |= keep.picked - set(lost)  # kept picks stay theirs, whatever the rule order
    picked: list[int] = []

    def choose(bind: str, previous: int | None, candidates: range | None = None) -> int:
        if previous is not None and previous not in lost:
            port = previous
        else:
            port = picker(bind, avoid=frozenset(taken), candidates=candidates)
        taken.add(port)
        picked.append(port)
        return port

    forwards: list[PortRule] = []
    for index, rule in enumerate(rules):
        if rule.host_port:
            forwards.append(rule)
            continue
        previous = keep.forwards[index].host_port if keep is not None else None
        forwards.append(replace(rule, host_port=choose(rule.bind or "", previous)))
    vnc: int | None = None
    if remote_desktop is not None:
        vnc = remote_desktop.port or choose(
            "127.0.0.1", keep.vnc if keep is not None else None, VNC_PORTS
        )
    return QemuPorts(forwards=tuple(forwards), vnc=vnc, picked=frozenset(picked))


def unbound_picked_ports(qemu_stderr: str, ports: QemuPorts) -> frozenset[int]:
    """The picked ports that QEMU says it could not bind (empty: not a picked-port clash)."""
    failed = {int(port) for port in _HOSTFWD_FAILED.findall(qemu_stderr)}
    failed |= {VNC_BASE_PORT + int(display) for display in _VNC_FAILED.findall(qemu_stderr)}
    return frozenset(failed & ports.picked)
