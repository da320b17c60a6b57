"""How a job run ended: :class:`JobReport` (outcome, counters, outputs, trickles, uploads,
events) and the :class:`Progress` snapshots shown while it runs."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class JobOutcome(enum.Enum):
    SUCCESS = "success"
    ERROR = "error"
    ABORTED = "aborted"
    POSTPONED = "temporary exit"  # stopped while postponed: restarts disabled or exhausted


@dataclass(frozen=True)
class CopiedOutput:
    logical_name: str
    physical_name: str
    destination: str
    size: int


@dataclass(frozen=True)
class ReceivedTrickle:
    variety: str
    body: str
    path: str


@dataclass(frozen=True)
class Upload:
    logical_name: str
    status: int | None
    path: str


@dataclass(frozen=True)
class Progress:
    """A snapshot for progress displays (once per poll)."""

    elapsed: float
    episode: int
    state: str
    fraction_done: float
    cpu_time: float
    checkpoint_cpu_time: float


@dataclass(frozen=True)
class JobReport:
    outcome: JobOutcome
    message: str
    exit_status: int
    process_exit_code: int | None
    finish_status: int | None
    finish_message: str
    episodes: int
    elapsed: float
    cpu_time: float
    checkpoint_cpu_time: float
    fraction_done: float
    checkpoints: int
    outputs: tuple[CopiedOutput, ...]
    trickles: tuple[ReceivedTrickle, ...]
    uploads: tuple[Upload, ...]
    temporary_exits: tuple[tuple[float, str], ...]
    web_graphics_url: str | None
    remote_desktop_addr: str | None
    bytes_sent: float  # network bytes the app reported, over all episodes (client accounting)
    bytes_received: float
    workdir: str
    slot_dir: str
    stderr_tail: str
    events: tuple[tuple[float, str, str], ...]

    @property
    def success(self) -> bool:
        return self.outcome is JobOutcome.SUCCESS

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON types (``vmwrapper job --json``)."""
        return {
            "outcome": self.outcome.value,
            "message": self.message,
            "exit_status": self.exit_status,
            "process_exit_code": self.process_exit_code,
            "finish_status": self.finish_status,
            "finish_message": self.finish_message,
            "episodes": self.episodes,
            "elapsed": round(self.elapsed, 3),
            "cpu_time": self.cpu_time,
            "checkpoint_cpu_time": self.checkpoint_cpu_time,
            "fraction_done": self.fraction_done,
            "checkpoints": self.checkpoints,
            "outputs": [o.__dict__ for o in self.outputs],
            "trickles": [t.__dict__ for t in self.trickles],
            "uploads": [u.__dict__ for u in self.uploads],
            "temporary_exits": [{"delay": d, "reason": r} for d, r in self.temporary_exits],
            "web_graphics_url": self.web_graphics_url,
            "remote_desktop_addr": self.remote_desktop_addr,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "workdir": self.workdir,
            "slot_dir": self.slot_dir,
            "stderr_tail": self.stderr_tail,
            "events": [{"t": round(t, 3), "kind": k, "detail": d} for t, k, d in self.events],
        }
