"""Windows processes as the client and the API handle them
(docs/compatibility.md#how-the-windows-client-controls-an-app): liveness by handle (never
``os.kill(pid, 0)``, which terminates on Windows) and ``TerminateProcess`` with the client's
exit codes."""

from __future__ import annotations

from typing import Final

from vmwrapper.hostos._win32 import ERROR_ACCESS_DENIED, kernel32, last_error

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
