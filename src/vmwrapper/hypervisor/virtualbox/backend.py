"""The VirtualBox back end: drives one VM through VBoxManage
(docs/compatibility.md#creating-the-vm).

``VirtualBoxBackend(config, runner=None, ...)`` implements :class:`vmwrapper.hypervisor.base.
Backend`. Commands come from :mod:`.commands` (pure tables), output is parsed by :mod:`.output`,
the VM's ``VBox.log`` by :mod:`.logs`; this module does the I/O: it runs the steps through the
injected :class:`.runner.VBoxManage`, probes the installed VirtualBox once, reads the log, takes
the multiattach lock, measures the VM process's CPU time with psutil and renices its threads.

State comes from ``showvminfo --machinereadable`` (never from the log,
docs/compatibility.md#virtualbox-state-and-logs). vboxwrapper's visible log lines are kept ("Create
VM. (name, slot#n)"; the supervisor writes the ones every back end shares, such as "VM state change
detected." and "Successfully started VM.").
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

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
from vmwrapper.hypervisor.virtualbox import failures, logs, output
from vmwrapper.hypervisor.virtualbox.commands import Capabilities, Step
from vmwrapper.hypervisor.virtualbox.failures import Reaction
from vmwrapper.hypervisor.virtualbox.lock import MultiattachLock
from vmwrapper.hypervisor.virtualbox.runner import (
    TRACE_FILE,
    CommandResult,
    VBoxManage,
    VBoxManageError,
    is_multiattach_40_error,
    vbox_environment,
)
from vmwrapper.outcome import ERR_NOT_EXITED

log = logging.getLogger(__name__)

PID_TIMEOUT = 45.0  # vboxwrapper waits ~45 s for "Process ID:" in VBox.log
STATE_TIMEOUT = 300.0  # poweroff / savestate wait (vboxwrapper's 300 s)


class VirtualBoxBackend:
    """One VM under VirtualBox. Every method is bounded in time; errors are BackendErrors."""

    name = "virtualbox"

    def __init__(
        self,
        config: VmConfig,
        *,
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
        self._lock_dir = lock_dir
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
        self._caps: Capabilities | None = None
        self._pid: int | None = None
        self._cpu = CpuTotal()  # CPU seconds of this run's VM processes
        self._log_identity: tuple[int, int] | None = None
        self._log_offset = 0
        self._bandwidth_limited = False
        self._host_checked = False
        self._priority_noted: PriorityNote = None
        self._start_failure = ""  # output of this run's failed startvm, for diagnose()

    # ---- probing -----------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        """VirtualBox's version and syntax, probed once (``--version``, ``help modifyvm``,
        ``list systemproperties``)."""
        if self._caps is None:
            version = self.runner.run(Step(("--version",), "version", retry=False))
            text = version.output.replace("\r", "").strip()
            if output.parse_version(text) is None:
                log.warning("VirtualBox version not recognised: %r; assuming a current one", text)
            help_text = self.runner.probe(
                Step(("help", "modifyvm"), "help modifyvm", retry=False, log_error=False)
            ).output
            props = self.runner.probe(
                Step(("list", "systemproperties"), "systemproperties", retry=False, log_error=False)
            ).output
            additions = output.guest_additions_iso(props)
            self._caps = cmd.capabilities(
                text,
                help_text,
                guest_additions_iso=additions if additions and os.path.isfile(additions) else "",
                macos=platform.system() == "Darwin",
            )
            log.info("Detected: %s", self._caps.display_version)
        return self._caps

    def _ensure_host(self) -> None:
        if not self._host_checked:
            self.check_host()
            self._refuse_known_bad_version()
            self._host_checked = True

    def _refuse_known_bad_version(self) -> None:
        """vboxwrapper's known-bad releases end the task with a temporary exit and a notice
        asking the volunteer to upgrade (docs/compatibility.md#virtualbox-failures)."""
        caps = self.capabilities
        if output.is_known_bad(caps.version):
            raise HostNotReady(
                f"Incompatible version of VirtualBox detected ({caps.version_text}); please "
                "upgrade: this release crashes or corrupts VMs while taking or restoring "
                "snapshots"
            )

    def check_host(self) -> None:
        """vboxwrapper's ``is_system_ready``: ``list hostinfo`` must work and show no driver
        warnings. Raises HostNotReady (a temporary condition, unlike vboxwrapper's exit 1)."""
        result = self.runner.probe(Step(("list", "hostinfo"), "list hostinfo", retry=False))
        info = output.parse_hostinfo(result.output)
        if not result.ok or not info.ready:
            problems = "; ".join(info.problems) or result.output.strip()[-300:]
            raise HostNotReady(
                f"VirtualBox is not ready on this host: {problems}; fix: install or repair "
                "VirtualBox (kernel modules loaded, matching VBoxManage)",
                argv=result.argv,
                exit_code=result.exit_code,
                output=result.output,
            )

    # ---- registration --------------------------------------------------------------------

    def _vminfo(self, vm: str | None = None) -> output.VmInfo | None:
        """showvminfo of the VM (None when VirtualBox does not know it)."""
        result = self.runner.probe(cmd.showvminfo(vm or self.config.name), trace=False)
        if result.ok:
            return output.parse_vminfo(result.output)
        if result.hresult == output.VBOX_E_OBJECT_NOT_FOUND:
            return None
        raise VBoxManageError("showvminfo", result)

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
        self._ensure_host()
        self._remove_stale_vm()
        caps = self.capabilities
        acceleration = cmd.acceleration_steps(config, caps)  # refuses before anything is made
        log.info("Create VM. (%s, slot#%s)", config.name, config.slot_dir.name)
        try:
            self._define(caps, acceleration)
        except BaseException:
            # never leave a half-built VM that a later create() would "reuse"
            log.warning("Creating VM %s failed; removing what was made", config.name)
            self._teardown(config.name)
            raise

    def _define(self, caps: Capabilities, acceleration: list[Step]) -> None:
        config = self.config
        for step in cmd.define_steps(config, caps):
            self._run(step)
        info = self._vminfo()
        nic_type = self._nic_type(caps, info)
        bridge = ""
        if config.network.bridged:
            bridge = output.first_bridged_interface(
                self.runner.probe(Step(("list", "bridgedifs"), "list bridgedifs")).output
            )
        steps: list[Step] = [
            *cmd.network_steps(config, caps, nic_type, bridge),
            *cmd.devices_off_steps(config, caps),
            *acceleration,
            *cmd.controller_steps(config, caps),
            *cmd.media_steps(config, caps),
        ]
        for step in steps:
            self._run(step)
        if config.multiattach_parent is not None and config.iso_image is None:
            self._attach_multiattach_parent(config.multiattach_parent)
        later = [
            *cmd.guest_additions_after_multiattach(config, caps),
            *cmd.floppy_steps(config),
            *cmd.bandwidth_steps(config, caps),
            *cmd.port_forward_steps(config, caps),
            *self._remote_desktop_steps(caps),
            *cmd.shared_folder_steps(config),
        ]
        for step in later:
            self._run(step)

    def _nic_type(self, caps: Capabilities, info: output.VmInfo | None) -> str:
        driver = self.config.network.driver
        if driver:
            if caps.accepts_nic_type(driver):
                return driver
            log.warning(
                "Invalid Network Driver Specified: %s (not in `VBoxManage help modifyvm`);"
                " using the default",
                driver,
            )
        if info is None:
            return ""
        return cmd.default_nic_type(info.nic_type, info.paravirt_provider)

    def _remote_desktop_steps(self, caps: Capabilities) -> list[Step]:
        if self.config.remote_desktop is None:
            return []
        packs = self.runner.probe(Step(("list", "extpacks"), "list extpacks", retry=False))
        if not output.has_vrde_extpack(packs.output):
            log.warning("Required extension pack not installed, remote desktop not enabled.")
            return []
        log.info("Enabling remote desktop for VM.")
        return cmd.remote_desktop_steps(self.config, caps)

    def _remove_stale_vm(self) -> None:
        """A VM of an earlier run may still hold this slot's disk
        (docs/compatibility.md#creating-the-vm): unregister it when `showhdinfo` names it, else
        forget the slot's media."""
        config = self.config
        disk = config.cache_disk if config.iso_image is not None else config.disk_image
        if disk is None or config.multiattach_parent is not None or not disk.is_file():
            return
        result = self.runner.probe(cmd.showhdinfo(str(disk)))
        if not result.ok:
            return
        info = output.parse_hdinfo(result.output)
        for vm_name, vm_uuid in info.in_use_by:
            log.info("Deregistering stale VM %s (%s) that still uses %s", vm_name, vm_uuid, disk)
            self._teardown(vm_uuid, delete=False)
        for step in cmd.close_media_steps(config):
            self.runner.probe(step)

    def _attach_multiattach_parent(self, parent: Path) -> None:
        """Attach the project's shared parent image in multiattach mode
        (docs/compatibility.md#creating-the-vm), under the per-parent lock; orphaned children left
        by crashed runs are removed once."""
        config = self.config
        with MultiattachLock(parent, lock_dir=self._lock_dir, clock=self._clock, sleep=self._sleep):
            for attempt in (1, 2):
                hd = self.runner.probe(cmd.showhdinfo(str(parent)))
                setuuid = False
                if not hd.ok:
                    text = hd.output
                    if "Cannot register the hard disk" in text and "already exists" in text:
                        setuuid = True
                        log.warning(
                            "%s has the UUID of another registered disk; attaching with "
                            "a new UUID (re-clone the image on the server)",
                            parent,
                        )
                    else:
                        raise VBoxManageError("showhdinfo (multiattach parent)", hd)
                info = output.parse_hdinfo(hd.output)
                if attempt == 1 and info.multiattach and info.child_uuids:
                    # children of VMs that are gone (crashed or stale runs) only fill the disk
                    self._remove_disk_orphans(parent, close_parent=False)
                if not info.multiattach:  # registers it (with a new UUID on a clash)
                    self._run(
                        cmd.attach_step(
                            config,
                            0,
                            "hdd",
                            str(parent),
                            setuuid=setuuid,
                            item="storage attach (fixed disk)",
                        )
                    )
                    self._run(
                        cmd.attach_step(config, 0, "", "none", item="storage detach (fixed disk)")
                    )
                try:
                    self._run(
                        cmd.attach_step(
                            config,
                            0,
                            "hdd",
                            str(parent),
                            mtype="multiattach",
                            item="storage attach (fixed disk - multiattach)",
                        )
                    )
                    return
                except VBoxManageError as exc:
                    if attempt == 1 and is_multiattach_40_error(exc.output):
                        self._remove_disk_orphans(parent)
                        continue
                    raise

    def _remove_disk_orphans(self, parent: Path, *, close_parent: bool = True) -> None:
        """Delete every differencing child of ``parent`` that no VM (or snapshot) uses, children
        first; with ``close_parent`` also close the parent itself, so VirtualBox forgets a broken
        registry entry (docs/compatibility.md#creating-the-vm). Runs under the parent's lock."""
        info = output.parse_hdinfo(self.runner.probe(cmd.showhdinfo(str(parent))).output)
        for child in info.child_uuids:
            self._remove_orphan_tree(child, parent)
        if close_parent:
            self.runner.probe(cmd.closemedium("disk", info.location or str(parent)))

    def _remove_orphan_tree(self, uuid: str, parent: Path) -> bool:
        result = self.runner.probe(cmd.showhdinfo(uuid))
        if not result.ok:
            return False
        info = output.parse_hdinfo(result.output)
        if info.in_use_by:
            return False
        if not all([self._remove_orphan_tree(child, parent) for child in info.child_uuids]):
            return False  # a descendant is still in use: keep the chain
        log.info("Removing orphaned child disk %s of %s", info.location or uuid, parent)
        return self.runner.probe(cmd.closemedium("disk", uuid, delete=True)).ok

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
        self._ensure_host()
        before = self._log_file_identity()
        self._start_failure = ""
        try:
            self._run(cmd.startvm(config))
        except VBoxManageError as exc:
            if exc.hresult is not None or not output.reports_started(exc.output):
                raise self._start_error(exc, before) from exc
            # VirtualBox 5.0.10's startvm exits 1 after a successful start: the output counts
            log.warning("VBoxManage startvm exited %s but says the VM started", exc.exit_code)
        pid = self._wait_for_pid(before)
        self._pid = pid
        self._cpu.process_ended()  # the earlier process's count stays; this one starts at 0
        log.debug("VM %s started, process %d", config.name, pid)
        return pid

    def _start_error(self, exc: VBoxManageError, before: tuple[int, int] | None) -> BackendError:
        """What a failed ``startvm`` means. VT-x/AMD-V off, missing or held by Hyper-V makes
        VirtualBox refuse the start at once (NS_ERROR_FAILURE with a ``VERR_VMX_*``,
        ``VERR_SVM_*`` or ``VERR_NEM_*`` line, also in the fresh VBox.log): that is a host
        problem for the supervisor's VM-extensions contract, never a retry until the deadline
        (docs/compatibility.md#virtualbox-failures)."""
        fresh_log = self._read_log() if self._log_file_identity() != before else ""
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

    def _log_path(self) -> Path:
        return cmd.log_dir(self.config) / "VBox.log"

    def _log_file_identity(self) -> tuple[int, int] | None:
        try:
            st = self._log_path().stat()
        except OSError:
            return None
        return (st.st_ino, int(st.st_ctime_ns))

    def _wait_for_pid(self, before: tuple[int, int] | None) -> int:
        """The VM process id from the *new* VBox.log (VirtualBox rotates it at start,
        docs/compatibility.md#virtualbox-state-and-logs)."""
        deadline = self._clock() + PID_TIMEOUT
        while True:
            identity = self._log_file_identity()
            if identity is not None and identity != before:
                pid = logs.process_id(self._read_log())
                if pid is not None and psutil.pid_exists(pid):
                    self._log_identity = identity
                    self._log_offset = 0
                    return pid
            if self._clock() >= deadline:
                raise VmStartError(
                    f"VM {self.config.name} was started but its log {self._log_path()} named no "
                    f"process within {PID_TIMEOUT:.0f} s",
                    code=-182,
                )
            self._sleep(self._poll_interval)

    def _read_log(self) -> str:
        try:
            return self._log_path().read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

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
        if not exc.temporary or self._log_identity is None:
            return None
        if self._log_file_identity() != self._log_identity:
            return None  # not the log of the VM this run started
        raw = logs.machine_state(self._read_log())
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
        """Pause, snapshot, resume (vboxwrapper's order); the VM is resumed even on failure."""
        config = self.config
        info = self._vminfo()
        was_running = info is not None and info.state is VmState.RUNNING
        if was_running:
            self.pause()
        try:
            self._run(cmd.snapshot_take(config, name))
        except VBoxManageError as exc:
            raise CheckpointError(
                f"snapshot {name} of VM {config.name} failed",
                argv=exc.argv,
                exit_code=exc.exit_code,
                output=exc.output,
                code=exc.code,
            ) from exc
        finally:
            if was_running:
                self.resume()
        log.info("Checkpoint completed.")

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
        pid = self._pid or logs.process_id(self._read_log())
        if pid is not None and psutil.pid_exists(pid):
            log.warning("VM %s did not power off; killing process %d", self.config.name, pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
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
            for step in cmd.close_media_steps(self.config):
                self.runner.probe(step)
            return
        self.poweroff(timeout=0)
        self._teardown(self.config.name)
        for step in cmd.close_media_steps(self.config):
            self.runner.probe(step)

    def _teardown(self, vm: str, *, delete: bool = True) -> None:
        """Delete snapshots, the bandwidth group, the floppy controller; unregister (with
        ``--delete`` for our own VM; a stale VM's disks are this slot's, so they stay)."""
        config = self.config
        target = config if vm == config.name else _renamed(config, vm)
        for entry in reversed(self._snapshots_of(vm)):
            self.runner.probe(cmd.snapshot_delete(target, entry.uuid))
        steps = cmd.teardown_steps(target, delete=delete)
        unregister = steps[-1]
        for step in steps[:-1]:
            self.runner.probe(step)
        if config.multiattach_parent is not None:
            try:
                with MultiattachLock(
                    config.multiattach_parent,
                    lock_dir=self._lock_dir,
                    clock=self._clock,
                    sleep=self._sleep,
                ):
                    self.runner.probe(unregister)
            except BackendError:
                self.runner.probe(unregister)  # as vboxwrapper: go on without the lock
        else:
            self.runner.probe(unregister)

    def _snapshots_of(self, vm: str) -> tuple[output.SnapshotEntry, ...]:
        result = self.runner.probe(Step(("snapshot", vm, "list"), "snapshot list", retry=False))
        return output.parse_snapshot_list(result.output) if result.ok else ()

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
        identity = self._log_file_identity()
        if identity is None or self._log_identity is None:
            return []  # not started by us yet: the log is an earlier run's
        if identity != self._log_identity:
            self._log_identity = identity
            self._log_offset = 0
        try:
            with open(self._log_path(), "rb") as handle:
                handle.seek(self._log_offset)
                data = handle.read()
        except OSError:
            return []
        chunk = logs.split_new(data, self._log_offset)
        self._log_offset = chunk.offset
        return logs.guest_lines(chunk.lines)

    def diagnose(self) -> tuple[Diagnosis, ...]:
        """Re-read the whole current log each call (vboxwrapper's cached log was stale,
        docs/compatibility.md#virtualbox-state-and-logs),
        together with the output of a ``startvm`` that failed in this run (VirtualBox prints the
        VT-x/AMD-V reason there even when it wrote no log)."""
        return logs.diagnose(self._read_log() + "\n" + self._start_failure)

    def log_tail(self, limit: int = 8192) -> str:
        """The end of VBox.log cut to whole lines (for the hypervisor log dump)."""
        return whole_lines_tail(self._read_log(), limit)

    def hypervisor_logs(self, limit: int = 8192) -> dict[str, str]:
        """vboxwrapper's hypervisor log dump (docs/compatibility.md#logging-and-error-reports): the
        tails of VBoxSVC.log, VBox.log, vbox_trace.txt and VBoxStartup.log under its section titles.
        Call it *before* cleanup(), which deletes the VM's Logs folder
        (docs/compatibility.md#logging-and-error-reports)."""
        sources = {
            "Hypervisor System Log": self.profile_dir / "VBoxSVC.log",
            "VM Execution Log": self._log_path(),
            "VM Startup Log": cmd.log_dir(self.config) / "VBoxStartup.log",
            "VM Trace Log": self.config.slot_dir / TRACE_FILE,
        }
        dump: dict[str, str] = {}
        for title, path in sources.items():
            try:
                dump[title] = whole_lines_tail(
                    path.read_text(encoding="utf-8", errors="replace"), limit
                )
            except OSError:
                continue
        return dump

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
        if step.fatal:
            return self.runner.run(step)
        self.runner.probe(step)
        return None


def _holds_session(info: output.VmInfo) -> bool:
    """The VM process still exists: online, or stuck in a guru meditation (CRASHED but alive)."""
    return info.state.online or info.state_name.lower() in ("gurumeditation", "stuck")


def _renamed(config: VmConfig, vm: str) -> VmConfig:
    from dataclasses import replace

    return replace(config, name=vm)


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
