"""Helpers every kind of test uses: waiting with a deadline, a fake clock, a slot and its VM.

Fixtures built on them live in ``tests/conftest.py``; these are plain functions and classes so
that helper modules can use them too.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from vmwrapper.hypervisor.base import Share, VmConfig
from vmwrapper.spec.model import JobSpec

GUEST_MEMORY_MB = 256


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate()`` every ``interval`` s until it is true or ``timeout`` s pass; the
    answer of one last look when the deadline passed."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class FakeClock:
    """Monotonic time that only moves when the code under test sleeps: ``sleep`` records the
    request (``slept``), moves the clock and runs the ``on_sleep`` callbacks (the other side of
    a protocol acting meanwhile)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.slept: list[float] = []
        self.on_sleep: list[Callable[[], None]] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(seconds, 0.0)
        for callback in list(self.on_sleep):
            callback()


def make_image(path: Path, fmt: str = "vdi", size: str = "16M") -> Path:
    """A blank disk image made by qemu-img (VDI: what a project ships)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), size], check=True)
    return path


def make_slot(root: Path, with_blank_disk: bool = True) -> tuple[Path, Path]:
    """(slot dir, project dir) under ``root``, laid out as the client's data directory
    (``slots/0``, ``projects/example.org``); the slot gets a blank vm_image.vdi unless told."""
    slot = root / "slots" / "0"
    project = root / "projects" / "example.org"
    slot.mkdir(parents=True, exist_ok=True)
    project.mkdir(parents=True, exist_ok=True)
    if with_blank_disk:
        make_image(slot / "vm_image.vdi")
    return slot, project


def vm_config(
    slot: Path, project: Path | None = None, *, job: JobSpec | None = None, **changes: Any
) -> VmConfig:
    """A small VM for ``slot`` (256 MB, 1 CPU, the slot's vm_image.vdi), with ``changes``;
    with ``job``, the shared directory the job asks for."""
    shares = (Share("shared", slot / "shared"),) if job and job.enable_shared_directory else ()
    base = VmConfig(
        name="boinc_0123456789abcdef",
        description="test_result_0",
        slot_dir=slot,
        project_dir=project or slot.parent.parent / "projects" / "example.org",
        memory_mb=GUEST_MEMORY_MB,
        cpus=1,
        disk_image=slot / "vm_image.vdi",
        shares=shares,
    )
    return replace(base, **changes)
