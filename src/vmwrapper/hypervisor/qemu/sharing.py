"""The host side of a "serial" share's transport (docs/shared-transport.md).

A share's transport "auto" is resolved once per back end to 9p where this QEMU has it, else
serial; a "serial" share's file service listens before QEMU starts, is attached to the
connection QEMU says is its own once QMP answers, and is closed in the clean-up.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from typing import Any

from vmwrapper import hostos
from vmwrapper.errors import VmStartError
from vmwrapper.hypervisor.base import Share
from vmwrapper.hypervisor.qemu.shareport import (
    chardev_source_port,
    has_virtio_9p,
    resolve_transports,
)
from vmwrapper.shared_dir.fileservice import FileService

log = logging.getLogger(__name__)


class ShareTransports:
    """The shares of one VM, their transports resolved, and a "serial" share's file service.

    ``shares`` is the configuration's shares, "auto" replaced once :meth:`port` has run.
    """

    def __init__(self, shares: tuple[Share, ...], binary: str) -> None:
        self.shares = shares
        self.binary = binary
        self._service: FileService | None = None
        self._probe: subprocess.Popen[str] | None = None  # QEMU listing its devices
        self._probe_error: OSError | None = None  # why it could not start
        self.held = False  # the VM stopped by the wrapper (see hold)

    def _unresolved(self) -> bool:
        return any(s.transport not in ("9p", "serial") for s in self.shares)

    def prefetch(self) -> None:
        """Start asking this QEMU whether it has 9p, if a share needs to know: it answers
        (~40 ms) while the wrapper makes the disks
        (docs/performance.md#the-fixed-cost-around-a-short-job)."""
        if self._probe is not None or not self._unresolved():
            return
        try:
            self._probe = hostos.spawn(
                [self.binary, "-device", "help"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                text=True,
            )  # fmt: skip
        except OSError as exc:
            self._probe_error = exc  # said when the answer is needed

    def _device_help(self) -> str:
        self.prefetch()
        probe, self._probe = self._probe, None
        if probe is None:
            raise VmStartError(f"cannot run {self.binary}: {self._probe_error}")
        try:
            return probe.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired as exc:
            probe.kill()
            probe.communicate()
            raise VmStartError(f"{self.binary} -device help did not answer: {exc}") from exc

    def port(self) -> int | None:
        """The file service of a "serial" share, listening before QEMU connects to it."""
        self._resolve()
        share = next((s for s in self.shares if s.transport == "serial"), None)
        if share is None:
            return None
        if self._service is None:
            self._service = FileService(share.host_path)
        self.held = self._service.held = False  # a new QEMU runs its guest
        return self._service.listen()

    def _resolve(self) -> None:
        """ "auto" → 9p where this QEMU has it, else serial (docs/shared-transport.md)."""
        if not self._unresolved():
            return
        help_text = self._device_help()
        self.shares = shares = resolve_transports(self.shares, has_virtio_9p(help_text))
        log.info(
            "shared directory transport: %s",
            ", ".join(f"{s.name} {s.transport}" for s in shares),
            extra={"event": "share_transport", "shares": {s.name: s.transport for s in shares}},
        )

    def attach(self, execute: Callable[[str], Any], timeout: float) -> None:
        """Serve the connection that QEMU says is its own (docs/shared-transport.md)."""
        service = self._service
        if service is not None:
            source = chardev_source_port(execute("query-chardev"), service.port)
            service.attach(source, timeout=timeout)

    def hold(self, held: bool) -> None:
        """The VM stops (a pause, a savevm) or runs again: a transfer the stop cut in two
        waits for its bytes rather than being dropped as given up."""
        self.held = held
        if self._service is not None:
            self._service.held = held

    def close(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:  # a back end that never started
            probe.kill()
            probe.communicate()
        if self._service is not None:
            self._service.close()
            self._service = None
