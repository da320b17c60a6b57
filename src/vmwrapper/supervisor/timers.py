"""Every timer and threshold of the supervisor, as one frozen value (pure).

The machine reads them (:class:`Timers` sits in :class:`~.machine.MachineConfig`), and so does
the loop for the pace it keeps; nothing else holds a period or a limit. Tests replace the whole
value, e.g. ``Timers(trigger_poll=0.0)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Timers:
    poll_period: float = 1.0  # one tick a second, as vboxwrapper's main loop
    boot_timeout: float = 300.0  # vboxwrapper's bring-up wait (s since the VM was started)
    #: An iteration longer than this (host suspended to RAM, say) adds only this much elapsed
    #: time.
    max_tick: float = 60.0
    status_report_period: float = 6000.0  # the "Status Report:" lines, in elapsed seconds
    #: How often (s of elapsed time) the NIC's byte counts are read when the volunteer set a
    #: daily transfer limit (vboxwrapper's 10 minutes; the client adds them to its history).
    net_usage_period: float = 600.0
    #: Between ticks the completion and temporary-exit trigger files are looked for this
    #: often, so a job's end is acted on within a fraction of the poll period (the look-up
    #: resolves the shared dir's path: ~80 µs here); 0 looks only once a tick (and for nothing
    #: else between ticks).
    trigger_poll: float = 0.2
    #: ... and whether the VM's process is still there this often (a pid probe, a syscall;
    #: the wake-ups cost ~0.15% of a core at this pace): every job that ends with a power-off
    #: waits half of it on average (docs/performance.md#the-fixed-cost-around-a-short-job);
    #: 0: at the trigger_poll pace.
    exit_poll: float = 0.05
    #: A tick whose status query fails keeps the last known state; more than this many in a
    #: row and the VM counts as crashed.
    max_status_failures: int = 60
    #: A final checkpoint (before a temporary exit) retries a refused snapshot this long...
    final_checkpoint_patience: float = 10.0
    #: ... this often.
    final_checkpoint_retry: float = 0.5
    #: A back-end call still running after this long (a conversion, a snapshot) is waited for
    #: while the client is served: its messages read, status sent (docs/supervisor.md).
    serve_period: float = 0.5
    #: PowerOff is a hard power-off, as vboxwrapper's `controlvm poweroff`: the VM's state is
    #: in the checkpoint (or the job is over), and an ACPI shutdown would let the guest run on.
    poweroff_grace: float = 0.0

    def elapsed_step(self, since_last_tick: float) -> float:
        """The elapsed time one iteration adds (never negative, never above max_tick)."""
        return min(max(since_last_tick, 0.0), self.max_tick)

    def boot_timed_out(self, booting_for: float) -> bool:
        return booting_for > self.boot_timeout

    def status_lost(self, failures: int) -> bool:
        return failures > self.max_status_failures

    def net_poll_due(self, elapsed: float, last_polled: float) -> bool:
        return elapsed >= last_polled + self.net_usage_period

    def status_report_due(self, elapsed: float, last_report: float) -> bool:
        return elapsed >= last_report + self.status_report_period


def trickle_due(period: float, elapsed: float, last_trickle: float) -> bool:
    """--trickle fires at each multiple of its period; a restart does not fire again at once
    (docs/compatibility.md#trickles)."""
    return period > 0 and math.floor(elapsed / period) > math.floor(last_trickle / period)
