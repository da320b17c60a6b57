"""The guest image for tests, and a way to boot it with plain QEMU (no back end involved).

``tests/conftest.py`` registers the fixture, so a test only names it::

    def test_x(default_guest_image: Path) -> None: ...

* ``default_guest_image`` (session scope) — the default recipe's VDI, built once through the
  image cache (``vmwrapper.images.ensure_image()``; ``$VMWRAPPER_CACHE`` or
  ``~/.cache/vmwrapper``). Building needs apt's package lists; when they are missing and we
  are root, the fixture runs ``apt-get update`` once and retries. It never skips: a test that
  needs the image fails with the builder's message (what to install or run).
* :func:`guest_image` — the same for any :class:`ImageRecipe`.
* :func:`boot_guest` — boot an image under TCG through a qcow2 overlay with a `shared` 9p
  export, the serial console in a file, pvpanic, ``-no-reboot``; returns the exit code and
  the console text. QEMU is always killed when the deadline passes.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.common import GUEST_MEMORY_MB
from vmwrapper.errors import ImageError
from vmwrapper.images import DEFAULT_RECIPE, ImageRecipe, ensure_image

BOOT_DEADLINE_S = 240.0  # a boot takes ~10-15 s under TCG; much more means a hang


@functools.cache
def guest_image(recipe: ImageRecipe = DEFAULT_RECIPE) -> Path:
    """The image for ``recipe`` from the cache, built if needed (apt lists refreshed once);
    remembered for the session, so modules that import the fixture share one lookup."""
    try:
        return ensure_image(recipe)
    except ImageError as exc:
        if "apt-get update" not in str(exc) or os.geteuid() != 0:
            raise
        subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True, timeout=600)
        return ensure_image(recipe)


@pytest.fixture(scope="session")
def default_guest_image() -> Path:
    """Path of the default guest image (VDI), shared by the whole test session."""
    return guest_image()


@dataclass(frozen=True)
class GuestRun:
    returncode: int
    console: str

    @property
    def lines(self) -> list[str]:
        return self.console.replace("\r", "").splitlines()

    @property
    def done_status(self) -> int | None:
        """N from ``VMWRAPPER_GUEST_DONE status=N``, or None when the guest never said it."""
        for line in self.lines:
            if line.startswith("VMWRAPPER_GUEST_DONE status="):
                return int(line.split("=", 1)[1])
        return None

    @property
    def errors(self) -> list[str]:
        prefix = "VMWRAPPER_GUEST_ERROR: "
        return [line[len(prefix) :] for line in self.lines if line.startswith(prefix)]


def make_overlay(image: Path, overlay: Path) -> Path:
    """A qcow2 overlay over ``image`` (opened read-only by QEMU; snapshots go to the overlay)."""
    fmt = "qcow2" if image.suffix == ".qcow2" else "raw" if image.suffix == ".img" else "vdi"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.resolve()), "-F", fmt,
         str(overlay)],
        check=True, timeout=60,
    )  # fmt: skip
    return overlay


def qemu_argv(
    overlay: Path,
    console: Path,
    *,
    shared: Path | None,
    extra: Sequence[str] = (),
) -> list[str]:
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-m", str(GUEST_MEMORY_MB), "-smp", "1",
        "-nodefaults", "-display", "none", "-no-reboot",
        "-drive", f"file={overlay},if=ide,format=qcow2",
        "-serial", f"file:{console}",
        "-device", "pvpanic", "-action", "panic=exit-failure",
    ]  # fmt: skip
    if shared is not None:
        argv += ["-virtfs", f"local,path={shared},mount_tag=shared,security_model=none"]
    return [*argv, *extra]


@contextmanager
def running_guest(argv: Sequence[str]) -> Iterator[subprocess.Popen[bytes]]:
    """QEMU started with ``argv``; killed on exit from the block if still running."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()


def boot_guest(
    image: Path,
    workdir: Path,
    *,
    shared: Path | None,
    extra: Sequence[str] = (),
    deadline: float = BOOT_DEADLINE_S,
) -> GuestRun:
    """Boot ``image`` until the guest powers off (or panics); the console is kept in
    ``workdir/console.log``."""
    workdir.mkdir(parents=True, exist_ok=True)
    overlay = make_overlay(image, workdir / "overlay.qcow2")
    console = workdir / "console.log"
    with running_guest(qemu_argv(overlay, console, shared=shared, extra=extra)) as proc:
        try:
            code = proc.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            code = -9
    return GuestRun(code, console.read_text(errors="replace") if console.exists() else "")
