"""QemuBackend: one VM as a QEMU process, driven over QMP with QEMU's own ``qemu.qmp`` library.

The back end composes one module per concern: ``qmp`` (the QMP session), ``process`` (the
QEMU process and its :class:`~vmwrapper.hypervisor.qemu.process.Runstate`), ``overlays``
(the qcow2 files, through qemu-img), ``live`` and ``snapshots`` (the checkpoints),
``sharing`` (a "serial" share's file service), ``cpucap`` (the CPU cap), ``nettaps`` (NIC
byte counting) and ``slotfiles`` (the files in the slot, listed there, and this run's logs).

State comes from QMP ``query-status`` and from the process's exit status, never from logs.
Every method is synchronous and bounded in time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from vmwrapper import hostos
from vmwrapper.errors import (
    BackendError,
    CheckpointError,
    HostNotReady,
    VmStartError,
)
from vmwrapper.hostports import free_port
from vmwrapper.hypervisor.base import (
    SCREENSHOT_FILE,
    Diagnosis,
    NetUsage,
    VmConfig,
    VmState,
    VmStatus,
)
from vmwrapper.hypervisor.process import PriorityNote, set_vm_priority
from vmwrapper.hypervisor.qemu import monitor
from vmwrapper.hypervisor.qemu.accel import (
    ACCEL_ENV,
    AccelChoice,
    AccelSetting,
    accel_setting,
    accept_software_emulation,
    bundled_data_dir,
    choose_accel,
)
from vmwrapper.hypervisor.qemu.cmdline import (
    CACHE_NODE,
    DISK_NODE,
    NETDEV_ID,
    STATE_NODE,
    Accel,
    QemuOptions,
    build_argv,
)
from vmwrapper.hypervisor.qemu.cmdline import qemu_binary as binary_for
from vmwrapper.hypervisor.qemu.cpucap import (
    CapControl,
    CgroupCpuCap,
    CpuCap,
    DutyCycleCpuCap,
    make_cpu_cap,
)
from vmwrapper.hypervisor.qemu.live import LiveCheckpoints
from vmwrapper.hypervisor.qemu.monitor import StopCause
from vmwrapper.hypervisor.qemu.nettaps import NET_QUEUES, NET_ROTATE_BYTES, NetTaps
from vmwrapper.hypervisor.qemu.overlays import SNAPSHOT_SAFE_FORMATS, Overlays, QemuImg
from vmwrapper.hypervisor.qemu.ports import Picker, QemuPorts, pick_ports, unbound_picked_ports
from vmwrapper.hypervisor.qemu.process import QMP_LOST_GRACE, Exit, QemuProcess, Runstate
from vmwrapper.hypervisor.qemu.qmp import Qmp, QmpChannel
from vmwrapper.hypervisor.qemu.sharing import ShareTransports
from vmwrapper.hypervisor.qemu.slotfiles import RunLogs, SlotFiles
from vmwrapper.hypervisor.qemu.snapshots import Snapshots

log = logging.getLogger(__name__)

#: The snapshot tag save_state() writes; the next start() resumes from it and drops it.
SAVED_STATE_TAG = "vmwrapper_saved_state"
#: Starts tried when QEMU cannot bind a host port we picked (another program took it).
PORT_CLASH_ATTEMPTS = 3


class QemuBackend:
    """The Backend protocol for QEMU (see ``vmwrapper.hypervisor.base.Backend``).

    ``QemuBackend(config, accel="auto")``. Extra public API: :meth:`ports` (host ports
    picked for forwards with host_port 0 and for VNC), :attr:`accel` (the accelerator in use),
    :attr:`files` (paths in the slot), :attr:`argv` (the last QEMU command line), and use as a
    context manager (``cleanup()`` on exit).
    """

    name = "qemu"

    def __init__(
        self,
        config: VmConfig,
        *,
        accel: AccelSetting | str | None = None,
        qemu_binary: str | None = None,
        qemu_img: str = "qemu-img",
        qmp_timeout: float = 10.0,
        start_timeout: float = 60.0,
        checkpoint_timeout: float = 120.0,
        cpu_cap_method: str = "auto",
        checkpoint_method: str = "auto",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        port_picker: Picker = free_port,
    ) -> None:
        self.config = config
        self.port_picker = port_picker
        self.accel_setting = accel_setting(accel)
        self.binary = qemu_binary or binary_for(config.arch)
        self.qemu_img = qemu_img
        self.qmp_timeout = qmp_timeout
        self.start_timeout = start_timeout
        self.checkpoint_timeout = checkpoint_timeout
        self.cpu_cap_method = cpu_cap_method
        self.clock = clock
        self.sleep = sleep
        self.files = SlotFiles.for_slot(config.slot_dir)
        self.accel: AccelChoice | None = None
        self.argv: tuple[str, ...] = ()
        self._qmp = Qmp()
        self._cap = CapControl(config.cpus, cpu_cap_method)
        self._process = QemuProcess(self._on_exit, clock=clock, sleep=sleep)
        self._img = QemuImg(qemu_img)
        self._overlays = Overlays(config, self.files, self._img)
        self._logs = RunLogs(self.files)
        self._channel = channel = QmpChannel(
            self._qmp,
            self.files.qmp_socket,
            qmp_timeout,
            vm_name=config.name,
            alive=self._process.alive,
            hold=self._cap.hold,
        )
        self._execute, self._hmp = channel.execute, channel.hmp
        self._net = NetTaps(config.slot_dir, self._execute)
        self._live = LiveCheckpoints(
            self._overlays, self._img, channel, method=checkpoint_method, clock=clock, sleep=sleep
        )
        self._snapshots = Snapshots(
            channel, self._process, self._overlays, self._live, checkpoint_timeout, clock
        )
        self._shares = ShareTransports(config.shares, self.binary)  # "serial": a file service
        self._stop = StopCause.NONE
        self._saved_state_present = False
        self._ports: QemuPorts | None = None
        self._no_hw_acceleration = False  # a 64-bit guest was refused software emulation
        self._bandwidth_warned = False
        self._priority_noted: PriorityNote = None

    # --- context manager ---------------------------------------------------------------

    def __enter__(self) -> QemuBackend:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

    # --- definition --------------------------------------------------------------------

    def exists(self) -> bool:
        return self._overlays.exists()

    def create(self) -> None:
        """Make the overlays in the slot (kept if present: they hold this job's snapshots)."""
        self._shares.prefetch()  # QEMU lists its devices while the disks are made
        self._overlays.create()

    def cancel(self) -> None:
        """Cut a running qemu-img short (a conversion can take an hour): called from another
        thread when the client asks for a quit or an abort; the call then raises."""
        self._img.cancel()

    # --- start -------------------------------------------------------------------------

    def start(self, restore: str | None = None) -> int:
        if self._process.alive():
            raise VmStartError(f"VM {self.config.name} is already running (pid {self.pid()})")
        if not self.exists():
            self.create()
        self._process.stop_stale(self.files.pidfile, str(self.files.pidfile))
        existing = self.checkpoints()
        self._saved_state_present = SAVED_STATE_TAG in existing
        loadvm = restore
        if loadvm is None and self._saved_state_present:
            loadvm = SAVED_STATE_TAG
        loadvm, incoming = self._snapshots.prepare_restore(loadvm, existing)
        if self.accel is None:
            setting = self.accel_setting if self.config.hw_acceleration else AccelSetting.TCG
            self.accel = choose_accel(setting, self.config.arch, self.binary)
            # the operator's own choice counts, not the TCG the client's report forces
            self._refuse_software_emulation(self.accel_setting)
        self._launch_with_free_ports(loadvm, incoming is not None)
        if incoming is not None:
            self._snapshots.restore_live(*incoming, self.argv, self._logs.stderr_text)
            loadvm = incoming[0]
        try:
            self._after_start()
        except BackendError as exc:  # a half-started VM is not left running
            self._process.kill()
            raise VmStartError(f"VM started but could not be set up: {exc}") from exc
        pid = self._process.started_pid()
        log.info(
            "QEMU started (pid %d, %s%s)",
            pid,
            self.accel.accel.value,
            f", restored {loadvm}" if loadvm else "",
            extra={"event": "qemu_started", "pid": pid, "restore": loadvm},
        )
        return pid

    def _launch_with_free_ports(self, loadvm: str | None, incoming: bool = False) -> None:
        """Spawn QEMU and connect QMP; when another program took a port we picked before
        QEMU could bind it, pick that one anew and start again (a few times at most)."""
        for attempt in range(1, PORT_CLASH_ATTEMPTS + 1):
            try:
                self._launch(loadvm, incoming)
                return
            except (VmStartError, CheckpointError) as exc:
                lost = unbound_picked_ports(exc.output, self.ports())
                if not lost or attempt == PORT_CLASH_ATTEMPTS:
                    raise
                log.warning(
                    "Host port(s) %s were taken before QEMU could bind them; "
                    "picking new ones and starting again.",
                    ", ".join(map(str, sorted(lost))),
                    extra={"event": "qemu_ports_repicked", "lost": sorted(lost)},
                )
                self._ports = pick_ports(
                    self.config.network.port_rules,
                    self.config.remote_desktop,
                    self.port_picker,
                    keep=self._ports,
                    lost=lost,
                )

    def _launch(self, loadvm: str | None, incoming: bool = False) -> None:
        assert self.accel is not None
        ports = self.ports()
        tops = dict(self._overlays.qcow2_files)  # a live checkpoint's layer, or the overlay
        options = QemuOptions(
            accel=self.accel.accel,
            qmp_socket=self.files.qmp_socket,
            console_path=self.files.console,
            pidfile=self.files.pidfile,
            disk_overlay=tops.get(DISK_NODE),
            cache_overlay=tops.get(CACHE_NODE),
            state_disk=tops.get(STATE_NODE),
            port_rules=ports.forwards if self.config.network.enabled else (),
            vnc_port=ports.vnc,
            loadvm=loadvm,
            share_service_port=self._shares.port(),  # resolves "auto" first
            qmp_port=self._qmp_port(),
            data_dir=bundled_data_dir(self.binary),
            incoming=incoming,
        )
        if self._shares.shares != self.config.shares:  # "auto" resolved
            self.config = dataclasses.replace(self.config, shares=self._shares.shares)
        self.argv = tuple(build_argv(self.config, options, self.binary))
        self._spawn()
        self._live.launched()
        self._connect_qmp(loadvm)

    def _qmp_port(self) -> int | None:
        """Without Unix sockets (Windows), QMP on a loopback port picked for this start."""
        if hostos.UNIX_SOCKETS:
            return None
        port = self.port_picker()
        self._channel.socket = ("127.0.0.1", port)
        return port

    def _spawn(self) -> None:
        self.files.qmp_socket.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.files.qmp_socket.unlink(missing_ok=True)
        self._logs.new_run()
        self._stop = StopCause.NONE
        self._net.reset()
        self._process.spawn(self.argv, self.config.slot_dir, self.files.stderr)

    def _connect_qmp(self, loadvm: str | None) -> None:
        try:
            self._channel.connect_at_start(
                self.clock() + self.start_timeout, self.clock, self.sleep
            )
        except ProcessLookupError as exc:
            self._raise_start_failed(str(exc), loadvm)
        except TimeoutError as exc:
            self._process.kill()
            self._raise_start_failed(
                f"no QMP answer within {self.start_timeout:.0f} s ({exc})", None
            )

    def _raise_start_failed(self, what: str, loadvm: str | None) -> None:
        """VmStartError, or CheckpointError when QEMU died loading a snapshot (the caller
        may then boot afresh instead)."""
        self._process.reap(wait=2.0)
        code = self._process.exit.code if self._process.exit else None
        output = self._logs.stderr_text()
        if loadvm is not None:
            raise CheckpointError(
                f"{what}: restoring checkpoint {loadvm!r} failed",
                argv=self.argv,
                exit_code=code,
                output=output,
            )
        raise VmStartError(what, argv=self.argv, exit_code=code, output=output)

    def _after_start(self) -> None:
        self._shares.attach(self._execute, self.qmp_timeout)
        rd = self.config.remote_desktop
        if rd is not None:
            self._execute("set_password", {"protocol": "vnc", "password": rd.password})
        if self._saved_state_present:
            # A saved state is used once, as VirtualBox's is; a start from a checkpoint
            # supersedes it too (a later start() must not go back to it).
            self.delete_checkpoint(SAVED_STATE_TAG)
        if self._cap.percent < 100:
            self._apply_cap()
        if self.config.network.enabled and self.config.network.count_bytes:
            self._net.totals()  # arms the counters: net_usage() counts from start() on

    def ports(self) -> QemuPorts:
        """The host ports of this VM (chosen once per back end; stable across restarts,
        unless another program took a picked one before QEMU could bind it)."""
        if self._ports is None:
            self._ports = pick_ports(
                self.config.network.port_rules, self.config.remote_desktop, self.port_picker
            )
        return self._ports

    def _on_exit(self, exit: Exit) -> None:
        self._qmp.disconnect()
        self._cap.release()
        self._logs.pull_console(final=True)
        log.debug(  # the supervisor logs the state change, after the last guest lines
            "QEMU exited with %d", exit.code,
            extra={"event": "qemu_exited", "exit_code": exit.code},
        )  # fmt: skip

    # --- QMP ---------------------------------------------------------------------------

    def qmp(self, cmd: str, args: dict[str, object] | None = None) -> Any:
        """Run one QMP command on the running VM (for diagnostics and tests)."""
        return self._execute(cmd, args)

    def hmp(self, line: str) -> str:
        """Run one human monitor command on the running VM; its reply text."""
        return self._hmp(line)

    # --- state -------------------------------------------------------------------------

    def status(self) -> VmStatus:
        if self._process.runstate is Runstate.IDLE:
            if not self.exists():
                return VmStatus(VmState.ABSENT)
            if self._stop is StopCause.SAVED or SAVED_STATE_TAG in self.checkpoints():
                return VmStatus(VmState.SAVED, "state saved in a snapshot")
            return VmStatus(VmState.POWERED_OFF)
        if self._process.alive():
            try:
                reply = self._execute("query-status")
                if self._live.merging:
                    self._live.maintain()  # ends a merge in the background: cheap when idle
                self._logs.pull_console()
                return VmStatus(monitor.vm_state(str(reply["status"])), str(reply["status"]))
            except BackendError:
                # QMP goes away first when QEMU ends (guest power-off, panic): give the
                # process a moment to exit before calling this a failure
                self._process.reap(wait=QMP_LOST_GRACE)
                if self._process.alive():
                    raise
        return self._exit_status()

    def _exit_status(self) -> VmStatus:
        assert self._process.exit is not None
        return monitor.exited_status(
            self._process.exit.code, self._stop, self._logs.console, self._logs.stderr_text()
        )

    @property
    def guest_done_status(self) -> int | None:
        """N of the guest's ``VMWRAPPER_GUEST_DONE status=N`` line in this run, if any."""
        self._logs.pull_console()
        return self._logs.console.done_status

    def pause(self) -> None:
        self._shares.hold(True)
        self._execute("stop")

    def resume(self) -> None:
        self._execute("cont")
        self._shares.hold(False)

    # --- checkpoints -------------------------------------------------------------------

    def checkpoint(self, name: str) -> None:
        paused = self._shares.held
        self._shares.hold(True)  # savevm stops the VM for as long as it takes
        try:
            self._snapshots.take(name)
        finally:
            self._shares.hold(paused)

    def checkpoint_disks(self, name: str) -> None:
        """The disks alone, the VM paused meanwhile (see Snapshots.take_disks)."""
        self._snapshots.take_disks(name)

    def checkpoints(self) -> tuple[str, ...]:
        return self._snapshots.names()

    def delete_checkpoint(self, name: str) -> None:
        """Delete snapshot ``name``; deleting one that does not exist is a no-op."""
        self._snapshots.delete(name)

    def save_state(self) -> None:
        """A snapshot, then quit: the next start() resumes from it (VirtualBox's savestate)."""
        self.checkpoint(SAVED_STATE_TAG)
        self._stop = StopCause.WRAPPER
        self._quit_or_kill()
        self._stop = StopCause.SAVED

    # --- stop --------------------------------------------------------------------------

    def poweroff(self, timeout: float = 30.0) -> None:
        if not self._process.alive():
            return
        self._stop = StopCause.WRAPPER
        running = False
        with contextlib.suppress(BackendError):
            running = self._execute("query-status")["status"] == "running"
        if running and timeout > 0:
            with contextlib.suppress(BackendError):
                self._execute("system_powerdown")  # ACPI power button
            if self._process.wait_exit(timeout):
                log.info("VM powered off (ACPI)", extra={"event": "qemu_poweroff_acpi"})
                return
        self._quit_or_kill()

    def _quit_or_kill(self) -> None:
        with contextlib.suppress(BackendError):
            self._execute("quit")
        if not self._process.wait_exit(10.0):
            log.warning("QEMU did not quit; killing it", extra={"event": "qemu_killed"})
            self._process.kill()

    def cleanup(self) -> None:
        """Stop QEMU (quit, then kill) and remove the slot's files; as QEMUMachine's
        shutdown, the hard way when the graceful one fails and the clean-up always."""
        try:
            self.poweroff(timeout=0)
        except BaseException:
            self._process.kill()
            raise
        finally:
            self._release()

    def _release(self) -> None:
        try:
            self._qmp.close()
            self._shares.close()
        finally:
            self.files.remove(self.config.slot_dir)
            self._live.remove_files()
            self._net.reset()
            self._overlays.remove_converted_bases()
            self._stop = StopCause.NONE
            self._process.forget()

    # --- resources ---------------------------------------------------------------------

    def pid(self) -> int | None:
        return self._process.pid()

    def cpu_time(self) -> float:
        return self._process.cpu_time()

    def set_cpu_cap(self, percent: int) -> None:
        self._cap.want(percent)
        if self._process.alive():
            self._apply_cap()

    def _apply_cap(self) -> None:
        self._cap.apply(self._process.started_pid())

    @property
    def cpu_cap_in_use(self) -> str:
        """How the CPU cap is applied now: "cgroup", "duty-cycle" or "none"."""
        return self._cap.in_use

    def set_network(self, connected: bool) -> None:
        """Plug or unplug the NIC (QMP set_link); without a NIC (network off) nothing to do."""
        if not self.config.network.enabled:
            return
        self._execute("set_link", {"name": NETDEV_ID, "up": connected})

    def set_bandwidth(self, bytes_per_sec: float) -> None:
        """Not supported: QEMU's user-mode NAT has no traffic shaping (logged once)."""
        if bytes_per_sec > 0 and not self._bandwidth_warned:
            self._bandwidth_warned = True
            log.warning(
                "network bandwidth limit %.0f B/s ignored: QEMU user-mode NAT cannot shape",
                bytes_per_sec,
                extra={"event": "qemu_bandwidth_unsupported"},
            )

    def set_priority(self, nice: int) -> None:
        pid = self.pid()
        if pid is not None:
            self._priority_noted = set_vm_priority(pid, nice, self._priority_noted)

    def net_usage(self) -> NetUsage | None:
        """NIC bytes since start(): filter-dump counters armed there (count_bytes), else here."""
        if not self.config.network.enabled or not self._process.alive():
            return None
        try:
            sent, received = self._net.totals()
        except (BackendError, OSError, ValueError) as exc:
            log.debug("cannot count the VM's network bytes: %s", exc)
            return None
        return NetUsage(sent=sent, received=received)

    # --- error reports -------------------------------------------------------------------

    def screenshot(self) -> Path | None:
        """The VM's screen as PNG (QMP screendump), after a key press that wakes a blanked
        console. None without a screen: QEMU VMs get one only with VNC or
        enable_screenshots_on_error."""
        if not self._process.alive():
            return None
        path = self.config.slot_dir / SCREENSHOT_FILE
        try:
            self._channel.screendump(path, self.sleep)
        except BackendError as exc:
            log.debug("no screenshot: %s", exc)
            return None
        return path if path.is_file() else None

    def hypervisor_logs(self, limit: int = 8192) -> dict[str, str]:
        """This run's QEMU messages and the guest's console, their last ``limit`` characters
        cut to whole lines."""
        return self._logs.sections(limit)

    def guest_log(self) -> list[str]:
        return self._logs.take_lines(final=not self._process.alive())

    def diagnose(self) -> tuple[Diagnosis, ...]:
        found = monitor.diagnose(self._logs.stderr_text(), self._logs.console_text())
        if self._no_hw_acceleration and Diagnosis.NO_VM_EXTENSIONS not in found:
            found = (Diagnosis.NO_VM_EXTENSIONS, *found)
        return found

    def _refuse_software_emulation(self, setting: AccelSetting) -> None:
        assert self.accel is not None
        try:
            accept_software_emulation(
                self.accel,
                self.config.os_name,
                allowed=self.config.allow_software_emulation,
                setting=setting,
            )
        except HostNotReady:
            self._no_hw_acceleration = True
            self.accel = None  # asked again on the next start
            raise


__all__ = [
    "ACCEL_ENV",
    "NET_QUEUES",
    "NET_ROTATE_BYTES",
    "SAVED_STATE_TAG",
    "SNAPSHOT_SAFE_FORMATS",
    "Accel",
    "CgroupCpuCap",
    "CpuCap",
    "DutyCycleCpuCap",
    "QemuBackend",
    "QemuPorts",
    "SlotFiles",
    "StopCause",
    "make_cpu_cap",
]
