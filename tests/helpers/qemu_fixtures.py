"""Helpers for QEMU back-end tests: slots with blank disks, configs, always-cleaned back ends.

A VM with a blank disk is the cheapest real QEMU there is: SeaBIOS finds nothing to boot and
idles, yet QMP, pause/resume, snapshots, -loadvm, kills and every device work on it. Such a
VM must be stopped within a minute (SeaBIOS then reboots, and -no-reboot ends QEMU).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil

from helpers.common import make_slot, vm_config
from vmwrapper.hypervisor.base import Share, VmConfig, VmStatus
from vmwrapper.hypervisor.qemu.backend import QemuBackend


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def qemu_backend(config: VmConfig, **options: Any) -> Iterator[QemuBackend]:
    """A QemuBackend (TCG unless told) whose QEMU is always stopped and files removed."""
    options.setdefault("accel", "tcg")
    backend = QemuBackend(config, **options)
    try:
        yield backend
    finally:
        pid = backend.pid()
        backend.cleanup()
        if pid is not None:  # belt and braces: never leave a QEMU behind a failed test
            with suppress(psutil.Error):
                psutil.Process(pid).kill()


def non_loopback_ipv4() -> str | None:
    """An IPv4 address of this host that is not 127.x, or None when it has none."""
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family == socket.AF_INET and not addr.address.startswith("127."):
                return str(addr.address)
    return None


def tcp_connects(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(ip, port) of every TCP socket the process listens on."""
    return {
        (conn.laddr.ip, conn.laddr.port)
        for conn in psutil.Process(pid).net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN
    }


def make_guest_slot(
    root: Path, image: Path, app: str, inputs: dict[str, str], *, multiattach: bool = False
) -> tuple[Path, Path, VmConfig]:
    """A slot with ``shared/boinc_app`` (a busybox sh script) and inputs, and its VmConfig.

    The built guest image is copied as the slot's vm_image.vdi, or, with ``multiattach``,
    as a parent in the project dir.
    """
    slot, project = make_slot(root, with_blank_disk=False)
    shared = slot / "shared"
    shared.mkdir()
    (shared / "boinc_app").write_text(app)
    (shared / "boinc_app").chmod(0o755)
    for name, text in inputs.items():
        (shared / name).write_text(text)
    disk = (project / "vm_parent.vdi") if multiattach else (slot / "vm_image.vdi")
    shutil.copyfile(image, disk)
    changes: dict[str, Any] = {"shares": (Share("shared", shared),)}
    if multiattach:
        changes.update(disk_image=None, multiattach_parent=disk)
    return slot, project, vm_config(slot, project, **changes)


class GuestWatch:
    """Collects a running guest's log lines; waits for a line or for the VM to stop."""

    def __init__(self, vm: QemuBackend) -> None:
        self.vm = vm
        self.lines: list[str] = []

    def poll(self) -> list[str]:
        new = self.vm.guest_log()
        self.lines += new
        return new

    def wait_line(self, predicate: Callable[[str], bool], timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.poll():
                if predicate(line):
                    return line
            if not self.vm.status().state.online:
                self.poll()
                break
            time.sleep(0.1)
        raise AssertionError(
            f"no such guest line within {timeout} s; log:\n" + "\n".join(self.lines)
        )

    def wait_stopped(self, timeout: float = 90.0) -> VmStatus:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            status = self.vm.status()
            if not status.state.online:
                self.poll()
                return status
            time.sleep(0.2)
        raise AssertionError(f"VM still running after {timeout} s; log:\n" + "\n".join(self.lines))


def counts(lines: list[str]) -> list[int]:
    """The numbers of the guest app's ``count N`` lines."""
    return [int(line.split()[1]) for line in lines if re.fullmatch(r"count \d+", line)]
