"""The 1 Hz loop: observe → :func:`machine.step` → act, until the machine returns an Outcome.

This is the only module that calls the back end and the AppClient while the job runs. Each
tick it reads the client's requests, the VM's state, the guest's console lines and the shared
directory's trigger files into one :class:`~.machine.Observation`, lets the pure machine decide,
performs the actions in order, reports status to the client and sleeps the rest of the second.
An action that raises is classified (:mod:`.backoff`) and fed back to the machine at once as a
failure; on the way out (the machine's DONE state) every action is best effort.

Time is injected (``clock``, ``sleep``) so lifecycle tests run hours of job time in
milliseconds; so is the first checkpoint's random offset (``seed``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, TypeVar, assert_never

from vmwrapper.boinc import files
from vmwrapper.boinc.app import ClientStatus
from vmwrapper.boinc.init_data import AppInitData
from vmwrapper.cputime import CpuTotal
from vmwrapper.errors import CheckpointError, CheckpointRefused, InputError, VmWrapperError
from vmwrapper.hypervisor.base import (
    GUEST_OOM_MARKER,
    Backend,
    Cancellable,
    Diagnosis,
    DiskCheckpoints,
    NetUsage,
    VmState,
    done_status,
)
from vmwrapper.outcome import Finish, Outcome, PlainExit, TemporaryExit
from vmwrapper.shared_dir.heartbeat import HeartbeatWatch
from vmwrapper.shared_dir.triggers import (
    ConsumedTrigger,
    GraphicsStatus,
    content_digest,
    is_echo,
    parse_completion,
    parse_temporary_exit,
)
from vmwrapper.shared_dir.watch import SharedDir, write_graphics_status, write_slot_exclusions
from vmwrapper.spec.model import JobSpec
from vmwrapper.supervisor import backoff, events, report
from vmwrapper.supervisor import checkpoint as ckpt
from vmwrapper.supervisor import machine as m

log = logging.getLogger(__name__)
_T = TypeVar("_T")

POLL_PERIOD = 1.0
BOOT_TIMEOUT = 300.0  # vboxwrapper's bring-up wait
#: An iteration longer than this (host suspended to RAM, say) adds only this much elapsed time.
MAX_TICK = 60.0
STATUS_REPORT_PERIOD = 6000.0
#: How often (s of elapsed time) the NIC's byte counts are read when the volunteer set a daily
#: transfer limit (vboxwrapper's 10 minutes; the client adds them to its transfer history).
NET_USAGE_PERIOD = 600.0
#: Between ticks the completion and temporary-exit trigger files are looked for this often, so
#: a job's end is acted on within a fraction of the poll period (two stats: cheap).
TRIGGER_POLL = 0.2
#: A tick whose status query fails keeps the last known state; this many in a row is a failure.
MAX_STATUS_FAILURES = 60
#: A final checkpoint (before a temporary exit) retries a refused snapshot for this long.
FINAL_CHECKPOINT_PATIENCE = 10.0
#: PowerOff is a hard power-off, as vboxwrapper's `controlvm poweroff`: the VM's state is in the
#: checkpoint (or the job is over), and an ACPI shutdown would let the guest run on meanwhile.
POWEROFF_GRACE = 0.0
CERN_OUTPUT_FILE = "output"
#: A back-end call still running after this long (a conversion, a snapshot) is waited for
#: while the client is served: its messages read, status sent (docs/supervisor.md).
SERVE_PERIOD = 0.5
#: Trigger files already acted on, kept across restarts (see triggers.is_echo).
CONSUMED_FILE = "vmwrapper_triggers.json"


class Client(Protocol):
    """What the loop needs of :class:`vmwrapper.boinc.app.AppClient`."""

    init_data: AppInitData

    @property
    def standalone(self) -> bool: ...
    def poll(self) -> ClientStatus: ...
    def ack_reread(self) -> AppInitData: ...
    def report_status(
        self,
        *,
        cpu_time: float,
        checkpoint_cpu_time: float,
        fraction_done: float,
        other_pid: int | None = None,
        bytes_sent: float = 0,
        bytes_received: float = 0,
    ) -> None: ...
    def send_trickle_up(self, variety: str, text: str) -> None: ...
    def upload_file(self, logical_name: str) -> None: ...
    def upload_status(self, logical_name: str) -> int | None: ...
    def web_graphics_url(self, url: str) -> None: ...
    def remote_desktop_addr(self, addr: str) -> None: ...
    def resolve(self, logical_name: str) -> Path: ...
    def tick(self) -> None: ...


@dataclass(frozen=True)
class Settings:
    """What the loop needs besides the back end and the client (built by cli/run.py)."""

    job: JobSpec
    slot_dir: Path
    argv: tuple[str, ...] = ()  # the wrapper's argv (copy_cmdline_to_shared)
    trickle_period: float = 0.0  # --trickle
    register_only: bool = False
    sporadic: bool = False
    webapi_port: int = 0
    remote_desktop_port: int = 0
    seed: int | None = None  # first checkpoint offset; None = random
    poll_period: float = POLL_PERIOD
    boot_timeout: float = BOOT_TIMEOUT
    net_usage_period: float = NET_USAGE_PERIOD
    trigger_poll: float = TRIGGER_POLL  # 0: look for trigger files only once a tick
    #: Writes the contextualization media (floppy) before the VM is created or started: QEMU
    #: opens the image read-only at start, VirtualBox needs it at create. None = none.
    contextualize: Callable[[], None] | None = None


@dataclass
class _Runtime:
    """The loop's mutable bookkeeping (everything the pure machine must not hold)."""

    elapsed: float
    cpu: CpuTotal  # reported CPU time: earlier runs (the checkpoint record) + this run's
    checkpoint_cpu: float
    record: ckpt.CheckpointRecord
    policy: ckpt.CheckpointPolicy
    last_checkpoint_elapsed: float
    checkpoints_this_run: int = 0
    checkpoint_retry_at: float = 0.0
    checkpoint_refusals: int = 0  # refused snapshots since the last full one
    refusal_warned: bool = False
    disks_warned: bool = False
    boot_started: float = 0.0
    vm_state: VmState = VmState.ABSENT
    status_failures: int = 0
    network_connected: bool = True
    heartbeat: HeartbeatWatch | None = None
    last_trickle_elapsed: float = 0.0
    last_status_report: float = 0.0
    fraction: float = 0.0
    uploads: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> requested|done
    last_tick: float | None = None
    counting: bool = False  # elapsed time advances (RUNNING, VM not paused)
    client: m.ClientView = dataclasses.field(default_factory=m.ClientView)
    consumed: dict[str, ConsumedTrigger] = dataclasses.field(default_factory=dict)
    trigger_texts: dict[str, str] = dataclasses.field(default_factory=dict)  # as observed
    trigger_mtimes: dict[str, int | None] = dataclasses.field(default_factory=dict)
    retry: backoff.BackoffState = dataclasses.field(default_factory=backoff.BackoffState)
    net: NetUsage = dataclasses.field(default_factory=NetUsage)  # this episode, never falling
    net_polled_elapsed: float = 0.0
    priority_lowered: bool = False
    guest_oom: bool = False  # the guest printed EXIT_OUT_OF_MEMORY
    guest_status: int | None = None  # N of the guest's VMWRAPPER_GUEST_DONE status=N line


class _Interrupted(Exception):
    """The client asked for a quit or an abort while a long back-end call ran: the step's
    other actions are skipped, and the next tick acts on the request."""


class Supervisor:
    def __init__(
        self,
        backend: Backend,
        client: Client,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.client = client
        self.settings = settings
        self.job = settings.job
        self.clock = clock
        self.sleep = sleep
        self.wallclock = wallclock
        self.shared = SharedDir(settings.slot_dir, settings.job.shared_dir)
        self.quit_requested = False
        self.config = m.MachineConfig(
            job_duration=self.job.job_duration,
            register_only=settings.register_only,
            savestate_on_quit=self.job.enable_vm_savestate_usage,
            enable_network=self.job.enable_network,
            cern_output=self.job.enable_cern_dataformat,
            temporary_exit_trigger_file=self.job.temporary_exit_trigger_file,
        )
        record = ckpt.read_record(settings.slot_dir)
        policy = ckpt.make_policy(
            client_period=client.init_data.checkpoint_period,
            minimum=self.job.minimum_checkpoint_interval,
            automatic=not self.job.disable_automatic_checkpoints,
            seed=settings.seed,
        )
        self.rt = _Runtime(
            elapsed=record.elapsed_time,
            cpu=CpuTotal(ended=record.cpu_time),
            checkpoint_cpu=record.cpu_time,
            record=record,
            policy=policy,
            last_checkpoint_elapsed=record.elapsed_time,
            last_trickle_elapsed=record.elapsed_time,
            last_status_report=record.elapsed_time,
        )
        self.rt.retry = backoff.load(settings.slot_dir)
        self.rt.consumed = _load_consumed(settings.slot_dir)
        if self.job.heartbeat_filename:
            # The first check comes a third of the interval into this run, as vboxwrapper's:
            # the guest has that long to write the file after it boots.
            self.rt.heartbeat = HeartbeatWatch(
                self.job.minimum_heartbeat_interval, last_check=record.elapsed_time
            )
        aid = client.init_data
        self.own_nice = os.getpriority(os.PRIO_PROCESS, 0)
        self.vm_nice = report.vm_nice(aid.no_priority_change, aid.process_priority, self.own_nice)

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> Outcome:
        """Run the job to its outcome. Never raises for anything the job or host does."""
        outcome = self._start_up_files()
        if outcome is not None:
            return self._conclude(outcome)
        self._log_start()
        state = m.State.STARTING
        while True:
            tick_start = self.clock()
            self._account_elapsed(tick_start)
            obs = self._observe(state)
            step = m.step(state, obs, self.config)
            self._log_step(state, step)
            if step.state is m.State.DONE and state is not m.State.STARTING:
                self._last_net_report()
            failure = self._perform(step)
            if failure is not None:
                step = m.step(step.state, self._failure_observation(obs, failure), self.config)
                self._log_step(state, step)
                self._perform(step)
            if step.outcome is not None:
                return self._conclude(step.outcome)
            state = step.state
            self.rt.counting = state is m.State.RUNNING
            self._report(state)
            self.client.tick()
            spent = self.clock() - tick_start
            self._sleep_until_next_tick(state, max(self.settings.poll_period - spent, 0.0))

    def _sleep_until_next_tick(self, state: m.State, rest: float) -> None:
        """Sleep the rest of the period; wake early when the job ends: the completion or
        temporary-exit trigger file appears, or the VM's process is gone (the guest powered
        off). The next tick then acts at once."""
        job, step = self.job, self.settings.trigger_poll
        names = [n for n in (job.completion_trigger_file, job.temporary_exit_trigger_file) if n]
        if step <= 0 or state is not m.State.RUNNING:
            self.sleep(rest)
            return
        deadline = self.clock() + rest
        vm_was_up = self._pid() is not None  # (a pid never known must not end every sleep)
        while (left := deadline - self.clock()) > 0:
            self.sleep(min(step, left))
            if self.shared.present(names) or (vm_was_up and self._pid() is None):
                return

    def _account_elapsed(self, now: float) -> None:
        """Elapsed time advances only while the VM runs (not suspended, not booting)."""
        if self.rt.last_tick is not None and self.rt.counting:
            self.rt.elapsed += min(max(now - self.rt.last_tick, 0.0), MAX_TICK)
        self.rt.last_tick = now

    def _conclude(self, outcome: Outcome) -> Outcome:
        self._remove_guest_symlinks()
        kind = type(outcome).__name__
        if isinstance(outcome, Finish):
            detail = f"status {outcome.status}" + (
                f": {outcome.message}" if outcome.message else ""
            )
        elif isinstance(outcome, TemporaryExit):
            detail = f"delay {outcome.delay:g} s: {outcome.reason}"
        else:
            detail = f"exit code {outcome.code}"
        log.info(
            "Outcome: %s (%s)",
            kind,
            detail,
            extra={"event": events.OUTCOME, "outcome": kind, "elapsed": round(self.rt.elapsed, 3)},
        )
        return outcome

    def _remove_guest_symlinks(self) -> None:
        """No symlink a guest planted in ``shared/`` outlives the wrapper: the client would
        follow one named like an output and upload the host file behind it. (Only for
        ``shared/``: with share_slot_dir the slot is the client's, and holds no symlinks.)"""
        if not self.job.enable_shared_directory:
            return
        removed = self.shared.remove_symlinks()
        if removed:
            log.warning(
                "Removed %d symbolic link(s) the guest made in the shared directory: %s",
                len(removed),
                ", ".join(sorted(removed)[:10]),
                extra={"event": events.SHARED_SYMLINKS_REMOVED, "count": len(removed)},
            )

    # -- start-up -------------------------------------------------------------------------

    def _start_up_files(self) -> Outcome | None:
        """Shared dir, copy_to_shared, cmdline, --sporadic (docs/compatibility.md#start-up)."""
        job = self.job
        if job.enable_shared_directory:
            try:
                self.shared.ensure()
            except OSError as exc:
                log.error("Could not create the shared directory: %s", exc)
        elif job.share_slot_dir:
            try:
                write_slot_exclusions(self.settings.slot_dir)
            except OSError as exc:
                log.error("Could not write the guest's exclusion list: %s", exc)
        if job.enable_scratch_directory:
            try:
                Path(self.client.init_data.project_dir or "project", "scratch").mkdir(
                    parents=True, exist_ok=True
                )
            except OSError as exc:
                log.error("Could not create the scratch directory: %s", exc)
        if self.settings.sporadic:
            try:
                self.shared.make_sporadic_files()
            except (OSError, InputError) as exc:
                log.error("--sporadic: could not create ac/ca files: %s", exc)
                return PlainExit(1)
        for name in job.copy_to_shared:
            try:
                if self.shared.copy_in(self.client.resolve(name), name):
                    log.info("Copied %s to the shared directory.", name)
            except (OSError, InputError) as exc:
                log.error("copy_to_shared: could not copy %s: %s", name, exc)
        if job.copy_cmdline_to_shared:
            try:
                self.shared.write_cmdline(self.settings.argv)
            except (OSError, InputError) as exc:
                log.error("copy_cmdline_to_shared: %s", exc)
        return None

    def _log_start(self) -> None:
        rec = self.rt.record
        if rec.elapsed_time or rec.cpu_time:
            log.info(
                "Restoring from checkpoint: elapsed %f s, CPU %f s, snapshot %s",
                rec.elapsed_time,
                rec.cpu_time,
                rec.snapshot or "(none)",
                extra={"event": events.RESTORE, "snapshot": rec.snapshot},
            )
        if self.rt.policy.automatic:
            log.info("Checkpoint interval offset: %d seconds.", int(self.rt.policy.first_offset))
            log.info(
                "Setting checkpoint interval to %d seconds. (Higher value of (Preference: %d "
                "seconds) or (Vbox_job.xml: %d seconds))",
                int(self.rt.policy.interval),
                int(self.client.init_data.checkpoint_period),
                int(self.job.minimum_checkpoint_interval),
            )
        if self.settings.trickle_period > 0:
            log.info("Feature: Enabling trickle-ups (Interval: %f)", self.settings.trickle_period)

    # -- observe --------------------------------------------------------------------------

    def request_quit(self) -> None:
        """Treat the next tick as a quit request (SIGTERM / Ctrl-C when run by hand)."""
        self.quit_requested = True

    def _client_view(self) -> m.ClientView:
        cs = self.client.poll()
        return m.ClientView(
            suspended=cs.suspended,
            quit_request=cs.quit_request or self.quit_requested,
            abort_request=cs.abort_request,
            no_heartbeat=cs.no_heartbeat,
            reread_init_data=cs.reread_init_data,
            network_suspended=cs.network_suspended,
        )

    def _observe(self, state: m.State) -> m.Observation:
        rt = self.rt
        client = self._client_view()
        rt.client = client
        base = m.Observation(
            client=client,
            elapsed=rt.elapsed,
            network_connected=rt.network_connected,
            transient_delay=rt.retry.next_delay(),
        )
        if state is m.State.STARTING:
            return replace(base, restore_snapshot=self._restore_snapshot())
        # the guest's last lines before the state change they led to, as they happened
        self._forward_guest_log()
        vm_state, detail, exit_code = self._vm_status()
        diagnoses: tuple[Diagnosis, ...] = ()
        boot_timed_out = (
            state is m.State.BOOTING and self.clock() - rt.boot_started > self.settings.boot_timeout
        )
        if not vm_state.online or boot_timed_out:
            diagnoses = self._diagnose()
        job = self.job
        obs = replace(
            base,
            vm=vm_state,
            vm_detail=detail,
            vm_exit_code=exit_code,
            diagnoses=diagnoses,
            guest_oom=rt.guest_oom,
            guest_status=rt.guest_status,
            boot_timed_out=boot_timed_out,
            completion=self._trigger(job.completion_trigger_file, parse_completion),
            temporary_exit=self._consumable(job.temporary_exit_trigger_file, parse_temporary_exit),
            trickles=self._trickle_files(),
        )
        if state is m.State.RUNNING:
            obs = replace(
                obs,
                heartbeat_failure=self._heartbeat_check(),
                uploads_ready=self._uploads_ready(),
                checkpoint_due=(
                    rt.policy.due(
                        rt.elapsed, rt.last_checkpoint_elapsed, rt.checkpoints_this_run > 0
                    )
                    and self.clock() >= rt.checkpoint_retry_at
                ),
                periodic_trickle=self._periodic_trickle(),
            )
            self._poll_uploads()
            if rt.elapsed >= rt.net_polled_elapsed + self.settings.net_usage_period:
                self._poll_net()
        return obs

    def _restore_snapshot(self) -> str:
        """The record's snapshot if the back end still has it (else boot fresh)."""
        wanted = self.rt.record.snapshot
        if not wanted or not self.rt.policy.automatic:
            return ""
        try:
            have = self.backend.checkpoints() if self.backend.exists() else ()
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

    def _vm_status(self) -> tuple[VmState, str, int | None]:
        rt = self.rt
        try:
            status = self.backend.status()
        except VmWrapperError as exc:
            rt.status_failures += 1
            log.warning("VM status query failed (%d in a row): %s", rt.status_failures, exc)
            if rt.status_failures > MAX_STATUS_FAILURES:
                return VmState.CRASHED, f"status unknown for {rt.status_failures} s: {exc}", None
            return rt.vm_state, "", None
        rt.status_failures = 0
        if status.state is not rt.vm_state:
            # lines the status query read as the VM went down (its done line, say) come first
            self._forward_guest_log()
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
        return status.state, status.detail, status.exit_code

    def _forward_guest_log(self) -> None:
        """Log the guest's new console lines and note its markers (OOM, exit status)."""
        try:
            lines = self.backend.guest_log()
        except VmWrapperError:
            return
        for line in lines:
            log.info("Guest Log: %s", line, extra={"event": events.GUEST_LOG})
            self.rt.guest_oom = self.rt.guest_oom or GUEST_OOM_MARKER in line
            status = done_status(line)
            if status is not None:
                self.rt.guest_status = status

    def _diagnose(self) -> tuple[Diagnosis, ...]:
        try:
            return tuple(self.backend.diagnose())
        except VmWrapperError as exc:
            log.warning("Could not read the hypervisor's logs: %s", exc)
            return ()

    def _trigger(self, name: str, parse: Callable[[str], _T]) -> _T | None:
        if not name:
            return None
        text = self.shared.read_text(name)
        return None if text is None else parse(text)

    def _consumable_text(self, name: str) -> str | None:
        """A trigger file that is consumed (removed) when acted on; echoes are dropped."""
        if not name:
            return None
        mtime = self.shared.mtime_ns(name)
        text = self.shared.read_text(name)
        if text is None:
            return None
        if is_echo(self.rt.consumed.get(name), text, self.rt.elapsed, mtime):
            log.debug("%s came back unchanged (sync echo); removed", name)
            self.shared.remove(name)
            return None
        self.rt.trigger_texts[name] = text
        self.rt.trigger_mtimes[name] = mtime
        return text

    def _consumable(self, name: str, parse: Callable[[str], _T]) -> _T | None:
        text = self._consumable_text(name)
        return None if text is None else parse(text)

    def _consumed(self, name: str) -> None:
        """Remove a trigger file we acted on and remember it (persisted) to spot its echoes."""
        text = self.rt.trigger_texts.pop(name, None)
        mtime = self.rt.trigger_mtimes.pop(name, None)
        self.shared.remove(name)
        if text is None:
            return
        self.rt.consumed[name] = ConsumedTrigger(content_digest(text), self.rt.elapsed, mtime)
        try:
            files.write_atomic(
                self.settings.slot_dir / CONSUMED_FILE,
                json.dumps({k: dataclasses.asdict(v) for k, v in self.rt.consumed.items()}),
            )
        except OSError as exc:
            log.warning("Could not record consumed trigger files: %s", exc)

    def _trickle_files(self) -> tuple[tuple[str, str], ...]:
        found: list[tuple[str, str]] = []
        for name in self.job.trickle_trigger_file:
            text = self._consumable_text(name)
            if text is not None:
                found.append((name, text))
        return tuple(found)

    def _heartbeat_check(self) -> int | None:
        watch = self.rt.heartbeat
        if watch is None or not watch.check_due(self.rt.elapsed):
            return None
        watch, code = watch.check(self.rt.elapsed, self.shared.mtime(self.job.heartbeat_filename))
        self.rt.heartbeat = watch
        if code is not None:
            log.error(
                "VM Heartbeat file check failed (%s, code %d).",
                self.job.heartbeat_filename,
                code,
                extra={"event": events.HEARTBEAT_FILE, "code": code},
            )
        return code

    def _uploads_ready(self) -> tuple[str, ...]:
        names = [n for n in self.job.intermediate_upload_file if n not in self.rt.uploads]
        return tuple(self.shared.present(names))

    def _poll_uploads(self) -> None:
        for name, state in list(self.rt.uploads.items()):
            if state != "requested":
                continue
            status = self.client.upload_status(name)
            if status is None:
                continue
            self.rt.uploads[name] = "done"
            if status >= 0:
                log.info(
                    "Intermediate file uploaded. (%s)",
                    name,
                    extra={"event": events.UPLOAD_DONE, "file": name, "status": status},
                )
            else:
                log.error(
                    "Intermediate upload of %s failed (%d).",
                    name,
                    status,
                    extra={"event": events.UPLOAD_DONE, "file": name, "status": status},
                )

    def _periodic_trickle(self) -> str | None:
        period = self.settings.trickle_period
        if period <= 0:
            return None
        # Fires at each multiple of the period; a restart does not fire again at once
        # (docs/compatibility.md#trickles).
        if math.floor(self.rt.elapsed / period) <= math.floor(
            self.rt.last_trickle_elapsed / period
        ):
            return None
        return f"<cpu_time>{self.rt.cpu.total:f}</cpu_time>"

    def _failure_observation(self, obs: m.Observation, failure: backoff.Failure) -> m.Observation:
        diagnoses = obs.diagnoses
        if failure.error_class is backoff.ErrorClass.HOST_PROBLEM and not diagnoses:
            diagnoses = self._diagnose()
        return replace(obs, failure=failure, diagnoses=diagnoses)

    # -- act ------------------------------------------------------------------------------

    def _perform(self, step: m.Step) -> backoff.Failure | None:
        """Do the step's actions; return the failure that stopped them (live states only)."""
        ending = step.state is m.State.DONE
        for action in step.actions:
            if isinstance(action, m.Exit):
                return None
            try:
                self._do(action)
            except _Interrupted as exc:
                log.info("%s cut short: %s", type(action).__name__, exc)
                if ending:
                    continue  # on the way out every action is still tried
                return None
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

    def _do(self, action: m.Action) -> None:
        """Perform one action. Every action type has its case: mypy's exhaustiveness check on
        ``assert_never`` makes a missing handler a type error, not a job failure at run time."""
        match action:
            case m.PrepareVm():
                self._do_PrepareVm(action)
            case m.StartVm():
                self._do_StartVm(action)
            case m.BringUp():
                self._do_BringUp(action)
            case m.ApplyPreferences():
                self._do_ApplyPreferences(action)
            case m.PauseVm():
                self._do_PauseVm(action)
            case m.ResumeVm():
                self._do_ResumeVm(action)
            case m.TakeCheckpoint():
                self._do_TakeCheckpoint(action)
            case m.SaveState():
                self._do_SaveState(action)
            case m.PowerOff():
                self._do_PowerOff(action)
            case m.Cleanup():
                self._do_Cleanup(action)
            case m.DumpLogs():
                self._do_DumpLogs(action)
            case m.SetNetwork():
                self._do_SetNetwork(action)
            case m.SendTrickle():
                self._do_SendTrickle(action)
            case m.RequestUpload():
                self._do_RequestUpload(action)
            case m.RemoveTrigger():
                self._do_RemoveTrigger(action)
            case m.WriteCernOutput():
                self._do_WriteCernOutput(action)
            case m.RecordTransientFailure():
                self._do_RecordTransientFailure(action)
            case m.ResetBackoff():
                self._do_ResetBackoff(action)
            case m.Exit():
                pass  # _perform stops at the Exit; the loop returns its outcome
            case _:
                assert_never(action)

    def _serving(self, what: str, call: Callable[[], _T]) -> _T:
        """Run a back-end call that may take long (an image conversion, a snapshot) in a
        worker thread and keep serving the client meanwhile: its messages read, a status
        message (with the CPU time last known) every SERVE_PERIOD, trickles handed over. A
        quit, an abort or a lost client cuts the call short where the back end can
        (:class:`Cancellable`) and interrupts the step."""
        done: list[_T] = []
        failed: list[Exception] = []

        def work() -> None:
            try:
                done.append(call())
            except Exception as exc:  # re-raised in the loop's thread
                failed.append(exc)

        # What the client asked before this call is what the step answers (the save after a
        # quit, or after the client went away): only a new request cuts the call short.
        before = self.client.poll()
        asked_quit = before.quit_request or self.quit_requested
        worker = threading.Thread(target=work, name=f"vmwrapper-{what}", daemon=True)
        worker.start()
        worker.join(SERVE_PERIOD)
        stop = ""
        while worker.is_alive():
            self.sleep(SERVE_PERIOD)
            worker.join(0.05)
            cs = self.client.poll()
            self._report_held()
            self.client.tick()
            wanted = (
                "abort" if cs.abort_request and not before.abort_request else
                "quit" if (cs.quit_request or self.quit_requested) and not asked_quit else
                "stop (client gone)" if cs.no_heartbeat and not before.no_heartbeat else ""
            )  # fmt: skip
            if wanted and not stop:
                stop = wanted
                log.info("The client asked to %s during %s; stopping it.", stop, what)
                if isinstance(self.backend, Cancellable):
                    self.backend.cancel()
        if stop:
            raise _Interrupted(f"{what} stopped: the client asked to {stop}")
        if failed:
            raise failed[0]
        return done[0]

    def _report_held(self) -> None:
        """A status message while a long call runs: nothing is asked of the back end."""
        self._send_status(self.rt.cpu.total, self.rt.fraction, None)

    def _do_PrepareVm(self, action: m.PrepareVm) -> None:
        backend = self.backend
        if self.settings.contextualize is not None:
            # Every run, not only when the VM is created
            # (docs/compatibility.md#floppy-contextualization).
            self.settings.contextualize()
        if not backend.exists():
            log.info("Create VM. (%s)", backend.name, extra={"event": events.VM_CREATED})
            self._serving("create", backend.create)  # may convert the image: long
            return
        status = backend.status()
        if status.state.online:
            log.info("VM was running (left by an earlier run); powering it off.")
            backend.poweroff(POWEROFF_GRACE)
        keep = self.rt.record.snapshot
        for orphan in ckpt.orphan_snapshots(backend.checkpoints(), keep):
            log.info("Deleting orphan snapshot %s (no checkpoint record names it).", orphan)
            try:
                backend.delete_checkpoint(orphan)
            except VmWrapperError as exc:
                log.warning("Could not delete snapshot %s: %s", orphan, exc)

    def _do_StartVm(self, action: m.StartVm) -> None:
        try:
            pid = self._serving("start", lambda: self.backend.start(action.restore or None))
        except CheckpointError as exc:
            if not action.restore:
                raise
            # A damaged snapshot must not lose the job: boot afresh, keep elapsed and CPU.
            log.warning("Restoring %s failed (%s); booting afresh.", action.restore, exc)
            self.backend.poweroff(POWEROFF_GRACE)
            pid = self.backend.start(None)
        self.rt.boot_started = self.clock()
        self.rt.vm_state = VmState.STARTING  # what we know until the first status answer
        log.info(
            "Successfully started VM. (PID = '%d')%s",
            pid,
            f" from checkpoint {action.restore}" if action.restore else "",
            extra={"event": events.VM_STARTED, "pid": pid, "snapshot": action.restore},
        )
        self._report(m.State.BOOTING, other_pid=pid)

    def _do_BringUp(self, action: m.BringUp) -> None:
        log.info("VM is online.", extra={"event": events.VM_ONLINE})
        self._vm_priority(lowered=True)
        self._poll_net()  # arms the counters (QEMU counts from the first call on)
        port = self.settings.webapi_port
        if port and not (self.settings.slot_dir / "graphics_app").exists():
            url = f"http://localhost:{port}"
            self.client.web_graphics_url(url)
            log.info("Detected: Web Application Enabled (%s)", url)
        if self.settings.remote_desktop_port:
            addr = f"localhost:{self.settings.remote_desktop_port}"
            self.client.remote_desktop_addr(addr)
            log.info("Detected: Remote Desktop Enabled (%s)", addr)
        self._write_record(self.rt.record)

    def _do_ApplyPreferences(self, action: m.ApplyPreferences) -> None:
        aid = self.client.init_data
        if action.reread:
            log.info("Preference change detected", extra={"event": events.PREFERENCES})
            aid = self.client.ack_reread()
        prefs = aid.global_prefs
        limit = prefs.cpu_usage_limit
        percent = 100 if limit <= 0 else min(max(int(limit), 1), 100)
        self.backend.set_cpu_cap(percent)
        limits = [x for x in (prefs.max_bytes_sec_up, prefs.max_bytes_sec_down) if x > 0]
        bandwidth = min(limits) if limits else 0.0
        if self.job.enable_network:
            self.backend.set_bandwidth(bandwidth)
        self.rt.policy = self.rt.policy.with_client_period(
            aid.checkpoint_period, self.job.minimum_checkpoint_interval
        )
        log.info(
            "Applied preferences: CPU cap %d%%, bandwidth %s, checkpoint interval %d seconds.",
            percent,
            f"{bandwidth:g} B/s" if bandwidth else "unlimited",
            int(self.rt.policy.interval),
            extra={
                "event": events.PREFERENCES,
                "cpu_cap": percent,
                "bandwidth": bandwidth,
                "checkpoint_interval": self.rt.policy.interval,
            },
        )

    def _do_PauseVm(self, action: m.PauseVm) -> None:
        self._vm_priority(lowered=False)
        self.backend.pause()
        log.info("Suspended: VM paused.", extra={"event": events.SUSPEND})

    def _do_ResumeVm(self, action: m.ResumeVm) -> None:
        self.backend.resume()
        log.info("Resumed: VM running.", extra={"event": events.RESUME})
        self._vm_priority(lowered=True)

    def _do_TakeCheckpoint(self, action: m.TakeCheckpoint) -> None:
        rt = self.rt
        if not rt.policy.automatic:
            self._commit_checkpoint("")  # disable_automatic_checkpoints: the record only
            return
        if action.final:
            self._vm_priority(lowered=False)  # the VM stops after it: let it save at full speed
        deadline = self.clock() + (FINAL_CHECKPOINT_PATIENCE if action.final else 0.0)
        name = ckpt.snapshot_name(rt.elapsed, self.backend.checkpoints())
        while True:
            try:
                if not action.final and rt.checkpoint_refusals >= ckpt.REFUSED_LIMIT:
                    try:  # a full snapshot once more: the guest may have let go of the share
                        self._serving("checkpoint", lambda: self.backend.checkpoint(name))
                    except CheckpointRefused:
                        rt.checkpoint_refusals += 1
                        self._checkpoint_disks(name)
                    else:
                        rt.checkpoint_refusals = 0
                else:
                    self._serving("checkpoint", lambda: self.backend.checkpoint(name))
                    rt.checkpoint_refusals = 0
                break
            except CheckpointRefused as exc:
                self._note_refusal(exc)
                if self.clock() >= deadline:
                    rt.checkpoint_retry_at = self.clock() + ckpt.refused_retry_delay(
                        rt.checkpoint_refusals
                    )
                    if action.final:
                        raise CheckpointError("snapshot refused until the deadline") from exc
                    return
                self.sleep(0.5)
        if name not in self.backend.checkpoints():
            raise CheckpointError(f"snapshot {name} was taken but the hypervisor does not list it")
        self._commit_checkpoint(name)

    def _note_refusal(self, exc: CheckpointRefused) -> None:
        """One warning a run, debug lines after it (the retries back off)."""
        self.rt.checkpoint_refusals += 1
        first, self.rt.refusal_warned = not self.rt.refusal_warned, True
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "Checkpoint refused (%s): the guest has the shared directory mounted. Retrying "
            "with a growing delay; after %d refusals in a row the disks alone are saved.",
            exc,
            ckpt.REFUSED_LIMIT,
            extra={"event": events.CHECKPOINT_REFUSED, "refusals": self.rt.checkpoint_refusals},
        )

    def _checkpoint_disks(self, name: str) -> None:
        """The guest keeps the share mounted, so QEMU refuses every snapshot: save the disks
        alone (a restore then boots afresh from them), so a long job is never left without
        checkpoints. docs/compatibility.md#runtime"""
        if not isinstance(self.backend, DiskCheckpoints):
            raise CheckpointRefused(f"{self.backend.name} cannot save the disks alone")
        first, self.rt.disks_warned = not self.rt.disks_warned, True
        log.log(
            logging.WARNING if first else logging.INFO,
            "Snapshots refused %d times: the guest keeps the shared directory mounted. "
            "Saving the disks alone (%s); a restart boots the VM afresh from them.",
            self.rt.checkpoint_refusals,
            name,
            extra={"event": events.CHECKPOINT_DISKS, "snapshot": name},
        )
        backend = self.backend
        self._serving("checkpoint", lambda: backend.checkpoint_disks(name))

    def _commit_checkpoint(self, snapshot: str) -> None:
        """Record the verified snapshot, then drop the one it replaces (that order)."""
        rt = self.rt
        old = rt.record.snapshot
        cpu = self._cpu_time()
        record = replace(rt.record, elapsed_time=rt.elapsed, cpu_time=cpu, snapshot=snapshot)
        self._write_record(record)
        rt.last_checkpoint_elapsed = rt.elapsed
        rt.checkpoint_cpu = cpu
        rt.checkpoints_this_run += 1
        self._reset_backoff()
        if old and old != snapshot:
            try:
                self.backend.delete_checkpoint(old)
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

    def _write_record(self, record: ckpt.CheckpointRecord) -> None:
        record = replace(
            record,
            webapi_port=self.settings.webapi_port,
            remote_desktop_port=self.settings.remote_desktop_port,
        )
        ckpt.write_record(self.settings.slot_dir, record)
        self.rt.record = record

    def _do_SaveState(self, action: m.SaveState) -> None:
        self._vm_priority(lowered=False)
        try:
            self._do_TakeCheckpoint(m.TakeCheckpoint(final=True))
        except VmWrapperError as exc:
            log.warning("Checkpoint before saving the VM state failed: %s", exc)
        self.backend.save_state()

    def _do_PowerOff(self, action: m.PowerOff) -> None:
        self._vm_priority(lowered=False)
        self.backend.poweroff(POWEROFF_GRACE)

    def _do_Cleanup(self, action: m.Cleanup) -> None:
        self._vm_priority(lowered=False)
        self.backend.cleanup()

    def _do_DumpLogs(self, action: m.DumpLogs) -> None:
        """The error report, written before the VM and its logs are removed."""
        png: bytes | None = None
        if self.job.enable_screenshots_on_error:
            shot = self.backend.screenshot()
            if shot is not None:
                with contextlib.suppress(OSError):
                    png = shot.read_bytes()
        sections = self.backend.hypervisor_logs()
        text = report.error_report(png, sections, action.exit_code)
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

    def _vm_priority(self, *, lowered: bool) -> None:
        """vboxwrapper's lower/reset_vm_process_priority: the VM computes at the job's nice and
        gets the wrapper's own back while it pauses, saves or stops."""
        if self.vm_nice is None or lowered == self.rt.priority_lowered:
            return
        try:
            self.backend.set_priority(self.vm_nice if lowered else self.own_nice)
        except VmWrapperError as exc:
            log.debug("VM priority not changed: %s", exc)
        self.rt.priority_lowered = lowered

    def _do_SetNetwork(self, action: m.SetNetwork) -> None:
        self.backend.set_network(action.connected)
        # only after it worked (docs/compatibility.md#network)
        self.rt.network_connected = action.connected
        log.info(
            "Network %s.",
            "resumed" if action.connected else "suspended",
            extra={"event": events.NETWORK, "connected": action.connected},
        )

    def _do_SendTrickle(self, action: m.SendTrickle) -> None:
        self.client.send_trickle_up(action.variety, action.text)
        if action.trigger_file:
            self._consumed(action.trigger_file)
        else:
            self.rt.last_trickle_elapsed = self.rt.elapsed
        log.info(
            "Trickle-up sent (%s).",
            action.variety,
            extra={
                "event": events.TRICKLE_UP,
                "variety": action.variety,
                "bytes": len(action.text),
            },
        )

    def _do_RequestUpload(self, action: m.RequestUpload) -> None:
        name = action.name
        self.rt.uploads[name] = "requested"
        try:
            dest = self.client.resolve(name)
            src = self.shared.file(name)
            # The client uploads the file behind the logical name: put the guest's file there.
            if src.resolve() != dest.resolve():
                self.shared.copy_out(name, dest)
            self.client.upload_file(name)
        except (OSError, VmWrapperError) as exc:
            self.rt.uploads[name] = "done"
            log.error("Intermediate upload of %s not requested: %s", name, exc)
            return
        log.info(
            "Intermediate upload requested (%s).",
            name,
            extra={"event": events.UPLOAD_REQUESTED, "file": name},
        )

    def _do_RemoveTrigger(self, action: m.RemoveTrigger) -> None:
        if action.name:
            log.info(
                "VM Temporary Exit File Detected.", extra={"event": events.TEMPORARY_EXIT_TRIGGER}
            )
            self._consumed(action.name)

    def _do_WriteCernOutput(self, action: m.WriteCernOutput) -> None:
        (self.settings.slot_dir / CERN_OUTPUT_FILE).write_text("Work Unit completed!\n")

    def _do_RecordTransientFailure(self, action: m.RecordTransientFailure) -> None:
        self.rt.retry = self.rt.retry.bumped(action.reason)
        backoff.save(self.settings.slot_dir, self.rt.retry)

    def _do_ResetBackoff(self, action: m.ResetBackoff) -> None:
        self._reset_backoff()

    def _reset_backoff(self) -> None:
        if self.rt.retry.failures:
            self.rt.retry = backoff.BackoffState()
            backoff.reset(self.settings.slot_dir)

    # -- status ---------------------------------------------------------------------------

    def _cpu_time(self) -> float:
        try:
            run_cpu = self.backend.cpu_time()
        except VmWrapperError:
            run_cpu = 0.0
        return self.rt.cpu.read(run_cpu)

    def _fraction_done(self) -> float:
        job, rt = self.job, self.rt
        if job.job_duration > 0:
            rt.fraction = min(rt.elapsed / job.job_duration, 1.0)
        elif job.fraction_done_filename:
            value = self.shared.fraction_done(job.fraction_done_filename)
            if value is not None:
                rt.fraction = value
        return rt.fraction

    def _counting_net(self) -> bool:
        """The volunteer set a daily transfer limit and the VM has a network
        (docs/compatibility.md#network)."""
        return (
            self.job.enable_network and self.client.init_data.global_prefs.daily_xfer_limit_mb > 0
        )

    def _poll_net(self) -> None:
        self.rt.net_polled_elapsed = self.rt.elapsed
        if not self._counting_net():
            return
        try:
            usage = self.backend.net_usage()
        except VmWrapperError as exc:
            log.debug("network usage not read: %s", exc)
            return
        if usage is None:
            return
        net = self.rt.net
        if usage.sent > net.sent or usage.received > net.received:
            self.rt.net = NetUsage(max(net.sent, usage.sent), max(net.received, usage.received))
            log.info(
                "Network usage: %d bytes sent, %d bytes received.",
                self.rt.net.sent,
                self.rt.net.received,
                extra={
                    "event": events.NET_USAGE,
                    "sent": self.rt.net.sent,
                    "received": self.rt.net.received,
                },
            )

    def _last_net_report(self) -> None:
        """The job ends: count the last bytes and tell the client, which reads the last status
        message when the wrapper has exited."""
        if not self._counting_net() or not self.rt.vm_state.online:
            return
        before = self.rt.net
        self._poll_net()
        if self.rt.net != before:
            self._report(m.State.DONE)

    def _send_status(self, cpu: float, fraction: float, other_pid: int | None) -> None:
        rt = self.rt
        self.client.report_status(
            cpu_time=cpu,
            checkpoint_cpu_time=rt.checkpoint_cpu,
            fraction_done=fraction,
            other_pid=other_pid,
            # episode totals in every message: the client counts what grew since the last one
            # it read, and drops a message it has not read yet
            bytes_sent=rt.net.sent,
            bytes_received=rt.net.received,
        )

    def _report(self, state: m.State, other_pid: int | None = None) -> None:
        rt = self.rt
        cpu = self._cpu_time()
        fraction = self._fraction_done()
        pid = other_pid if other_pid is not None else self._pid()
        self._send_status(cpu, fraction, pid)
        if self.job.enable_graphics_support:
            cs = self.rt.client
            status = GraphicsStatus(
                updated_time=self.wallclock(),
                cpu_time=cpu,
                elapsed_time=rt.elapsed,
                fraction_done=fraction,
                no_heartbeat=cs.no_heartbeat,
                suspended=cs.suspended,
                quit_request=cs.quit_request,
                abort_request=cs.abort_request,
                network_suspended=cs.network_suspended,
            )
            try:
                write_graphics_status(self.settings.slot_dir, status)
            except OSError as exc:
                log.warning("Could not write graphics_status.xml: %s", exc)
        if rt.elapsed >= rt.last_status_report + STATUS_REPORT_PERIOD:
            rt.last_status_report = rt.elapsed
            log.info(
                "Status Report: Job Duration: '%f'",
                self.job.job_duration,
                extra={"event": events.STATUS_REPORT},
            )
            log.info("Status Report: Elapsed Time: '%f'", rt.elapsed)
            log.info("Status Report: CPU Time: '%f'", cpu)
            if self._counting_net():
                log.info("Status Report: Network Bytes Sent (Total): '%f'", float(rt.net.sent))
                log.info(
                    "Status Report: Network Bytes Received (Total): '%f'", float(rt.net.received)
                )

    def _pid(self) -> int | None:
        try:
            return self.backend.pid()
        except VmWrapperError:
            return None

    # -- logging --------------------------------------------------------------------------

    def _log_step(self, before: m.State, step: m.Step) -> None:
        if step.event is m.Event.TICK:
            return
        code = _EVENT_CODES.get(step.event)
        message = _EVENT_MESSAGES.get(step.event)
        if message:
            log.info(message, extra={"event": code or step.event.value})
        if step.state is not before:
            log.debug(
                "supervisor: %s -> %s on %s", before.value, step.state.value, step.event.value
            )


_EVENT_CODES: dict[m.Event, str] = {
    m.Event.ABORT: events.ABORT,
    m.Event.QUIT: events.QUIT,
    m.Event.NO_HEARTBEAT: events.NO_HEARTBEAT,
    m.Event.COMPLETION: events.COMPLETION_TRIGGER,
}
_EVENT_MESSAGES: dict[m.Event, str] = {
    m.Event.ABORT: "Received Abort Request.",
    m.Event.QUIT: "Received Quit Request.",
    m.Event.NO_HEARTBEAT: "Lost contact with the BOINC client (no heartbeat).",
    m.Event.COMPLETION: "VM Completion File Detected.",
    m.Event.VM_STOPPED: "VM is no longer is a running state. It is in 'poweroff'.",
    m.Event.VM_CRASHED: "VM Premature Shutdown Detected.",
    m.Event.DURATION_REACHED: "Elapsed time limit (job_duration) reached.",
    m.Event.GUEST_OUT_OF_MEMORY: "EXIT_OUT_OF_MEMORY detected in the guest's log.",
    m.Event.BOOT_TIMEOUT: "VM did not come online in time.",
    m.Event.REGISTER_ONLY: "--register_only: the VM is created and left registered.",
}


def _load_consumed(slot_dir: Path) -> dict[str, ConsumedTrigger]:
    try:
        data = json.loads((slot_dir / CONSUMED_FILE).read_text(encoding="utf-8"))
        return {
            str(name): ConsumedTrigger(
                str(v["digest"]),
                float(v["elapsed"]),
                None if v.get("mtime_ns") is None else int(v["mtime_ns"]),
            )
            for name, v in data.items()
        }
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def run_supervisor(
    backend: Backend,
    client: Client,
    settings: Settings,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Run one job episode to its outcome (the entry point cli/run.py calls)."""
    supervisor = Supervisor(backend, client, settings, clock=clock, sleep=sleep)
    # The client never signals us (it SIGKILLs); a person running the wrapper by hand does:
    # stop like a quit (VM powered off, checkpoints kept) instead of leaving the VM running.
    handlers = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            handlers[signum] = signal.signal(signum, lambda *_: supervisor.request_quit())
    try:
        return supervisor.run()
    finally:
        for signum, previous in handlers.items():
            signal.signal(signum, previous)


__all__: Sequence[str] = ("Client", "Settings", "Supervisor", "run_supervisor")
