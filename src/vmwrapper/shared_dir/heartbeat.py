"""The guest heartbeat file (``heartbeat_filename``): its mtime must keep advancing (pure).

vboxwrapper's rule (docs/compatibility.md#heartbeat): checked whenever elapsed time passed another
third of ``minimum_heartbeat_interval``; the first check always passes; a missing file fails with
ERR_FILE_MISSING, an unreadable one with ERR_STAT, and the third stale check in a row (mtime not
newer than at the previous check) with ERR_TIMEOUT.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmwrapper.outcome import ERR_FILE_MISSING, ERR_STAT, ERR_TIMEOUT

MISSING = "missing"
UNREADABLE = "unreadable"
STALE_LIMIT = 3


@dataclass(frozen=True)
class HeartbeatWatch:
    interval: float  # minimum_heartbeat_interval
    last_check: float | None = None  # elapsed time of the previous check
    last_mtime: float | None = None
    stale: int = 0

    def check_due(self, elapsed: float) -> bool:
        return self.last_check is None or elapsed >= self.last_check + self.interval / 3.0

    def check(self, elapsed: float, mtime: float | str) -> tuple[HeartbeatWatch, int | None]:
        """Record one check; ``mtime`` is the file's mtime, MISSING or UNREADABLE.

        Returns the new watch and None (fine) or the BOINC code to finish with.
        """
        if mtime == MISSING:
            return self, ERR_FILE_MISSING
        if mtime == UNREADABLE or isinstance(mtime, str):
            return self, ERR_STAT
        first = self.last_mtime is None
        fresh = first or (self.last_mtime is not None and mtime > self.last_mtime)
        stale = 0 if fresh else self.stale + 1
        watch = HeartbeatWatch(self.interval, elapsed, mtime, stale)
        return watch, (ERR_TIMEOUT if stale >= STALE_LIMIT else None)
