"""Shared-dir trigger formats (pure), the heartbeat rule, and symlink-safe bounded reads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmwrapper.errors import InputError
from vmwrapper.outcome import ERR_FILE_MISSING, ERR_STAT, ERR_TIMEOUT
from vmwrapper.shared_dir import triggers as t
from vmwrapper.shared_dir.heartbeat import MISSING, UNREADABLE, HeartbeatWatch
from vmwrapper.shared_dir.watch import UNREADABLE_FRACTION, SharedDir, write_graphics_status


def test_completion_file_code_notice_message() -> None:
    trig = t.parse_completion("3\n1\nInput file is corrupt.\nSee the log.\n")
    assert trig == t.CompletionTrigger(3, True, "Input file is corrupt.\nSee the log.")
    assert t.parse_completion("") == t.CompletionTrigger(0, False, "")
    assert t.parse_completion("  -5 trailing\n0\n") == t.CompletionTrigger(-5, False, "")
    assert t.parse_completion("junk\n") == t.CompletionTrigger(0, False, "")  # atoi


def test_temporary_exit_file_and_its_default_reason() -> None:
    trig = t.parse_temporary_exit("600\n0\n")
    assert (trig.delay, trig.notice, trig.message) == (600, False, "")
    assert trig.reason == t.DEFAULT_TEMPORARY_EXIT_REASON
    assert t.parse_temporary_exit("30\n1\nwaiting for data\n").reason == "waiting for data"
    assert t.parse_temporary_exit("-4\n").delay == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.1\n0.2\n0.35\n", 0.35),
        ("0.5\nnot a number\n", 0.5),
        ("1.7\n", 1.0),
        ("-0.2\n", 0.0),
        ("2.5e-1", 0.25),
        ("", None),
        ("abc\n", None),
        ("0.4\nnan\n", 0.4),
    ],
)
def test_fraction_done_last_numeric_line_clamped(text: str, expected: float | None) -> None:
    assert t.parse_fraction_done(text) == expected


@settings(deadline=None)
@given(st.text(max_size=200))
def test_fraction_done_is_always_in_range(text: str) -> None:
    value = t.parse_fraction_done(text)
    assert value is None or 0.0 <= value <= 1.0


def test_cmdline_text_is_each_argument_and_a_space() -> None:
    assert t.cmdline_text(["vmwrapper", "--nthreads", "2"]) == "--nthreads 2 "
    assert t.cmdline_text(["vmwrapper"]) == ""


def test_graphics_status_layout() -> None:
    text = t.format_graphics_status(t.GraphicsStatus(10.0, 2.5, 3.0, 0.5, suspended=True))
    assert text.startswith("<graphics_status>\n    <updated_time>10.000000</updated_time>\n")
    assert "<fraction_done>0.500000</fraction_done>" in text
    assert (
        "        <suspended>1</suspended>\n" in text and "<abort_request>0</abort_request>" in text
    )


def test_heartbeat_first_check_passes_third_stale_fails() -> None:
    watch = HeartbeatWatch(600.0)
    assert watch.check_due(0.0)
    watch, code = watch.check(0.0, 100.0)
    assert code is None and not watch.check_due(199.0) and watch.check_due(200.0)
    watch, code = watch.check(200.0, 150.0)  # advanced
    assert code is None and watch.stale == 0
    watch, code = watch.check(400.0, 150.0)
    watch, code2 = watch.check(600.0, 150.0)
    assert code is None and code2 is None
    _, code3 = watch.check(800.0, 150.0)
    assert code3 == ERR_TIMEOUT


def test_heartbeat_missing_and_unreadable() -> None:
    assert HeartbeatWatch(600).check(0, MISSING)[1] == ERR_FILE_MISSING
    assert HeartbeatWatch(600).check(0, UNREADABLE)[1] == ERR_STAT


def test_reads_are_bounded_and_refuse_symlinks(tmp_path: Path) -> None:
    slot = tmp_path / "slot"
    (slot / "shared").mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    shared = SharedDir(slot, "shared")
    (slot / "shared" / "big").write_bytes(b"x" * (t.MAX_TRIGGER_BYTES + 100))
    os.symlink(secret, slot / "shared" / "link")
    data = shared.read("big")
    assert data is not None and len(data) == t.MAX_TRIGGER_BYTES
    assert shared.read("link") is None and not shared.exists("link")
    assert shared.read("absent") is None
    with pytest.raises(InputError):
        shared.file("../escape")
    with pytest.raises(InputError):
        shared.file("/etc/passwd")
    shared.remove("link")
    assert secret.exists() and not (slot / "shared" / "link").exists()


def test_symlinked_subdirectory_cannot_lead_out(tmp_path: Path) -> None:
    slot = tmp_path / "slot"
    (slot / "shared").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "done").write_text("0\n")
    os.symlink(outside, slot / "shared" / "sub")
    assert SharedDir(slot, "shared").read("sub/done") is None


def test_file_names_may_be_paths_under_the_shared_dir(tmp_path: Path) -> None:
    """<fraction_done_filename>results/progress</fraction_done_filename> is shared/results/
    progress to vboxwrapper; so are trigger files, the heartbeat and intermediate uploads."""
    slot = tmp_path / "slot"
    (slot / "shared" / "results").mkdir(parents=True)
    shared = SharedDir(slot, "shared")
    (slot / "shared" / "results" / "progress").write_text("0.5\n")
    (slot / "shared" / "results" / "done").write_text("0\n")
    assert shared.fraction_done("results/progress") == 0.5
    assert shared.exists("results/done") and shared.read("results/./done") == b"0\n"
    assert shared.present(["results/done", "results/absent"]) == ["results/done"]
    assert isinstance(shared.mtime("results/progress"), float)
    assert shared.read("results/../results/done") == b"0\n"  # '..' that stays inside
    for unsafe in ("results/../../escape", "../escape", "/etc/passwd"):
        with pytest.raises(InputError):
            shared.file(unsafe)
        assert shared.read(unsafe) is None and not shared.exists(unsafe)


def test_fraction_file_states(tmp_path: Path) -> None:
    slot = tmp_path
    (slot / "shared").mkdir()
    shared = SharedDir(slot, "shared")
    assert shared.fraction_done("progress") is None
    (slot / "shared" / "progress").write_text("0.1\n" * 1000 + "0.75\n")
    assert shared.fraction_done("progress") == 0.75
    (slot / "shared" / "progress").write_text("garbage\n")
    assert shared.fraction_done("progress") == UNREADABLE_FRACTION


def test_share_slot_dir_and_no_shared_dir_mean_the_slot(tmp_path: Path) -> None:
    assert SharedDir(tmp_path, ".").path == tmp_path.resolve()
    assert SharedDir(tmp_path, "").file("done") == tmp_path.resolve() / "done"  # never "/done"


def test_start_up_files(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    shared = SharedDir(tmp_path, "shared")
    src = tmp_path / "input.dat"
    src.write_text("data")
    assert shared.copy_in(src, "input.dat")
    src.write_text("changed")
    assert not shared.copy_in(src, "input.dat")  # only if absent
    assert (tmp_path / "shared" / "input.dat").read_text() == "data"
    shared.write_cmdline(["vmwrapper", "--trickle", "60"])
    assert (tmp_path / "shared" / "cmdline").read_text() == "--trickle 60 "
    shared.make_sporadic_files()
    assert (tmp_path / "shared" / "ac").exists() and (tmp_path / "shared" / "ca").exists()


def test_copy_out_replaces_atomically_and_refuses_links(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    shared = SharedDir(tmp_path, "shared")
    (tmp_path / "shared" / "result").write_text("partial result")
    dest = tmp_path / "project_result"
    shared.copy_out("result", dest)
    assert dest.read_text() == "partial result"
    os.symlink(tmp_path / "project_result", tmp_path / "shared" / "evil")
    with pytest.raises(OSError):
        shared.copy_out("evil", tmp_path / "x")


def test_graphics_status_file(tmp_path: Path) -> None:
    write_graphics_status(tmp_path, t.GraphicsStatus(1.0, 2.0, 3.0, 0.25))
    assert "<elapsed_time>3.000000</elapsed_time>" in (tmp_path / "graphics_status.xml").read_text()


def test_remove_symlinks_deletes_guest_links_only_and_never_follows_them(tmp_path: Path) -> None:
    # A guest that mounts the share itself can plant symlinks named like outputs; the client
    # would follow them when it collects the outputs (issue 9, hostile guests).
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host file")
    slot = tmp_path / "slot"
    (slot / "shared" / "sub").mkdir(parents=True)
    shared = SharedDir(slot, "shared")
    (slot / "shared" / "real").write_text("guest output")
    (slot / "shared" / "result").symlink_to(outside / "secret")
    (slot / "shared" / "up").symlink_to("/")
    (slot / "shared" / "sub" / "out").symlink_to("../../../outside/secret")
    (slot / "shared" / "dir_link").symlink_to(outside, target_is_directory=True)
    removed = shared.remove_symlinks()
    assert sorted(removed) == ["dir_link", "result", os.path.join("sub", "out"), "up"]
    assert sorted(p.name for p in (slot / "shared").rglob("*")) == ["real", "sub"]
    assert (outside / "secret").read_text() == "host file"  # the targets are untouched


def test_remove_symlinks_looks_at_a_bounded_number_of_entries(tmp_path: Path) -> None:
    slot = tmp_path / "slot"
    (slot / "shared").mkdir(parents=True)
    for i in range(50):
        (slot / "shared" / f"f{i:02d}").write_text("x")
    (slot / "shared" / "zlink").symlink_to("/etc/passwd")
    assert SharedDir(slot, "shared").remove_symlinks(limit=10) in ([], ["zlink"])
    assert len(SharedDir(slot, "shared").remove_symlinks()) <= 1
    assert not (slot / "shared" / "zlink").is_symlink()


def test_a_guest_exit_code_beyond_c_int_is_cut_to_its_end() -> None:
    # A hostile completion file (issue 9): the finish file must hold a number C can read.
    assert t.parse_completion("99999999999999999999999\n0\n").exit_code == 2**31 - 1
    assert t.parse_completion("-99999999999999999999999\n").exit_code == -(2**31)
    assert t.parse_temporary_exit("1" * 40 + "\n0\n").delay == 2**31 - 1


# -- echoes of consumed trigger files (docs/compatibility.md#runtime) ----

T0 = 1_800_000_000 * 10**9


def consumed(text: str, elapsed: float, mtime_ns: int | None = T0) -> t.ConsumedTrigger:
    return t.ConsumedTrigger(t.content_digest(text), elapsed, mtime_ns)


def test_the_same_version_again_is_an_echo_however_late() -> None:
    last = consumed("<n>1</n>", 100.0)
    assert t.is_echo(last, "<n>1</n>", 101.0, T0)
    assert t.is_echo(last, "<n>1</n>", 5000.0, T0)  # the agent's final push


def test_a_new_write_of_the_same_text_is_a_new_event() -> None:
    last = consumed("<n>1</n>", 100.0)
    assert not t.is_echo(last, "<n>1</n>", 101.0, T0 + 1_000_000)
    assert not t.is_echo(last, "<n>1</n>", 100.0, T0 + 1)  # elapsed paused, new time
    assert not t.is_echo(last, "<n>2</n>", 101.0, T0)
    assert not t.is_echo(None, "<n>1</n>", 101.0, T0)


def test_a_restore_that_replays_the_write_is_an_echo() -> None:
    last = consumed("<n>1</n>", 100.0)
    assert t.is_echo(last, "<n>1</n>", 90.0, T0 + 10**9)  # elapsed rewound


def test_records_without_times_keep_the_window_rule() -> None:
    last = consumed("<n>1</n>", 100.0, None)
    assert t.is_echo(last, "<n>1</n>", 105.0, T0)
    assert not t.is_echo(last, "<n>1</n>", 100.0 + t.ECHO_WINDOW + 1, T0)
