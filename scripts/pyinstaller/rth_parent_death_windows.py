"""PyInstaller runtime hook (Windows): the wrapper dies with the one-file bootloader.

On Windows, too, a one-file executable is two processes: the bootloader (the pid the BOINC
client started) and the Python child that runs vmwrapper. The Windows client ends a task with
``TerminateProcess`` on the pid it started
(docs/compatibility.md#how-the-windows-client-controls-an-app), which would leave the child
running its VM for a slot the client thinks is free. Windows has no parent-death signal: a
daemon thread waits on a handle to the parent and ends this process when the parent is gone, as
the client's kill would have.
"""

import os
import sys
import threading

if sys.platform == "win32" and getattr(sys, "frozen", False):
    import ctypes
    from ctypes import wintypes

    _SYNCHRONIZE = 0x00100000
    _INFINITE = 0xFFFFFFFF
    _kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    _kernel32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
    _kernel32.OpenProcess.restype = wintypes.HANDLE
    _kernel32.WaitForSingleObject.argtypes = [wintypes.HANDLE, wintypes.DWORD]
    _kernel32.WaitForSingleObject.restype = wintypes.DWORD

    def _watch(handle: int) -> None:
        _kernel32.WaitForSingleObject(handle, _INFINITE)
        os._exit(1)  # the client reads the bootloader's exit code, not ours

    _parent = _kernel32.OpenProcess(_SYNCHRONIZE, False, os.getppid())
    if _parent:  # no handle (parent already gone, or no right): nothing to watch
        threading.Thread(target=_watch, args=(_parent,), daemon=True, name="parent-death").start()
