"""PyInstaller runtime hook: the wrapper dies with the one-file bootloader.

A one-file executable is two processes: the bootloader (the pid the BOINC client started) and
the Python child that runs vmwrapper. The bootloader forwards catchable signals, but a SIGKILL
of the bootloader would leave the child running its VM for a slot the client thinks is free.
PR_SET_PDEATHSIG makes the kernel send the child SIGTERM when its parent dies.
"""

import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1

if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: keep the bootloader's own forwarding only
        pass
