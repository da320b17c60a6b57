"""Named file mappings: the shared memory of the Windows client and its apps
(docs/compatibility.md#shared-memory-on-windows). The only module that maps them; the names
come from :mod:`~vmwrapper.hostos.winnames`, the channels from
:class:`vmwrapper.boinc.shmem.Segment`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from typing import Final

from vmwrapper.hostos._win32 import ERROR_ALREADY_EXISTS, INVALID_HANDLE_VALUE, kernel32, last_error

PAGE_READWRITE: Final = 0x04
FILE_MAP_ALL_ACCESS: Final = 0x000F001F

#: A mapped view and what unmaps it and closes the mapping's handle.
View = tuple[memoryview, Callable[[], None]]


def _view(handle: int, size: int) -> View | None:
    k32 = kernel32()
    addr = k32.MapViewOfFile(handle, FILE_MAP_ALL_ACCESS, 0, 0, size)
    if not addr:
        k32.CloseHandle(handle)
        return None
    view = memoryview((ctypes.c_ubyte * size).from_address(addr)).cast("B")

    def close() -> None:
        k32.UnmapViewOfFile(addr)
        k32.CloseHandle(handle)

    return view, close


def create_mapping(name: str, size: int) -> View | None:
    """The client's ``create_shmem``: a new mapping backed by the paging file; None when the
    name is already in use (the client then tries the next number) or cannot be created."""
    k32 = kernel32()
    handle = k32.CreateFileMappingW(INVALID_HANDLE_VALUE, None, PAGE_READWRITE, 0, size, name)
    if not handle:
        return None
    if last_error() == ERROR_ALREADY_EXISTS:
        k32.CloseHandle(handle)
        return None
    return _view(handle, size)


def open_mapping(names: Sequence[str], size: int) -> View | None:
    """The API's ``attach_shmem``: the first of ``names`` that exists, never created; None
    when none does (the app then runs standalone)."""
    k32 = kernel32()
    for name in names:
        handle = k32.OpenFileMappingW(FILE_MAP_ALL_ACCESS, False, name)
        if handle:
            return _view(handle, size)
    return None
