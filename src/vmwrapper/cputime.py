"""CPU time as BOINC reports it: summed over processes that come and go, never decreasing (pure).

The client shows a task's CPU time and grants credit from it, so a reported value must never go
down: not when a VM process ends (its last reading is kept), not when a helper process in the
tree exits (the tree's sum drops), not when the wrapper restarts (earlier runs come from the
checkpoint record). One rule, used by the supervisor (all runs of the task), the VirtualBox back
end (the VM processes of one run) and the harness (what the client keeps of the reports).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CpuTotal:
    """CPU seconds of processes that ended plus the highest reading of the current one."""

    ended: float = 0.0  # seconds of processes (or earlier runs) that are over
    current: float = 0.0  # the highest reading of the process that runs now

    @property
    def total(self) -> float:
        return self.ended + self.current

    def read(self, seconds: float) -> float:
        """The total with the current process at ``seconds`` (a lower reading is ignored)."""
        self.current = max(self.current, seconds)
        return self.total

    def process_ended(self) -> None:
        """The current process is gone: its highest reading counts from now on."""
        self.ended += self.current
        self.current = 0.0
