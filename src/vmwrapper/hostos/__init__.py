"""What differs between host operating systems (docs/windows.md), chosen here and in the
``hostos`` modules only, so the rest of the wrapper never asks which OS it runs on.

* :func:`pid_alive`: is a process still there (the API's ``client_pid`` probe). On POSIX it is
  ``kill(pid, 0)``; on Windows ``os.kill(pid, 0)`` would *terminate* the process, so the
  Windows probe waits on a process handle instead (:mod:`~vmwrapper.hostos.winproc`).
* :data:`NOFOLLOW`, :data:`NONBLOCK`: ``open()`` flags where the OS has them.
* :func:`sync_directory`: make a rename durable (POSIX fsyncs the directory; Windows cannot
  open one and its file systems journal renames).
* :func:`own_nice`: this process's priority as a nice value (Windows: from its priority class).
* The VM process (docs/windows.md#the-qemu-back-end-on-windows): :data:`UNIX_SOCKETS` (QMP on a
  Unix socket, else on TCP loopback), :data:`NO_CONSOLE_WINDOW` (Windows opens a console
  window for a console program started by a wrapper that has none), :func:`set_priority`
  (nice values per thread on POSIX are the caller's; Windows has priority classes),
  :func:`stop_process`/:func:`continue_process` (SIGSTOP/SIGCONT, or NtSuspendProcess) and
  :func:`end_with_this_process` (a Windows job object).
* :func:`kill_process`: SIGKILL, or ``TerminateProcess`` (a VirtualBox VM that will not power
  off).
* A program's whole tree (VBoxManage and what it started): :func:`spawn_tree`,
  :func:`kill_tree`, :func:`release_tree` (a POSIX process group, or a Windows job object).
* :func:`spawn` and :func:`run_program`: start a console program with no window of its own,
  trying again when Windows' ``CreateProcess`` fails for a reason a retry gets past.
* :func:`redirect_stderr`: the Windows client starts an app without standard handles and the
  BOINC API's diagnostics open ``stderr.txt`` themselves; the POSIX client redirects it for us.
* :mod:`~vmwrapper.hostos.locks`: the BOINC lock file and our own advisory locks.
* Windows only: :mod:`~vmwrapper.hostos.winnames` (pure: names, command lines, install paths
  and accelerator rules), :mod:`~vmwrapper.hostos.winshm` (named file mappings),
  :mod:`~vmwrapper.hostos.winproc` (processes), both through ctypes
  (:mod:`~vmwrapper.hostos._win32`), and :mod:`~vmwrapper.hostos.winvbox` (the registry).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

T = TypeVar("T")

#: True on a Windows host (the frozen vmwrapper.exe, or Windows Python under Wine in tests).
WINDOWS: Final = sys.platform == "win32"

#: ``O_NOFOLLOW`` where it exists; Windows has no such flag (its symlinks need an
#: administrator to create, and a BOINC slot holds none the client made).
NOFOLLOW: Final[int] = getattr(os, "O_NOFOLLOW", 0)
#: ``O_NONBLOCK`` where it exists (a FIFO planted in a share must not hang an open); Windows
#: has neither the flag nor FIFOs in a directory.
NONBLOCK: Final[int] = getattr(os, "O_NONBLOCK", 0)

#: QEMU's QMP and asyncio can share a Unix socket here; Windows has none they both support,
#: so there QMP listens on TCP loopback.
UNIX_SOCKETS: Final = not WINDOWS
#: ``creationflags`` for a console program the wrapper starts (QEMU): no window of its own.
NO_CONSOLE_WINDOW: Final[int] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
#: ``CreateProcess`` failures that a second try gets past: ERROR_INTERNAL_ERROR (1359), seen
#: under Wine about once in twenty VM jobs when ``qemu-img`` was started (docs/windows.md).
TRANSIENT_SPAWN_ERRORS: Final = frozenset({1359})
#: Tries of a start that fails that way, and the wait before the second (doubled after).
SPAWN_TRIES: Final = 3
SPAWN_RETRY_WAIT: Final = 0.2
#: Windows schedules a process by its priority class, not by a nice value per thread.
PRIORITY_CLASSES: Final = WINDOWS


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists (a zombie counts, as for the API's probe)."""
    if WINDOWS:
        from vmwrapper.hostos.winproc import process_alive

        return process_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sync_directory(path: Path) -> None:
    """fsync the directory ``path`` after a rename in it (nothing to do on Windows)."""
    if WINDOWS:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def own_nice() -> int:
    """This process's nice value; on Windows the nice of its priority class."""
    if WINDOWS:
        from vmwrapper.hostos import winnames, winproc

        return winnames.nice_of_priority_class(winproc.own_priority_class())
    return os.getpriority(os.PRIO_PROCESS, 0)


def redirect_stderr(slot_dir: Path, name: str = "stderr.txt") -> None:
    """On Windows, append this process's stderr (fd 2 and ``sys.stderr``) to the slot's
    ``stderr.txt``, as ``boinc_init_diagnostics`` does there; elsewhere the client already has."""
    if not WINDOWS:
        return
    fd = os.open(slot_dir / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115


def set_priority_class(pid: int, nice: int) -> bool:
    """Windows only: give ``pid`` the priority class nearest to ``nice``; False when refused."""
    from vmwrapper.hostos import winnames, winproc

    return winproc.set_priority_class(pid, winnames.priority_class_of_nice(nice))


def stop_process(pid: int) -> bool:
    """Stop every thread of ``pid`` until :func:`continue_process`; False when it is gone."""
    if WINDOWS:
        from vmwrapper.hostos import winproc

        return winproc.suspend(pid)
    return _signal(pid, signal.SIGSTOP)


def continue_process(pid: int) -> bool:
    """Undo :func:`stop_process`."""
    if WINDOWS:
        from vmwrapper.hostos import winproc

        return winproc.resume(pid)
    return _signal(pid, signal.SIGCONT)


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def end_with_this_process(pid: int) -> bool:
    """Make ``pid`` end when this process ends, where the OS can (a Windows job object: the
    client's ``TerminateProcess`` ends the wrapper with no chance to stop its VM). POSIX:
    False; there a QEMU left by a killed wrapper is stopped by the next start in the slot."""
    if WINDOWS:
        from vmwrapper.hostos import winproc

        return winproc.end_with_this_process(pid)
    return False


def kill_process(pid: int) -> None:
    """End ``pid`` at once, whatever it is doing: SIGKILL, or on Windows ``TerminateProcess``
    (Windows has no SIGKILL; ``os.kill`` there terminates with the signal number as exit code
    only for the numbers it knows). Nothing happens when it is already gone."""
    if WINDOWS:
        from vmwrapper.hostos import winproc

        winproc.terminate(pid, 1)
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def tree_start_args(windows: bool = WINDOWS) -> dict[str, Any]:
    """``Popen`` arguments that make a program the head of a tree :func:`kill_tree` can end:
    a session (and process group) of its own on POSIX; on Windows no console window, and
    started suspended, so it is in its job object before it can start anything."""
    if windows:
        from vmwrapper.hostos import winnames

        return {"creationflags": winnames.CREATE_NO_WINDOW | winnames.CREATE_SUSPENDED}
    return {"start_new_session": True}


def spawn_tree(argv: Sequence[str], **popen_args: Any) -> subprocess.Popen[Any]:
    """:func:`spawn` a program whose whole tree :func:`kill_tree` ends (VBoxManage: a timed-out
    call and whatever it started that still holds its output pipe). Call :func:`release_tree`
    once it has ended."""
    proc = spawn(argv, **tree_start_args(), **popen_args)
    if WINDOWS:
        from vmwrapper.hostos import winproc

        winproc.adopt_tree(proc.pid)
    return proc


def kill_tree(proc: subprocess.Popen[Any]) -> None:
    """End a program started by :func:`spawn_tree` and every process it started (SIGKILL to
    its process group; Windows: its job object)."""
    if WINDOWS:
        from vmwrapper.hostos import winproc

        winproc.kill_tree(proc.pid)
        return
    with contextlib.suppress(ProcessLookupError):  # already gone, with its group
        os.killpg(proc.pid, signal.SIGKILL)


def release_tree(proc: subprocess.Popen[Any]) -> None:
    """Forget the tree of a program started by :func:`spawn_tree` (nothing to do on POSIX)."""
    if WINDOWS:
        from vmwrapper.hostos import winproc

        winproc.release_tree(proc.pid)


def spawn(argv: Sequence[str], **popen_args: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(argv, **popen_args)`` for a console program the wrapper starts
    (qemu-img, QEMU): no console window on Windows, and a transient start failure retried."""
    popen_args.setdefault("creationflags", NO_CONSOLE_WINDOW)
    return _retry_start(lambda: subprocess.Popen(argv, **popen_args))


def run_program(argv: Sequence[str], **run_args: Any) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run`` as :func:`spawn` starts a program."""
    run_args.setdefault("creationflags", NO_CONSOLE_WINDOW)
    return _retry_start(lambda: subprocess.run(argv, **run_args))


def _retry_start(start: Callable[[], T]) -> T:
    wait = SPAWN_RETRY_WAIT
    for _ in range(SPAWN_TRIES - 1):
        try:
            return start()
        except OSError as exc:
            if getattr(exc, "winerror", None) not in TRANSIENT_SPAWN_ERRORS:
                raise
        time.sleep(wait)
        wait *= 2
    return start()
