"""QemuBackend: one VM as a QEMU process, driven over QMP with QEMU's own ``qemu.qmp`` library.

Files in the slot (all removed by :meth:`QemuBackend.cleanup`)::

    vm_disk.qcow2     overlay over vm_image.vdi or the multiattach parent; holds the snapshots
    vm_cache.qcow2    overlay over vm_cache.vdi (ISO contextualization with a cache disk)
    vm_state.qcow2    ISO mode without disks: a node the guest never sees, holds the VM state
    qemu-qmp.sock     the QMP socket (a short path under $TMPDIR if the slot path is too long)
    qemu-console.log  the guest's first serial port (appended across restarts)
    qemu-stderr.log   QEMU's own messages (host out-of-memory, start errors)
    qemu.pid          QEMU's pidfile: a QEMU left by a killed wrapper is found and stopped
    qemu-net-*.pcap   NIC byte counting (daily_xfer_limit_mb), only once net_usage() is asked
    vbox_screenshot.png  the error screenshot (enable_screenshots_on_error)

State comes from QMP ``query-status`` and from the process's exit status, never from logs.
``qemu.qmp`` is asyncio; the back end owns one event loop and runs each call to completion
within a timeout, so every method is synchronous and bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
from qemu.qmp import ExecuteError, QMPClient

from vmwrapper.boinc import files
from vmwrapper.errors import BackendError, CheckpointError, HostNotReady, VmStartError
from vmwrapper.hostports import free_port
from vmwrapper.hypervisor.base import (
    GUEST_DONE_MARKER,
    SCREENSHOT_FILE,
    Diagnosis,
    NetUsage,
    VmConfig,
    VmState,
    VmStatus,
)
from vmwrapper.hypervisor.process import PriorityNote, set_vm_priority
from vmwrapper.hypervisor.qemu import monitor, netcount
from vmwrapper.hypervisor.qemu.accel import (
    AccelChoice,
    AccelSetting,
    choose_accel,
    software_emulation_refused,
)
from vmwrapper.hypervisor.qemu.cmdline import (
    CACHE_NODE,
    DISK_NODE,
    NETDEV_ID,
    STATE_NODE,
    Accel,
    QemuOptions,
    build_argv,
    qemu_binary,
)
from vmwrapper.hypervisor.qemu.console import ConsoleLines
from vmwrapper.hypervisor.qemu.ports import Picker, QemuPorts, pick_ports, unbound_picked_ports
from vmwrapper.hypervisor.text import whole_lines_tail

log = logging.getLogger(__name__)

#: The snapshot tag save_state() writes; the next start() resumes from it and drops it.
SAVED_STATE_TAG = "vmwrapper_saved_state"
#: Environment variable that forces the accelerator when the constructor is not told.
ACCEL_ENV = "VMWRAPPER_ACCEL"
_TAG_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
#: Seconds to wait for QEMU's exit when its QMP connection drops.
QMP_LOST_GRACE = 5.0
_UNIX_PATH_MAX = 100  # sun_path is 108 bytes; keep a margin
#: Image formats QEMU can snapshot over as a backing file (the others block migration).
SNAPSHOT_SAFE_FORMATS = frozenset({"qcow2", "raw"})
#: The netfilter queue that sees each direction: frames *to* the netdev (the "rx" queue) left
#: the guest; frames the netdev sends ("tx") reach it.
NET_QUEUES = {"sent": "rx", "received": "tx"}
#: A counting pcap file this big is replaced by a new one (17 bytes a frame: ~60k frames).
NET_ROTATE_BYTES = 1 << 20


@dataclass(frozen=True)
class SlotFiles:
    """Where the back end keeps its files for one slot."""

    disk_overlay: Path
    cache_overlay: Path
    state_disk: Path
    qmp_socket: Path
    console: Path
    stderr: Path
    pidfile: Path

    @classmethod
    def for_slot(cls, slot: Path) -> SlotFiles:
        qmp = slot / "qemu-qmp.sock"
        if len(str(qmp)) > _UNIX_PATH_MAX:  # a Unix socket path must fit in sun_path
            digest = hashlib.sha256(str(slot).encode()).hexdigest()[:16]
            qmp = Path(tempfile.gettempdir()) / f"vmwrapper-{os.getuid()}" / f"{digest}.qmp"
        return cls(
            disk_overlay=slot / "vm_disk.qcow2",
            cache_overlay=slot / "vm_cache.qcow2",
            state_disk=slot / "vm_state.qcow2",
            qmp_socket=qmp,
            console=slot / "qemu-console.log",
            stderr=slot / "qemu-stderr.log",
            pidfile=slot / "qemu.pid",
        )


@dataclass
class _NetTap:
    """One direction's filter-dump: the current pcap file and the bytes of the earlier ones."""

    direction: str
    generation: int
    path: Path
    progress: netcount.PcapProgress
    earlier: int = 0

    @property
    def object_id(self) -> str:
        return f"vmw-net-{self.direction}-{self.generation}"

    @property
    def total(self) -> int:
        return self.earlier + self.progress.octets


@dataclass(frozen=True)
class _Exit:
    code: int  # negative: killed by that signal
    cpu_time: float


class _Qmp:
    """A synchronous face on ``qemu.qmp.QMPClient``: one event loop, every call with a timeout."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: QMPClient | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None

    def _run(self, coro: Any, timeout: float) -> Any:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def connect(self, path: Path, timeout: float, *, quiet: bool = False) -> None:
        """Connect to QEMU's QMP socket; ``quiet``: a refusal is expected (QEMU starting)."""
        client = QMPClient("vmwrapper")
        qmp_log = logging.getLogger("qemu.qmp")
        level = qmp_log.level
        if quiet:  # qemu.qmp logs a refused connect as an ERROR; we retry it instead
            qmp_log.setLevel(logging.CRITICAL)
        try:
            self._run(client.connect(str(path)), timeout)
        except (Exception, asyncio.CancelledError) as exc:
            raise BackendError(f"cannot connect to QMP at {path}: {exc}") from exc
        finally:
            qmp_log.setLevel(level)
        self._client = client

    def execute(self, cmd: str, args: dict[str, object] | None, timeout: float) -> Any:
        if self._client is None:
            raise BackendError(f"QMP not connected (for {cmd})")
        try:
            return self._run(self._client.execute(cmd, args), timeout)
        except ExecuteError as exc:  # QEMU answered with an error: the session is fine
            raise BackendError(f"QMP {cmd} failed: {exc}", argv=(cmd,)) from exc
        except (Exception, asyncio.CancelledError) as exc:  # lost or stuck: start afresh
            self.disconnect()
            raise BackendError(f"QMP {cmd}: no answer ({type(exc).__name__}: {exc})") from exc

    def disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            # the error that broke the session comes back here; it was reported already
            with contextlib.suppress(Exception, asyncio.CancelledError):
                self._run(client.disconnect(), 5.0)

    def close(self) -> None:
        self.disconnect()
        if self._loop is not None:
            self._loop.close()
            self._loop = None


class CpuCap:
    """Limits a process to a share of CPU time. ``set(percent)`` 100 lifts the limit."""

    method = "none"

    def set(self, percent: int) -> None:
        raise NotImplementedError

    def hold(self) -> contextlib.AbstractContextManager[None]:
        """While held, the process runs (QMP calls must not meet a stopped QEMU)."""
        return contextlib.nullcontext()

    def close(self) -> None:
        """Lift the limit and release what the cap made (threads, cgroups)."""


class CgroupCpuCap(CpuCap):
    """CFS bandwidth of a cgroup made for the process (cgroup v2 ``cpu.max`` or v1 quota)."""

    method = "cgroup"
    PERIOD_US = 100_000

    def __init__(self, pid: int, cpus: int, name: str) -> None:
        self.cpus = cpus
        v2 = Path("/sys/fs/cgroup")
        v1 = Path("/sys/fs/cgroup/cpu")
        if "cpu" in _read(v2 / "cgroup.controllers").split():
            self.v2 = True
            self.dir = v2 / _own_cgroup_v2() / name
        elif (v1 / "cpu.cfs_quota_us").exists():
            self.v2 = False
            self.dir = v1 / name
        else:
            raise OSError("no cgroup cpu controller mounted")
        self.dir.mkdir(exist_ok=True)
        (self.dir / "cgroup.procs").write_text(str(pid))

    def set(self, percent: int) -> None:
        quota = max(1000, self.PERIOD_US * self.cpus * percent // 100)
        if self.v2:
            text = "max" if percent >= 100 else str(quota)
            (self.dir / "cpu.max").write_text(f"{text} {self.PERIOD_US}")
        else:
            (self.dir / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
            (self.dir / "cpu.cfs_quota_us").write_text("-1" if percent >= 100 else str(quota))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.set(100)
        with contextlib.suppress(OSError):
            self.dir.rmdir()  # fails while a process is still in it; retried on next close


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _own_cgroup_v2() -> str:
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        if line.startswith("0::"):
            return line[3:].strip("/")
    return ""


class DutyCycleCpuCap(CpuCap):
    """SIGSTOP/SIGCONT the process in a small thread: ``percent`` of each period it runs.

    Used when no cgroup can be made. QEMU's monitor stops with the process, so QMP calls run
    inside :meth:`hold`, which waits for the running phase and keeps the process running.
    """

    method = "duty-cycle"

    def __init__(self, pid: int, period: float = 0.1) -> None:
        self.pid = pid
        self.period = period
        self.percent = 100
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._cycle, name=f"cpu-cap-{pid}", daemon=True)
        self._thread.start()

    def set(self, percent: int) -> None:
        self.percent = max(1, min(100, percent))

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self._lock:
            yield

    def _cycle(self) -> None:
        while not self._stop.is_set():
            percent = self.percent
            if percent >= 100:
                self._stop.wait(self.period)
                continue
            with self._lock:
                if not self._signal(signal.SIGSTOP):
                    return
                self._stop.wait(self.period * (100 - percent) / 100)
                self._signal(signal.SIGCONT)
            self._stop.wait(self.period * percent / 100)

    def _signal(self, sig: signal.Signals) -> bool:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._signal(signal.SIGCONT)


def make_cpu_cap(
    pid: int, cpus: int, name: str, method: str = "auto", percent: int = 100
) -> CpuCap:
    """A cgroup cap set to ``percent`` where one works here, else the SIGSTOP/SIGCONT cycle.

    A cgroup can be made yet unusable (cgroup v2 without the cpu controller delegated to
    it), so the first ``set`` is part of the test.
    """
    if method in ("auto", "cgroup"):
        cap: CgroupCpuCap | None = None
        try:
            cap = CgroupCpuCap(pid, cpus, name)
            cap.set(percent)
            return cap
        except OSError as exc:
            if cap is not None:
                _move_back(pid, cap)
            if method == "cgroup":
                raise BackendError(f"cannot cap CPU use with a cgroup: {exc}") from exc
            log.info("no cgroup for the CPU cap (%s); using a SIGSTOP/SIGCONT duty cycle", exc)
    duty = DutyCycleCpuCap(pid)
    duty.set(percent)
    return duty


def _move_back(pid: int, cap: CgroupCpuCap) -> None:
    """Undo a half-made cgroup cap: the process back to the parent group, the group gone."""
    with contextlib.suppress(OSError):
        (cap.dir.parent / "cgroup.procs").write_text(str(pid))
    cap.close()


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
        clock: Callable[[], float] = time.monotonic,
        port_picker: Picker = free_port,
    ) -> None:
        self.config = config
        self.port_picker = port_picker
        self.accel_setting = _accel_setting(accel)
        self.binary = qemu_binary or _binary_for(config.arch)
        self.qemu_img = qemu_img
        self.qmp_timeout = qmp_timeout
        self.start_timeout = start_timeout
        self.checkpoint_timeout = checkpoint_timeout
        self.cpu_cap_method = cpu_cap_method
        self.clock = clock
        self.files = SlotFiles.for_slot(config.slot_dir)
        self.accel: AccelChoice | None = None
        self.argv: tuple[str, ...] = ()
        self._qmp = _Qmp()
        self._proc: subprocess.Popen[bytes] | None = None
        self._exit: _Exit | None = None
        self._stopped_by_us = False
        self._saved = False
        self._saved_state_present = False
        self._ports: QemuPorts | None = None
        self._console = ConsoleLines()
        self._console_offset = 0
        self._run_console_start = 0
        self._tool: subprocess.Popen[str] | None = None  # the qemu-img running now, if any
        self._run_stderr_start = 0
        self._no_hw_acceleration = False  # a 64-bit guest was refused software emulation
        self._pending: list[str] = []
        self._cap_percent = 100
        self._cap: CpuCap | None = None
        self._bandwidth_warned = False
        self._net_taps: dict[str, _NetTap] = {}
        self._priority_noted: PriorityNote = None

    # --- context manager ---------------------------------------------------------------

    def __enter__(self) -> QemuBackend:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

    # --- definition --------------------------------------------------------------------

    @property
    def _qcow2_files(self) -> tuple[tuple[str, Path], ...]:
        """(node, path) of every qcow2 this VM uses; the first holds the VM state."""
        nodes: list[tuple[str, Path]] = []
        if self._disk_parent() is not None:
            nodes.append((DISK_NODE, self.files.disk_overlay))
        if self.config.cache_disk is not None:
            nodes.append((CACHE_NODE, self.files.cache_overlay))
        if not nodes:
            nodes.append((STATE_NODE, self.files.state_disk))
        return tuple(nodes)

    def _disk_parent(self) -> Path | None:
        return self.config.multiattach_parent or self.config.disk_image

    def exists(self) -> bool:
        return self._qcow2_files[0][1].exists()

    def create(self) -> None:
        """Make the overlays in the slot (kept if present: they hold this job's snapshots)."""
        parent = self._disk_parent()
        if parent is not None:
            self._make_overlay(parent, self.files.disk_overlay)
        if self.config.cache_disk is not None:
            self._make_overlay(self.config.cache_disk, self.files.cache_overlay)
        if parent is None and self.config.cache_disk is None and not self.files.state_disk.exists():
            self._qemu_img("create", "-q", "-f", "qcow2", str(self.files.state_disk), "1M")

    def _make_overlay(self, parent: Path, overlay: Path) -> None:
        if overlay.exists():
            return
        if not parent.is_file():
            raise VmStartError(
                f"disk image {parent} does not exist; check the app version's files "
                "(vm_image.vdi / multiattach_vdi_file / vm_cache.vdi)"
            )
        base, fmt = self._snapshot_capable_base(parent)
        self._qemu_img(
            "create", "-q", "-f", "qcow2", "-b", str(base.resolve()), "-F", fmt, str(overlay)
        )
        log.info(
            "overlay %s over %s (%s)", overlay.name, base, fmt, extra={"event": "qemu_overlay"}
        )

    def _snapshot_capable_base(self, parent: Path) -> tuple[Path, str]:
        """``parent`` itself if QEMU can snapshot over it, else a qcow2 copy made once.

        QEMU's vdi (and vmdk, vpc, vhdx) drivers block migration and so every snapshot, even
        as a read-only backing file. Such a parent is converted once to qcow2 next to it
        (the slot's own image) or, for a multiattach parent, in the project dir where all
        slots share it; the parent itself is only read.
        """
        in_slot = parent.parent.resolve() == self.config.slot_dir.resolve()
        if in_slot:
            linked = files.resolve_filename(parent.parent, parent.name)
            if linked != parent:  # an earlier run of this task put the conversion in its place
                if not linked.is_file():
                    raise VmStartError(
                        f"{parent.name} links to {linked}, which is gone; the task cannot "
                        "start (abort it: the client will fetch the image for a new one)"
                    )
                return linked, "qcow2"
        info = json.loads(self._qemu_img("info", "-U", "--output=json", str(parent)))
        fmt = str(info["format"])
        if fmt in SNAPSHOT_SAFE_FORMATS:
            return parent, fmt
        shared_by_tasks = in_slot and self.config.project_dir.is_dir()
        if shared_by_tasks:
            # one conversion per image content (so per app version), in the project dir
            with parent.open("rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
            base = self.config.project_dir / f"{parent.name}.{digest[:16]}.qcow2"
        else:
            stat = parent.stat()
            key = f"{parent.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
            base = parent.with_name(f"{parent.name}.{hashlib.sha256(key).hexdigest()[:12]}.qcow2")
        if not base.exists():
            _remove_dead_converters_files(base)
            tmp = base.with_name(f"{base.name}.{os.getpid()}.tmp")
            try:
                self._qemu_img(
                    "convert", "-U", "-f", fmt, "-O", "qcow2", str(parent), str(tmp),
                    timeout=3600.0,
                )  # fmt: skip
                tmp.replace(base)  # atomic: a slot converting at the same time is harmless
            finally:
                tmp.unlink(missing_ok=True)
            log.info(
                "%s converted to %s (QEMU cannot snapshot over %s)", parent.name, base.name, fmt,
                extra={"event": "qemu_base_converted"},
            )  # fmt: skip
        if shared_by_tasks:
            _link_in_place(parent, base)
        return base, "qcow2"

    def _qemu_img(self, *args: str, timeout: float = 120.0) -> str:
        argv = [self.qemu_img, *args]
        try:
            with subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            ) as proc:
                self._tool = proc
                try:
                    out, err = proc.communicate(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
                    raise
                finally:
                    self._tool = None
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BackendError(f"qemu-img failed: {exc}", argv=argv) from exc
        if proc.returncode != 0:
            raise BackendError("qemu-img failed", argv=argv, exit_code=proc.returncode, output=err)
        return out

    def cancel(self) -> None:
        """Cut a running qemu-img short (a conversion can take an hour): called from another
        thread when the client asks for a quit or an abort; the call then raises."""
        tool = self._tool
        if tool is not None:
            with contextlib.suppress(OSError):
                tool.kill()

    # --- start -------------------------------------------------------------------------

    def start(self, restore: str | None = None) -> int:
        if self._alive():
            raise VmStartError(f"VM {self.config.name} is already running (pid {self.pid()})")
        if not self.exists():
            self.create()
        self._stop_stale_qemu()
        existing = self.checkpoints()
        self._saved_state_present = SAVED_STATE_TAG in existing
        loadvm = restore
        if loadvm is None and self._saved_state_present:
            loadvm = SAVED_STATE_TAG
        if loadvm is not None and loadvm not in existing:
            raise CheckpointError(
                f"cannot restore checkpoint {loadvm!r}: {self._qcow2_files[0][1]} has only "
                f"{list(existing)}"
            )
        if loadvm is not None and self._revert_disks(loadvm):
            loadvm = None  # the disks alone were saved: boot afresh from them
        if self.accel is None:
            setting = self.accel_setting if self.config.hw_acceleration else AccelSetting.TCG
            self.accel = choose_accel(setting, self.config.arch, self.binary)
            # the operator's own choice counts, not the TCG the client's report forces
            self._refuse_software_emulation(self.accel_setting)
        self._launch_with_free_ports(loadvm)
        try:
            self._after_start()
        except BackendError as exc:  # a half-started VM is not left running
            self._kill()
            raise VmStartError(f"VM started but could not be set up: {exc}") from exc
        assert self._proc is not None
        log.info(
            "QEMU started (pid %d, %s%s)",
            self._proc.pid,
            self.accel.accel.value,
            f", restored {loadvm}" if loadvm else "",
            extra={"event": "qemu_started", "pid": self._proc.pid, "restore": loadvm},
        )
        return self._proc.pid

    def _launch_with_free_ports(self, loadvm: str | None) -> None:
        """Spawn QEMU and connect QMP; when another program took a port we picked before
        QEMU could bind it, pick that one anew and start again (a few times at most)."""
        for attempt in range(1, PORT_CLASH_ATTEMPTS + 1):
            try:
                self._launch(loadvm)
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

    def _launch(self, loadvm: str | None) -> None:
        assert self.accel is not None
        ports = self.ports()
        options = QemuOptions(
            accel=self.accel.accel,
            qmp_socket=self.files.qmp_socket,
            console_path=self.files.console,
            pidfile=self.files.pidfile,
            disk_overlay=self.files.disk_overlay if self._disk_parent() else None,
            cache_overlay=self.files.cache_overlay if self.config.cache_disk else None,
            state_disk=self.files.state_disk if self._qcow2_files[0][0] == STATE_NODE else None,
            port_rules=ports.forwards if self.config.network.enabled else (),
            vnc_port=ports.vnc,
            loadvm=loadvm,
        )
        self.argv = tuple(build_argv(self.config, options, self.binary))
        self._spawn()
        self._connect_qmp(loadvm)

    def _spawn(self) -> None:
        self.files.qmp_socket.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.files.qmp_socket.unlink(missing_ok=True)
        self._run_console_start = self._console_offset = _size(self.files.console)
        self._run_stderr_start = _size(self.files.stderr)
        self._console = ConsoleLines()
        self._exit = None
        self._stopped_by_us = False
        self._saved = False
        self._net_taps = {}  # a new QEMU counts from zero (the client's "episode" total)
        self._remove_net_files()
        with self.files.stderr.open("ab") as err:
            try:
                self._proc = subprocess.Popen(
                    self.argv,
                    cwd=self.config.slot_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    start_new_session=True,  # a Ctrl-C for the wrapper is not one for QEMU
                )
            except OSError as exc:
                raise VmStartError(f"cannot run QEMU: {exc}", argv=self.argv) from exc

    def _connect_qmp(self, loadvm: str | None) -> None:
        deadline = self.clock() + self.start_timeout
        last: BaseException | None = None
        while self.clock() < deadline:
            if not self._alive():
                self._raise_start_failed("QEMU exited during start", loadvm)
            if self.files.qmp_socket.exists():
                try:
                    self._qmp.connect(self.files.qmp_socket, self.qmp_timeout, quiet=True)
                    return
                except (Exception, asyncio.CancelledError) as exc:
                    last = exc
            time.sleep(0.05)
        self._kill()
        self._raise_start_failed(f"no QMP answer within {self.start_timeout:.0f} s ({last})", None)

    def _raise_start_failed(self, what: str, loadvm: str | None) -> None:
        """VmStartError, or CheckpointError when QEMU died loading a snapshot (the caller
        may then boot afresh instead)."""
        self._reap(wait=2.0)
        code = self._exit.code if self._exit else None
        output = self._stderr_text()
        if loadvm is not None:
            raise CheckpointError(
                f"{what}: restoring checkpoint {loadvm!r} failed",
                argv=self.argv,
                exit_code=code,
                output=output,
            )
        raise VmStartError(what, argv=self.argv, exit_code=code, output=output)

    def _after_start(self) -> None:
        rd = self.config.remote_desktop
        if rd is not None:
            self._execute("set_password", {"protocol": "vnc", "password": rd.password})
        if self._saved_state_present:
            # A saved state is used once, as VirtualBox's is; a start from a checkpoint
            # supersedes it too (a later start() must not go back to it).
            self.delete_checkpoint(SAVED_STATE_TAG)
        if self._cap_percent < 100:
            self._apply_cap()

    def _stop_stale_qemu(self) -> None:
        """A QEMU that outlived a killed wrapper holds the overlay's lock: stop it."""
        try:
            pid = int(self.files.pidfile.read_text().strip())
            proc = psutil.Process(pid)
            cmdline = " ".join(proc.cmdline())
        except (OSError, ValueError, psutil.Error):
            return
        if str(self.files.qmp_socket) not in cmdline:
            return  # the pid was reused by something else
        log.warning("stopping QEMU pid %d left by an earlier run of this slot", pid)
        proc.kill()
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:  # gone, or a zombie: its locks are released
            with contextlib.suppress(psutil.Error):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    time.sleep(0.05)
                    continue
            break

    def ports(self) -> QemuPorts:
        """The host ports of this VM (chosen once per back end; stable across restarts,
        unless another program took a picked one before QEMU could bind it)."""
        if self._ports is None:
            self._ports = pick_ports(
                self.config.network.port_rules, self.config.remote_desktop, self.port_picker
            )
        return self._ports

    # --- process -----------------------------------------------------------------------

    def _reap(self, wait: float = 0.0) -> None:
        """Collect QEMU's exit status (and its CPU time from rusage) once it has exited."""
        proc = self._proc
        if proc is None or self._exit is not None:
            return
        deadline = time.monotonic() + wait
        while True:
            try:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status, usage = proc.pid, 0, None
            if pid:
                code = os.waitstatus_to_exitcode(status)
                proc.returncode = code  # Popen must not wait for it again
                cpu = usage.ru_utime + usage.ru_stime if usage else 0.0
                self._exit = _Exit(code, cpu)
                self._on_exit()
                return
            if time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    def _on_exit(self) -> None:
        self._qmp.disconnect()
        if self._cap is not None:
            self._cap.close()
            self._cap = None
        self._pull_console(final=True)
        assert self._exit is not None
        log.debug(  # the supervisor logs the state change, after the last guest lines
            "QEMU exited with %d", self._exit.code,
            extra={"event": "qemu_exited", "exit_code": self._exit.code},
        )  # fmt: skip

    def _alive(self) -> bool:
        self._reap()
        return self._proc is not None and self._exit is None

    def _kill(self) -> None:
        if self._alive():
            assert self._proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGKILL)
            self._reap(wait=10.0)

    def _wait_exit(self, timeout: float) -> bool:
        self._reap(wait=timeout)
        return not self._alive()

    # --- QMP ---------------------------------------------------------------------------

    def _execute(self, cmd: str, args: dict[str, object] | None = None, timeout: float = 0) -> Any:
        if not self._alive():
            raise BackendError(f"VM {self.config.name} is not running (QMP {cmd})")
        if not self._qmp.connected:
            self._qmp.connect(self.files.qmp_socket, timeout=self.qmp_timeout)
        hold = self._cap.hold() if self._cap is not None else contextlib.nullcontext()
        with hold:
            return self._qmp.execute(cmd, args, timeout or self.qmp_timeout)

    def _hmp(self, line: str, timeout: float = 0) -> str:
        return str(self._execute("human-monitor-command", {"command-line": line}, timeout))

    def qmp(self, cmd: str, args: dict[str, object] | None = None) -> Any:
        """Run one QMP command on the running VM (for diagnostics and tests)."""
        return self._execute(cmd, args)

    def hmp(self, line: str) -> str:
        """Run one human monitor command on the running VM; its reply text."""
        return self._hmp(line)

    # --- state -------------------------------------------------------------------------

    def status(self) -> VmStatus:
        if self._proc is None:
            if not self.exists():
                return VmStatus(VmState.ABSENT)
            if self._saved or SAVED_STATE_TAG in self.checkpoints():
                return VmStatus(VmState.SAVED, "state saved in a snapshot")
            return VmStatus(VmState.POWERED_OFF)
        if self._alive():
            try:
                reply = self._execute("query-status")
                self._pull_console()
                return VmStatus(monitor.vm_state(str(reply["status"])), str(reply["status"]))
            except BackendError:
                # QMP goes away first when QEMU ends (guest power-off, panic): give the
                # process a moment to exit before calling this a failure
                self._reap(wait=QMP_LOST_GRACE)
                if self._alive():
                    raise
        return self._exit_status()

    def _exit_status(self) -> VmStatus:
        assert self._exit is not None
        code = self._exit.code
        if self._saved:
            return VmStatus(VmState.SAVED, "state saved in a snapshot", code)
        if self._stopped_by_us:
            return VmStatus(VmState.POWERED_OFF, "stopped by the wrapper", code)
        if code == 0:
            if self._console.done_status is None:  # e.g. a panic before pvpanic was loaded
                detail = f"guest powered off (no {GUEST_DONE_MARKER} line)"
            else:
                detail = (
                    f"guest powered off ({GUEST_DONE_MARKER} status={self._console.done_status})"
                )
            return VmStatus(VmState.POWERED_OFF, detail, code)
        detail = monitor.exit_detail(code, self._console.guest_error, self._stderr_text())
        return VmStatus(VmState.CRASHED, detail, code)

    @property
    def guest_done_status(self) -> int | None:
        """N of the guest's ``VMWRAPPER_GUEST_DONE status=N`` line in this run, if any."""
        self._pull_console()
        return self._console.done_status

    def pause(self) -> None:
        self._execute("stop")

    def resume(self) -> None:
        self._execute("cont")

    # --- checkpoints -------------------------------------------------------------------

    def checkpoint(self, name: str) -> None:
        _check_tag(name)
        if not self._alive():
            raise CheckpointError(f"cannot take checkpoint {name!r}: the VM is not running")
        started = time.monotonic()
        try:
            reply = self._hmp(f"savevm {name}", timeout=self.checkpoint_timeout)
        except BackendError as exc:
            raise CheckpointError(f"checkpoint {name!r} failed: {exc}") from exc
        failure = monitor.snapshot_failure(reply, "take checkpoint", name)
        if failure is not None:
            raise failure
        log.info(
            "checkpoint %s taken in %.2f s", name, time.monotonic() - started,
            extra={"event": "qemu_checkpoint", "checkpoint": name},
        )  # fmt: skip

    def checkpoint_disks(self, name: str) -> None:
        """The disks alone, the VM paused meanwhile: what still works while the guest keeps
        a 9p share mounted (QEMU then refuses every savevm). start(restore=name) boots afresh
        from them. docs/compatibility.md#runtime"""
        _check_tag(name)
        if not self._alive():
            raise CheckpointError(f"cannot take checkpoint {name!r}: the VM is not running")
        nodes = [node for node, _ in self._qcow2_files if node != STATE_NODE]
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

    def _revert_disks(self, name: str) -> bool:
        """If ``name`` holds the disks alone, put them back (QEMU not running); else False.
        The first qcow2 decides: a full snapshot keeps the VM state there (the others have
        none in any snapshot)."""
        infos = [
            (path, json.loads(self._qemu_img("info", "-U", "--output=json", str(path))))
            for _node, path in self._qcow2_files
        ]
        if name not in monitor.disk_only_snapshot_names(infos[0][1]):
            return False
        for path, info in infos:
            if name in monitor.snapshot_names(info):
                self._qemu_img("snapshot", "-a", name, str(path))
        return True

    def checkpoints(self) -> tuple[str, ...]:
        node, path = self._qcow2_files[0]
        if self._alive():
            try:
                nodes = self._execute("query-named-block-nodes")
                return monitor.node_snapshot_names(nodes, node)
            except BackendError:
                self._reap(wait=QMP_LOST_GRACE)
                if self._alive():
                    raise
        if not path.exists():
            return ()
        info = json.loads(self._qemu_img("info", "-U", "--output=json", str(path)))
        return monitor.snapshot_names(info)

    def delete_checkpoint(self, name: str) -> None:
        """Delete snapshot ``name``; deleting one that does not exist is a no-op."""
        _check_tag(name)
        if name not in self.checkpoints():
            return
        if self._alive():
            failure = monitor.snapshot_failure(
                self._hmp(f"delvm {name}", timeout=self.checkpoint_timeout),
                "delete checkpoint",
                name,
            )
            if failure is not None:
                raise failure
            return
        for _node, path in self._qcow2_files:
            info = json.loads(self._qemu_img("info", "-U", "--output=json", str(path)))
            if name in monitor.snapshot_names(info):
                self._qemu_img("snapshot", "-d", name, str(path))

    def save_state(self) -> None:
        """A snapshot, then quit: the next start() resumes from it (VirtualBox's savestate)."""
        self.checkpoint(SAVED_STATE_TAG)
        self._stopped_by_us = True
        self._quit_or_kill()
        self._saved = True

    # --- stop --------------------------------------------------------------------------

    def poweroff(self, timeout: float = 30.0) -> None:
        if not self._alive():
            return
        self._stopped_by_us = True
        running = False
        with contextlib.suppress(BackendError):
            running = self._execute("query-status")["status"] == "running"
        if running and timeout > 0:
            with contextlib.suppress(BackendError):
                self._execute("system_powerdown")  # ACPI power button
            if self._wait_exit(timeout):
                log.info("VM powered off (ACPI)", extra={"event": "qemu_poweroff_acpi"})
                return
        self._quit_or_kill()

    def _quit_or_kill(self) -> None:
        with contextlib.suppress(BackendError):
            self._execute("quit")
        if not self._wait_exit(10.0):
            log.warning("QEMU did not quit; killing it", extra={"event": "qemu_killed"})
            self._kill()

    def cleanup(self) -> None:
        self.poweroff(timeout=0)
        self._qmp.close()
        for path in (
            self.files.disk_overlay,
            self.files.cache_overlay,
            self.files.state_disk,
            self.files.qmp_socket,
            self.files.console,
            self.files.stderr,
            self.files.pidfile,
            self.config.slot_dir / SCREENSHOT_FILE,
        ):
            path.unlink(missing_ok=True)
        self._remove_net_files()
        for image in (self.config.disk_image, self.config.cache_disk):
            if image is not None and image.parent == self.config.slot_dir:
                for base in image.parent.glob(f"{glob.escape(image.name)}.*.qcow2"):
                    base.unlink(missing_ok=True)  # the slot's converted base
        self._saved = False
        self._proc = None
        self._exit = None

    # --- resources ---------------------------------------------------------------------

    def pid(self) -> int | None:
        return self._proc.pid if self._alive() and self._proc is not None else None

    def cpu_time(self) -> float:
        if self._proc is None:
            return 0.0
        if self._alive():
            try:
                proc = psutil.Process(self._proc.pid)
                total = 0.0
                for p in (proc,):  # QEMU forks no helpers; children() reads all of /proc
                    times = p.cpu_times()
                    total += times.user + times.system
                return total
            except psutil.Error:
                self._reap(wait=1.0)
        return self._exit.cpu_time if self._exit else 0.0

    def set_cpu_cap(self, percent: int) -> None:
        self._cap_percent = max(1, min(100, int(percent)))
        if self._alive():
            self._apply_cap()

    def _apply_cap(self) -> None:
        if self._cap is None:
            if self._cap_percent >= 100:
                return
            assert self._proc is not None
            name = f"vmwrapper-{self._proc.pid}"
            self._cap = make_cpu_cap(
                self._proc.pid, self.config.cpus, name, self.cpu_cap_method, self._cap_percent
            )
        else:
            try:
                self._cap.set(self._cap_percent)
            except OSError as exc:
                raise BackendError(f"cannot change the CPU cap: {exc}") from exc
        log.info(
            "CPU cap %d%% (%s)", self._cap_percent, self._cap.method,
            extra={"event": "qemu_cpu_cap", "percent": self._cap_percent},
        )  # fmt: skip

    @property
    def cpu_cap_in_use(self) -> str:
        """How the CPU cap is applied now: "cgroup", "duty-cycle" or "none"."""
        return self._cap.method if self._cap is not None else "none"

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

    # --- network accounting --------------------------------------------------------------

    def net_usage(self) -> NetUsage | None:
        """Bytes through the NIC since start(), counted by filter-dump files armed on the
        first call (the supervisor asks once when the VM comes online)."""
        if not self.config.network.enabled or not self._alive():
            return None
        try:
            if not self._net_taps:
                for direction in NET_QUEUES:
                    self._net_taps[direction] = self._add_tap(direction, 0, 0)
            return NetUsage(sent=self._read_tap("sent"), received=self._read_tap("received"))
        except (BackendError, OSError, ValueError) as exc:
            log.debug("cannot count the VM's network bytes: %s", exc)
            return None

    def _add_tap(self, direction: str, generation: int, earlier: int) -> _NetTap:
        path = self.config.slot_dir / f"qemu-net-{direction}.{generation}.pcap"
        tap = _NetTap(direction, generation, path, netcount.PcapProgress(), earlier)
        self._execute(
            "object-add",
            {
                "qom-type": "filter-dump",
                "id": tap.object_id,
                "netdev": NETDEV_ID,
                "queue": NET_QUEUES[direction],
                "file": str(path),
                "maxlen": 1,  # the record header keeps each frame's full length
            },
        )
        return tap

    def _read_tap(self, direction: str) -> int:
        tap = self._net_taps[direction]
        self._advance_tap(tap)
        if tap.progress.offset >= NET_ROTATE_BYTES:
            # Stop the old filter before the new one starts: a frame in between is missed,
            # none is counted twice.
            self._execute("object-del", {"id": tap.object_id})
            self._advance_tap(tap)
            tap.path.unlink(missing_ok=True)
            tap = self._add_tap(direction, tap.generation + 1, tap.total)
            self._net_taps[direction] = tap
        return tap.total

    @staticmethod
    def _advance_tap(tap: _NetTap) -> None:
        try:
            with tap.path.open("rb") as fh:
                fh.seek(tap.progress.offset)
                data = fh.read()
        except FileNotFoundError:
            return  # QEMU creates it when the filter is added; nothing seen yet
        tap.progress = netcount.advance(tap.progress, data)

    def _remove_net_files(self) -> None:
        for path in self.config.slot_dir.glob("qemu-net-*.pcap"):
            path.unlink(missing_ok=True)

    # --- error reports -------------------------------------------------------------------

    def screenshot(self) -> Path | None:
        """The VM's screen as PNG (QMP screendump), after a key press that wakes a blanked
        console. None without a screen: QEMU VMs get one only with VNC or
        enable_screenshots_on_error."""
        if not self._alive():
            return None
        path = self.config.slot_dir / SCREENSHOT_FILE
        try:
            self._execute("send-key", {"keys": [{"type": "qcode", "data": "shift"}]})
            time.sleep(1.0)  # as vboxwrapper: let the guest redraw
            self._execute("screendump", {"filename": str(path), "format": "png"})
        except BackendError as exc:
            log.debug("no screenshot: %s", exc)
            return None
        return path if path.is_file() else None

    def hypervisor_logs(self, limit: int = 8192) -> dict[str, str]:
        """This run's QEMU messages and the guest's console, their last ``limit`` characters
        cut to whole lines."""
        sections = {
            "Hypervisor Log (qemu-stderr.log)": self._stderr_text(),
            "VM Console Log (qemu-console.log)": self._console_text(),
        }
        return {title: whole_lines_tail(text, limit) for title, text in sections.items() if text}

    # --- logs --------------------------------------------------------------------------

    def _pull_console(self, final: bool = False) -> None:
        try:
            with self.files.console.open("rb") as fh:
                fh.seek(self._console_offset)
                data = fh.read(1 << 20)
        except OSError:
            data = b""
        self._console_offset += len(data)
        self._pending += self._console.feed(data)
        if final:
            self._pending += self._console.flush()

    def guest_log(self) -> list[str]:
        self._pull_console(final=not self._alive())
        lines, self._pending = self._pending, []
        return lines

    def diagnose(self) -> tuple[Diagnosis, ...]:
        found = monitor.diagnose(self._stderr_text(), self._console_text())
        if self._no_hw_acceleration and Diagnosis.NO_VM_EXTENSIONS not in found:
            found = (Diagnosis.NO_VM_EXTENSIONS, *found)
        return found

    def _refuse_software_emulation(self, setting: AccelSetting) -> None:
        """A 64-bit guest under TCG only with the app version's opt-in; else the supervisor's
        VM-extensions contract (docs/compatibility.md#software-emulation). The choice is
        logged either way."""
        assert self.accel is not None
        why = software_emulation_refused(
            self.accel,
            self.config.os_name,
            allowed=self.config.allow_software_emulation,
            setting=setting,
        )
        if why:
            self._no_hw_acceleration = True
            self.accel = None  # asked again on the next start
            raise HostNotReady(f"{why} (fix: enable VT-x/AMD-V and KVM on this host)")
        if self.accel.accel is Accel.TCG and "_64" in self.config.os_name:
            log.info(
                "64-bit guest under software emulation (TCG, %s): allowed by %s",
                self.accel.reason,
                "--accel tcg" if setting is AccelSetting.TCG else "the app version",
            )

    def _stderr_text(self) -> str:
        return _tail(self.files.stderr, self._run_stderr_start)

    def _console_text(self) -> str:
        return _tail(self.files.console, self._run_console_start)


def _accel_setting(accel: AccelSetting | str | None) -> AccelSetting:
    """The constructor's ``accel``, else ``$VMWRAPPER_ACCEL``, else auto."""
    value = accel if accel is not None else os.environ.get(ACCEL_ENV, "") or "auto"
    try:
        return AccelSetting(value)
    except ValueError:
        raise BackendError(
            f"acceleration {value!r} is not one of auto, kvm, tcg (fix: --accel or ${ACCEL_ENV})"
        ) from None


def _binary_for(arch: str) -> str:
    return qemu_binary(arch)


def _check_tag(name: str) -> None:
    if not _TAG_RE.match(name):
        raise CheckpointError(
            f"checkpoint name {name!r} is not usable as a QEMU snapshot tag "
            "(use letters, digits, '_', '.', ':' or '-', at most 128)"
        )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _tail(path: Path, start: int, limit: int = 1 << 20) -> str:
    """Text of ``path`` from ``start`` (this run's part), at most the last ``limit`` bytes."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(start, size - limit))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _link_in_place(copy: Path, target: Path) -> None:
    """Replace the slot's copy of an image with a BOINC link file to its shared conversion:
    the task's disk is then its overlay and snapshots, and the client, which copies an input
    only when its name is missing from the slot, does not copy it again at a restart
    (docs/compatibility.md#runtime)."""
    tmp = copy.with_name(f"{copy.name}.link.tmp")
    tmp.write_text(files.format_soft_link(os.path.relpath(target, copy.parent)))
    tmp.replace(copy)
    log.info(
        "%s now links to %s (converted once for every task)", copy.name, target.name,
        extra={"event": "qemu_image_linked"},
    )  # fmt: skip


def _remove_dead_converters_files(base: Path) -> None:
    """Delete ``<base>.<pid>.tmp`` files whose converting process is gone: a wrapper killed
    while converting leaves one (image-sized) behind, and nothing else would remove it."""
    for stale in base.parent.glob(f"{glob.escape(base.name)}.*.tmp"):
        pid = stale.name[len(base.name) + 1 : -len(".tmp")]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            stale.unlink(missing_ok=True)


__all__ = ["SAVED_STATE_TAG", "Accel", "QemuBackend", "QemuPorts", "SlotFiles"]
