"""The checkpoints of one QEMU VM: live where the host can take them (``live.py``), else
QEMU's internal snapshots (``savevm`` / ``delvm``, ``blockdev-snapshot-internal-sync`` for
the disks alone), read through QMP while QEMU runs and with qemu-img when it does not."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from vmwrapper.errors import BackendError, CheckpointError, CheckpointRefused
from vmwrapper.hypervisor.qemu import monitor
from vmwrapper.hypervisor.qemu.cmdline import STATE_NODE
from vmwrapper.hypervisor.qemu.live import LiveCheckpoints
from vmwrapper.hypervisor.qemu.overlays import Overlays
from vmwrapper.hypervisor.qemu.process import QMP_LOST_GRACE, QemuProcess
from vmwrapper.hypervisor.qemu.qmp import QmpChannel

log = logging.getLogger(__name__)


class Snapshots:
    """Take, list and delete checkpoints (the back end's ``checkpoint``, ``checkpoint_disks``,
    ``checkpoints`` and ``delete_checkpoint``); ``timeout`` bounds a savevm, delvm or live
    checkpoint."""

    def __init__(
        self,
        channel: QmpChannel,
        process: QemuProcess,
        overlays: Overlays,
        live: LiveCheckpoints,
        timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self._execute, self._hmp = channel.execute, channel.hmp
        self._process = process
        self._overlays = overlays
        self._live = live
        self.timeout = timeout
        self.clock = clock

    def prepare_restore(
        self, loadvm: str | None, existing: tuple[str, ...]
    ) -> tuple[str | None, tuple[str, str] | None]:
        """QEMU not running: ready the slot for a start from checkpoint ``loadvm`` (None:
        boot afresh), one of ``existing``; (what ``-loadvm`` loads, a live checkpoint's
        (name, RAM file) to feed a QEMU started with ``-incoming``)."""
        if loadvm is not None and loadvm not in existing:
            raise CheckpointError(
                f"cannot restore checkpoint {loadvm!r}: {self._overlays.qcow2_files[0][1]} "
                f"has only {list(existing)}"
            )
        incoming: tuple[str, str] | None = None  # a live checkpoint's (name, RAM file)
        if loadvm is not None and loadvm in self._live.names():
            manifest = self._live.prepare_restore(loadvm)
            incoming = (loadvm, manifest.ram) if manifest.ram else None
            loadvm = None
        elif loadvm is not None and self._overlays.revert_disks(loadvm):
            loadvm = None  # the disks alone were saved: boot afresh from them
        self._live.collect_garbage()
        return loadvm, incoming

    def restore_live(
        self, name: str, ram: str, argv: tuple[str, ...], output: Callable[[], str]
    ) -> None:
        """Feed the waiting QEMU the checkpoint's RAM; a failure is a CheckpointError (the
        supervisor then boots afresh) and leaves no QEMU behind."""
        try:
            self._live.incoming(name, ram, self.timeout)
        except BackendError as exc:
            self._process.kill()
            raise CheckpointError(
                f"restoring live checkpoint {name!r} failed: {exc}",
                argv=argv,
                output=output(),
            ) from exc

    def take(self, name: str) -> None:
        monitor.check_tag(name)
        if not self._process.alive():
            raise CheckpointError(f"cannot take checkpoint {name!r}: the VM is not running")
        started = self.clock()
        if self._take_live(name):
            log.info(
                "checkpoint %s taken live in %.2f s", name, self.clock() - started,
                extra={"event": "qemu_checkpoint", "checkpoint": name, "live": True},
            )  # fmt: skip
            return
        try:
            reply = self._hmp(f"savevm {name}", timeout=self.timeout)
        except BackendError as exc:
            raise CheckpointError(f"checkpoint {name!r} failed: {exc}") from exc
        failure = monitor.snapshot_failure(reply, "take checkpoint", name)
        if failure is not None:
            raise failure
        log.info(
            "checkpoint %s taken in %.2f s", name, self.clock() - started,
            extra={"event": "qemu_checkpoint", "checkpoint": name},
        )  # fmt: skip

    def _take_live(self, name: str, disks_only: bool = False) -> bool:
        """A live checkpoint where the host can take one (docs/qemu-backend.md#live-checkpoints);
        False: take it with savevm (or internal disk snapshots)."""
        try:
            return self._live.usable() and self._live.take(
                name, self.timeout, disks_only=disks_only
            )
        except (CheckpointRefused, CheckpointError):
            raise
        except BackendError as exc:
            raise CheckpointError(f"checkpoint {name!r} failed: {exc}") from exc

    def take_disks(self, name: str) -> None:
        """The disks alone, the VM paused meanwhile: what still works while the guest keeps
        a 9p share mounted (QEMU then refuses every savevm). start(restore=name) boots afresh
        from them. docs/compatibility.md#runtime"""
        monitor.check_tag(name)
        if not self._process.alive():
            raise CheckpointError(f"cannot take checkpoint {name!r}: the VM is not running")
        if self._take_live(name, disks_only=True):
            return
        nodes = [
            self._live.top_node(node)
            for node, _ in self._overlays.qcow2_files
            if node != STATE_NODE
        ]
        if not nodes:
            raise CheckpointError(f"cannot save the disks alone for {name!r}: the VM has none")
        running = self._execute("query-status")["status"] == "running"
        if running:
            self._execute("stop")
        try:
            for node in nodes:
                self._execute("blockdev-snapshot-internal-sync", {"device": node, "name": name})
        except BackendError as exc:
            raise CheckpointError(f"disk checkpoint {name!r} failed: {exc}") from exc
        finally:
            if running:
                with contextlib.suppress(BackendError):
                    self._execute("cont")

    def names(self) -> tuple[str, ...]:
        live = self._live.names()
        return (*(n for n in self._internal() if n not in live), *live)

    def _internal(self) -> tuple[str, ...]:
        node = self._live.top_node(self._overlays.qcow2_files[0][0])
        if self._process.alive():
            try:
                nodes = self._execute("query-named-block-nodes")
                return monitor.node_snapshot_names(nodes, node)
            except BackendError:
                self._process.reap(wait=QMP_LOST_GRACE)
                if self._process.alive():
                    raise
        return self._overlays.snapshot_names()

    def delete(self, name: str) -> None:
        """Delete snapshot ``name``; deleting one that does not exist is a no-op."""
        monitor.check_tag(name)
        if name in self._live.names():
            try:
                self._live.delete(name)
            except BackendError as exc:  # deleted; only the merge after it failed
                log.warning("after deleting %s: %s", name, exc)
            return
        if name not in self.names():
            return
        if self._process.alive():
            failure = monitor.snapshot_failure(
                self._hmp(f"delvm {name}", timeout=self.timeout),
                "delete checkpoint",
                name,
            )
            if failure is not None:
                raise failure
            return
        self._overlays.delete_snapshot(name)
