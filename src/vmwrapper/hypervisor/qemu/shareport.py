"""The QEMU side of the ``serial`` share transport (pure): the virtio-serial port's argv and
which source port QEMU's chardev connected from (docs/shared-transport.md).

QEMU connects to the wrapper's file service as a TCP client (``server=off``): TCP is the
chardev every QEMU host has (Windows has no unix sockets to rely on), and as the client QEMU
needs no port of its own picked in advance. ``query-chardev`` then names QEMU's end of the
connection, which is how the file service tells our QEMU from any other local program.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from vmwrapper.errors import BackendError
from vmwrapper.hypervisor.base import Share

#: The chardev and device ids in the argv; the guest finds the port by its name.
CHARDEV_ID = "sharefs0"
SERIAL_BUS_ID = "vser0"
PORT_NAME = "org.boinc.vmwrapper.shared"

# "tcp:127.0.0.1:37094 <-> 127.0.0.1:38109": QEMU's end first, then the peer (ours)
_CONNECTED = re.compile(r"tcp:[^ ]*:(\d+) <-> [^ ]*:(\d+)")


def serial_share_args(port: int) -> list[str]:
    """A virtio-serial controller with one named port, wired to 127.0.0.1:``port``."""
    return [
        # nodelay: a request line goes out at once, not after the previous reply's ACK
        "-chardev", f"socket,id={CHARDEV_ID},host=127.0.0.1,port={port},server=off,nodelay=on",
        "-device", f"virtio-serial-pci,id={SERIAL_BUS_ID}",
        "-device", f"virtserialport,bus={SERIAL_BUS_ID}.0,chardev={CHARDEV_ID},name={PORT_NAME}",
    ]  # fmt: skip


def has_virtio_9p(device_help: str) -> bool:
    """Whether ``qemu-system-* -device help`` lists virtio-9p (QEMU on Windows has none)."""
    return re.search(r'name "virtio-9p-(pci|device)"', device_help) is not None


def resolve_transports(shares: tuple[Share, ...], with_9p: bool) -> tuple[Share, ...]:
    """``auto`` → 9p where QEMU has it, else serial (docs/shared-transport.md#the-default);
    only ``shared`` can go over serial (project and scratch are mounted on demand)."""
    resolved = []
    for share in shares:
        transport = share.transport
        if share.name != "shared" or transport not in ("serial", "9p"):
            transport = "9p" if with_9p or share.name != "shared" else "serial"
        resolved.append(replace(share, transport=transport))
    return tuple(resolved)


def chardev_source_port(reply: Any, service_port: int) -> int:
    """QEMU's own port of its connection to ``service_port``, from ``query-chardev``."""
    for chardev in reply if isinstance(reply, list) else ():
        if not isinstance(chardev, dict) or chardev.get("label") != CHARDEV_ID:
            continue
        match = _CONNECTED.match(str(chardev.get("filename", "")))
        if match is not None and int(match.group(2)) == service_port:
            return int(match.group(1))
        raise BackendError(
            f"QEMU's share channel {CHARDEV_ID} is not connected to port {service_port} "
            f"(query-chardev says {chardev.get('filename')!r})"
        )
    raise BackendError(f"QEMU has no chardev {CHARDEV_ID} (query-chardev: {reply!r:.200})")
