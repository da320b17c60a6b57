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

from vmwrapper import hostos

log = logging.getLogger(__name__)


def thread_ids(pid: int) -> tuple[int, ...]:
    """The ids of ``pid``'s threads (just ``pid`` when they cannot be listed)."""
    try:
        return tuple(t.id for t in psutil.Process(pid).threads()) or (pid,)
    except psutil.Error:
        return (pid,)


def renice(pid: int, nice: int) -> bool:
    """Set every thread of ``pid`` to ``nice``. False when the OS refused any of them (raising
    a priority needs privilege) or the process is gone; never raises. On Windows the whole
    process gets the priority class nearest to ``nice``."""
    if hostos.PRIORITY_CLASSES:
        return hostos.set_priority_class(pid, nice)
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


#: What a back end last reported of set_priority: (pid, nice, whether every thread took it).
PriorityNote = tuple[int, int, bool] | None


def set_vm_priority(pid: int, nice: int, noted: PriorityNote) -> PriorityNote:
    """The back ends' ``set_priority``: renice ``pid``'s threads and say so once per process,
    value and result (``noted`` is the last of those; the returned one replaces it)."""
    done = renice(pid, nice)
    note = (pid, nice, done)
    if note != noted:
        if done:
            log.info(
                "VM process priority set to nice %d", nice,
                extra={"event": "vm_priority", "nice": nice, "pid": pid},
            )  # fmt: skip
        else:  # e.g. back to 0 as an unprivileged user: expected, not a failure of the job
            log.info("VM process priority not changed to nice %d: the OS refused", nice)
    return note


def thread_nices(pid: int) -> dict[int, int]:
    """Each thread's nice value (for tests and ``vmwrapper doctor``-style checks)."""
    out: dict[int, int] = {}
    for tid in thread_ids(pid):
        try:
            out[tid] = os.getpriority(os.PRIO_PROCESS, tid)
        except OSError:
            continue
    return out


__all__ = ["PriorityNote", "renice", "set_vm_priority", "thread_ids", "thread_nices"]
