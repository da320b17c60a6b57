"""A synchronous face on ``qemu.qmp.QMPClient``: one event loop, every call with a timeout.

``qemu.qmp`` is asyncio; the back end owns one event loop and runs each call to completion
within a timeout, so every back end method is synchronous and bounded in time.

``asyncio`` and ``qemu.qmp`` are imported at the first connect, not with this module: the
wrapper then spawns QEMU before it pays for them, and QEMU starts up meanwhile
(docs/performance.md#the-fixed-cost-around-a-short-job).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from vmwrapper.errors import BackendError

if TYPE_CHECKING:
    import asyncio

    from qemu.qmp import QMPClient

#: Where QMP listens: a Unix socket, or (host, port) on TCP loopback where the host has no
#: Unix socket that QEMU and asyncio share (Windows).
QmpAddress: TypeAlias = Path | tuple[str, int]

#: How often a starting QEMU's socket is looked for: QEMU makes it some 20-60 ms after its
#: spawn, and every run waits for it (a stat and a refused connect are cheap).
CONNECT_POLL = 0.01


class Qmp:
    """One QMP session (connected again after a lost one) on the back end's event loop."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: QMPClient | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None

    def _run(self, coro: Any, timeout: float) -> Any:
        import asyncio

        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def connect(self, address: QmpAddress, timeout: float, *, quiet: bool = False) -> None:
        """Connect to QEMU's QMP socket; ``quiet``: a refusal is expected (QEMU starting)."""
        import asyncio

        from qemu.qmp import QMPClient

        client = QMPClient("vmwrapper")
        qmp_log = logging.getLogger("qemu.qmp")
        level = qmp_log.level
        if quiet:  # qemu.qmp logs a refused connect as an ERROR; we retry it instead
            qmp_log.setLevel(logging.CRITICAL)
        try:
            self._run(
                client.connect(address if isinstance(address, tuple) else str(address)), timeout
            )
        except (Exception, asyncio.CancelledError) as exc:
            raise BackendError(f"cannot connect to QMP at {address}: {exc}") from exc
        finally:
            qmp_log.setLevel(level)
        self._client = client

    def execute(self, cmd: str, args: dict[str, object] | None, timeout: float) -> Any:
        import asyncio

        from qemu.qmp import ExecuteError

        if self._client is None:
            raise BackendError(f"QMP not connected (for {cmd})")
        try:
            return self._run(self._client.execute(cmd, args), timeout)
        except ExecuteError as exc:  # QEMU answered with an error: the session is fine
            raise BackendError(f"QMP {cmd} failed: {exc}", argv=(cmd,)) from exc
        except (Exception, asyncio.CancelledError) as exc:  # lost or stuck: start afresh
            self.disconnect()
            raise BackendError(f"QMP {cmd}: no answer ({type(exc).__name__}: {exc})") from exc

    def send_fd(self, fd: int, fdname: str, timeout: float) -> None:
        """Hand QEMU an open file (SCM_RIGHTS) under ``fdname``, for a ``fd:`` migration URI:
        QEMU then needs no path and no shell."""
        if self._client is None:
            raise BackendError(f"QMP not connected (for getfd {fdname})")
        try:
            self._client.send_fd_scm(fd)
        except (OSError, ValueError, AttributeError) as exc:
            raise BackendError(f"cannot pass a file to QEMU: {exc}") from exc
        self.execute("getfd", {"fdname": fdname}, timeout)

    def disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            import asyncio

            # the error that broke the session comes back here; it was reported already
            with contextlib.suppress(Exception, asyncio.CancelledError):
                self._run(client.disconnect(), 5.0)

    def close(self) -> None:
        self.disconnect()
        if self._loop is not None:
            self._loop.close()
            self._loop = None


class QmpChannel:
    """QMP commands for the running QEMU: connected on demand, each with a timeout, and
    held in the CPU cap's running phase (a stopped QEMU cannot answer)."""

    def __init__(
        self,
        qmp: Qmp,
        socket: QmpAddress,
        timeout: float,
        *,
        vm_name: str,
        alive: Callable[[], bool],
        hold: Callable[[], contextlib.AbstractContextManager[None]],
    ) -> None:
        self.qmp = qmp
        self.socket = socket
        self.timeout = timeout
        self.vm_name = vm_name
        self._alive = alive
        self._hold = hold

    def execute(self, cmd: str, args: dict[str, object] | None = None, timeout: float = 0) -> Any:
        if not self._alive():
            raise BackendError(f"VM {self.vm_name} is not running (QMP {cmd})")
        if not self.qmp.connected:
            self.qmp.connect(self.socket, timeout=self.timeout)
        with self._hold():
            return self.qmp.execute(cmd, args, timeout or self.timeout)

    def alive(self) -> bool:
        return self._alive()

    def send_fd(self, fd: int, fdname: str) -> None:
        if not self._alive():
            raise BackendError(f"VM {self.vm_name} is not running (getfd {fdname})")
        if not self.qmp.connected:
            self.qmp.connect(self.socket, timeout=self.timeout)
        with self._hold():
            self.qmp.send_fd(fd, fdname, self.timeout)

    def hmp(self, line: str, timeout: float = 0) -> str:
        """A human monitor command through QMP; its reply text."""
        return str(self.execute("human-monitor-command", {"command-line": line}, timeout))

    def connect_at_start(
        self, deadline: float, clock: Callable[[], float], sleep: Callable[[float], None]
    ) -> None:
        """Connect to a QEMU that is starting, once it has made its socket, retried until
        ``deadline``: ProcessLookupError if QEMU exits first, TimeoutError (with the last
        refusal) at the deadline."""
        last: BaseException | None = None
        while clock() < deadline:
            if not self._alive():
                raise ProcessLookupError("QEMU exited during start")
            if not isinstance(self.socket, Path) or self.socket.exists():
                try:
                    self.qmp.connect(self.socket, self.timeout, quiet=True)
                    return
                except BackendError as exc:
                    last = exc
            sleep(CONNECT_POLL)
        raise TimeoutError(str(last))

    def screendump(self, path: Path, sleep: Callable[[float], None]) -> None:
        """The screen as PNG at ``path``, after a key press that wakes a blanked console."""
        self.execute("send-key", {"keys": [{"type": "qcode", "data": "shift"}]})
        sleep(1.0)  # as vboxwrapper: let the guest redraw
        self.execute("screendump", {"filename": str(path), "format": "png"})
