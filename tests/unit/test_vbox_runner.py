"""The VBoxManage runner (retries, codes, timeout, trace files), its environment, the lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from helpers.common import FakeClock, wait_for
from vmwrapper.errors import BackendError
from vmwrapper.hypervisor.virtualbox import output
from vmwrapper.hypervisor.virtualbox.commands import Step
from vmwrapper.hypervisor.virtualbox.lock import MultiattachLock, lock_name
from vmwrapper.hypervisor.virtualbox.runner import (
    VBoxManage,
    VBoxManageError,
    signed,
    vbox_environment,
)

LOCKED = (
    "VBoxManage: error: The machine 'vm' is already locked for a session (or being unlocked)\n"
    "VBoxManage: error: Details: code VBOX_E_INVALID_OBJECT_STATE (0x80bb0007), component "
    "MachineWrap, interface IMachine, callee nsISupports\n"
)
NOT_FOUND = (
    "VBoxManage: error: Could not find a registered machine named 'vm'\n"
    "VBoxManage: error: Details: code VBOX_E_OBJECT_NOT_FOUND (0x80bb0001), component "
    "VirtualBoxWrap, interface IVirtualBox, callee nsISupports\n"
)


def fake_vboxmanage(tmp_path: Path, failures: int, text: str, exit_code: int = 1) -> Path:
    """A stand-in executable: fails ``failures`` times with ``text``, then succeeds."""
    counter = tmp_path / "count"
    counter.write_text("0")
    script = tmp_path / "VBoxManage"
    script.write_text(
        "#!/bin/sh\n"
        f'n=$(cat "{counter}"); n=$((n+1)); echo $n > "{counter}"\n'
        f'echo "$@" >> "{tmp_path / "args"}"\n'
        f'if [ "$n" -le {failures} ]; then printf "%s" "{text}"; exit {exit_code}; fi\n'
        'echo "ok $*"\n'
    )
    script.chmod(0o755)
    return script


def runner_for(tmp_path: Path, script: Path, sleeps: list[float], **kw: float) -> VBoxManage:
    return VBoxManage(tmp_path, executable=str(script), sleep=sleeps.append, **kw)  # type: ignore[arg-type]


def test_lock_errors_are_retried_with_doubling_back_off(tmp_path: Path) -> None:
    sleeps: list[float] = []
    runner = runner_for(tmp_path, fake_vboxmanage(tmp_path, 4, LOCKED), sleeps)
    result = runner.run(Step(("modifyvm", "vm", "--memory", "512"), "modifymem", retry=False))
    assert result.ok and result.attempts == 5
    assert sleeps == [1.0, 2.0, 4.0, 8.0]
    assert (tmp_path / "args").read_text().splitlines()[0] == "-q modifyvm vm --memory 512"
    replay = (tmp_path / "vbox_replay.txt").read_text().splitlines()
    assert replay == ["VBoxManage -q modifyvm vm --memory 512"] * 5
    trace = (tmp_path / "vbox_trace.txt").read_text()
    assert trace.count("\nCommand: VBoxManage -q modifyvm vm --memory 512\n") == 5
    assert trace.count(f"\nExit Code: {signed(output.VBOX_E_INVALID_OBJECT_STATE)}\n") == 4
    assert trace.count("\nExit Code: 0\nOutput:\nok ") == 1


def test_persistent_errors_keep_the_original_code(tmp_path: Path) -> None:
    sleeps: list[float] = []
    runner = runner_for(tmp_path, fake_vboxmanage(tmp_path, 99, LOCKED), sleeps)
    with pytest.raises(VBoxManageError) as info:
        runner.run(Step(("controlvm", "vm", "pause"), "pause"))
    error = info.value
    assert error.hresult == output.VBOX_E_INVALID_OBJECT_STATE
    assert error.code == signed(output.VBOX_E_INVALID_OBJECT_STATE) == -2135228409
    assert error.lock_error and error.result.attempts == 6
    assert error.exit_code == 1
    assert "Notes:" in error.output and "Another VirtualBox management" in error.output
    assert sleeps == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_other_errors_retry_only_when_the_step_says_so(tmp_path: Path) -> None:
    sleeps: list[float] = []
    runner = runner_for(tmp_path, fake_vboxmanage(tmp_path, 99, NOT_FOUND), sleeps)
    result = runner.probe(Step(("showvminfo", "vm"), "showvminfo", retry=False))
    assert not result.ok and result.attempts == 1 and sleeps == []
    assert result.hresult == output.VBOX_E_OBJECT_NOT_FOUND
    with pytest.raises(VBoxManageError):
        runner.run(Step(("modifyvm", "vm"), "x", retry=True))
    assert sleeps == [1.0] * 5


def test_exit_status_counts_even_without_a_code(tmp_path: Path) -> None:
    sleeps: list[float] = []
    script = fake_vboxmanage(tmp_path, 99, "VBoxManage: error: Machine 'vm' is not running\n")
    result = runner_for(tmp_path, script, sleeps).probe(
        Step(("controlvm", "vm", "pause"), "p", retry=False)
    )
    assert not result.ok and result.hresult is None and result.code == 1


def test_multiattach_40_error_is_not_retried(tmp_path: Path) -> None:
    text = (
        "VBoxManage: error: Cannot attach medium '/p.vdi' {1}: the media type 'MultiAttach' can "
        "only be attached to machines that were created with VirtualBox 4.0 or later\n"
        "VBoxManage: error: Details: code VBOX_E_INVALID_OBJECT_STATE (0x80bb0007)\n"
    )
    sleeps: list[float] = []
    result = runner_for(tmp_path, fake_vboxmanage(tmp_path, 99, text), sleeps).probe(
        Step(("storageattach",), "attach")
    )
    assert result.attempts == 1 and sleeps == []


def test_timeout_kills_a_hung_command(tmp_path: Path) -> None:
    script = tmp_path / "VBoxManage"
    script.write_text("#!/bin/sh\nexec sleep 30\n")
    script.chmod(0o755)
    sleeps: list[float] = []
    runner = runner_for(tmp_path, script, sleeps, timeout=0.5)
    started = time.monotonic()
    result = runner.probe(Step(("controlvm", "vm", "pause"), "pause", retry=False))
    assert time.monotonic() - started < 10
    assert result.timed_out and not result.ok and result.code == -182


def test_timeout_also_ends_what_vboxmanage_started(tmp_path: Path) -> None:
    """A child of VBoxManage that holds the output pipe ends with it (a process group here,
    a job object on Windows: hostos.spawn_tree), so the runner's read returns at once."""
    script = tmp_path / "VBoxManage"
    script.write_text("#!/bin/sh\nsleep 60 &\necho child $!\nwait\n")
    script.chmod(0o755)
    runner = runner_for(tmp_path, script, [], timeout=1.0)
    started = time.monotonic()
    result = runner.probe(Step(("startvm", "vm"), "start", retry=False))
    assert time.monotonic() - started < 5  # no wait for the pipe's 5 s grace
    assert result.timed_out and result.output.startswith("child ")
    child = int(result.output.split()[1])
    assert wait_for(lambda: not _running(child), timeout=10)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_missing_executable(tmp_path: Path) -> None:
    runner = VBoxManage(tmp_path, executable=str(tmp_path / "nope"))
    result = runner.probe(Step(("--version",), "version", retry=False))
    assert not result.ok and result.code == -161


def test_environment_keeps_path_and_uses_home(tmp_path: Path) -> None:
    env = vbox_environment(
        {"PATH": "/opt/x", "HOME": "/home/alice"},
        boinc_dir=Path("/var/lib/boinc"),
        system="Linux",
        is_file=lambda p: p == "/usr/bin/VBoxManage",
        is_dir=lambda p: p == "/home/alice/.config",
    )
    # extended, never replaced (docs/compatibility.md#start-up)
    assert env.env["PATH"] == "/opt/x:/usr/bin"
    assert env.executable == "/usr/bin/VBoxManage"
    assert env.profile_dir == Path("/home/alice/.config/VirtualBox")
    assert env.env["VBOX_USER_HOME"] == "/home/alice/.config/VirtualBox"


def test_environment_fallbacks() -> None:
    env = vbox_environment(
        {}, boinc_dir=Path("/b"), system="Linux", is_file=lambda p: False, is_dir=lambda p: False
    )
    assert "PATH" not in env.env and env.executable == "VBoxManage"
    assert env.profile_dir == Path("/b/projects/VirtualBox")
    given = vbox_environment(
        {"VBOX_USER_HOME": "/vb", "PATH": ""}, boinc_dir=Path("/b"), system="Darwin"
    )
    assert given.profile_dir == Path("/vb") and given.env["VBOX_USER_HOME"] == "/vb"


def test_environment_prefers_vboxmanage_already_on_path(tmp_path: Path) -> None:
    exe = tmp_path / "VBoxManage"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    env = vbox_environment(
        {"PATH": str(tmp_path), "HOME": str(tmp_path)},
        boinc_dir=tmp_path,
        system="Linux",
        is_file=lambda p: True,
    )
    assert env.executable == str(exe) and env.env["PATH"] == str(tmp_path)


# ---- the multiattach lock ----------------------------------------------------------------


def test_lock_excludes_a_second_holder(tmp_path: Path) -> None:
    parent = Path("/projects/x/parent.vdi")
    clock = FakeClock(start=0.0)
    first = MultiattachLock(parent, lock_dir=tmp_path)
    second = MultiattachLock(parent, lock_dir=tmp_path, timeout=10, clock=clock, sleep=clock.sleep)
    with first:
        with pytest.raises(BackendError) as info:
            second.acquire()
        assert info.value.code == -182
        assert clock.now >= 10
    second.acquire()  # free again
    assert second.held
    second.release()
    assert first.path.name == lock_name(parent) + ".lock"
    assert lock_name(parent).startswith("boinc_lock_") and len(lock_name(parent)) == 27


def test_lock_dies_with_a_crashed_holder(tmp_path: Path) -> None:
    parent = tmp_path / "parent.vdi"
    code = (
        "import sys, time; sys.path[:0] = sys.argv[1:2]\n"
        "from pathlib import Path\n"
        "from vmwrapper.hypervisor.virtualbox.lock import MultiattachLock\n"
        f"MultiattachLock(Path({str(parent)!r}), lock_dir=Path({str(tmp_path)!r})).acquire()\n"
        "print('held', flush=True); time.sleep(60)\n"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    holder = subprocess.Popen([sys.executable, "-c", code, src], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        blocked = MultiattachLock(parent, lock_dir=tmp_path, timeout=0, sleep=lambda s: None)
        with pytest.raises(BackendError):
            blocked.acquire()
        os.kill(holder.pid, signal.SIGKILL)  # a crashed wrapper
        holder.wait(timeout=10)
        with MultiattachLock(parent, lock_dir=tmp_path, timeout=5) as lock:
            assert lock.held
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
