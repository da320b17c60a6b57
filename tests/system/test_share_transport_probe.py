"""Which transport an "auto" share gets: asked of the real QEMU binary, early.

The back end starts ``qemu-system-* -device help`` when it makes the disks (``create()``),
so that QEMU's ~40 ms answer is there when the VM starts rather than delaying it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import psutil
import pytest

from vmwrapper.errors import VmStartError
from vmwrapper.hypervisor.base import Share
from vmwrapper.hypervisor.qemu.sharing import ShareTransports

pytestmark = pytest.mark.system

QEMU = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"


def _share(tmp_path: Path, transport: str) -> Share:
    return Share("shared", tmp_path, transport=transport)


def test_an_auto_share_is_resolved_from_the_answer_asked_for_early(tmp_path: Path) -> None:
    shares = ShareTransports((_share(tmp_path, "auto"),), QEMU)
    shares.prefetch()
    probe = shares._probe
    assert probe is not None and psutil.Process(probe.pid).cmdline()[1:] == ["-device", "help"]
    shares.prefetch()  # asked once
    assert shares._probe is probe
    assert shares.port() is None  # Debian's QEMU has virtio-9p: no file service
    assert [s.transport for s in shares.shares] == ["9p"]
    assert shares._probe is None and probe.returncode == 0
    shares.close()


def test_nothing_is_asked_when_every_share_names_its_transport(tmp_path: Path) -> None:
    shares = ShareTransports((_share(tmp_path, "9p"),), "/nonexistent/qemu")
    shares.prefetch()
    assert shares._probe is None
    assert shares.port() is None
    shares.close()


def test_an_answer_never_collected_is_ended_at_the_clean_up(tmp_path: Path) -> None:
    shares = ShareTransports((_share(tmp_path, "auto"),), QEMU)
    shares.prefetch()
    probe = shares._probe
    assert probe is not None
    shares.close()
    assert probe.returncode is not None and shares._probe is None


def test_a_qemu_that_cannot_run_is_a_start_error_naming_it(tmp_path: Path) -> None:
    shares = ShareTransports((_share(tmp_path, "auto"),), str(tmp_path / "qemu-system-none"))
    shares.prefetch()  # the spawn fails: said when the answer is needed
    with pytest.raises(VmStartError, match=r"qemu-system-none: .*No such file"):
        shares.port()
