"""`vmwrapper gc`: remove our VMs, overlays and locks that belong to no live slot.

A wrapper killed with SIGKILL (or a host that lost power) can leave behind a QEMU process
nobody drives, VM files in a slot the client has already emptied of its task, a stale QMP
socket, an unused multiattach lock file, or a VirtualBox VM registered for a slot that no
longer exists. A slot is *live* when a wrapper holds its ``boinc_lockfile`` or when it still
holds a task (``init_data.xml``: the task may only be postponed, and its checkpoints must
survive). Nothing that belongs to a live slot is touched, except a QEMU process whose slot
has no wrapper running (no one would ever stop it; the next wrapper restores its checkpoint).

``--dry-run`` lists what would be removed.
"""

from __future__ import annotations

import argparse
import enum
import logging
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from vmwrapper import hostos
from vmwrapper.hostos import locks
from vmwrapper.hypervisor.virtualbox.runner import vbox_environment
from vmwrapper.supervisor import events

NAME = "gc"
HELP = "remove vmwrapper VMs, overlays and locks that belong to no live BOINC slot"

log = logging.getLogger(__name__)

#: Files our back ends and the supervisor leave in a slot (removed only from task-less slots).
SLOT_FILES = (
    "vm_disk.qcow2",
    "vm_cache.qcow2",
    "vm_state.qcow2",
    "qemu-qmp.sock",
    "qemu.pid",
    "fake_vm.json",
    "vmwrapper_backoff.json",
    "vmwrapper_triggers.json",
)
VBOXMANAGE_TIMEOUT = 60.0


class Kind(enum.Enum):
    KILL_QEMU = "kill stray QEMU"
    REMOVE_FILE = "remove file"
    UNREGISTER_VM = "unregister VirtualBox VM"


@dataclass(frozen=True)
class GcAction:
    kind: Kind
    target: str  # a path, a pid, or a VM name
    why: str


@dataclass(frozen=True)
class SlotFacts:
    path: Path
    wrapper_running: bool  # boinc_lockfile is locked
    has_task: bool  # init_data.xml present
    qemu_pid: int | None  # from qemu.pid, only if that process is a live QEMU
    our_files: tuple[Path, ...]


def plan_slot(slot: SlotFacts) -> list[GcAction]:
    """What to clean in one slot (pure)."""
    actions: list[GcAction] = []
    if slot.qemu_pid is not None and not slot.wrapper_running:
        actions.append(
            GcAction(Kind.KILL_QEMU, str(slot.qemu_pid), f"no wrapper runs in {slot.path}")
        )
    if not slot.has_task and not slot.wrapper_running:
        actions += [
            GcAction(Kind.REMOVE_FILE, str(p), f"{slot.path} holds no task") for p in slot.our_files
        ]
    return actions


# -- gathering facts (I/O) -------------------------------------------------------------------


def lock_held(path: Path) -> bool:
    """True if another process holds the BOINC lock on ``path`` (vmwrapper.hostos.locks)."""
    return locks.boinc_file_held(path)


def live_qemu(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().split()[0])
        proc = psutil.Process(pid)
        name = " ".join(proc.cmdline()[:1]) + proc.name()
    except (OSError, ValueError, IndexError, psutil.Error):
        return None
    return pid if "qemu" in name else None


def slot_facts(slot: Path) -> SlotFacts:
    return SlotFacts(
        path=slot,
        wrapper_running=lock_held(slot / "boinc_lockfile"),
        has_task=(slot / "init_data.xml").exists(),
        qemu_pid=live_qemu(slot / "qemu.pid"),
        our_files=tuple(slot / n for n in SLOT_FILES if (slot / n).exists()),
    )


def stale_sockets(directory: Path) -> list[GcAction]:
    """QMP sockets (long slot paths put them under $TMPDIR) nobody listens on."""
    actions = []
    for sock_path in sorted(directory.glob("*.qmp")) if directory.is_dir() else []:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            try:
                sock.connect(str(sock_path))
            except OSError:
                actions.append(GcAction(Kind.REMOVE_FILE, str(sock_path), "no QEMU listens"))
    return actions


def unused_locks(directory: Path) -> list[GcAction]:
    """Multiattach lock files no wrapper holds."""
    if not directory.is_dir():
        return []
    return [
        GcAction(Kind.REMOVE_FILE, str(p), "no wrapper holds it")
        for p in sorted(directory.glob("boinc_lock_*"))
        if not lock_held(p)
    ]


def vboxmanage(data_dir: Path) -> tuple[str, dict[str, str]] | None:
    """VBoxManage and its environment as the wrapper finds them (on Windows the registry's
    install directory first: it is rarely on PATH), or None when there is none."""
    found = vbox_environment(os.environ, boinc_dir=data_dir)
    path = found.env.get("PATH")
    if shutil.which(found.executable, path=path) is None:
        return None
    return found.executable, found.env


def _vbm(vbm: tuple[str, dict[str, str]], *args: str) -> subprocess.CompletedProcess[str]:
    """One VBoxManage call, without a console window on Windows."""
    return hostos.run_program(
        [vbm[0], "-q", *args],
        capture_output=True,
        text=True,
        env=vbm[1],
        stdin=subprocess.DEVNULL,
        timeout=VBOXMANAGE_TIMEOUT,
        check=False,
    )


def virtualbox_orphans(slots_dir: Path, data_dir: Path) -> list[GcAction]:
    """Registered ``boinc_*`` VMs whose settings live in a slot that has no task."""
    vbm = vboxmanage(data_dir)
    if vbm is None:
        return []
    try:
        listing = _vbm(vbm, "list", "vms").stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    actions = []
    for line in listing.splitlines():
        name = line.split('"')[1] if line.count('"') >= 2 else ""
        if not name.startswith("boinc_"):
            continue
        info = _vbm(vbm, "showvminfo", name, "--machinereadable").stdout
        cfg = next(
            (
                ln.split("=", 1)[1].strip('"')
                for ln in info.splitlines()
                if ln.startswith("CfgFile=")
            ),
            "",
        )
        slot = Path(cfg).parent.parent if cfg else None
        if slot is None or not slot.is_relative_to(slots_dir):
            continue  # not in this data dir's slots: not ours to judge
        if not (slot / "init_data.xml").exists() and not lock_held(slot / "boinc_lockfile"):
            actions.append(GcAction(Kind.UNREGISTER_VM, name, f"{slot} holds no task"))
    return actions


def plan(data_dir: Path, tmp_dir: Path | None = None) -> list[GcAction]:
    tmp = tmp_dir if tmp_dir is not None else Path(tempfile.gettempdir())
    slots_dir = data_dir / "slots"
    actions: list[GcAction] = []
    if slots_dir.is_dir():
        for slot in sorted(p for p in slots_dir.iterdir() if p.is_dir()):
            actions += plan_slot(slot_facts(slot))
    if hostos.UNIX_SOCKETS:  # QMP on TCP loopback (Windows) leaves no socket file
        actions += stale_sockets(tmp / f"vmwrapper-{os.getuid()}")
    actions += unused_locks(tmp / "vmwrapper-locks")
    actions += virtualbox_orphans(slots_dir.resolve(), data_dir)
    return actions


def perform(actions: Iterable[GcAction], data_dir: Path | None = None) -> int:
    """Do the actions (VirtualBox's as the wrapper in ``data_dir`` finds it); returns how
    many failed."""
    failed = 0
    for action in actions:
        try:
            if action.kind is Kind.KILL_QEMU:
                hostos.kill_process(int(action.target))  # SIGKILL; Windows: TerminateProcess
            elif action.kind is Kind.REMOVE_FILE:
                Path(action.target).unlink(missing_ok=True)
            else:
                vbm = vboxmanage(data_dir or Path.cwd()) or ("VBoxManage", dict(os.environ))
                _vbm(vbm, "unregistervm", action.target, "--delete").check_returncode()
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            failed += 1
            log.error("gc: %s %s failed: %s", action.kind.value, action.target, exc)
            continue
        log.info(
            "gc: %s %s (%s)",
            action.kind.value,
            action.target,
            action.why,
            extra={"event": events.GC, "kind": action.kind.name, "target": action.target},
        )
    return failed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path.cwd(),
        help="BOINC data directory (the one with slots/); default: the current directory",
    )
    parser.add_argument("--dry-run", action="store_true", help="only list what would go")


def main(args: argparse.Namespace) -> int:
    actions = plan(Path(args.dir))
    if args.dry_run or not actions:
        for action in actions:
            print(f"would {action.kind.value}: {action.target} ({action.why})")
        if not actions:
            print("nothing to clean")
        return 0
    uninstall = events.install(None)
    try:
        failed = perform(actions, Path(args.dir))
    finally:
        uninstall()
    print(f"cleaned {len(actions) - failed} item(s), {failed} failed")
    return 1 if failed else 0


__all__: Sequence[str] = ("GcAction", "Kind", "main", "perform", "plan", "plan_slot")
