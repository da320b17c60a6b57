"""One tick's :class:`~.machine.Observation`: the client's requests, the VM's state, the
guest's console lines and the shared directory's trigger files. Reading only: every decision
on what they mean is the machine's."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from vmwrapper.errors import VmWrapperError
from vmwrapper.hypervisor.base import (
    GUEST_OOM_MARKER,
    Checkpointing,
    Diagnosis,
    Reporting,
    done_status,
)
from vmwrapper.shared_dir.triggers import (
    ConsumedTrigger,
    content_digest,
    is_echo,
    parse_completion,
    parse_temporary_exit,
)
from vmwrapper.supervisor import events
from vmwrapper.supervisor import machine as m
from vmwrapper.supervisor.runtime import Context, UploadState, save_consumed
from vmwrapper.supervisor.timers import trickle_due

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class Observer:
    def __init__(self, ctx: Context, config: m.MachineConfig) -> None:
        self.ctx = ctx
        self.config = config

    def client_view(self) -> m.ClientView:
        cs = self.ctx.client.poll()
        return m.ClientView(
            suspended=cs.suspended,
            quit_request=cs.quit_request or self.ctx.rt.quit_requested,
            abort_request=cs.abort_request,
            no_heartbeat=cs.no_heartbeat,
            reread_init_data=cs.reread_init_data,
            network_suspended=cs.network_suspended,
        )

    def observe(self, state: m.State) -> m.Observation:
        ctx, rt = self.ctx, self.ctx.rt
        client = self.client_view()
        rt.client = client
        now = ctx.clock()
        base = m.Observation(
            client=client,
            now=now,
            elapsed=rt.elapsed,
            network_connected=rt.network_connected,
            transient_delay=rt.retry.next_delay(),
        )
        if state is m.State.STARTING:
            return replace(base, restore_snapshot=self._restore_snapshot())
        # the guest's last lines before the state change they led to, as they happened
        self.forward_guest_log()
        obs = replace(
            self._vm_status(base),
            booting_for=now - rt.boot_started,
            guest_oom=rt.guest_oom,
            guest_status=rt.guest_status,
            completion=self._trigger(ctx.job.completion_trigger_file, parse_completion),
            temporary_exit=self._consumable(
                ctx.job.temporary_exit_trigger_file, parse_temporary_exit
            ),
            trickles=self._trickle_files(),
        )
        if m.needs_diagnosis(state, obs, self.config):
            obs = replace(obs, diagnoses=self.diagnose())
        if state is m.State.RUNNING:
            obs = replace(
                obs,
                heartbeat_failure=self._heartbeat_check(),
                uploads_ready=self._uploads_ready(),
                checkpoint_due=rt.policy.due(
                    rt.elapsed, rt.last_checkpoint_elapsed, rt.checkpoints_this_run > 0
                ),
                checkpoint_retry_at=rt.checkpoint_retry_at,
                periodic_trickle=self._periodic_trickle(),
            )
            self._poll_uploads()
        return obs

    def _restore_snapshot(self) -> str:
        """The record's snapshot if the back end still has it (else boot fresh)."""
        wanted, backend = self.ctx.rt.record.snapshot, self.ctx.backend
        if not wanted or not self.ctx.rt.policy.automatic or not isinstance(backend, Checkpointing):
            return ""
        try:
            have = backend.checkpoints() if backend.exists() else ()
        except VmWrapperError as exc:
            log.warning("Could not list checkpoints: %s", exc)
            return ""
        if wanted in have:
            return wanted
        log.warning(
            "Checkpoint %s is gone; the VM boots afresh (elapsed and CPU time are kept).",
            wanted,
            extra={"event": events.RESTORE, "snapshot": ""},
        )
        return ""

    def _vm_status(self, obs: m.Observation) -> m.Observation:
        """The status query's answer; a failed query keeps the last known state and counts."""
        rt = self.ctx.rt
        try:
            status = self.ctx.backend.status()
        except VmWrapperError as exc:
            rt.status_failures += 1
            rt.status_error = str(exc)
            log.warning("VM status query failed (%d in a row): %s", rt.status_failures, exc)
            return replace(
                obs,
                vm=rt.vm_state,
                status_failures=rt.status_failures,
                status_error=rt.status_error,
            )
        rt.status_failures = 0
        if status.state is not rt.vm_state:
            # lines the status query read as the VM went down (its done line, say) come first
            self.forward_guest_log()
            log.info(
                "VM state change detected. (old = '%s', new = '%s')",
                rt.vm_state.value,
                status.state.value,
                extra={
                    "event": events.VM_STATE,
                    "old": rt.vm_state.value,
                    "new": status.state.value,
                },
            )
            rt.vm_state = status.state
        return replace(obs, vm=status.state, vm_detail=status.detail, vm_exit_code=status.exit_code)

    def forward_guest_log(self) -> None:
        """Log the guest's new console lines and note its markers (OOM, exit status)."""
        backend, rt = self.ctx.backend, self.ctx.rt
        if not isinstance(backend, Reporting):
            return
        try:
            lines = backend.guest_log()
        except VmWrapperError:
            return
        for line in lines:
            log.info("Guest Log: %s", line, extra={"event": events.GUEST_LOG})
            rt.guest_oom = rt.guest_oom or GUEST_OOM_MARKER in line
            status = done_status(line)
            if status is not None:
                rt.guest_status = status

    def diagnose(self) -> tuple[Diagnosis, ...]:
        backend = self.ctx.backend
        if not isinstance(backend, Reporting):
            return ()
        try:
            return tuple(backend.diagnose())
        except VmWrapperError as exc:
            log.warning("Could not read the hypervisor's logs: %s", exc)
            return ()

    def _trigger(self, name: str, parse: Callable[[str], _T]) -> _T | None:
        if not name:
            return None
        text = self.ctx.shared.read_text(name)
        return None if text is None else parse(text)

    def _consumable_text(self, name: str) -> str | None:
        """A trigger file that is consumed (removed) when acted on; echoes are dropped."""
        if not name:
            return None
        shared, rt = self.ctx.shared, self.ctx.rt
        mtime = shared.mtime_ns(name)
        text = shared.read_text(name)
        if text is None:
            return None
        if is_echo(rt.consumed.get(name), text, rt.elapsed, mtime):
            log.debug("%s came back unchanged (sync echo); removed", name)
            shared.remove(name)
            return None
        rt.trigger_texts[name] = text
        rt.trigger_mtimes[name] = mtime
        return text

    def _consumable(self, name: str, parse: Callable[[str], _T]) -> _T | None:
        text = self._consumable_text(name)
        return None if text is None else parse(text)

    def consumed(self, name: str) -> None:
        """Remove a trigger file we acted on and remember it (persisted) to spot its echoes."""
        rt = self.ctx.rt
        text = rt.trigger_texts.pop(name, None)
        mtime = rt.trigger_mtimes.pop(name, None)
        self.ctx.shared.remove(name)
        if text is None:
            return
        rt.consumed[name] = ConsumedTrigger(content_digest(text), rt.elapsed, mtime)
        save_consumed(self.ctx.settings.slot_dir, rt.consumed)

    def _trickle_files(self) -> tuple[tuple[str, str], ...]:
        found: list[tuple[str, str]] = []
        for name in self.ctx.job.trickle_trigger_file:
            text = self._consumable_text(name)
            if text is not None:
                found.append((name, text))
        return tuple(found)

    def _heartbeat_check(self) -> int | None:
        rt, job = self.ctx.rt, self.ctx.job
        watch = rt.heartbeat
        if watch is None or not watch.check_due(rt.elapsed):
            return None
        watch, code = watch.check(rt.elapsed, self.ctx.shared.mtime(job.heartbeat_filename))
        rt.heartbeat = watch
        if code is not None:
            log.error(
                "VM Heartbeat file check failed (%s, code %d).",
                job.heartbeat_filename,
                code,
                extra={"event": events.HEARTBEAT_FILE, "code": code},
            )
        return code

    def _uploads_ready(self) -> tuple[str, ...]:
        names = [n for n in self.ctx.job.intermediate_upload_file if n not in self.ctx.rt.uploads]
        return tuple(self.ctx.shared.present(names))

    def _poll_uploads(self) -> None:
        uploads = self.ctx.rt.uploads
        for name in [n for n, s in uploads.items() if s is UploadState.REQUESTED]:
            status = self.ctx.client.upload_status(name)
            if status is None:
                continue
            uploads[name] = UploadState.DONE
            extra = {"event": events.UPLOAD_DONE, "file": name, "status": status}
            if status >= 0:
                log.info("Intermediate file uploaded. (%s)", name, extra=extra)
            else:
                log.error("Intermediate upload of %s failed (%d).", name, status, extra=extra)

    def _periodic_trickle(self) -> str | None:
        rt = self.ctx.rt
        if not trickle_due(self.ctx.settings.trickle_period, rt.elapsed, rt.last_trickle_elapsed):
            return None
        return f"<cpu_time>{rt.cpu.total:f}</cpu_time>"
