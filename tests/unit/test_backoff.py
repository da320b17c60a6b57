"""Error classes and the persisted, bounded back-off."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from vmwrapper.errors import (
    BackendError,
    CheckpointError,
    HostNotReady,
    ImageError,
    VmStartError,
)
from vmwrapper.outcome import MAX_TEMPORARY_EXIT_DELAY
from vmwrapper.supervisor import backoff
from vmwrapper.supervisor.backoff import ErrorClass


@pytest.mark.parametrize(
    ("exc", "error_class", "code"),
    [
        (VmStartError("qemu failed to start"), ErrorClass.TRANSIENT, None),
        (CheckpointError("snapshot failed", code=-148), ErrorClass.TRANSIENT, None),
        (BackendError("lock held"), ErrorClass.TRANSIENT, None),
        (OSError("ENOMEM"), ErrorClass.TRANSIENT, None),
        (HostNotReady("no VT-x"), ErrorClass.HOST_PROBLEM, None),
        (HostNotReady("ERR_CPU_VM_EXTENSIONS_DISABLED", code=-148), ErrorClass.HOST_PROBLEM, -148),
        (BackendError("image unreadable", code=-108), ErrorClass.JOB_BUG, -108),
        (ImageError("bad image"), ErrorClass.JOB_BUG, -148),
        (ValueError("bug"), ErrorClass.JOB_BUG, -148),
    ],
)
def test_classify(exc: BaseException, error_class: ErrorClass, code: int | None) -> None:
    failure = backoff.classify(exc)
    assert failure.error_class is error_class
    if code is not None:
        assert failure.code == code
    assert failure.final == (isinstance(exc, HostNotReady) and code is not None)


def test_delay_doubles_from_minutes_to_a_cap_below_a_day() -> None:
    delays = [backoff.transient_delay(n) for n in range(1, 12)]
    assert delays[:4] == [300.0, 600.0, 1200.0, 2400.0]
    assert delays[-1] == backoff.MAX_DELAY < MAX_TEMPORARY_EXIT_DELAY
    assert all(a <= b for a, b in itertools.pairwise(delays))
    assert backoff.transient_delay(10_000) == backoff.MAX_DELAY


def test_state_persists_across_runs_and_resets(tmp_path: Path) -> None:
    assert backoff.load(tmp_path).next_delay() == 300.0
    backoff.save(tmp_path, backoff.load(tmp_path).bumped("qemu failed"))
    backoff.save(tmp_path, backoff.load(tmp_path).bumped("qemu failed again"))
    state = backoff.load(tmp_path)
    assert state == backoff.BackoffState(2, "qemu failed again")
    assert state.next_delay() == 1200.0
    backoff.reset(tmp_path)
    backoff.reset(tmp_path)  # idempotent
    assert backoff.load(tmp_path) == backoff.BackoffState()


def test_damaged_state_file_counts_as_no_failures(tmp_path: Path) -> None:
    (tmp_path / backoff.BACKOFF_FILE).write_text("{not json")
    assert backoff.load(tmp_path) == backoff.BackoffState()
