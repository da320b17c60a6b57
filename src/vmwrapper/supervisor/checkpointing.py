"""Carrying out TakeCheckpoint and SaveState: take the snapshot, verify it, record it, drop the
one it replaces; refused snapshots (a guest holding the share) back off and, after
:data:`~.checkpoint.REFUSED_LIMIT` refusals, save the disks alone."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from vmwrapper.errors import CheckpointError, CheckpointRefused, VmWrapperError
from vmwrapper.hypervisor.base import Checkpointing, DiskCheckpoints
from vmwrapper.supervisor import backoff, events
from vmwrapper.supervisor import checkpoint as ckpt
from vmwrapper.supervisor.runtime import Context
from vmwrapper.supervisor.status import Status

log = logging.getLogger(__name__)
Serving = Callable[[str, Callable[[], None]], None]


class Checkpointer:
    def __init__(self, ctx: Context, status: Status, serving: Serving) -> None:
        self.ctx = ctx
        self.status = status
        self.serving = serving

    def take(self, *, final: bool) -> None:
        ctx, rt, backend = self.ctx, self.ctx.rt, self.ctx.backend
        if not rt.policy.automatic:
            self.commit("")  # disable_automatic_checkpoints: the record only
            return
        if not isinstance(backend, Checkpointing):
            ctx.lacks(Checkpointing, "TakeCheckpoint")
            return
        deadline = ctx.clock() + (ctx.timers.final_checkpoint_patience if final else 0.0)
        name = ckpt.snapshot_name(rt.elapsed, backend.checkpoints())
        while True:
            try:
                self._snapshot(backend, name, final=final)
                break
            except CheckpointRefused as exc:
                self._note_refusal(exc)
                if ctx.clock() >= deadline:
                    rt.checkpoint_retry_at = ctx.clock() + ckpt.refused_retry_delay(
                        rt.checkpoint_refusals
                    )
                    if final:
                        raise CheckpointError("snapshot refused until the deadline") from exc
                    return
                ctx.sleep(ctx.timers.final_checkpoint_retry)
        if name not in backend.checkpoints():
            raise CheckpointError(f"snapshot {name} was taken but the hypervisor does not list it")
        self.commit(name)

    def _snapshot(self, backend: Checkpointing, name: str, *, final: bool) -> None:
        rt = self.ctx.rt
        if final or rt.checkpoint_refusals < ckpt.REFUSED_LIMIT:
            self.serving("checkpoint", lambda: backend.checkpoint(name))
            rt.checkpoint_refusals = 0
            return
        try:  # a full snapshot once more: the guest may have let go of the share
            self.serving("checkpoint", lambda: backend.checkpoint(name))
        except CheckpointRefused:
            rt.checkpoint_refusals += 1
            self._checkpoint_disks(name)
        else:
            rt.checkpoint_refusals = 0

    def _note_refusal(self, exc: CheckpointRefused) -> None:
        """One warning a run, debug lines after it (the retries back off)."""
        rt = self.ctx.rt
        rt.checkpoint_refusals += 1
        first, rt.refusal_warned = not rt.refusal_warned, True
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "Checkpoint refused (%s): the guest has the shared directory mounted. Retrying "
            "with a growing delay; after %d refusals in a row the disks alone are saved.",
            exc,
            ckpt.REFUSED_LIMIT,
            extra={"event": events.CHECKPOINT_REFUSED, "refusals": rt.checkpoint_refusals},
        )

    def _checkpoint_disks(self, name: str) -> None:
        """The guest keeps the share mounted, so QEMU refuses every snapshot: save the disks
        alone (a restore then boots afresh from them), so a long job is never left without
        checkpoints. docs/compatibility.md#runtime"""
        backend, rt = self.ctx.backend, self.ctx.rt
        if not isinstance(backend, DiskCheckpoints):
            raise CheckpointRefused(f"{backend.name} cannot save the disks alone")
        first, rt.disks_warned = not rt.disks_warned, True
        log.log(
            logging.WARNING if first else logging.INFO,
            "Snapshots refused %d times: the guest keeps the shared directory mounted. "
            "Saving the disks alone (%s); a restart boots the VM afresh from them.",
            rt.checkpoint_refusals,
            name,
            extra={"event": events.CHECKPOINT_DISKS, "snapshot": name},
        )
        self.serving("checkpoint", lambda: backend.checkpoint_disks(name))

    def commit(self, snapshot: str) -> None:
        """Record the verified snapshot, then drop the one it replaces (that order)."""
        rt = self.ctx.rt
        old = rt.record.snapshot
        cpu = self.status.cpu_time()
        record = replace(rt.record, elapsed_time=rt.elapsed, cpu_time=cpu, snapshot=snapshot)
        self.write_record(record)
        rt.last_checkpoint_elapsed = rt.elapsed
        rt.checkpoint_cpu = cpu
        rt.checkpoints_this_run += 1
        self.reset_backoff()
        backend = self.ctx.backend
        if old and old != snapshot and isinstance(backend, Checkpointing):
            try:
                backend.delete_checkpoint(old)
            except VmWrapperError as exc:  # an orphan now; deleted at the next start
                log.warning("Could not delete the previous snapshot %s: %s", old, exc)
        log.info(
            "Checkpoint completed.",
            extra={
                "event": events.CHECKPOINT,
                "snapshot": snapshot,
                "elapsed": round(rt.elapsed, 3),
                "cpu_time": round(cpu, 3),
            },
        )

    def write_record(self, record: ckpt.CheckpointRecord) -> None:
        settings = self.ctx.settings
        record = replace(
            record,
            webapi_port=settings.webapi_port,
            remote_desktop_port=settings.remote_desktop_port,
        )
        ckpt.write_record(settings.slot_dir, record)
        self.ctx.rt.record = record

    def reset_backoff(self) -> None:
        rt = self.ctx.rt
        if rt.retry.failures:
            rt.retry = backoff.BackoffState()
            backoff.reset(self.ctx.settings.slot_dir)
