"""The VirtualBox back end: drives one VM through VBoxManage
(docs/compatibility.md#creating-the-vm).

``VirtualBoxBackend(config, runner=None, ...)`` implements :class:`vmwrapper.hypervisor.base.
Backend`: the VM's lifecycle (start, state, pause, snapshots, power-off), its throttles and its
accounting. It composes, each in a module of its own:

- :mod:`.host`: probing the installed VirtualBox once (version, syntax, readiness);
- :mod:`.registration`: creating the VM (steps from :mod:`.creation`), the multiattach parent
  under its lock, what earlier runs left, and the teardown;
- :mod:`.vmlog`: this run's ``VBox.log`` (the VM process id, guest lines, the log dump).

Commands come from :mod:`.commands` (pure tables), output is parsed by :mod:`.output`; every
call goes through the injected :class:`.runner.VBoxManage`. This module measures the VM
process's CPU time with psutil and renices its threads.

State comes from ``showvminfo --machinereadable`` (never from the log,
docs/compatibility.md#virtualbox-state-and-logs). vboxwrapper's visible log lines are kept ("Create
VM. (name, slot#n)"; the supervisor writes the ones every back end shares, such as "VM state change
detected." and "Successfully started VM.").
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from vmwrapper import hostos
from vmwrapper.cputime import CpuTotal
from vmwrapper.errors import BackendError, CheckpointError, HostNotReady, VmStartError
from vmwrapper.hypervisor.base import (
    SCREENSHOT_FILE,
    Diagnosis,
    NetUsage,
    VmConfig,
    VmState,
    VmStatus,
)
from vmwrapper.hypervisor.process import PriorityNote, set_vm_priority
from vmwrapper.hypervisor.text import whole_lines_tail
from vmwrapper.hypervisor.virtualbox import commands as cmd
from vmwrapper.hypervisor.virtualbox import creation, failures, logs, output, vmlog
from vmwrapper.hypervisor.virtualbox.capabilities import Capabilities
from vmwrapper.hypervisor.virtualbox.commands import Step
from vmwrapper.hypervisor.virtualbox.failures import Reaction
from vmwrapper.hypervisor.virtualbox.host import HostProbe
from vmwrapper.hypervisor.virtualbox.options import DEFAULT_OPTIONS, VirtualBoxOptions
from vmwrapper.hypervisor.virtualbox.registration import Registrar, vm_info
from vmwrapper.hypervisor.virtualbox.runner import (
    CommandResult,
    VBoxManage,
    VBoxManageError,
    vbox_environment,
)
from vmwrapper.hypervisor.virtualbox.vmlog import Identity, VmLog
from vmwrapper.outcome import ERR_NOT_EXITED

log = logging.getLogger(__name__)

STATE_TIMEOUT = 300.0  # poweroff / savestate wait (vboxwrapper's 300 s)


class VirtualBoxBackend:
    """One VM under VirtualBox. Every method is bounded in time; errors are BackendErrors."""

    name = "virtualbox"

    def __init__(
        self,
        config: VmConfig,
        *,
        options: VirtualBoxOptions | None = None,
        runner: VBoxManage | None = None,
        boinc_dir: Path | None = None,
        environ: dict[str, str] | None = None,
        lock_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        poll_interval: float = 0.25,
    ) -> None:
        self.config = config
        self._clock = clock
        self._sleep = sleep
        self._poll_interval = poll_interval
        boinc_dir = boinc_dir or _boinc_dir_of(config.project_dir)
        env = vbox_environment(
            dict(os.environ if environ is None else environ), boinc_dir=boinc_dir
        )
        self.profile_dir = env.profile_dir
        if runner is None:
            runner = VBoxManage(
                config.slot_dir, executable=env.executable, env=env.env, sleep=sleep
            )
            if "VBOX_USER_HOME" not in (environ or os.environ):
                _mkdir_quietly(env.profile_dir)
        self.runner = runner
        self._host = HostProbe(runner)
        self.options = options or DEFAULT_OPTIONS
        self._registrar = Registrar(
            config, runner, options=self.options, lock_dir=lock_dir, clock=clock, sleep=sleep
        )
        self._vm_log = VmLog(config, clock=clock, sleep=sleep, poll_interval=poll_interval)
        self._pid: int | None = None
        self._cpu = CpuTotal()  # CPU seconds of this run's VM processes
        self._bandwidth_limited = False
        self._priority_noted: PriorityNote = None
        self._start_failure = ""  # output of this run's failed startvm, for diagnose()

    # ---- probing -----------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        """VirtualBox's version and syntax, probed once (see :class:`.host.HostProbe`)."""
        return self._host.capabilities

    def check_host(self) -> None:
        """vboxwrapper's ``is_system_ready`` (see :meth:`.host.HostProbe.check_host`)."""
        self._host.check_host()

    # ---- registration --------------------------------------------------------------------

    def _vminfo(self) -> output.VmInfo | None:
        return vm_info(self.runner, self.config.name)

    def exists(self) -> bool:
        """Registered with VirtualBox now. (Settings left in the slot by an unregistered VM are
        registered again by create().)"""
        return self._vminfo() is not None

    def create(self) -> None:
        config = self.config
        if self._vminfo() is not None:
            log.info("VM %s is already registered; reusing it", config.name)
            return
        if cmd.settings_file(config).is_file():
            log.info("Register VM. (%s)", config.name)
            self._run(Step(("registervm", str(cmd.settings_file(config))), "register"))
            return
        self._host.ensure_ready()
        self._registrar.remove_stale_vm()
        caps = self.capabilities
        acceleration = creation.acceleration_steps(config, caps)  # refuses before anything is made
        log.info("Create VM. (%s, slot#%s)", config.name, config.slot_dir.name)
        try:
            self._registrar.define(caps, acceleration)
        except BaseException:
            # never leave a half-built VM that a later create() would "reuse"
            log.warning("Creating VM %s failed; removing what was made", config.name)
            self._registrar.teardown(config.name)
            raise

    # ---- start and state -------------------------------------------------------------------

    def start(self, restore: str | None = None) -> int:
        config = self.config
        info = self._vminfo()
        if info is None and cmd.settings_file(config).is_file():
            self._run(Step(("registervm", str(cmd.settings_file(config))), "register"))
            info = self._vminfo()
        if info is None:
            raise VmStartError(f"VM {config.name} is not registered; create it first")
        if info.state.online:
            log.info("VM %s was left running by an earlier wrapper; powering it off", config.name)
            self.poweroff(timeout=0)
            info = self._vminfo()
            if info is not None and info.state.online:
                raise VmStartError(
                    f"VM {config.name} is still running and would not power off",
                    code=ERR_NOT_EXITED,
                )
        if restore is not None:
            current = info.current_snapshot if info else ""
            step = cmd.snapshot_restore(config, None if restore == current else restore)
            try:
                self._run(step)
            except VBoxManageError as exc:
                raise CheckpointError(
                    f"could not restore snapshot {restore}: {exc}",
                    argv=exc.argv,
                    exit_code=exc.exit_code,
                    output=exc.output,
                    code=exc.code,
                ) from exc
        self._host.ensure_ready()
        before = self._vm_log.identity()
        self._start_failure = ""
        try:
            self._run(cmd.startvm(config))
        except VBoxManageError as exc:
            if exc.hresult is not None or not output.reports_started(exc.output):
                raise self._start_error(exc, before) from exc
            # VirtualBox 5.0.10's startvm exits 1 after a successful start: the output counts
            log.warning("VBoxManage startvm exited %s but says the VM started", exc.exit_code)
        pid = self._vm_log.wait_for_pid(before)
        self._pid = pid
        self._cpu.process_ended()  # the earlier process's count stays; this one starts at 0
        log.debug("VM %s started, process %d", config.name, pid)
        return pid

    def _start_error(self, exc: VBoxManageError, before: Identity | None) -> BackendError:
        """What a failed ``startvm`` means. VT-x/AMD-V off, missing or held by Hyper-V makes
        VirtualBox refuse the start at once (NS_ERROR_FAILURE with a ``VERR_VMX_*``,
        ``VERR_SVM_*`` or ``VERR_NEM_*`` line, also in the fresh VBox.log): that is a host
        problem for the supervisor's VM-extensions contract, never a retry until the deadline
        (docs/compatibility.md#virtualbox-failures)."""
        fresh_log = self._vm_log.read() if self._vm_log.identity() != before else ""
        self._start_failure = exc.output
        found = logs.diagnose(exc.output + "\n" + fresh_log)
        host = [d for d in found if d in logs.HOST_DIAGNOSES]
        if host or exc.reaction is Reaction.HOST:
            names = ", ".join(failures.vm_extension_errors(exc.output + fresh_log))
            return HostNotReady(
                f"VirtualBox could not start VM {self.config.name}: hardware virtualization is "
                f"not usable ({names or ', '.join(d.value for d in host)})",
                argv=exc.argv,
                exit_code=exc.exit_code,
                output=exc.output,
            )
        error = VmStartError(
            f"VirtualBox could not start VM {self.config.name}",
            argv=exc.argv,
            exit_code=exc.exit_code,
            output=exc.output,
            code=exc.code,
        )
        error.temporary = exc.temporary
        return error

    def status(self) -> VmStatus:
        try:
            info = self._vminfo()
        except VBoxManageError as exc:
            from_log = self._state_from_log(exc)
            if from_log is None:
                raise
            return from_log
        if info is None:
            return VmStatus(VmState.ABSENT, "not registered")
        # the supervisor logs state changes ("VM state change detected."), once for every back
        # end; VirtualBox's own name stays in the detail
        raw = info.state_name or "unknown"
        state = info.state
        if not state.online:
            self._note_process_end()
        return VmStatus(state, raw)

    def _state_from_log(self, exc: VBoxManageError) -> VmStatus | None:
        """When showvminfo cannot answer for now (VBoxSVC busy or away, a lock, a timeout), the
        state this run's VBox.log last recorded, as newer vboxwrapper reads it; a series of
        failed queries is then no crash (docs/compatibility.md#virtualbox-failures)."""
        if not exc.temporary or not self._vm_log.is_this_runs():
            return None
        raw = logs.machine_state(self._vm_log.read())
        if not raw:
            return None
        log.debug("showvminfo failed (%s); VBox.log says %s", exc.cause.value, raw)
        state = output.vm_state(raw)
        if not state.online:
            self._note_process_end()
        return VmStatus(state, f"{raw} (from VBox.log)")

    def pid(self) -> int | None:
        if self._pid is not None and not psutil.pid_exists(self._pid):
            self._note_process_end()
        return self._pid

    def _note_process_end(self) -> None:
        if self._pid is not None:
            self._cpu.process_ended()
            self._pid = None

    def cpu_time(self) -> float:
        """CPU seconds of the VM process tree in this run (never decreasing)."""
        if self._pid is not None:
            try:
                proc = psutil.Process(self._pid)
                total = sum(proc.cpu_times()[:2])
                for child in proc.children(recursive=True):
                    try:
                        total += sum(child.cpu_times()[:2])
                    except psutil.Error:
                        continue
                self._cpu.read(total)
            except psutil.Error:
                pass
        return self._cpu.total

    # ---- run-time control ---------------------------------------------------------------

    def pause(self) -> None:
        self._run_tolerant(cmd.controlvm(self.config, "pause"))

    def resume(self) -> None:
        self._run_tolerant(cmd.controlvm(self.config, "resume"))

    def checkpoint(self, name: str) -> None:
        """Snapshot the VM. A running VM keeps running where VirtualBox has ``snapshot take
        --live`` (4.2+); elsewhere vboxwrapper's pause, snapshot, resume, with the VM resumed
        even on failure (docs/compatibility.md#checkpoints)."""
        info = self._vminfo()
        running = info is not None and info.state is VmState.RUNNING
        if running and self.capabilities.live_snapshot:
            self._take_snapshot(name, live=True)
        else:
            if running:
                self.pause()
            try:
                self._take_snapshot(name, live=False)
            finally:
                if running:
                    self.resume()
        log.info("Checkpoint completed.")

    def _take_snapshot(self, name: str, *, live: bool) -> None:
        try:
            self._run(cmd.snapshot_take(self.config, name, live=live))
        except VBoxManageError as exc:
            raise CheckpointError(
                f"snapshot {name} of VM {self.config.name} failed",
                argv=exc.argv,
                exit_code=exc.exit_code,
                output=exc.output,
                code=exc.code,
            ) from exc

    def _snapshots(self) -> tuple[output.SnapshotEntry, ...]:
        result = self.runner.probe(cmd.snapshot_list(self.config))
        if result.ok:
            return output.parse_snapshot_list(result.output)
        if output.NO_SNAPSHOTS in result.output:
            return ()
        raise VBoxManageError("enumerate snapshot(s)", result)

    def checkpoints(self) -> tuple[str, ...]:
        return tuple(entry.name for entry in self._snapshots())

    def delete_checkpoint(self, name: str) -> None:
        for entry in self._snapshots():
            if entry.name == name:
                self._run(cmd.snapshot_delete(self.config, entry.uuid))
                return
        log.debug("snapshot %s does not exist; nothing to delete", name)

    def save_state(self) -> None:
        self._run(cmd.controlvm(self.config, "savestate"))
        self._wait_offline(STATE_TIMEOUT)

    def poweroff(self, timeout: float = 30.0) -> None:
        """ACPI power button (when running and timeout > 0), then `controlvm poweroff`, then
        SIGKILL of the VM process. Idempotent: nothing happens for an offline VM."""
        info = self._vminfo()
        if info is None or not _holds_session(info):
            return
        if timeout > 0 and info.state is VmState.RUNNING:
            result = self.runner.probe(cmd.controlvm(self.config, "acpipowerbutton", retry=False))
            if result.ok and self._wait_offline(timeout):
                return
        result = self.runner.probe(cmd.controlvm(self.config, "poweroff", retry=False))
        if self._wait_offline(STATE_TIMEOUT if result.ok else 5.0):
            return
        pid = self._pid or logs.process_id(self._vm_log.read())
        if pid is not None and psutil.pid_exists(pid):
            log.warning("VM %s did not power off; killing process %d", self.config.name, pid)
            hostos.kill_process(pid)  # SIGKILL; TerminateProcess on Windows
            self._wait_offline(10.0)

    def _wait_offline(self, timeout: float) -> bool:
        deadline = self._clock() + timeout
        while True:
            info = self._vminfo()
            if info is None or not _holds_session(info):
                self._note_process_end()
                return True
            if self._clock() >= deadline:
                return False
            self._sleep(self._poll_interval)

    def cleanup(self) -> None:
        """Power off, delete snapshots, unregister with --delete, forget the media
        (docs/compatibility.md#creating-the-vm)."""
        if self._vminfo() is None:
            self._registrar.close_media()
            return
        self.poweroff(timeout=0)
        self._registrar.teardown(self.config.name)
        self._registrar.close_media()

    def set_cpu_cap(self, percent: int) -> None:
        self._run_tolerant(cmd.cpu_cap(self.config, percent))

    def set_network(self, connected: bool) -> None:
        self._run_tolerant(cmd.link_state(self.config, connected))

    def set_bandwidth(self, bytes_per_sec: float) -> None:
        """Limit the NIC's bandwidth group; 0 lifts an earlier limit
        (docs/compatibility.md#network)."""
        if bytes_per_sec <= 0 and not self._bandwidth_limited:
            return
        if self._run_tolerant(cmd.set_bandwidth(self.config, bytes_per_sec)):
            self._bandwidth_limited = bytes_per_sec > 0

    def set_priority(self, nice: int) -> None:
        """Renice every thread of the VM process (vboxwrapper's lower/reset_vm_process_priority
        reniced only the main thread, not the EMTs that run the guest). Best effort; logged once
        per process and value, so calling it every loop stays quiet."""
        pid = self.pid()
        if pid is not None:
            self._priority_noted = set_vm_priority(pid, nice, self._priority_noted)

    def net_usage(self) -> NetUsage | None:
        """Bytes through the NICs since start(), from VirtualBox's device statistics (the
        counters begin at 0 in each VM process). None without network, when the VM is not
        running, or when VirtualBox cannot tell (logged at debug; never raises)."""
        if not self.config.network.enabled or self.pid() is None:
            return None
        try:
            # not traced: the supervisor may ask often, and the answer is a page of XML
            result = self.runner.probe(cmd.net_statistics(self.config), trace=False)
        except OSError as exc:
            log.debug("cannot read the VM's network counters: %s", exc)
            return None
        if not result.ok:
            log.debug(
                "cannot read the VM's network counters (%d): %s",
                result.code,
                result.output.strip()[-300:],
            )
            return None
        usage = output.parse_net_statistics(result.output)
        if usage is None:
            log.debug("VBoxManage debugvm statistics printed no statistics: %r", result.output)
        return usage

    # ---- the log ------------------------------------------------------------------------

    def guest_log(self) -> list[str]:
        """New ``Guest Log:`` lines of the current VBox.log (a rotated log restarts at 0)."""
        return self._vm_log.guest_lines()

    def diagnose(self) -> tuple[Diagnosis, ...]:
        """Re-read the whole current log each call (vboxwrapper's cached log was stale,
        docs/compatibility.md#virtualbox-state-and-logs),
        together with the output of a ``startvm`` that failed in this run (VirtualBox prints the
        VT-x/AMD-V reason there even when it wrote no log)."""
        return logs.diagnose(self._vm_log.read() + "\n" + self._start_failure)

    def log_tail(self, limit: int = 8192) -> str:
        """The end of VBox.log cut to whole lines (for the hypervisor log dump)."""
        return whole_lines_tail(self._vm_log.read(), limit)

    def hypervisor_logs(self, limit: int = 8192) -> dict[str, str]:
        """vboxwrapper's hypervisor log dump (docs/compatibility.md#logging-and-error-reports): the
        tails of VBoxSVC.log, VBox.log, vbox_trace.txt and VBoxStartup.log under its section titles.
        Call it *before* cleanup(), which deletes the VM's Logs folder
        (docs/compatibility.md#logging-and-error-reports)."""
        return vmlog.hypervisor_logs(self.config, self.profile_dir, limit)

    def screenshot(self) -> Path | None:
        """vboxwrapper's error screenshot: wake the screen (scancode 39), wait 1 s, save
        ``vbox_screenshot.png`` in the slot. None when the VM is not running or it failed."""
        path = self.config.slot_dir / SCREENSHOT_FILE
        wake = self.runner.probe(
            cmd.controlvm(self.config, "keyboardputscancode", "39", retry=False)
        )
        if not wake.ok:
            return None
        self._sleep(1.0)
        shot = self.runner.probe(
            cmd.controlvm(self.config, "screenshotpng", str(path), retry=False)
        )
        return path if shot.ok and path.is_file() else None

    # ---- helpers ------------------------------------------------------------------------

    def _run_tolerant(self, step: Step) -> bool:
        """Run a step whose failure vboxwrapper shrugs off (pause, resume, a throttle): an
        ignorable failure is logged and False returned; the loop asks again when it still
        matters. A held session lock or an unreachable VBoxSVC still raises (temporary)."""
        try:
            self._run(step)
        except VBoxManageError as exc:
            if not exc.ignorable:
                raise
            log.warning(
                "VBoxManage %s failed (%s, %s); going on",
                step.item,
                exc.cause.value,
                exc.error_name or exc.code,
            )
            return False
        return True

    def _run(self, step: Step) -> CommandResult | None:
        return self.runner.perform(step)


def _holds_session(info: output.VmInfo) -> bool:
    """The VM process still exists: online, or stuck in a guru meditation (CRASHED but alive)."""
    return info.state.online or info.state_name.lower() in ("gurumeditation", "stuck")


def _boinc_dir_of(project_dir: Path) -> Path:
    """``<boinc>/projects/<url>`` → ``<boinc>`` (the profile-dir fallback,
    docs/compatibility.md#start-up)."""
    if project_dir.parent.name == "projects":
        return project_dir.parent.parent
    return project_dir.parent


def _mkdir_quietly(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.debug("cannot create VirtualBox profile dir %s: %s", path, exc)


__all__: Sequence[str] = ("VirtualBoxBackend",)
