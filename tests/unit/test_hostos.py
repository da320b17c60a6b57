"""vmwrapper.hostos on Linux, and its pure Windows rules (winnames) from BOINC's sources
(docs/compatibility.md#windows-hosts). The Windows I/O modules run under Wine in
tests/windows/test_hostos_windows.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from vmwrapper import hostos
from vmwrapper.boinc.init_data import AppInitData, format_init_data, parse_init_data
from vmwrapper.hostos import locks, winnames

# -- winnames: the Windows client's names and rules ---------------------------------------------


def test_segment_names_client_and_app_agree() -> None:
    # the client creates shm_boinc_N and writes boinc_N; the API opens Global\ first
    assert winnames.comm_obj_name(0) == "boinc_0"
    assert winnames.client_mapping_name(7) == "shm_boinc_7"
    assert winnames.client_mapping_name(7, sandboxed=True) == "Global\\shm_boinc_7"
    assert winnames.app_mapping_names("boinc_7") == ("Global\\shm_boinc_7", "shm_boinc_7")
    assert winnames.app_mapping_names("") == ()  # no name: the app runs standalone


@pytest.mark.parametrize("number", [-1, 1024])
def test_segment_numbers_stop_where_the_client_gives_up(number: int) -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.1023"):
        winnames.comm_obj_name(number)


def test_client_command_line_is_not_quoted_and_keeps_its_spaces() -> None:
    exe = r"projects\example.org\vmwrapper_1.exe"
    assert winnames.client_command_line(exe, "", "--nthreads 2") == f"{exe}  --nthreads 2"
    assert winnames.client_command_line(exe, "--memory_size_mb 512") == (
        f"{exe} --memory_size_mb 512 "
    )


def test_priority_classes() -> None:
    assert winnames.priority_class(high_priority=True) == winnames.BELOW_NORMAL_PRIORITY_CLASS
    assert winnames.priority_class(high_priority=False) == winnames.IDLE_PRIORITY_CLASS
    assert winnames.nice_of_priority_class(winnames.IDLE_PRIORITY_CLASS) == 19
    assert winnames.nice_of_priority_class(winnames.BELOW_NORMAL_PRIORITY_CLASS) == 10
    assert winnames.nice_of_priority_class(winnames.NORMAL_PRIORITY_CLASS) == 0
    assert winnames.nice_of_priority_class(0x1234) == 0


@pytest.mark.parametrize(
    ("nice", "priority_class"),
    [
        (19, winnames.IDLE_PRIORITY_CLASS),
        (15, winnames.IDLE_PRIORITY_CLASS),  # nearer 19 than 10
        (10, winnames.BELOW_NORMAL_PRIORITY_CLASS),
        (5, winnames.BELOW_NORMAL_PRIORITY_CLASS),  # a tie: the lower priority
        (0, winnames.NORMAL_PRIORITY_CLASS),
        (-5, winnames.ABOVE_NORMAL_PRIORITY_CLASS),
        (-20, winnames.HIGH_PRIORITY_CLASS),  # never realtime
    ],
)
def test_the_vms_nice_as_a_priority_class(nice: int, priority_class: int) -> None:
    assert winnames.priority_class_of_nice(nice) == priority_class


def test_vboxmanage_registry_first_then_the_installers_variables() -> None:
    env = {
        "VBOX_MSI_INSTALL_PATH": "C:\\Program Files\\Oracle\\VirtualBox\\",
        "VBOX_INSTALL_PATH": "D:\\VBox",
    }
    assert winnames.vboxmanage_candidates('"E:\\Oracle VB"', env) == (
        "E:\\Oracle VB\\VBoxManage.exe",
        "C:\\Program Files\\Oracle\\VirtualBox\\VBoxManage.exe",
        "D:\\VBox\\VBoxManage.exe",
    )
    # the same directory twice (case and trailing backslash differ) is looked at once
    same = {"VBOX_MSI_INSTALL_PATH": "c:\\program files\\oracle\\virtualbox"}
    assert winnames.vboxmanage_candidates("C:\\Program Files\\Oracle\\VirtualBox\\", same) == (
        "C:\\Program Files\\Oracle\\VirtualBox\\VBoxManage.exe",
    )
    present = {"D:\\VBox\\VBoxManage.exe"}
    assert winnames.find_vboxmanage("", env, present.__contains__) == "D:\\VBox\\VBoxManage.exe"
    assert winnames.find_vboxmanage("", {}, present.__contains__) is None


@pytest.mark.parametrize(
    ("listed", "boots", "accel", "why"),
    [
        (False, None, "tcg", "has no WHPX"),
        (True, True, "whpx", "boots a guest"),
        (True, None, "tcg", "not probed"),
        (True, False, "tcg", "Windows Hypervisor Platform"),
    ],
)
def test_whpx_only_when_a_probe_boot_worked(
    listed: bool, boots: bool | None, accel: str, why: str
) -> None:
    choice = winnames.choose_windows_accel(whpx_listed=listed, whpx_boots=boots)
    assert choice.name == accel and why in choice.reason


def test_init_data_carries_the_windows_segment_name_instead_of_shm_key() -> None:
    text = format_init_data(AppInitData(result_name="r_0", comm_obj_name="boinc_3"))
    assert "<comm_obj_name>boinc_3</comm_obj_name>\n" in text
    assert "<shm_key>" not in text  # the Windows client writes one or the other
    assert parse_init_data(text).comm_obj_name == "boinc_3"
    linux = format_init_data(AppInitData(result_name="r_0", shm_key=-1))
    assert "comm_obj_name" not in linux and "<shm_key>-1</shm_key>" in linux


# -- hostos on this (POSIX) host ------------------------------------------------------------------


def test_posix_host_facts(tmp_path: Path) -> None:
    assert not hostos.WINDOWS
    assert hostos.NOFOLLOW == os.O_NOFOLLOW and hostos.NONBLOCK == os.O_NONBLOCK
    assert hostos.own_nice() == os.getpriority(os.PRIO_PROCESS, 0)
    hostos.sync_directory(tmp_path)
    hostos.redirect_stderr(tmp_path)  # the POSIX client redirects stderr itself
    assert not (tmp_path / "stderr.txt").exists()


def test_posix_vm_process_facts() -> None:
    assert hostos.UNIX_SOCKETS and not hostos.PRIORITY_CLASSES
    assert hostos.NO_CONSOLE_WINDOW == 0  # Popen refuses creationflags on POSIX


def test_stop_and_continue_a_process() -> None:
    """The duty-cycle CPU cap's stop/continue (SIGSTOP/SIGCONT here)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        proc = psutil.Process(child.pid)
        assert hostos.stop_process(child.pid)
        assert _within(5.0, lambda: proc.status() == psutil.STATUS_STOPPED)  # signals are async
        assert hostos.continue_process(child.pid)
        assert _within(5.0, lambda: proc.status() != psutil.STATUS_STOPPED)
        assert not hostos.end_with_this_process(child.pid)  # POSIX: the next start's job
    finally:
        child.kill()
        child.wait()
    assert not hostos.stop_process(child.pid)  # gone


def _within(seconds: float, condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_kill_process_ends_a_process_and_shrugs_at_a_gone_one() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    hostos.kill_process(child.pid)
    assert child.wait(timeout=10) == -9  # SIGKILL here; TerminateProcess on Windows
    hostos.kill_process(child.pid)  # gone (reaped): nothing raised


def test_a_tree_is_a_session_on_posix_and_a_job_started_suspended_on_windows() -> None:
    """What makes a program (VBoxManage) the head of a tree one kill ends: on Windows no
    console window, and suspended until it is in its job object (none of its children can
    escape the job); never a POSIX session there, nor Windows flags here."""
    windows = hostos.tree_start_args(windows=True)
    assert windows == {"creationflags": winnames.CREATE_NO_WINDOW | winnames.CREATE_SUSPENDED}
    assert winnames.CREATE_SUSPENDED == 0x4  # winbase.h
    assert hostos.tree_start_args(windows=False) == {"start_new_session": True}


def test_kill_tree_ends_what_the_program_started() -> None:
    """A grandchild that holds the output pipe ends with the tree: the caller's read ends."""
    proc = hostos.spawn_tree(
        ["sh", "-c", "sleep 600 & echo $!; wait"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        grandchild = psutil.Process(int(proc.stdout.readline()))
        hostos.kill_tree(proc)
        out, _ = proc.communicate(timeout=10)  # EOF: nobody holds the pipe any more
        assert out == b""
        assert _within(10.0, lambda: not grandchild.is_running() or _zombie(grandchild))
        hostos.kill_tree(proc)  # again: the group is gone, nothing raised
    finally:
        hostos.release_tree(proc)


def _zombie(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_pid_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the pid is gone
    assert hostos.pid_alive(os.getpid())
    assert not hostos.pid_alive(child.pid)


HOLD = """
import sys, time
from pathlib import Path
from vmwrapper.hostos import locks
fd = locks.lock_boinc_file(Path(sys.argv[1]))
print("locked", flush=True)
sys.stdin.read()
"""


def test_the_boinc_lock_excludes_another_process(tmp_path: Path) -> None:
    path = tmp_path / "boinc_lockfile"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        assert locks.boinc_file_held(path)
        with pytest.raises(BlockingIOError):
            locks.lock_boinc_file(path)
    finally:
        holder.communicate("")
    assert not locks.boinc_file_held(path)
    fd = locks.lock_boinc_file(path)
    locks.release_boinc_file(fd, path)
    assert not path.exists()  # released and deleted, as boinc_exit does


def test_advisory_locks_exclude_each_other(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    with path.open("a") as first, path.open("a") as second:  # two open files: two owners
        assert locks.try_lock(first.fileno())
        assert not locks.try_lock(second.fileno())
        locks.unlock(first.fileno())
        locks.lock(second.fileno())
        assert not locks.try_lock(first.fileno())
        locks.unlock(second.fileno())


# -- starting a program: a transient CreateProcess failure is tried again ----------------------


def _failing_start(failures: list[int | None]) -> Callable[[], str]:
    """A start that raises OSError with each of ``failures``' winerror in turn, then succeeds."""

    def start() -> str:
        if failures:
            exc = OSError("CreateProcess failed")
            exc.winerror = failures.pop(0)  # type: ignore[attr-defined]  # as on Windows
            raise exc
        return "started"

    return start


def test_a_transient_start_failure_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostos, "SPAWN_RETRY_WAIT", 0.001)
    failures: list[int | None] = [1359, 1359]  # Wine's ERROR_INTERNAL_ERROR, twice
    assert hostos._retry_start(_failing_start(failures)) == "started"
    assert failures == []


def test_a_start_that_keeps_failing_raises_after_the_last_try(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hostos, "SPAWN_RETRY_WAIT", 0.001)
    failures: list[int | None] = [1359] * hostos.SPAWN_TRIES
    with pytest.raises(OSError, match="CreateProcess failed"):
        hostos._retry_start(_failing_start(failures))
    assert failures == []  # every try was made


@pytest.mark.parametrize("winerror", [None, 2, 5])  # POSIX; file not found; access denied
def test_other_start_failures_are_not_retried(winerror: int | None) -> None:
    failures: list[int | None] = [winerror, None]
    with pytest.raises(OSError):
        hostos._retry_start(_failing_start(failures))
    assert len(failures) == 1  # one try only


def test_spawn_and_run_program_start_a_real_program() -> None:
    done = hostos.run_program([sys.executable, "-c", "print('hi')"], capture_output=True)
    assert done.returncode == 0 and done.stdout.strip() == b"hi"
    with hostos.spawn([sys.executable, "-c", "raise SystemExit(3)"]) as proc:
        assert proc.wait(timeout=30) == 3
