"""kernel32 through ctypes, loaded once, with the argument types the hostos modules use.

Only imported on Windows (by :mod:`.winshm`, :mod:`.winproc` and :mod:`.locks`); the typing is
``Any`` because typeshed declares ``ctypes.WinDLL`` for Windows only and mypy runs on Linux.
"""

from __future__ import annotations

import ctypes
import functools
from ctypes import wintypes
from typing import Any, Final

ERROR_ACCESS_DENIED: Final = 5
ERROR_SHARING_VIOLATION: Final = 32
ERROR_ALREADY_EXISTS: Final = 183
INVALID_HANDLE_VALUE: Final = ctypes.c_void_p(-1).value


@functools.cache
def kernel32() -> Any:
    dll = getattr(ctypes, "WinDLL")("kernel32", use_last_error=True)  # noqa: B009
    handle, dword, bool_ = wintypes.HANDLE, wintypes.DWORD, wintypes.BOOL
    for name, args, res in (
        (
            "CreateFileMappingW",
            [handle, ctypes.c_void_p, dword, dword, dword, wintypes.LPCWSTR],
            handle,
        ),
        ("OpenFileMappingW", [dword, bool_, wintypes.LPCWSTR], handle),
        ("MapViewOfFile", [handle, dword, dword, dword, ctypes.c_size_t], ctypes.c_void_p),
        ("UnmapViewOfFile", [ctypes.c_void_p], bool_),
        ("CloseHandle", [handle], bool_),
        ("OpenProcess", [dword, bool_, dword], handle),
        ("WaitForSingleObject", [handle, dword], dword),
        ("TerminateProcess", [handle, ctypes.c_uint], bool_),
        ("SetPriorityClass", [handle, dword], bool_),
        ("CreateJobObjectW", [ctypes.c_void_p, wintypes.LPCWSTR], handle),
        ("SetInformationJobObject", [handle, ctypes.c_int, ctypes.c_void_p, dword], bool_),
        ("AssignProcessToJobObject", [handle, handle], bool_),
        ("TerminateJobObject", [handle, ctypes.c_uint], bool_),
        (
            "CreateFileW",
            [wintypes.LPCWSTR, dword, dword, ctypes.c_void_p, dword, dword, handle],
            handle,
        ),
    ):
        fn = getattr(dll, name)
        fn.argtypes, fn.restype = args, res
    return dll


@functools.cache
def ntdll() -> Any:
    """ntdll's process suspension (what Process Explorer's "Suspend" calls): every thread of
    a process at once, which ``SuspendThread`` one by one cannot do atomically."""
    dll = getattr(ctypes, "WinDLL")("ntdll")  # noqa: B009
    for name in ("NtSuspendProcess", "NtResumeProcess"):
        fn = getattr(dll, name)
        fn.argtypes, fn.restype = [wintypes.HANDLE], ctypes.c_long
    return dll


def last_error() -> int:
    return int(getattr(ctypes, "get_last_error")())  # noqa: B009
