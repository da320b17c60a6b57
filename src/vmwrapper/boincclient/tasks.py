"""``boinccmd --get_tasks`` output, parsed (pure).

boinccmd 7.20.5 prints each task as ``N) -----------`` followed by ``   key: value`` lines
(``RESULT::print`` in ``lib/gui_rpc_client_print.cpp``). Which keys appear depends on the
task: ``slot``, ``PID``, ``CPU time at last checkpoint``, ``current CPU time`` and
``fraction done`` only while it has an active task; ``final CPU time`` and ``exit_status``
once it ended.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

_TASK_HEADER = re.compile(r"^\s*\d+\) -+\s*$")
_FIELD = re.compile(r"^\s+([^:]+?):\s?(.*)$")


class ActiveTaskState(enum.Enum):
    """``active_task_state`` as boinccmd prints it (``active_task_state_string``)."""

    UNINITIALIZED = "UNINITIALIZED"
    EXECUTING = "EXECUTING"
    SUSPENDED = "SUSPENDED"
    ABORT_PENDING = "ABORT_PENDING"
    EXITED = "EXITED"
    WAS_SIGNALED = "WAS_SIGNALED"
    EXIT_UNKNOWN = "EXIT_UNKNOWN"
    ABORTED = "ABORTED"
    COULDNT_START = "COULDNT_START"
    QUIT_PENDING = "QUIT_PENDING"
    COPY_PENDING = "COPY_PENDING"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class TaskInfo:
    """One task of ``--get_tasks``."""

    name: str
    wu_name: str = ""
    project_url: str = ""
    state: str = ""  # "downloaded", "uploading", "uploaded", "compute error", ...
    scheduler_state: str = ""  # "uninitialized", "preempted", "scheduled"
    active_task_state: ActiveTaskState = ActiveTaskState.UNINITIALIZED
    ready_to_report: bool = False
    suspended_via_gui: bool = False
    fraction_done: float | None = None
    current_cpu_time: float | None = None
    checkpoint_cpu_time: float | None = None
    elapsed_time: float | None = None
    final_cpu_time: float | None = None
    exit_status: int | None = None
    slot: int | None = None
    pid: int | None = None

    @property
    def running(self) -> bool:
        return self.active_task_state is ActiveTaskState.EXECUTING

    @property
    def suspended(self) -> bool:
        return self.active_task_state is ActiveTaskState.SUSPENDED


def _float(text: str) -> float | None:
    try:
        return float(text.split()[0])
    except (ValueError, IndexError):
        return None


def _int(text: str) -> int | None:
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return None


def _task(fields: dict[str, str]) -> TaskInfo:
    raw_state = fields.get("active_task_state", "UNINITIALIZED")
    try:
        active = ActiveTaskState(raw_state)
    except ValueError:
        active = ActiveTaskState.UNKNOWN
    return TaskInfo(
        name=fields.get("name", ""),
        wu_name=fields.get("WU name", ""),
        project_url=fields.get("project URL", ""),
        state=fields.get("state", ""),
        scheduler_state=fields.get("scheduler state", ""),
        active_task_state=active,
        ready_to_report=fields.get("ready to report") == "yes",
        suspended_via_gui=fields.get("suspended via GUI") == "yes",
        fraction_done=_float(fields.get("fraction done", "")),
        current_cpu_time=_float(fields.get("current CPU time", "")),
        checkpoint_cpu_time=_float(fields.get("CPU time at last checkpoint", "")),
        elapsed_time=_float(fields.get("elapsed task time", "")),
        final_cpu_time=_float(fields.get("final CPU time", "")),
        exit_status=_int(fields.get("exit_status", "")),
        slot=_int(fields.get("slot", "")),
        pid=_int(fields.get("PID", "")),
    )


def parse_get_tasks(text: str) -> tuple[TaskInfo, ...]:
    """Every task boinccmd listed, in its order; lines it does not know are skipped."""
    tasks: list[TaskInfo] = []
    fields: dict[str, str] | None = None
    for line in text.splitlines():
        if _TASK_HEADER.match(line):
            if fields is not None:
                tasks.append(_task(fields))
            fields = {}
            continue
        match = _FIELD.match(line)
        if fields is not None and match:
            fields.setdefault(match.group(1).strip(), match.group(2).strip())
    if fields is not None:
        tasks.append(_task(fields))
    return tuple(tasks)
