"""Windows host facts as pure rules (docs/compatibility.md#windows-hosts): the names of
the client/app shared memory, the command line the client starts an app with, the priority
class, where VirtualBox is installed, and which QEMU accelerator to ask for.

No I/O here: callers pass in what they read (environment, registry value, probe results).
"""

from __future__ import annotations

import ntpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

#: The prefix the client and the API put before the segment's name (``SHM_PREFIX``).
SHM_PREFIX: Final = "shm_"
#: Session-0 services (the client's sandbox) name kernel objects in the global namespace.
GLOBAL_NAMESPACE: Final = "Global\\"
#: The client tries this many segment numbers before it gives up (``ERR_SHMGET``).
MAX_SEGMENTS: Final = 1024

#: The exit codes the Windows client kills an app with (``TerminateProcess``): 0 when the task
#: will be restarted (a quit that timed out), ``EXIT_ABORTED_BY_CLIENT`` when it will not.
KILL_EXIT_CODE_RESTART: Final = 0
KILL_EXIT_CODE_ABORT: Final = 194

# Process creation flags (winbase.h) the client starts every app with.
CREATE_NEW_PROCESS_GROUP: Final = 0x00000200
CREATE_NO_WINDOW: Final = 0x08000000
#: Started with its first thread stopped: put into a job object before it can start another.
CREATE_SUSPENDED: Final = 0x00000004
IDLE_PRIORITY_CLASS: Final = 0x00000040
BELOW_NORMAL_PRIORITY_CLASS: Final = 0x00004000


def comm_obj_name(number: int) -> str:
    """What the client writes into init_data.xml's ``<comm_obj_name>`` for segment ``number``."""
    if not 0 <= number < MAX_SEGMENTS:
        raise ValueError(f"segment number {number} is outside 0..{MAX_SEGMENTS - 1}")
    return f"boinc_{number}"


def client_mapping_name(number: int, *, sandboxed: bool = False) -> str:
    """The name the client gives the file mapping it creates for segment ``number``.

    The client takes the first number whose name is not in use. A sandboxed client (a service
    with a separate account) tries the ``Global\\`` name first.
    """
    name = SHM_PREFIX + comm_obj_name(number)
    return GLOBAL_NAMESPACE + name if sandboxed else name


def app_mapping_names(obj_name: str) -> tuple[str, ...]:
    """The names the API opens, in order, for init_data.xml's ``<comm_obj_name>``: the global
    one first (a sandboxed client), then the session-local one; () when there is none (the
    app then runs standalone)."""
    if not obj_name:
        return ()
    name = SHM_PREFIX + obj_name
    return (GLOBAL_NAMESPACE + name, name)


def client_command_line(exec_path: str, wu_command_line: str = "", resource_args: str = "") -> str:
    """The command line the client passes to ``CreateProcess``: the main program's path (not
    quoted), the workunit's command line, then its own arguments (``--nthreads N``), joined
    by single spaces, so a trailing space remains when one of them is empty."""
    return f"{exec_path} {wu_command_line} {resource_args}"


NORMAL_PRIORITY_CLASS: Final = 0x00000020
ABOVE_NORMAL_PRIORITY_CLASS: Final = 0x00008000
HIGH_PRIORITY_CLASS: Final = 0x00000080
REALTIME_PRIORITY_CLASS: Final = 0x00000100

#: Priority classes as the nice values BOINC maps them from (``get_priority``: lowest = idle =
#: nice 19, low = below normal = nice 10, normal = 0, high, highest, realtime above it).
_NICE_OF_CLASS: Final = {
    IDLE_PRIORITY_CLASS: 19,
    BELOW_NORMAL_PRIORITY_CLASS: 10,
    NORMAL_PRIORITY_CLASS: 0,
    ABOVE_NORMAL_PRIORITY_CLASS: -5,
    HIGH_PRIORITY_CLASS: -10,
    REALTIME_PRIORITY_CLASS: -20,
}


def nice_of_priority_class(priority_class: int) -> int:
    """The nice value a priority class stands for (0 for a value Windows does not define)."""
    return _NICE_OF_CLASS.get(priority_class, 0)


def priority_class_of_nice(nice: int) -> int:
    """The priority class nearest to a nice value (a tie goes to the lower priority); never
    realtime, which would starve the host's own threads."""
    classes = [c for c in _NICE_OF_CLASS if c != REALTIME_PRIORITY_CLASS]
    return min(classes, key=lambda c: (abs(_NICE_OF_CLASS[c] - nice), -_NICE_OF_CLASS[c]))


def priority_class(high_priority: bool) -> int:
    """The client's default priority class: a wrapper (or a job using less than a CPU, or a
    GPU job) runs below normal, everything else at idle priority."""
    return BELOW_NORMAL_PRIORITY_CLASS if high_priority else IDLE_PRIORITY_CLASS


# ---------------------------------------------------------------------------------------------
# VirtualBox

#: vboxwrapper reads VirtualBox's install directory from this registry value (HKLM).
VBOX_REGISTRY_KEY: Final = r"SOFTWARE\Oracle\VirtualBox"
VBOX_REGISTRY_VALUE: Final = "InstallDir"
#: Set by VirtualBox's installers (MSI: the first; older ones: the second).
VBOX_ENV_DIRS: Final = ("VBOX_MSI_INSTALL_PATH", "VBOX_INSTALL_PATH")
VBOXMANAGE_EXE: Final = "VBoxManage.exe"


def vboxmanage_candidates(registry_install_dir: str, env: Mapping[str, str]) -> tuple[str, ...]:
    """Where to look for VBoxManage.exe, in order: the registry's ``InstallDir`` (where
    vboxwrapper looks; it puts that directory first on PATH), then the installers'
    environment variables. Duplicates (the same directory twice) are dropped."""
    dirs = [registry_install_dir, *(env.get(name, "") for name in VBOX_ENV_DIRS)]
    seen: set[str] = set()
    out: list[str] = []
    for d in dirs:
        d = d.strip().strip('"')
        key = ntpath.normcase(ntpath.normpath(d)) if d else ""
        if key and key not in seen:
            seen.add(key)
            out.append(ntpath.join(d, VBOXMANAGE_EXE))
    return tuple(out)


def find_vboxmanage(
    registry_install_dir: str, env: Mapping[str, str], exists: Callable[[str], bool]
) -> str | None:
    """The first candidate that ``exists``; None when VirtualBox is not installed there."""
    return next((p for p in vboxmanage_candidates(registry_install_dir, env) if exists(p)), None)


# ---------------------------------------------------------------------------------------------
# QEMU on Windows


@dataclass(frozen=True)
class WindowsAccel:
    """The accelerator QEMU gets on a Windows host, and why (for the task's log)."""

    name: str  # "whpx" or "tcg"
    reason: str


def choose_windows_accel(*, whpx_listed: bool, whpx_boots: bool | None) -> WindowsAccel:
    """WHPX when this QEMU has it and a tiny probe boot under it worked, else TCG.

    ``whpx_listed``: ``-accel help`` names whpx. ``whpx_boots``: the probe's result (None when
    it was not run). As with KVM, being listed is not enough: WHPX is listed but fails to start
    when the Windows Hypervisor Platform feature is off.
    """
    if not whpx_listed:
        return WindowsAccel("tcg", "this QEMU has no WHPX; software emulation (TCG)")
    if whpx_boots:
        return WindowsAccel("whpx", "Windows Hypervisor Platform (WHPX) boots a guest here")
    if whpx_boots is None:
        return WindowsAccel("tcg", "WHPX was not probed; software emulation (TCG)")
    return WindowsAccel(
        "tcg",
        "WHPX is listed but a probe boot failed (enable the Windows feature "
        "'Windows Hypervisor Platform'); software emulation (TCG)",
    )
