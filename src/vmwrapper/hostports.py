"""Free TCP ports on this host: the one picker used by the wrapper, the back ends and the
BOINC-client driver (vboxwrapper's ``boinc_get_port``: bind, read the port, close).

A picked port is only free *now*: whoever binds it next can lose a race with another
program, so callers that start a hypervisor on a picked port re-pick and retry when the
bind fails (``docs/qemu-backend.md#host-ports``). Within one VM a picked port never equals
another rule's fixed port or another picked port: ``avoid`` carries those.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Collection
from contextlib import ExitStack

from vmwrapper.errors import BackendError

#: How many ports the kernel may hand out that are in ``avoid`` before we give up.
_MAX_EPHEMERAL_TRIES = 64


def free_port(
    bind: str = "127.0.0.1",
    *,
    avoid: Collection[int] = (),
    candidates: range | None = None,
    rng: random.Random | None = None,
) -> int:
    """A TCP port on ``bind`` that nobody listens on now and that is not in ``avoid``.

    Without ``candidates`` the kernel picks an ephemeral port; with them, a random free one
    of that range (VNC's 5900+ display ports, for example).
    """
    if candidates is None:
        return _ephemeral(bind, avoid)
    ports = [p for p in candidates if p not in avoid]
    (rng or random.Random()).shuffle(ports)
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((bind, port))
            except OSError:
                continue
            return port
    raise BackendError(f"no free TCP port in {candidates.start}-{candidates.stop - 1}")


def _ephemeral(bind: str, avoid: Collection[int]) -> int:
    # Sockets stay bound until a port outside ``avoid`` comes up, so the kernel cannot hand
    # the same unwanted port out twice.
    with ExitStack() as held:
        for _ in range(_MAX_EPHEMERAL_TRIES):
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((bind, 0))
            port = int(sock.getsockname()[1])
            if port not in avoid:
                return port
    raise BackendError(f"no free TCP port on {bind or 'any address'} outside {sorted(avoid)}")
