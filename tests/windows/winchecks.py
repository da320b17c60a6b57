"""Checks of vmwrapper.hostos that must run as Windows Python (under Wine here): each prints
one JSON object for tests/windows/test_hostos_windows.py.

    python.exe winchecks.py CHECK [ARG]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# The embeddable Python ignores PYTHONPATH: import the package from this checkout's src/.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from vmwrapper import hostos
from vmwrapper.boinc import files
from vmwrapper.boinc.messages import Channel
from vmwrapper.boinc.shmem import Segment
from vmwrapper.hostos import locks

CHILD_PRELUDE = f"import sys; sys.path.insert(0, {sys.path[0]!r})\n"


def child(code: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", CHILD_PRELUDE + code, *args],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return (done.stdout + done.stderr).strip()


def check_processes() -> dict[str, Any]:
    gone = subprocess.Popen([sys.executable, "-c", "pass"], stdin=subprocess.PIPE)
    gone.communicate()
    hung = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], stdin=subprocess.PIPE
    )
    hostos.kill_process(hung.pid)  # no SIGKILL on Windows: TerminateProcess
    return {
        "killed_exit_code": hung.wait(timeout=30),
        "self_alive": hostos.pid_alive(os.getpid()),
        "exited_alive": hostos.pid_alive(gone.pid),
        "own_nice": hostos.own_nice(),
        "nofollow": hostos.NOFOLLOW,
    }


def check_lockfile(slot: str) -> dict[str, Any]:
    lock = files.Lockfile(Path(slot))
    lock.acquire()
    other = child(
        "from pathlib import Path\n"
        "from vmwrapper.boinc import files\n"
        "try:\n"
        "    files.Lockfile(Path(sys.argv[1])).acquire(); print('acquired')\n"
        "except files.LockfileBusy as exc: print('busy', exc)\n",
        slot,
    )
    held = locks.boinc_file_held(lock.path)
    lock.release()
    return {"other": other, "held_seen": held, "exists_after_release": lock.path.exists()}


def check_segment() -> dict[str, Any]:
    created = [Segment.create_named(n) for n in range(2)]
    numbers = [n for n, seg in enumerate(created) if seg is not None]
    seg = created[numbers[0]]
    assert seg is not None
    seg.send(Channel.HEARTBEAT, "<heartbeat/>")
    # a second client cannot take a number in use: the client moves on to the next one
    taken_again = Segment.create_named(numbers[0]) is not None
    reply = child(
        "from vmwrapper.boinc.shmem import Segment\n"
        "from vmwrapper.boinc.messages import Channel\n"
        "seg = Segment.attach_named(sys.argv[1])\n"
        "print(seg.receive(Channel.HEARTBEAT))\n"
        "seg.send(Channel.APP_STATUS, '<fraction_done>0.5</fraction_done>')\n",
        f"boinc_{numbers[0]}",
    )
    status = seg.receive(Channel.APP_STATUS)
    missing = child(
        "from vmwrapper.boinc.shmem import Segment\nprint(Segment.attach_named('boinc_999'))\n"
    )
    return {
        "numbers": numbers,
        "taken_again": taken_again,
        "app_read": reply,
        "client_read": status,
        "missing": missing,
    }


def check_vboxmanage(boinc_dir: str) -> dict[str, Any]:
    from vmwrapper.hypervisor.virtualbox.runner import vbox_environment

    env = {"PATH": "C:\\windows\\system32"}
    found = vbox_environment(env, boinc_dir=Path(boinc_dir))
    return {"executable": found.executable, "path": found.env["PATH"]}


def check_advisory_locks(path: str) -> dict[str, Any]:
    with open(path, "a") as fh:
        mine = locks.try_lock(fh.fileno())
        other = child(
            "from vmwrapper.hostos import locks\n"
            "fh = open(sys.argv[1], 'a')\n"
            "print(locks.try_lock(fh.fileno()))\n",
            path,
        )
        locks.unlock(fh.fileno())
    after = child(
        "from vmwrapper.hostos import locks\n"
        "fh = open(sys.argv[1], 'a')\n"
        "print(locks.try_lock(fh.fileno()))\n",
        path,
    )
    return {"mine": mine, "other_while_held": other, "other_after": after}


def check_vbox_runner_tree(trace_dir: str) -> dict[str, Any]:
    """The VBoxManage runner's timeout on Windows: the command (a Windows Python standing in
    for VBoxManage.exe, ``python -q -c CODE``: ``-q`` is the runner's first argument and
    Python's "quiet") starts a child that holds the output pipe and hangs; the runner's kill
    of the tree (a job object) must end both, so the runner returns at once."""
    from vmwrapper.hypervisor.virtualbox.commands import Step
    from vmwrapper.hypervisor.virtualbox.runner import VBoxManage

    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],"
        " stdin=subprocess.PIPE)\n"
        "print('child', child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    runner = VBoxManage(Path(trace_dir), executable=sys.executable, timeout=15)
    normal = runner.probe(Step(("-c", "print('ok')"), "normal", retry=False))
    started = time.monotonic()
    result = runner.probe(Step(("-c", code), "hang", retry=False))
    took = time.monotonic() - started
    words = result.output.split()
    child = int(words[1]) if len(words) > 1 and words[0] == "child" else None
    deadline = time.monotonic() + 10
    while child is not None and hostos.pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    return {
        "normal": [normal.exit_code, normal.output.strip()],
        "timed_out": result.timed_out,
        "output": result.output,
        "took": took,
        "child_alive": None if child is None else hostos.pid_alive(child),
    }


CHECKS = {
    "processes": check_processes,
    "lockfile": check_lockfile,
    "segment": check_segment,
    "vboxmanage": check_vboxmanage,
    "advisory_locks": check_advisory_locks,
    "vbox_runner_tree": check_vbox_runner_tree,
}

if __name__ == "__main__":
    print(json.dumps(CHECKS[sys.argv[1]](*sys.argv[2:])))  # type: ignore[operator]
