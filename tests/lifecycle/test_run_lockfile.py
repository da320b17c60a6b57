"""A second wrapper in a locked slot postpones itself (600 s, with a reason) as the API does."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmwrapper.boinc import files
from vmwrapper.boinc.app import AppClient
from vmwrapper.cli.run import LOCK_BUSY_DELAY, conclude, run_argv
from vmwrapper.outcome import Finish, TemporaryExit

HOLDER = """
import sys, time
from pathlib import Path
from vmwrapper.boinc.files import Lockfile
lock = Lockfile(Path(sys.argv[1]))
lock.acquire()
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture
def locked_slot(tmp_path: Path) -> Iterator[Path]:
    """A slot whose boinc_lockfile is held by another process (POSIX locks are per process)."""
    (tmp_path / "vbox_job.xml").write_text("<vbox_job></vbox_job>")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    yield tmp_path
    holder.kill()
    holder.wait()


def test_run_in_a_locked_slot_is_a_temporary_exit(
    locked_slot: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_attach = AppClient.attach.__func__  # type: ignore[attr-defined]

    def quick_attach(cls: type[AppClient], slot_dir: Path, /, **kw: object) -> AppClient:
        kw["lock_wait"] = 0.2  # the API waits 35 s; the mapping is what is tested here
        return real_attach(cls, slot_dir, **kw)  # type: ignore[no-any-return]

    monkeypatch.setattr(AppClient, "attach", classmethod(quick_attach))
    monkeypatch.chdir(locked_slot)
    started = time.monotonic()
    assert run_argv(["--backend", "fake"]) == 0
    assert time.monotonic() - started < 10
    request = files.read_temporary_exit_file(locked_slot)
    assert request is not None
    assert request.delay == LOCK_BUSY_DELAY and "boinc_lockfile" in request.reason


def test_conclude_writes_the_file_even_when_the_slot_is_locked(locked_slot: Path) -> None:
    assert conclude(Finish(206, "bad option"), locked_slot) == 206
    assert files.read_finish_file(locked_slot) == Finish(206, "bad option")
    assert conclude(TemporaryExit(60, "later"), locked_slot) == 0
    request = files.read_temporary_exit_file(locked_slot)
    assert request is not None and request.delay == 60 and request.reason == "later"


class _FullDiskClient:
    """A client whose slot is on a full disk: writing the outcome file fails."""

    def write_outcome(self, outcome: object) -> None:
        raise OSError(28, "No space left on device")


def test_conclude_on_a_full_disk_still_exits_so_the_client_retries(tmp_path: Path) -> None:
    # issue 9 (full slot disk): a temporary exit without its file exits 0 (the client restarts
    # the task), not with a traceback's 1 (the client would fail it)
    assert conclude(TemporaryExit(300, "snapshot failed"), tmp_path, _FullDiskClient()) == 0
    assert conclude(Finish(194, "VM crashed"), tmp_path, _FullDiskClient()) == 194
