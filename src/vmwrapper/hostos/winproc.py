"""Windows processes as the client and the API handle them
(docs/compatibility.md#how-the-windows-client-controls-an-app): liveness by handle (never
``os.kill(pid, 0)``, which terminates on Windows) and ``TerminateProcess`` with the client's
exit codes; and the VM process's Windows side: its priority class, suspension for the CPU cap,
and a job object that ends it with the wrapper."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any, Final

from vmwrapper.hostos._win32 import ERROR_ACCESS_DENIED, kernel32, last_error, ntdll

SYNCHRONIZE: Final = 0x00100000
PROCESS_TERMINATE: Final = 0x0001
PROCESS_QUERY_LIMITED_INFORMATION: Final = 0x1000
WAIT_TIMEOUT: Final = 0x102


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs. A process we may not open (another user's) counts as alive,
    as ``EPERM`` does on POSIX; an exit code of 259 (STILL_ACTIVE) is not trusted: the
    handle is waited on instead."""
    k32 = kernel32()
    handle = k32.OpenProcess(SYNCHRONIZE | PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not handle:
        return last_error() == ERROR_ACCESS_DENIED
    try:
        return bool(k32.WaitForSingleObject(handle, 0) == WAIT_TIMEOUT)
    finally:
        k32.CloseHandle(handle)


def terminate(pid: int, exit_code: int) -> bool:
    """The client's ``kill_process_with_status``: ``TerminateProcess`` with ``exit_code``.
    True when it was killed or was already gone."""
    k32 = kernel32()
    handle = k32.OpenProcess(PROCESS_TERMINATE, False, pid)
    if not handle:
        return True  # not there: the client counts that as done
    try:
        return bool(k32.TerminateProcess(handle, exit_code))
    finally:
        k32.CloseHandle(handle)


def own_priority_class() -> int:
    """This process's priority class (``GetPriorityClass``)."""
    k32 = kernel32()
    return int(k32.GetPriorityClass(k32.GetCurrentProcess()))


PROCESS_SET_INFORMATION: Final = 0x0200
PROCESS_SUSPEND_RESUME: Final = 0x0800
PROCESS_ALL_ACCESS: Final = 0x1F0FFF
#: JOBOBJECT_EXTENDED_LIMIT_INFORMATION's class and its "kill the processes when the job's
#: last handle closes" flag (winnt.h).
JOB_OBJECT_EXTENDED_LIMIT_INFORMATION: Final = 9
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE: Final = 0x2000


def _with_process(pid: int, access: int, action: Callable[[Any], object]) -> bool:
    """Open ``pid`` with ``access`` and run ``action`` on the handle; False when it cannot be
    opened (gone, or another user's) or the action reports failure."""
    k32 = kernel32()
    handle = k32.OpenProcess(access, False, pid)
    if not handle:
        return False
    try:
        return bool(action(handle))
    finally:
        k32.CloseHandle(handle)


def set_priority_class(pid: int, priority_class: int) -> bool:
    """``SetPriorityClass`` on ``pid``: Windows schedules by class, for all threads at once."""
    return _with_process(
        pid, PROCESS_SET_INFORMATION, lambda h: kernel32().SetPriorityClass(h, priority_class)
    )


def suspend(pid: int) -> bool:
    """Stop every thread of ``pid`` (the duty-cycle CPU cap's SIGSTOP)."""
    return _with_process(pid, PROCESS_SUSPEND_RESUME, lambda h: ntdll().NtSuspendProcess(h) == 0)


def resume(pid: int) -> bool:
    """Let ``pid`` run again (SIGCONT)."""
    return _with_process(pid, PROCESS_SUSPEND_RESUME, lambda h: ntdll().NtResumeProcess(h) == 0)


class _BasicLimits(ctypes.Structure):
    _fields_ = [
        ("PerProcessUserTimeLimit", ctypes.c_int64),
        ("PerJobUserTimeLimit", ctypes.c_int64),
        ("LimitFlags", ctypes.c_uint32),
        ("MinimumWorkingSetSize", ctypes.c_size_t),
        ("MaximumWorkingSetSize", ctypes.c_size_t),
        ("ActiveProcessLimit", ctypes.c_uint32),
        ("Affinity", ctypes.c_size_t),
        ("PriorityClass", ctypes.c_uint32),
        ("SchedulingClass", ctypes.c_uint32),
    ]


class _ExtendedLimits(ctypes.Structure):
    _fields_ = [
        ("BasicLimitInformation", _BasicLimits),
        ("IoInfo", ctypes.c_uint64 * 6),
        ("ProcessMemoryLimit", ctypes.c_size_t),
        ("JobMemoryLimit", ctypes.c_size_t),
        ("PeakProcessMemoryUsed", ctypes.c_size_t),
        ("PeakJobMemoryUsed", ctypes.c_size_t),
    ]


#: The job objects made by :func:`end_with_this_process`, kept open for this process's life.
_jobs: list[int] = []


def end_with_this_process(pid: int) -> bool:
    """Put ``pid`` into a job object that ends it when this process ends, however it ends
    (the client's ``TerminateProcess`` included): Windows has no parent-death signal, and a
    VM left running would hold the slot's disk files. The job's handle is never closed."""
    k32 = kernel32()
    job = k32.CreateJobObjectW(None, None)
    if not job:
        return False
    limits = _ExtendedLimits()
    limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
    ok = k32.SetInformationJobObject(
        job, JOB_OBJECT_EXTENDED_LIMIT_INFORMATION, ctypes.byref(limits), ctypes.sizeof(limits)
    ) and _with_process(pid, PROCESS_ALL_ACCESS, lambda h: k32.AssignProcessToJobObject(job, h))
    if not ok:
        k32.CloseHandle(job)
        return False
    _jobs.append(job)
    return True


#: The job object of each process tree started by ``hostos.spawn_tree``, by its head's pid.
_trees: dict[int, int] = {}


def adopt_tree(pid: int) -> bool:
    """Put ``pid`` (started suspended: none of its children can exist yet) into a job object
    of its own, then let it run: every process it starts joins the job, so :func:`kill_tree`
    reaches them all, as a POSIX process group does. False when the job could not be made
    (``pid`` then runs anyway, and a kill reaches only it)."""
    k32 = kernel32()
    job = k32.CreateJobObjectW(None, None)
    try:
        ok = bool(job) and _with_process(
            pid, PROCESS_ALL_ACCESS, lambda h: k32.AssignProcessToJobObject(job, h)
        )
    finally:
        resume(pid)  # always: a program left suspended would hang its caller
    if ok:
        _trees[pid] = job
    elif job:
        k32.CloseHandle(job)
    return ok


def kill_tree(pid: int, exit_code: int = 1) -> None:
    """End the tree ``pid`` heads (its job object), or ``pid`` alone when it has none."""
    job = _trees.get(pid)
    if job is None or not kernel32().TerminateJobObject(job, exit_code):
        terminate(pid, exit_code)


def release_tree(pid: int) -> None:
    """Forget the tree of a finished ``pid`` (close its job object's handle). The job has no
    "kill on close": a program the tree left running on purpose goes on."""
    job = _trees.pop(pid, None)
    if job is not None:
        kernel32().CloseHandle(job)
