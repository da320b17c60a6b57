"""VBoxManage argv lists for queries, run-time control, snapshots and teardown (pure).

Every call is a :class:`Step`: its arguments, what it is for, and how the runner treats a
failure. The steps that create a VM are in :mod:`.creation`; what the installed VirtualBox
understands in :mod:`.capabilities`. Arguments never include ``VBoxManage -q``: the runner adds
that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from vmwrapper.hypervisor.base import VmConfig

HDD_CONTROLLER = "Hard Disk Controller"
FLOPPY_CONTROLLER = "Floppy Controller"
#: The VRDE user name whose password hash goes to VBoxAuthSimple (one user per VM).
VRDE_USER = "boinc"
#: vboxwrapper's "no limit" for the NIC bandwidth group (1 TiB/s), also used to lift a limit.
UNLIMITED = "1024G"


@dataclass(frozen=True)
class Step:
    """One VBoxManage call: its arguments, what it is for, and how to treat a failure."""

    args: tuple[str, ...]
    item: str  # for "Error in <item> for VM" log lines
    fatal: bool = True  # a failure aborts the operation
    retry: bool = True  # retried by the runner on any error (lock errors always are)
    log_error: bool = True


def step(item: str, *args: str, fatal: bool = True, retry: bool = True) -> Step:
    """A creation step: a failure that does not abort the operation is not logged as an error."""
    return Step(args=tuple(args), item=item, fatal=fatal, retry=retry, log_error=fatal)


# ---- paths VirtualBox makes -------------------------------------------------------------


def vm_folder(config: VmConfig) -> Path:
    return config.slot_dir / config.name


def settings_file(config: VmConfig) -> Path:
    return vm_folder(config) / f"{config.name}.vbox"


def log_dir(config: VmConfig) -> Path:
    return vm_folder(config) / "Logs"


def bandwidth_group(config: VmConfig) -> str:
    return f"{config.name}_net"


def is_64bit_guest(config: VmConfig) -> bool:
    return "_64" in config.os_name


# ---- queries and run-time control ---------------------------------------------------------


def showvminfo(vm: str) -> Step:
    return Step(("showvminfo", vm, "--machinereadable"), "showvminfo", retry=False, log_error=False)


def startvm(config: VmConfig) -> Step:
    args = ["startvm", config.name]
    if config.headless:
        args += ["--type", "headless"]
    return Step(tuple(args), "start VM", retry=False)


def controlvm(config: VmConfig, *action: str, retry: bool = True) -> Step:
    return Step(("controlvm", config.name, *action), f"controlvm {action[0]}", retry=retry)


def cpu_cap(config: VmConfig, percent: float) -> Step:
    """cpuexecutioncap from the client's cpu_usage_limit: 0 → 100, below 1 → 1
    (docs/compatibility.md#main-loop)."""
    value = 100 if percent <= 0 else max(1, min(100, int(percent)))
    return controlvm(config, "cpuexecutioncap", str(value))


def link_state(config: VmConfig, connected: bool) -> Step:
    """Plug or unplug the cable of a running VM (not modifyvm on a locked VM,
    docs/compatibility.md#network)."""
    return controlvm(config, "setlinkstate1", "on" if connected else "off")


def bandwidth_limit(bytes_per_sec: float) -> str:
    """A `--limit` value: whole KiB/s (at least 1), or the group's "unlimited" for 0."""
    if bytes_per_sec <= 0:
        return UNLIMITED
    return f"{max(1, math.ceil(bytes_per_sec / 1024))}K"


def set_bandwidth(config: VmConfig, bytes_per_sec: float) -> Step:
    return Step(
        (
            "bandwidthctl",
            config.name,
            "set",
            bandwidth_group(config),
            "--limit",
            bandwidth_limit(bytes_per_sec),
        ),
        "set network bandwidth",
    )


#: The NICs' byte counters in VirtualBox's statistics (STAM). vboxwrapper asks for
#: ``/Devices/*/TransmitBytes`` and ``/Devices/*/ReceiveBytes`` in two calls; STAM takes several
#: patterns separated by ``|``, so one call reads both from the same moment.
NET_STATISTICS_PATTERN = "/Devices/*/TransmitBytes|/Devices/*/ReceiveBytes"


def net_statistics(config: VmConfig) -> Step:
    """``debugvm <vm> statistics --pattern ...``: the NIC byte counters of the running VM
    (the debugger console exists only while the VM process does; otherwise VirtualBox refuses)."""
    return Step(
        ("debugvm", config.name, "statistics", "--pattern", NET_STATISTICS_PATTERN),
        "get network bytes",
        retry=False,
        log_error=False,
    )


def snapshot_take(config: VmConfig, name: str) -> Step:
    return Step(("snapshot", config.name, "take", name), "create snapshot")


def snapshot_list(config: VmConfig) -> Step:
    return Step(
        ("snapshot", config.name, "list"), "enumerate snapshot(s)", retry=False, log_error=False
    )


def snapshot_delete(config: VmConfig, uuid: str) -> Step:
    return Step(("snapshot", config.name, "delete", uuid), "delete stale snapshot")


def snapshot_restore(config: VmConfig, name: str | None) -> Step:
    """``restorecurrent`` (vboxwrapper's) or ``restore <name>`` for an older snapshot."""
    if name is None:
        return Step(("snapshot", config.name, "restorecurrent"), "restore current snapshot")
    return Step(("snapshot", config.name, "restore", name), "restore snapshot")


def showhdinfo(path: str) -> Step:
    return Step(("showhdinfo", path), "showhdinfo", retry=False, log_error=False)


def closemedium(kind: str, path: str, *, delete: bool = False) -> Step:
    args = ["closemedium", kind, path]
    if delete:
        args.append("--delete")
    return Step(tuple(args), "close medium", fatal=False, retry=False, log_error=False)


def teardown_steps(config: VmConfig, *, delete: bool = True) -> list[Step]:
    """Deregistration (docs/compatibility.md#creating-the-vm), best effort. Snapshots are deleted
    before these.

    ``delete`` adds ``unregistervm --delete`` (the VM's folder, logs, differencing disks and
    its own disk go); without it only the registration goes (a stale VM,
    docs/compatibility.md#creating-the-vm)."""
    vm = config.name
    # No `bandwidthctl remove` (vboxwrapper's): the group is attached to the NIC now, VirtualBox
    # refuses to remove a group in use, and unregistervm drops it with the VM anyway.
    steps: list[Step] = []
    if config.floppy_image is not None:
        steps.append(
            Step(
                ("storagectl", vm, "--name", FLOPPY_CONTROLLER, "--remove"),
                "remove floppy controller",
                fatal=False,
                retry=False,
                log_error=False,
            )
        )
    unregister = ("unregistervm", vm, "--delete") if delete else ("unregistervm", vm)
    steps.append(Step(unregister, "unregister VM", fatal=False, retry=False))
    return steps


def close_media_steps(config: VmConfig) -> list[Step]:
    """Forget the slot's media in VirtualBox's registry (files stay: the client owns the slot)."""
    steps = []
    if config.iso_image is not None:
        steps.append(closemedium("dvd", str(config.iso_image)))
        if config.cache_disk is not None:
            steps.append(closemedium("disk", str(config.cache_disk)))
    elif config.disk_image is not None and config.multiattach_parent is None:
        steps.append(closemedium("disk", str(config.disk_image)))
    if config.floppy_image is not None:
        steps.append(closemedium("floppy", str(config.floppy_image)))
    return steps
