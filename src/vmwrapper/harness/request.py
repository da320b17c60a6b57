"""What a job run is asked to do: :class:`JobRequest`, with the BOINC Manager actions it
schedules (:class:`Action`, :class:`ScheduledAction`)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class Action(enum.Enum):
    """What a user of the BOINC Manager can do to a running task."""

    SUSPEND = "suspend"
    RESUME = "resume"
    QUIT = "quit"
    ABORT = "abort"


@dataclass(frozen=True)
class ScheduledAction:
    """``action`` ``at`` seconds after the job started or, with ``after_checkpoint`` N > 0,
    after the task reported its Nth checkpoint: a moment tied to what the task did, not to
    how fast this host runs it (a slow host's boot must not outlast a fixed time)."""

    at: float
    action: Action
    after_checkpoint: int = 0


@dataclass(frozen=True)
class JobRequest:
    app_dir: Path
    workdir: Path
    inputs: Mapping[str, Path] = field(default_factory=dict)
    outputs: Mapping[str, Path] = field(default_factory=dict)
    keep_slot: bool = False
    schedule: tuple[ScheduledAction, ...] = ()
    checkpoint_period: float = 60.0
    poll_interval: float = 1.0
    #: cap on a temporary exit's delay before the restart; None = the full delay
    max_restart_delay: float | None = None
    #: stop after this many episodes (0 = no limit but the client's own 100-exits rule)
    max_episodes: int = 0
    #: the client also sets SCHED_IDLE for normal jobs; off by default on a busy test host
    sched_idle: bool = False
    extra_env: Mapping[str, str] = field(default_factory=dict)
    #: trickle-down messages from the "project": (seconds after the start, body)
    trickle_downs: tuple[tuple[float, str], ...] = ()
    #: the volunteer's "transfer at most N MB a day" preference (the wrapper then reports the
    #: VM's network bytes); 0 = no limit
    daily_xfer_limit_mb: float = 0.0
