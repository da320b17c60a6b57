"""The small interface every hypervisor back end implements (QEMU, VirtualBox, Fake).

The supervisor only ever talks to a :class:`Backend`. A back end object is constructed for one
VM (one slot) with everything in one frozen :class:`VmConfig` (built from the job spec, the
command line and init_data by ``vmwrapper.runconfig``) plus back-end options as keyword
arguments, e.g. ``QemuBackend(config, accel="auto")``. Methods raise subclasses of
:class:`vmwrapper.errors.BackendError`; they never call ``sys.exit`` or print.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable


class VmState(enum.Enum):
    """What the hypervisor says the VM is doing (never scraped from a log when avoidable)."""

    ABSENT = "absent"  # not created / not registered
    POWERED_OFF = "poweredoff"  # defined, not running (also: guest shut itself down)
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    SAVING = "saving"  # snapshot or save-state in progress
    RESTORING = "restoring"
    SAVED = "saved"  # state saved to disk, process gone (VirtualBox savestate)
    CRASHED = "crashed"  # aborted, guru meditation, QEMU died, guest panic

    @property
    def online(self) -> bool:
        """vboxwrapper's 'online': the VM process exists and owns resources."""
        return self in (
            VmState.STARTING,
            VmState.RUNNING,
            VmState.PAUSED,
            VmState.SAVING,
            VmState.RESTORING,
        )


@dataclass(frozen=True)
class VmStatus:
    state: VmState
    detail: str = ""  # human text, e.g. QEMU's exit reason or VirtualBox's VMState
    exit_code: int | None = None  # the hypervisor process's exit status, when known


class Diagnosis(enum.Enum):
    """Host or guest problems a back end can recognise (docs/compatibility.md#vm-extensions)."""

    VM_EXTENSIONS_DISABLED = "vm_extensions_disabled"  # VT-x/AMD-V off in the BIOS
    NO_VM_EXTENSIONS = "no_vm_extensions"  # CPU has none; a 64-bit guest cannot run
    FOREIGN_HYPERVISOR = "foreign_hypervisor"  # another hypervisor holds VT-x
    HOST_OUT_OF_MEMORY = "host_out_of_memory"
    GUEST_OUT_OF_MEMORY = "guest_out_of_memory"  # the guest printed EXIT_OUT_OF_MEMORY
    GURU_MEDITATION = "guru_meditation"


#: What a guest prints (console, or VirtualBox's guest log) when it ran out of memory; the job
#: then ends with EXIT_OUT_OF_MEMORY (docs/compatibility.md#guest-out-of-memory).
GUEST_OOM_MARKER = "EXIT_OUT_OF_MEMORY"
#: What our guest image prints when its app exited (``status=N``: the app's exit status), on
#: any back end's guest log (docs/compatibility.md#guest-exit-status).
GUEST_DONE_MARKER = "VMWRAPPER_GUEST_DONE"
_DONE_RE = re.compile(GUEST_DONE_MARKER + r" status=(-?\d+)")


def done_status(line: str) -> int | None:
    """N of a ``VMWRAPPER_GUEST_DONE status=N`` line, else None."""
    match = _DONE_RE.search(line)
    return int(match.group(1)) if match else None


#: The error screenshot's name in the slot: vboxwrapper's, so projects' tools find it.
SCREENSHOT_FILE = "vbox_screenshot.png"


@dataclass(frozen=True)
class Share:
    """A host directory the guest mounts by tag/name: `shared`, `project` or `scratch`."""

    name: str
    host_path: Path
    read_only: bool = False
    #: how QEMU carries it: "9p" (virtio-9p), "serial" (the file service on a virtio-serial
    #: port, `shared` only) or "auto" (the QEMU back end picks; docs/shared-transport.md);
    #: VirtualBox ignores it
    transport: str = "9p"


@dataclass(frozen=True)
class PortRule:
    """One TCP forward from host to guest. ``bind`` is 127.0.0.1 unless the job says is_remote."""

    host_port: int
    guest_port: int
    bind: str = "127.0.0.1"


@dataclass(frozen=True)
class NetworkConfig:
    enabled: bool = False  # False: no NIC at all under QEMU; cable unplugged under VirtualBox
    bridged: bool = False
    driver: str = ""  # vm_network_driver (NIC model); "" = back end default
    nat_dns_host_resolver: bool = False
    port_rules: tuple[PortRule, ...] = ()
    #: the volunteer set a daily transfer limit: count the NIC's bytes from start() on
    #: (QEMU arms its counters then; they cost a file write per frame, so only when asked)
    count_bytes: bool = False


@dataclass(frozen=True)
class RemoteDesktop:
    """The VM console (VNC under QEMU, VRDE under VirtualBox): loopback + per-task password."""

    port: int
    password: str
    bind: str = "127.0.0.1"


@dataclass(frozen=True)
class VmConfig:
    """Everything a back end needs to define and run one VM. Paths are absolute."""

    name: str  # boinc_<16 hex of md5(result name)> or boinc_standalone
    description: str  # the result name
    slot_dir: Path
    project_dir: Path
    os_name: str = ""
    memory_mb: int = 512
    cpus: int = 1
    disk_image: Path | None = None  # slot/vm_image.vdi (None in ISO mode or with multiattach)
    multiattach_parent: Path | None = None  # project/<multiattach_vdi_file>, never written
    iso_image: Path | None = None  # slot/vm_isocontext.iso
    cache_disk: Path | None = None  # slot/vm_cache.vdi
    floppy_image: Path | None = None  # slot/vm_floppy_<slot>.img
    boot_iso: bool = False
    shares: tuple[Share, ...] = ()
    network: NetworkConfig = field(default_factory=NetworkConfig)
    remote_desktop: RemoteDesktop | None = None
    headless: bool = True
    rtc_utc: bool = True  # guest clock in UTC (False: host local time)
    hw_acceleration: bool = True  # False: host lacks/disabled VT-x; 32-bit guests only
    #: the host itself runs under a hypervisor (CPU flag "hypervisor"): VirtualBox up to 7.1
    #: cannot use VT-x there (docs/compatibility.md#virtualbox-failures)
    under_hypervisor: bool = False
    #: a 64-bit guest may run under software emulation (QEMU's TCG) when no hardware
    #: acceleration is usable; False follows vboxwrapper's VM-extensions contract instead
    #: (docs/compatibility.md#software-emulation)
    allow_software_emulation: bool = True
    arch: str = "x86_64"
    #: enable_screenshots_on_error: the VM gets a screen (QEMU: a VGA device even without VNC)
    #: so that screenshot() has something to capture.
    screen: bool = False


@dataclass(frozen=True)
class NetUsage:
    """Bytes through the VM's NIC since its process started (this run), as the guest sees them:
    ``sent`` left the guest, ``received`` reached it."""

    sent: int = 0
    received: int = 0


@runtime_checkable
class Cancellable(Protocol):
    """A back end whose long calls (an image conversion) can be cut short from another
    thread: the call then raises BackendError. The supervisor calls it when the client asks
    for a quit or an abort meanwhile."""

    def cancel(self) -> None: ...


@runtime_checkable
class DiskCheckpoints(Protocol):
    """A back end that can checkpoint the disks alone when a full snapshot is refused (QEMU
    while the guest keeps a 9p share mounted). Restoring one boots the VM afresh from the
    saved disks; ``start(restore=name)`` does that for such a checkpoint by itself."""

    def checkpoint_disks(self, name: str) -> None: ...


@runtime_checkable
class Backend(Protocol):
    """One VM's hypervisor: the lifecycle core every back end has. Every call is synchronous
    and bounded in time. The extras are capabilities a back end may have (:class:`Checkpointing`,
    :class:`Reporting`, :class:`Throttling`, :class:`Accounting`); the supervisor asks with
    ``isinstance`` and skips (logged once) what a back end lacks."""

    name: str  # "qemu", "virtualbox", "fake"

    def exists(self) -> bool:
        """The VM is defined (created/registered), e.g. left by an earlier run of this slot."""
        ...

    def create(self) -> None:
        """Define the VM from its config. A VM left by an earlier run is reused, not duplicated."""
        ...

    def start(self, restore: str | None = None) -> int:
        """Start the VM (from checkpoint ``restore`` if given); return the hypervisor's PID.
        Counting for :meth:`Accounting.net_usage` starts here."""
        ...

    def status(self) -> VmStatus: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def poweroff(self, timeout: float = 30.0) -> None:
        """Stop the VM: graceful (ACPI) within ``timeout``, then hard, then kill. Idempotent."""
        ...

    def cleanup(self) -> None:
        """Power off and remove the VM and every file it made (overlays, snapshots). Idempotent."""
        ...

    def pid(self) -> int | None: ...


@runtime_checkable
class Checkpointing(Protocol):
    """Snapshots of the running VM, and saving its whole state on the way out."""

    def checkpoint(self, name: str) -> None:
        """Take snapshot ``name`` of the running VM (pausing it briefly).

        Raises CheckpointRefused when the hypervisor says "not now" (retry in a moment) and
        CheckpointError when it failed. The VM is left running in both cases.
        """
        ...

    def checkpoints(self) -> tuple[str, ...]:
        """Names of the snapshots that exist now (used to verify a new one before dropping old)."""
        ...

    def delete_checkpoint(self, name: str) -> None: ...

    def save_state(self) -> None:
        """Save the whole VM state to disk and stop (VirtualBox savestate; QEMU: a snapshot then
        quit). A later ``start`` resumes from it."""
        ...


@runtime_checkable
class Reporting(Protocol):
    """What the hypervisor can tell about the VM: the guest's lines, diagnoses, error reports."""

    def guest_log(self) -> list[str]:
        """Guest console lines that arrived since the last call (for `Guest Log:` lines)."""
        ...

    def diagnose(self) -> tuple[Diagnosis, ...]:
        """What the hypervisor's logs say went wrong (re-read each call, never cached)."""
        ...

    def hypervisor_logs(self, limit: int = 8192) -> dict[str, str]:
        """Tails (at most ``limit`` characters each, whole lines) of the hypervisor's logs for
        an error report, by section title. Call it before cleanup(), which deletes them."""
        ...

    def screenshot(self) -> Path | None:
        """Save a PNG of the VM's screen as ``vbox_screenshot.png`` in the slot (error reports,
        enable_screenshots_on_error); None when the VM is not running or has no screen."""
        ...


@runtime_checkable
class Throttling(Protocol):
    """The client's limits applied to the running VM."""

    def set_cpu_cap(self, percent: int) -> None:
        """Limit the VM to ``percent`` (1..100) of its CPUs (client cpu_usage_limit)."""
        ...

    def set_bandwidth(self, bytes_per_sec: float) -> None:
        """Limit NIC throughput (0 = unlimited)."""
        ...

    def set_priority(self, nice: int) -> None:
        """Renice every thread of the VM's hypervisor process to ``nice`` (vboxwrapper's
        lower/reset_vm_process_priority). Best effort: a change the OS refuses (raising the
        priority without privilege) is logged, never raised. No-op when the VM is not running."""
        ...

    def set_network(self, connected: bool) -> None:
        """Plug or unplug the NIC at run time (client network suspension)."""
        ...


@runtime_checkable
class Accounting(Protocol):
    """What the VM used in this run; the supervisor keeps the never-decreasing totals."""

    def cpu_time(self) -> float:
        """CPU seconds used by the hypervisor's process tree in this run (0 when not running)."""
        ...

    def net_usage(self) -> NetUsage | None:
        """Bytes through the NIC since start() (daily_xfer_limit_mb accounting); None when the
        VM has no NIC, is not running, or the hypervisor cannot count."""
        ...


class FullBackend(Backend, Checkpointing, Reporting, Throttling, Accounting, Protocol):
    """A back end with every capability (QEMU, VirtualBox, the scripted fake)."""
