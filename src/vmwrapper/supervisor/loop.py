"""The 1 Hz loop: observe → :func:`machine.step` → perform, until the machine returns an
Outcome.

Each tick :class:`~.observe.Observer` reads the client's requests, the VM's state, the guest's
console lines and the shared directory's trigger files into one
:class:`~.machine.Observation`; the pure machine decides; :class:`~.perform.Performer` carries
out the actions in order; :class:`~.status.Status` reports to the client; then the loop sleeps
the rest of the period (:class:`~.timers.Timers`). What an action reports back (a classified
failure, a restore that failed) is fed to the machine at once; on the way out (the machine's
DONE state) every action is best effort.

Time is injected (``clock``, ``sleep``) so lifecycle tests run hours of job time in
milliseconds; so is the first checkpoint's random offset (``seed``).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from vmwrapper.errors import InputError
from vmwrapper.hypervisor.base import Backend
from vmwrapper.outcome import Finish, Outcome, TemporaryExit
from vmwrapper.shared_dir.watch import write_slot_exclusions
from vmwrapper.supervisor import backoff, events
from vmwrapper.supervisor import machine as m
from vmwrapper.supervisor.observe import Observer
from vmwrapper.supervisor.perform import Feedback, Performer, RestoreFailed
from vmwrapper.supervisor.runtime import Client, Context, Settings
from vmwrapper.supervisor.status import Status

log = logging.getLogger(__name__)


class Supervisor:
    """One job episode, from a :class:`~.runtime.Context` (the back end, the client, the
    settings and the injected clock)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        settings, job = ctx.settings, ctx.job
        self.config = m.MachineConfig(
            job_duration=job.job_duration,
            register_only=settings.register_only,
            savestate_on_quit=job.enable_vm_savestate_usage,
            enable_network=job.enable_network,
            cern_output=job.enable_cern_dataformat,
            temporary_exit_trigger_file=job.temporary_exit_trigger_file,
            timers=settings.timers,
        )
        self.status = Status(ctx)
        self.observer = Observer(ctx, self.config)
        self.performer = Performer(ctx, self.status, self.observer)

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> Outcome:
        """Run the job to its outcome. Never raises for anything the job or host does."""
        ctx, state = self.ctx, m.State.STARTING
        if not self._start_up_files():
            setup = m.step(state, m.Observation(setup_failed=True), self.config)
            assert setup.outcome is not None  # an ending row
            return self._conclude(setup.outcome)
        self._log_start()
        while True:
            tick_start = ctx.clock()
            self._account_elapsed(tick_start)
            obs = self._observe(state)
            step = m.step(state, obs, self.config)
            self._log_step(state, step)
            if step.state is m.State.DONE and state is not m.State.STARTING:
                self.status.last_net_report()
            feedback = self.performer.perform(step)
            while feedback is not None:  # the machine decides what a failure means, at once
                step = m.step(step.state, self._feedback(obs, feedback), self.config)
                self._log_step(state, step)
                feedback = self.performer.perform(step)
            if step.outcome is not None:
                return self._conclude(step.outcome)
            state = step.state
            ctx.rt.counting = state is m.State.RUNNING
            self.status.report()
            ctx.client.tick()
            spent = ctx.clock() - tick_start
            self._sleep_until_next_tick(state, max(ctx.timers.poll_period - spent, 0.0))

    def _observe(self, state: m.State) -> m.Observation:
        obs = self.observer.observe(state)
        rt, timers = self.ctx.rt, self.ctx.timers
        if state is m.State.RUNNING and timers.net_poll_due(rt.elapsed, rt.net_polled_elapsed):
            self.status.poll_net()
        return obs

    def _feedback(self, obs: m.Observation, feedback: Feedback) -> m.Observation:
        if isinstance(feedback, RestoreFailed):
            return replace(obs, restore_failed=feedback.snapshot)
        assert feedback is not None
        diagnoses = obs.diagnoses
        if feedback.error_class is backoff.ErrorClass.HOST_PROBLEM and not diagnoses:
            diagnoses = self.observer.diagnose()
        return replace(obs, failure=feedback, diagnoses=diagnoses)

    def _sleep_until_next_tick(self, state: m.State, rest: float) -> None:
        """Sleep the rest of the period; wake early when the job ends: the completion or
        temporary-exit trigger file appears, or the VM's process is gone (the guest powered
        off). The next tick then acts at once."""
        ctx = self.ctx
        job, timers = ctx.job, ctx.timers
        names = [n for n in (job.completion_trigger_file, job.temporary_exit_trigger_file) if n]
        if timers.trigger_poll <= 0 or state is not m.State.RUNNING:
            ctx.sleep(rest)
            return
        # the pid probe is a syscall, the file look-up resolves paths: each at its own pace
        step = min(timers.trigger_poll, timers.exit_poll or timers.trigger_poll)
        files_every = max(1, round(timers.trigger_poll / step))
        deadline = ctx.clock() + rest
        vm_was_up = self.status.pid() is not None  # (a pid never known must not end every sleep)
        wakes = 0
        while (left := deadline - ctx.clock()) > 0:
            ctx.sleep(min(step, left))
            wakes += 1
            if vm_was_up and self.status.pid() is None:
                return
            if wakes % files_every == 0 and ctx.shared.present(names):
                return

    def _account_elapsed(self, now: float) -> None:
        """Elapsed time advances only while the VM runs (not suspended, not booting)."""
        rt = self.ctx.rt
        if rt.last_tick is not None and rt.counting:
            rt.elapsed += self.ctx.timers.elapsed_step(now - rt.last_tick)
        rt.last_tick = now

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
            extra={
                "event": events.OUTCOME,
                "outcome": kind,
                "elapsed": round(self.ctx.rt.elapsed, 3),
            },
        )
        return outcome

    def _remove_guest_symlinks(self) -> None:
        """No symlink a guest planted in ``shared/`` outlives the wrapper: the client would
        follow one named like an output and upload the host file behind it. (Only for
        ``shared/``: with share_slot_dir the slot is the client's, and holds no symlinks.)"""
        if not self.ctx.job.enable_shared_directory:
            return
        removed = self.ctx.shared.remove_symlinks()
        if removed:
            log.warning(
                "Removed %d symbolic link(s) the guest made in the shared directory: %s",
                len(removed),
                ", ".join(sorted(removed)[:10]),
                extra={"event": events.SHARED_SYMLINKS_REMOVED, "count": len(removed)},
            )

    # -- start-up -------------------------------------------------------------------------

    def _start_up_files(self) -> bool:
        """Shared dir, copy_to_shared, cmdline, --sporadic (docs/compatibility.md#start-up).
        False when the job cannot start (the machine decides the outcome)."""
        job = self.ctx.job
        if job.enable_shared_directory:
            try:
                self.ctx.shared.ensure()
            except OSError as exc:
                log.error("Could not create the shared directory: %s", exc)
        elif job.share_slot_dir:
            try:
                write_slot_exclusions(self.ctx.settings.slot_dir)
            except OSError as exc:
                log.error("Could not write the guest's exclusion list: %s", exc)
        if job.enable_scratch_directory:
            try:
                Path(self.ctx.client.init_data.project_dir or "project", "scratch").mkdir(
                    parents=True, exist_ok=True
                )
            except OSError as exc:
                log.error("Could not create the scratch directory: %s", exc)
        if self.ctx.settings.sporadic:
            try:
                self.ctx.shared.make_sporadic_files()
            except (OSError, InputError) as exc:
                log.error("--sporadic: could not create ac/ca files: %s", exc)
                return False
        for name in job.copy_to_shared:
            try:
                if self.ctx.shared.copy_in(self.ctx.client.resolve(name), name):
                    log.info("Copied %s to the shared directory.", name)
            except (OSError, InputError) as exc:
                log.error("copy_to_shared: could not copy %s: %s", name, exc)
        if job.copy_cmdline_to_shared:
            try:
                self.ctx.shared.write_cmdline(self.ctx.settings.argv)
            except (OSError, InputError) as exc:
                log.error("copy_cmdline_to_shared: %s", exc)
        return True

    def _log_start(self) -> None:
        rec = self.ctx.rt.record
        if rec.elapsed_time or rec.cpu_time:
            log.info(
                "Restoring from checkpoint: elapsed %f s, CPU %f s, snapshot %s",
                rec.elapsed_time,
                rec.cpu_time,
                rec.snapshot or "(none)",
                extra={"event": events.RESTORE, "snapshot": rec.snapshot},
            )
        if self.ctx.rt.policy.automatic:
            log.info(
                "Checkpoint interval offset: %d seconds.", int(self.ctx.rt.policy.first_offset)
            )
            log.info(
                "Setting checkpoint interval to %d seconds. (Higher value of (Preference: %d "
                "seconds) or (Vbox_job.xml: %d seconds))",
                int(self.ctx.rt.policy.interval),
                int(self.ctx.client.init_data.checkpoint_period),
                int(self.ctx.job.minimum_checkpoint_interval),
            )
        if self.ctx.settings.trickle_period > 0:
            log.info(
                "Feature: Enabling trickle-ups (Interval: %f)", self.ctx.settings.trickle_period
            )

    def request_quit(self) -> None:
        """Treat the next tick as a quit request (SIGTERM / Ctrl-C when run by hand)."""
        self.ctx.rt.quit_requested = True

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


def run_supervisor(
    backend: Backend,
    client: Client,
    settings: Settings,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Run one job episode to its outcome (the entry point cli/run.py calls)."""
    supervisor = Supervisor(Context(backend, client, settings, clock=clock, sleep=sleep))
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
