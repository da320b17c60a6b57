"""The log handler: vboxwrapper's stderr line format and events.jsonl."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from vmwrapper.supervisor import events


def test_stderr_line_format_is_vboxwrappers() -> None:
    record = logging.LogRecord(
        "vmwrapper.x", logging.INFO, "f", 1, "VM Completion File Detected.", None, None
    )
    record.created = time.mktime((2026, 11, 27, 6, 15, 22, 0, 0, -1))
    record.process = 4242
    line = events.BoincStderrFormatter().format(record)
    assert line == "2026-11-27 06:15:22 (4242): VM Completion File Detected."


def test_install_writes_both_outputs_with_event_codes(tmp_path: Path) -> None:
    stream = io.StringIO()
    uninstall = events.install(tmp_path, stream=stream)
    try:
        log = logging.getLogger("vmwrapper.test")
        log.info(
            "Checkpoint completed.", extra={"event": events.CHECKPOINT, "snapshot": "boinc_600"}
        )
        log.warning("plain line")
    finally:
        uninstall()
    lines = stream.getvalue().splitlines()
    assert re.fullmatch(
        rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d \({os.getpid()}\): Checkpoint completed\.", lines[0]
    )
    got = events.read_events(tmp_path)
    assert [e["event"] for e in got] == ["checkpoint", "log"]
    assert got[0]["snapshot"] == "boinc_600" and got[0]["level"] == "info"
    assert got[0]["message"] == "Checkpoint completed." and got[0]["pid"] == os.getpid()
    # uninstalled: nothing more is written
    logging.getLogger("vmwrapper.test").info("after")
    assert len(events.read_events(tmp_path)) == 2


def test_event_codes_are_unique() -> None:
    codes = [
        v
        for k, v in vars(events).items()
        if k.isupper() and isinstance(v, str) and k != "EVENTS_FILE"
    ]
    assert len(codes) == len(set(codes))


def test_events_file_on_a_full_disk_never_stops_the_wrapper(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # issue 9 (full slot disk): /dev/full fails every write with ENOSPC; neither logging
    # nor closing the handler may raise, or the wrapper dies with a traceback's exit code 1;
    # and no traceback goes to stderr, whose last bytes on that disk are for the outcome
    handler = events.JsonLinesHandler(Path("/dev/full"))
    record = logging.LogRecord("vmwrapper.x", logging.INFO, __file__, 1, "hello", None, None)
    assert logging.raiseExceptions  # as in the wrapper: logging would print its errors
    handler.emit(record)
    handler.emit(record)
    handler.close()
    assert handler.dropped == 2
    assert capsys.readouterr().err == ""


def test_a_line_cut_by_a_full_disk_is_skipped_and_the_next_ones_read(tmp_path: Path) -> None:
    path = tmp_path / events.EVENTS_FILE
    path.write_text('{"event": "a", "ts": 1}\n{"event": "cut", "t')  # the disk filled up here
    handler = events.JsonLinesHandler(path)
    handler._cut = True  # as emit() leaves it after a short write
    handler.emit(logging.LogRecord("vmwrapper.x", logging.INFO, __file__, 1, "b", None, None))
    handler.close()
    assert [e["event"] for e in events.read_events(tmp_path)] == ["a", "log"]


def test_uninstall_gives_the_logger_back_as_it_was(tmp_path: Path) -> None:
    logger = logging.getLogger("vmwrapper")
    before = (logger.level, logger.propagate, list(logger.handlers))
    uninstall = events.install(tmp_path, stream=io.StringIO())
    assert logger.propagate is False  # the wrapper's lines go to stderr once, not twice
    uninstall()
    assert (logger.level, logger.propagate, list(logger.handlers)) == before


# -- the guest log cap (docs/compatibility.md#runtime) ----


def guest(log: logging.Logger, text: str) -> None:
    log.info("Guest Log: %s", text, extra={"event": events.GUEST_LOG})


def test_cap_passes_the_head_holds_the_tail_and_counts_the_rest() -> None:
    cap = events.GuestLogCap(limit=100)  # tail = 50 bytes, head = 50
    assert [cap.admit(f"h{i:08d}\n") for i in range(5)] == [True] * 5  # 5 x 10 bytes
    assert [cap.admit(f"t{i:08d}\n") for i in range(20)] == [False] * 20
    pending = cap.take_held()
    assert pending is not None
    note, lines = pending
    assert lines == [f"t{i:08d}\n" for i in range(15, 20)]  # the last 50 bytes
    assert "15 guest lines (150 bytes) dropped" in note
    assert cap.take_held() is None  # nothing pending any more
    assert cap.admit("late line\n") is False  # the budget is spent: counted, not written
    assert cap.take_held() == (
        "Guest log limit reached: 1 guest lines (10 bytes) dropped; "
        "the guest's last 0 lines follow.",
        [],
    )


def test_cap_counts_what_earlier_runs_wrote() -> None:
    cap = events.GuestLogCap(limit=100, used=80)  # 20 bytes left: head 10, tail 10
    assert cap.admit("123456789\n") is True
    assert cap.admit("abcdefghi\n") is False
    assert events.GuestLogCap(limit=100, used=500).admit("x\n") is False


def test_a_held_line_is_never_overtaken() -> None:
    cap = events.GuestLogCap(limit=60)  # head 30
    assert cap.admit("a" * 25 + "\n") is True
    assert cap.admit("b" * 9 + "\n") is False  # does not fit the 4 bytes left: held
    assert cap.admit("c\n") is False  # would fit, but must not come before the held line


def logged_guest_lines(
    tmp_path: Path, limit: int, count: int, then: Callable[[logging.Logger], None]
) -> list[str]:
    """stderr's lines after ``count`` guest lines and ``then``, with the handlers closed."""
    stream = io.StringIO()
    uninstall = events.install(tmp_path, stream=stream, guest_log_limit=limit)
    log = logging.getLogger("vmwrapper.test")
    try:
        for i in range(count):
            guest(log, f"line {i:04d}")
        then(log)
    finally:
        uninstall()
    return stream.getvalue().splitlines()


def test_stderr_and_events_keep_head_and_tail_around_a_note(tmp_path: Path) -> None:
    def wrapper_lines(log: logging.Logger) -> None:
        log.info("Checkpoint completed.", extra={"event": events.CHECKPOINT})
        log.info(
            "VM state change detected.",
            extra={"event": events.VM_STATE, "old": "running", "new": "poweredoff"},
        )
        log.info("Outcome: Finish (status 0)", extra={"event": events.OUTCOME})

    lines = logged_guest_lines(tmp_path, 4096, 400, wrapper_lines)
    guest_lines = [line for line in lines if "Guest Log:" in line]
    assert sum(len(line) + 1 for line in guest_lines) <= 4096
    assert guest_lines[0].endswith("line 0000") and guest_lines[-1].endswith("line 0399")
    dropped = 400 - len(guest_lines)
    assert dropped > 300
    note = next(i for i, line in enumerate(lines) if "Guest log limit reached" in line)
    assert f"{dropped} guest lines" in lines[note]
    # the wrapper's line during the run stays where it happened; the held tail comes before
    # the VM's state change, as the guest's last lines always do
    assert lines.index(next(x for x in lines if "Checkpoint completed." in x)) < note
    assert lines[-2].endswith("VM state change detected.")
    assert lines[-3].endswith("line 0399")
    recorded = events.read_events(tmp_path)
    assert sum(len(json.dumps(e)) + 1 for e in recorded if e["event"] == "guest_log") <= 4096
    kinds = [e["event"] for e in recorded]
    assert kinds.count(events.GUEST_LOG_DROPPED) == 1 and kinds[-1] == events.OUTCOME
    assert [e for e in recorded if e["event"] == "guest_log"][-1]["message"].endswith("0399")


def test_held_lines_are_written_when_the_handlers_close(tmp_path: Path) -> None:
    # a run that ends without the VM going down (killed wrapper aside)
    lines = logged_guest_lines(tmp_path, 1000, 50, lambda log: None)
    assert lines[-1].endswith("line 0049")
    assert events.read_events(tmp_path)[-1]["message"].endswith("line 0049")
