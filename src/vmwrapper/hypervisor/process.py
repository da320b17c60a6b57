"""Process-level chores the back ends share: the VM process's priority.

Linux keeps a nice value per *thread*: ``setpriority(PRIO_PROCESS, pid)`` changes only the
thread whose id is ``pid``, and QEMU's vCPU threads (VirtualBox's EMTs) exist already when the
VM comes online. vboxwrapper reniced the main thread alone, so the threads doing the guest's
work kept the normal priority; we renice every thread of the process.
"""

from __future__ import annotations

import logging
import os

import psutil

log = logging.getLogger(__name__)


def thread_ids(pid: int) -> tuple[int, ...]:
    """The ids of ``pid``'s threads (just ``pid`` when they cannot be listed)."""
    try:
        return tuple(t.id for t in psutil.Process(pid).threads()) or (pid,)
    except psutil.Error:
        return (pid,)


def renice(pid: int, nice: int) -> bool:
    """Set every thread of ``pid`` to ``nice``. False when the OS refused any of them (raising
    a priority needs privilege) or the process is gone; never raises."""
    done = True
    for tid in thread_ids(pid):
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) != nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
        except ProcessLookupError:
            continue  # a thread that ended meanwhile
        except OSError as exc:
            log.debug("cannot renice thread %d of %d to %d: %s", tid, pid, nice, exc)
            done = False
    return done


def thread_nices(pid: int) -> dict[int, int]:
    """Each thread's nice value (for tests and ``vmwrapper doctor``-style checks)."""
    out: dict[int, int] = {}
    for tid in thread_ids(pid):
        try:
            out[tid] = os.getpriority(os.PRIO_PROCESS, tid)
        except OSError:
            continue
    return out


__all__ = ["renice", "thread_ids", "thread_nices"]
