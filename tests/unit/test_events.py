"""The log handler: vboxwrapper's stderr line format and events.jsonl."""

from __future__ import annotations

import io
import logging
import os
import re
import time
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
