"""Carrying out the machine's actions: one ``match`` case per action (``assert_never`` makes a
missing one a type error). An action that needs a capability the back end lacks
(:class:`~vmwrapper.hypervisor.base.Throttling`, ``Checkpointing``, ``Reporting``) is logged
once and skipped. Long back-end calls run in a worker thread while the client is served."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, assert_never

from vmwrapper.errors import CheckpointError, VmWrapperError
from vmwrapper.hypervisor.base import Cancellable, Checkpointing, Reporting, Throttling, VmState
from vmwrapper.supervisor import backoff, events, report
from vmwrapper.supervisor import checkpoint as ckpt
from vmwrapper.supervisor import machine as m
from vmwrapper.supervisor.checkpointing import Checkpointer
from vmwrapper.supervisor.observe import Observer
from vmwrapper.supervisor.runtime import Context, UploadState
from vmwrapper.supervisor.status import Status

log = logging.getLogger(__name__)
_T = TypeVar("_T")
CERN_OUTPUT_FILE = "output"


class Interrupted(Exception):
    """The client asked for a quit or an abort while a long back-end call ran: the step's
    other actions are skipped, and the next tick acts on the request."""


class _RestoreFailedError(Exception):
    def __init__(self, snapshot: str) -> None:
        super().__init__(snapshot)
        self.snapshot = snapshot


@dataclass(frozen=True)
class RestoreFailed:
    """Feedback for the machine: the checkpoint could not be restored (it boots afresh)."""

    snapshot: str


Feedback = backoff.Failure | RestoreFailed | None


class Performer:
    def __init__(self, ctx: Context, status: Status, observer: Observer) -> None:
        self.ctx = ctx
        self.status = status
        self.observer = observer
        self.checkpointer = Checkpointer(ctx, status, self.serving)

    def perform(self, step: m.Step) -> Feedback:
        """Do the step's actions; return what stopped them (live states only)."""
        ending = step.state is m.State.DONE
        for action in step.actions:
            if isinstance(action, m.Exit):
                return None
            try:
                self.do(action)
            except Interrupted as exc:
                log.info("%s cut short: %s", type(action).__name__, exc)
                if ending:
                    continue  # on the way out every action is still tried
                return None
            except _RestoreFailedError as exc:
                return RestoreFailed(exc.snapshot)
            except Exception as exc:  # classified below; the machine decides what it means
                failure = backoff.classify(exc)
                log.error(
                    "%s failed: %s",
                    type(action).__name__,
                    exc,
                    extra={
                        "event": events.FAILURE,
                        "action": type(action).__name__,
                        "error_class": failure.error_class.value,
                    },
                )
                if not ending:
                    return failure
        return None

    def do(self, action: m.Action) -> None:
        """Perform one action."""
        ctx = self.ctx
        match action:
            case m.PrepareVm():
                self._prepare()
            case m.StartVm(restore=restore):
                self._start(restore)
            case m.BringUp():
                self._bring_up()
            case m.ApplyPreferences(reread=reread):
                self._apply_preferences(reread)
            case m.PauseVm():
                self.vm_priority(lowered=False)
                ctx.backend.pause()
                log.info("Suspended: VM paused.", extra={"event": events.SUSPEND})
            case m.ResumeVm():
                ctx.backend.resume()
                log.info("Resumed: VM running.", extra={"event": events.RESUME})
                self.vm_priority(lowered=True)
            case m.TakeCheckpoint(final=final):
                if final:
                    self.vm_priority(lowered=False)  # the VM stops next: save at full speed
                self.checkpointer.take(final=final)
            case m.SaveState():
                self._save_state()
            case m.PowerOff():
                self.vm_priority(lowered=False)
                ctx.backend.poweroff(ctx.timers.poweroff_grace)
            case m.Cleanup():
                self.vm_priority(lowered=False)
                ctx.backend.cleanup()
            case m.DumpLogs(exit_code=exit_code):
                self._dump_logs(exit_code)
            case m.SetNetwork(connected=connected):
                self._set_network(connected)
            case m.SendTrickle():
                self._send_trickle(action)
            case m.RequestUpload(name=name):
                self._request_upload(name)
            case m.RemoveTrigger(name=name):
                if name:
                    log.info(
                        "VM Temporary Exit File Detected.",
                        extra={"event": events.TEMPORARY_EXIT_TRIGGER},
                    )
                    self.observer.consumed(name)
            case m.WriteCernOutput():
                (ctx.settings.slot_dir / CERN_OUTPUT_FILE).write_text("Work Unit completed!\n")
            case m.RecordTransientFailure(reason=reason):
                ctx.rt.retry = ctx.rt.retry.bumped(reason)
                backoff.save(ctx.settings.slot_dir, ctx.rt.retry)
            case m.ResetBackoff():
                self.checkpointer.reset_backoff()
            case m.Exit():
                pass  # perform() stops at the Exit; the loop returns its outcome
            case _:
                assert_never(action)

    def serving(self, what: str, call: Callable[[], _T]) -> _T:
        """Run a back-end call that may take long (an image conversion, a snapshot) in a
        worker thread and keep serving the client meanwhile: its messages read, a status
        message (with the CPU time last known) every serve period, trickles handed over. A
        quit, an abort or a lost client that comes after the call began cuts it short where
        the back end can (:class:`Cancellable`) and interrupts the step."""
        ctx = self.ctx
        done: list[_T] = []
        failed: list[Exception] = []

        def work() -> None:
            try:
                done.append(call())
            except Exception as exc:  # re-raised in the loop's thread
                failed.append(exc)

        # What the client asked before this call is what the step answers (the save after a
        # quit, or after the client went away): only a new request cuts the call short.
        before = ctx.client.poll()
        asked_quit = before.quit_request or ctx.rt.quit_requested
        worker = threading.Thread(target=work, name=f"vmwrapper-{what}", daemon=True)
        worker.start()
        worker.join(ctx.timers.serve_period)
        stop = ""
        while worker.is_alive():
            ctx.sleep(ctx.timers.serve_period)
            worker.join(0.05)
            cs = ctx.client.poll()
            self.status.report_held()
            ctx.client.tick()
            wanted = (
                "abort" if cs.abort_request and not before.abort_request else
                "quit" if (cs.quit_request or ctx.rt.quit_requested) and not asked_quit else
                "stop (client gone)" if cs.no_heartbeat and not before.no_heartbeat else ""
            )  # fmt: skip
            if wanted and not stop:
                stop = wanted
                log.info("The client asked to %s during %s; stopping it.", stop, what)
                if isinstance(ctx.backend, Cancellable):
                    ctx.backend.cancel()
        if stop:
            raise Interrupted(f"{what} stopped: the client asked to {stop}")
        if failed:
            raise failed[0]
        return done[0]

    def _prepare(self) -> None:
        ctx, backend = self.ctx, self.ctx.backend
        if ctx.settings.contextualize is not None:
            # Every run, not only when the VM is created
            # (docs/compatibility.md#floppy-contextualization).
            ctx.settings.contextualize()
        if not backend.exists():
            log.info("Create VM. (%s)", backend.name, extra={"event": events.VM_CREATED})
            self.serving("create", backend.create)  # may convert the image: long
            return
        status = backend.status()
        if status.state.online:
            log.info("VM was running (left by an earlier run); powering it off.")
            backend.poweroff(ctx.timers.poweroff_grace)
        if isinstance(backend, Checkpointing):
            self._delete_orphans(backend)

    def _delete_orphans(self, backend: Checkpointing) -> None:
        keep = self.ctx.rt.record.snapshot
        for orphan in ckpt.orphan_snapshots(backend.checkpoints(), keep):
            log.info("Deleting orphan snapshot %s (no checkpoint record names it).", orphan)
            try:
                backend.delete_checkpoint(orphan)
            except VmWrapperError as exc:
                log.warning("Could not delete snapshot %s: %s", orphan, exc)

    def _start(self, restore: str) -> None:
        ctx, rt = self.ctx, self.ctx.rt
        try:
            pid = self.serving("start", lambda: ctx.backend.start(restore or None))
        except CheckpointError as exc:
            if not restore:
                raise
            log.warning("Restoring %s failed (%s); booting afresh.", restore, exc)
            raise _RestoreFailedError(restore) from exc
        rt.boot_started = ctx.clock()
        rt.vm_state = VmState.STARTING  # what we know until the first status answer
        log.info(
            "Successfully started VM. (PID = '%d')%s",
            pid,
            f" from checkpoint {restore}" if restore else "",
            extra={"event": events.VM_STARTED, "pid": pid, "snapshot": restore},
        )
        self.status.report(other_pid=pid)

    def _bring_up(self) -> None:
        ctx = self.ctx
        log.info("VM is online.", extra={"event": events.VM_ONLINE})
        self.vm_priority(lowered=True)
        self.status.poll_net()  # the counts so far (the back end counts since start())
        port = ctx.settings.webapi_port
        if port and not (ctx.settings.slot_dir / "graphics_app").exists():
            url = f"http://localhost:{port}"
            ctx.client.web_graphics_url(url)
            log.info("Detected: Web Application Enabled (%s)", url)
        if ctx.settings.remote_desktop_port:
            addr = f"localhost:{ctx.settings.remote_desktop_port}"
            ctx.client.remote_desktop_addr(addr)
            log.info("Detected: Remote Desktop Enabled (%s)", addr)
        self.checkpointer.write_record(ctx.rt.record)

    def _apply_preferences(self, reread: bool) -> None:
        ctx, backend = self.ctx, self.ctx.backend
        aid = ctx.client.init_data
        if reread:
            log.info("Preference change detected", extra={"event": events.PREFERENCES})
            aid = ctx.client.ack_reread()
        prefs = aid.global_prefs
        limit = prefs.cpu_usage_limit
        percent = 100 if limit <= 0 else min(max(int(limit), 1), 100)
        limits = [x for x in (prefs.max_bytes_sec_up, prefs.max_bytes_sec_down) if x > 0]
        bandwidth = min(limits) if limits else 0.0
        if isinstance(backend, Throttling):
            backend.set_cpu_cap(percent)
            if ctx.job.enable_network:
                backend.set_bandwidth(bandwidth)
        else:
            ctx.lacks(Throttling, "ApplyPreferences")
        ctx.rt.policy = ctx.rt.policy.with_client_period(
            aid.checkpoint_period, ctx.job.minimum_checkpoint_interval
        )
        log.info(
            "Applied preferences: CPU cap %d%%, bandwidth %s, checkpoint interval %d seconds.",
            percent,
            f"{bandwidth:g} B/s" if bandwidth else "unlimited",
            int(ctx.rt.policy.interval),
            extra={
                "event": events.PREFERENCES,
                "cpu_cap": percent,
                "bandwidth": bandwidth,
                "checkpoint_interval": ctx.rt.policy.interval,
            },
        )

    def _save_state(self) -> None:
        ctx, backend = self.ctx, self.ctx.backend
        self.vm_priority(lowered=False)
        if not isinstance(backend, Checkpointing):
            ctx.lacks(Checkpointing, "SaveState")
            backend.poweroff(ctx.timers.poweroff_grace)  # the VM still stops
            return
        try:
            self.checkpointer.take(final=True)
        except VmWrapperError as exc:
            log.warning("Checkpoint before saving the VM state failed: %s", exc)
        backend.save_state()

    def _dump_logs(self, exit_code: int | None) -> None:
        """The error report, written before the VM and its logs are removed."""
        ctx, backend = self.ctx, self.ctx.backend
        if not isinstance(backend, Reporting):
            ctx.lacks(Reporting, "DumpLogs")
            return
        png: bytes | None = None
        if ctx.job.enable_screenshots_on_error:
            shot = backend.screenshot()
            if shot is not None:
                with contextlib.suppress(OSError):
                    png = shot.read_bytes()
        sections = backend.hypervisor_logs()
        text = report.error_report(png, sections, exit_code)
        if not text:
            return
        log.info(
            "Error report (%s):\n%s",
            ", ".join(["screenshot", *sections] if png else sections),
            text,
            extra={
                "event": events.ERROR_REPORT,
                "screenshot": png is not None,
                "sections": ", ".join(sections),
            },
        )

    def vm_priority(self, *, lowered: bool) -> None:
        """vboxwrapper's lower/reset_vm_process_priority: the VM computes at the job's nice and
        gets the wrapper's own back while it pauses, saves or stops."""
        ctx, backend = self.ctx, self.ctx.backend
        if ctx.vm_nice is None or lowered == ctx.rt.priority_lowered:
            return
        if not isinstance(backend, Throttling):
            ctx.lacks(Throttling, "the VM's priority")
            return
        try:
            backend.set_priority(ctx.vm_nice if lowered else ctx.own_nice)
        except VmWrapperError as exc:
            log.debug("VM priority not changed: %s", exc)
        ctx.rt.priority_lowered = lowered

    def _set_network(self, connected: bool) -> None:
        ctx, backend = self.ctx, self.ctx.backend
        if not isinstance(backend, Throttling):
            ctx.lacks(Throttling, "SetNetwork")
            ctx.rt.network_connected = connected  # asked once, not every tick
            return
        backend.set_network(connected)
        # only after it worked (docs/compatibility.md#network)
        ctx.rt.network_connected = connected
        log.info(
            "Network %s.",
            "resumed" if connected else "suspended",
            extra={"event": events.NETWORK, "connected": connected},
        )

    def _send_trickle(self, action: m.SendTrickle) -> None:
        self.ctx.client.send_trickle_up(action.variety, action.text)
        if action.trigger_file:
            self.observer.consumed(action.trigger_file)
        else:
            self.ctx.rt.last_trickle_elapsed = self.ctx.rt.elapsed
        log.info(
            "Trickle-up sent (%s).",
            action.variety,
            extra={
                "event": events.TRICKLE_UP,
                "variety": action.variety,
                "bytes": len(action.text),
            },
        )

    def _request_upload(self, name: str) -> None:
        ctx = self.ctx
        ctx.rt.uploads[name] = UploadState.REQUESTED
        try:
            dest = ctx.client.resolve(name)
            src = ctx.shared.file(name)
            # The client uploads the file behind the logical name: put the guest's file there.
            if src.resolve() != dest.resolve():
                ctx.shared.copy_out(name, dest)
            ctx.client.upload_file(name)
        except (OSError, VmWrapperError) as exc:
            ctx.rt.uploads[name] = UploadState.DONE
            log.error("Intermediate upload of %s not requested: %s", name, exc)
            return
        log.info(
            "Intermediate upload requested (%s).",
            name,
            extra={"event": events.UPLOAD_REQUESTED, "file": name},
        )
