"""What the supervisor's parts share: the client it serves, its settings, its bookkeeping.

:class:`Context` is handed to the loop's parts (``observe.py``, ``perform.py``,
``checkpointing.py``, ``status.py``); :class:`Runtime` is the mutable record the pure machine
must not hold (elapsed time, CPU totals, trigger files seen, uploads asked for).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from vmwrapper import hostos
from vmwrapper.boinc import files
from vmwrapper.boinc.app import ClientStatus
from vmwrapper.boinc.init_data import AppInitData
from vmwrapper.cputime import CpuTotal
from vmwrapper.hypervisor.base import Backend, NetUsage, VmState
from vmwrapper.shared_dir.heartbeat import HeartbeatWatch
from vmwrapper.shared_dir.triggers import ConsumedTrigger
from vmwrapper.shared_dir.watch import SharedDir
from vmwrapper.spec.model import JobSpec
from vmwrapper.supervisor import backoff, events, report
from vmwrapper.supervisor import checkpoint as ckpt
from vmwrapper.supervisor import machine as m
from vmwrapper.supervisor.timers import Timers

log = logging.getLogger(__name__)

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
    timers: Timers = field(default_factory=Timers)
    #: Writes the contextualization media (floppy) before the VM is created or started: QEMU
    #: opens the image read-only at start, VirtualBox needs it at create. None = none.
    contextualize: Callable[[], None] | None = None


class UploadState(enum.Enum):
    """An intermediate upload file's progress (a file absent from the map: not asked for)."""

    REQUESTED = "requested"  # handed to the client; its upload status not known yet
    DONE = "done"  # uploaded, failed, or could not be asked for: never asked again this run


@dataclass
class Runtime:
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
    status_error: str = ""
    network_connected: bool = True
    heartbeat: HeartbeatWatch | None = None
    last_trickle_elapsed: float = 0.0
    last_status_report: float = 0.0
    fraction: float = 0.0
    uploads: dict[str, UploadState] = field(default_factory=dict)
    last_tick: float | None = None
    counting: bool = False  # elapsed time advances (RUNNING, VM not paused)
    client: m.ClientView = field(default_factory=m.ClientView)
    consumed: dict[str, ConsumedTrigger] = field(default_factory=dict)
    trigger_texts: dict[str, str] = field(default_factory=dict)  # as observed
    trigger_mtimes: dict[str, int | None] = field(default_factory=dict)
    retry: backoff.BackoffState = field(default_factory=backoff.BackoffState)
    net: NetUsage = field(default_factory=NetUsage)  # this episode, never falling
    net_polled_elapsed: float = 0.0
    priority_lowered: bool = False
    guest_oom: bool = False  # the guest printed EXIT_OUT_OF_MEMORY
    guest_status: int | None = None  # N of the guest's VMWRAPPER_GUEST_DONE status=N line
    quit_requested: bool = False  # SIGTERM / Ctrl-C when run by hand


class Context:
    """The back end, the client, the settings and the bookkeeping, as every part sees them."""

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
        self.timers = settings.timers
        self.clock = clock
        self.sleep = sleep
        self.wallclock = wallclock
        self.shared = SharedDir(settings.slot_dir, settings.job.shared_dir)
        record = ckpt.read_record(settings.slot_dir)
        policy = ckpt.make_policy(
            client_period=client.init_data.checkpoint_period,
            minimum=self.job.minimum_checkpoint_interval,
            automatic=not self.job.disable_automatic_checkpoints,
            seed=settings.seed,
        )
        self.rt = Runtime(
            elapsed=record.elapsed_time,
            cpu=CpuTotal(ended=record.cpu_time),
            checkpoint_cpu=record.cpu_time,
            record=record,
            policy=policy,
            last_checkpoint_elapsed=record.elapsed_time,
            last_trickle_elapsed=record.elapsed_time,
            last_status_report=record.elapsed_time,
            retry=backoff.load(settings.slot_dir),
            consumed=load_consumed(settings.slot_dir),
        )
        if self.job.heartbeat_filename:
            # The first check comes a third of the interval into this run, as vboxwrapper's:
            # the guest has that long to write the file after it boots.
            self.rt.heartbeat = HeartbeatWatch(
                self.job.minimum_heartbeat_interval, last_check=record.elapsed_time
            )
        self.lacking: set[str] = set()  # capabilities already reported missing
        aid = client.init_data
        self.own_nice = hostos.own_nice()
        self.vm_nice = report.vm_nice(aid.no_priority_change, aid.process_priority, self.own_nice)

    def lacks(self, capability: type, action: str) -> None:
        """An action needs a capability this back end does not have: skipped, logged once."""
        if capability.__name__ in self.lacking:
            return
        self.lacking.add(capability.__name__)
        log.info(
            "The %s back end has no %s: %s and the like are skipped.",
            self.backend.name,
            capability.__name__,
            action,
            extra={"event": events.CAPABILITY_MISSING, "capability": capability.__name__},
        )


def load_consumed(slot_dir: Path) -> dict[str, ConsumedTrigger]:
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


def save_consumed(slot_dir: Path, consumed: dict[str, ConsumedTrigger]) -> None:
    try:
        files.write_atomic(
            slot_dir / CONSUMED_FILE,
            json.dumps({k: dataclasses.asdict(v) for k, v in consumed.items()}),
        )
    except OSError as exc:
        log.warning("Could not record consumed trigger files: %s", exc)
