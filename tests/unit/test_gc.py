"""`vmwrapper gc`: what is stray, what is live (live slots are never touched)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from vmwrapper.cli import gc


def slot(root: Path, n: int, *, task: bool, files: tuple[str, ...] = ()) -> Path:
    path = root / "slots" / str(n)
    path.mkdir(parents=True)
    if task:
        (path / "init_data.xml").write_text("<app_init_data/>")
    for name in files:
        (path / name).write_text("x")
    return path


def test_plan_slot_rules() -> None:
    p = Path("/d/slots/0")
    files = (p / "vm_disk.qcow2",)
    running = gc.SlotFacts(p, True, True, 123, files)
    assert gc.plan_slot(running) == []  # a live wrapper: hands off
    postponed = gc.SlotFacts(p, False, True, None, files)
    assert gc.plan_slot(postponed) == []  # a task waiting for its restart keeps its checkpoints
    orphan_qemu = gc.SlotFacts(p, False, True, 123, files)
    assert [a.kind for a in gc.plan_slot(orphan_qemu)] == [gc.Kind.KILL_QEMU]
    emptied = gc.SlotFacts(p, False, False, None, files)
    assert gc.plan_slot(emptied) == [
        gc.GcAction(gc.Kind.REMOVE_FILE, str(files[0]), f"{p} holds no task")
    ]


def test_removes_leftovers_only_from_taskless_unlocked_slots(tmp_path: Path) -> None:
    empty = slot(tmp_path, 0, task=False, files=("vm_disk.qcow2", "qemu.pid", "stderr.txt"))
    postponed = slot(tmp_path, 1, task=True, files=("vm_disk.qcow2",))
    locked = slot(tmp_path, 2, task=False, files=("vm_disk.qcow2",))
    lockfile = locked / "boinc_lockfile"
    lockfile.write_text("")
    # another process holds the lock (POSIX locks are per process)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl,os,sys,time;fd=os.open(sys.argv[1],os.O_RDWR);"
            "fcntl.lockf(fd,fcntl.LOCK_EX);print('ok',flush=True);time.sleep(30)",
            str(lockfile),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"ok"
        actions = gc.plan(tmp_path, tmp_dir=tmp_path / "tmp")
        targets = {a.target for a in actions}
        assert targets == {str(empty / "vm_disk.qcow2"), str(empty / "qemu.pid")}
        assert gc.perform(actions) == 0
    finally:
        holder.kill()
        holder.wait()
    assert not (empty / "vm_disk.qcow2").exists() and (empty / "stderr.txt").exists()
    assert (postponed / "vm_disk.qcow2").exists() and (locked / "vm_disk.qcow2").exists()


def test_stale_sockets_and_unused_locks(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    socks = tmp / f"vmwrapper-{os.getuid()}"
    socks.mkdir(parents=True)
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(socks / "live.qmp"))
    live.listen(1)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(socks / "dead.qmp"))
    dead.close()  # the file stays, nobody listens
    locks = tmp / "vmwrapper-locks"
    locks.mkdir()
    (locks / "boinc_lock_0123456789abcdef").write_text("")
    try:
        targets = {a.target for a in gc.plan(tmp_path, tmp_dir=tmp)}
    finally:
        live.close()
    assert targets == {str(socks / "dead.qmp"), str(locks / "boinc_lock_0123456789abcdef")}


def test_stray_qemu_in_an_unlocked_slot_is_killed(tmp_path: Path) -> None:
    fake_qemu = tmp_path / "qemu-system-x86_64"  # a process that looks like QEMU to ps
    fake_qemu.symlink_to(shutil.which("sleep") or "/bin/sleep")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        s = slot(tmp_path, 0, task=True)
        (s / "qemu.pid").write_text(f"{proc.pid}\n")
        # not a QEMU: left alone
        assert gc.plan(tmp_path, tmp_dir=tmp_path / "tmp") == []
    finally:
        proc.kill()
        proc.wait()
    proc = subprocess.Popen([str(fake_qemu), "60"])
    try:
        (s / "qemu.pid").write_text(f"{proc.pid}\n")
        actions = gc.plan(tmp_path, tmp_dir=tmp_path / "tmp")
        assert [(a.kind, a.target) for a in actions] == [(gc.Kind.KILL_QEMU, str(proc.pid))]
        gc.perform(actions)
        assert proc.wait(timeout=10) == -9
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
