"""``vmwrapper.exe gc`` under Wine (docs/windows.md): leftovers of a slot that holds no task
go, a slot with a task keeps everything. On Windows there is no QMP socket directory to sweep
(QMP is on TCP), a stray QEMU is ended with TerminateProcess, and VBoxManage is looked up as
the wrapper looks it up (the registry first)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.wine_fixtures import Toolchain, windows_path

pytestmark = pytest.mark.system

LEFTOVERS = ("vm_disk.qcow2", "qemu.pid", "vmwrapper_backoff.json")


def _slot(data: Path, n: int, *, task: bool) -> Path:
    slot = data / "slots" / str(n)
    slot.mkdir(parents=True)
    if task:
        (slot / "init_data.xml").write_text("<app_init_data/>")
    for name in LEFTOVERS:
        # qemu.pid names a process that does not exist: nothing to kill, the file goes
        (slot / name).write_text("999999\n" if name == "qemu.pid" else "x")
    return slot


def test_gc_removes_what_a_taskless_slot_left_and_keeps_a_live_one(
    wine_toolchain: Toolchain, windows_exe: Path, tmp_path: Path
) -> None:
    data = tmp_path / "boinc"
    empty, busy = _slot(data, 0, task=False), _slot(data, 1, task=True)
    gc = [str(windows_exe), "gc", "--dir", windows_path(data)]

    dry = wine_toolchain.run([*gc, "--dry-run"], timeout=120)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    for name in LEFTOVERS:
        assert f"would remove file: {windows_path(empty / name)}" in dry.stdout, dry.stdout
    assert windows_path(busy) not in dry.stdout
    assert sorted(p.name for p in empty.iterdir()) == sorted(LEFTOVERS)  # a dry run

    done = wine_toolchain.run(gc, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ", 0 failed" in done.stdout, done.stdout
    assert list(empty.iterdir()) == []
    assert sorted(p.name for p in busy.iterdir()) == sorted([*LEFTOVERS, "init_data.xml"])
