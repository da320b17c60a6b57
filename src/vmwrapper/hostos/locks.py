"""File locks per host OS (docs/compatibility.md#the-lock-file-on-windows).

Two kinds:

* BOINC's ``boinc_lockfile`` (:func:`lock_boinc_file`), which must exclude a C++ app built on
  the BOINC API: a POSIX ``F_SETLK`` write lock (``lockf``) on Linux and macOS; on Windows the
  API's lock is the file opened with no sharing at all (``CreateFile`` share mode 0), so that
  is what we do too.
* Advisory locks between our own processes (:func:`lock` / :func:`try_lock` /
  :func:`unlock`): ``flock`` on POSIX (released with the descriptor, also by a crash), and a
  one-byte ``msvcrt.locking`` region on Windows (released by the OS when the process ends).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path

from vmwrapper.hostos import WINDOWS

if WINDOWS:
    import msvcrt  # used through getattr: typeshed declares it for Windows only
else:
    import fcntl

# -- the BOINC lock file ------------------------------------------------------------------------


def lock_boinc_file(path: Path) -> int:
    """Open and lock ``path``; the descriptor holds the lock. Raises :class:`BlockingIOError`
    when it cannot be locked (another process holds it), and :class:`OSError` with ``ENOSYS``
    when this file system has no locks (the caller decides)."""
    if WINDOWS:
        return _open_unshared(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o664)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno == errno.ENOSYS:
            raise
        raise BlockingIOError(exc.errno, f"{path} is locked") from exc
    return fd


def release_boinc_file(fd: int, path: Path) -> None:
    """Unlock, close and delete the lock file, as ``boinc_exit`` does. On Windows a file
    opened without sharing cannot be deleted while open: close first, then delete."""
    if WINDOWS:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError, PermissionError):
            path.unlink()
        return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    with contextlib.suppress(OSError):
        fcntl.lockf(fd, fcntl.LOCK_UN)
    os.close(fd)


def boinc_file_held(path: Path) -> bool:
    """True when another process holds ``path``'s BOINC lock (a missing file is not held)."""
    if not path.exists():
        return False
    try:
        fd = lock_boinc_file(path)
    except BlockingIOError:
        return True
    except OSError:
        return False
    if WINDOWS:
        os.close(fd)
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)
    return False


def _open_unshared(path: Path) -> int:
    from vmwrapper.hostos._win32 import (
        ERROR_SHARING_VIOLATION,
        INVALID_HANDLE_VALUE,
        kernel32,
        last_error,
    )

    generic_write, open_always, file_attribute_normal = 0x40000000, 4, 0x80
    handle = kernel32().CreateFileW(
        str(path), generic_write, 0, None, open_always, file_attribute_normal, None
    )
    if handle in (None, INVALID_HANDLE_VALUE):
        code = last_error()
        if code == ERROR_SHARING_VIOLATION:
            raise BlockingIOError(errno.EACCES, f"{path} is open in another process")
        raise OSError(errno.EIO, f"CreateFile({path}) failed with Windows error {code}")
    fd: int = getattr(msvcrt, "open_osfhandle")(handle, os.O_WRONLY)  # noqa: B009
    return fd


# -- advisory locks between our own processes -------------------------------------------------

_POLL = 0.1  # s between attempts of a blocking lock on Windows (msvcrt has no wait forever)


def try_lock(fd: int) -> bool:
    """Take the exclusive lock on the open file ``fd`` now; False when another holds it."""
    if WINDOWS:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            getattr(msvcrt, "locking")(fd, getattr(msvcrt, "LK_NBLCK"), 1)  # noqa: B009
        except OSError:  # EACCES on Windows, errno 0 under Wine: the region is locked
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):
        return False
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN, errno.EDEADLK):
            return False
        raise
    return True


def lock(fd: int) -> None:
    """Wait for the exclusive lock on ``fd``."""
    if not WINDOWS:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    while not try_lock(fd):
        time.sleep(_POLL)


def unlock(fd: int) -> None:
    if WINDOWS:
        os.lseek(fd, 0, os.SEEK_SET)
        with contextlib.suppress(OSError):
            getattr(msvcrt, "locking")(fd, getattr(msvcrt, "LK_UNLCK"), 1)  # noqa: B009
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
