"""The protocol's files in the slot: exact contents as the API writes them and as the client
reads them (docs/compatibility.md#files-in-the-slot); link files against the real client's golden
slot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmwrapper.boinc import files
from vmwrapper.boinc.files import TemporaryExitRequest, Trickle
from vmwrapper.errors import ProtocolError
from vmwrapper.outcome import Finish, TemporaryExit

GOLDEN_COPY = Path(__file__).resolve().parent.parent / "data" / "protocol" / "real-client-slot"


def golden(name: str) -> bytes:
    """Golden files are kept in tests/data (the shared reference may not exist in CI)."""
    return (GOLDEN_COPY / name).read_bytes()


# -- boinc_finish_called -------------------------------------------------------------------


def test_finish_file_bytes() -> None:
    assert files.format_finish(Finish(0)) == "0\n"
    assert (
        files.format_finish(Finish(-148, "VM failed", notice=True)) == "-148\nVM failed\nnotice\n"
    )
    assert files.format_finish(Finish(1, "two\nlines")) == "1\ntwo lines\n\n"


def test_finish_file_read_as_the_client_does() -> None:
    assert files.parse_finish("0\n") == Finish(0)
    assert files.parse_finish("194\nmsg\nnotice\n") == Finish(194, "msg", True)
    assert files.parse_finish("3\nmsg\n") == Finish(3)  # no third line: message not shown
    assert files.parse_finish("") == Finish(0)
    assert files.parse_finish("junk\n") == Finish(0)


def test_finish_file_round_trip(tmp_path: Path) -> None:
    files.write_finish_file(tmp_path, Finish(7, "done", notice=False))
    assert (tmp_path / "boinc_finish_called").read_bytes() == b"7\ndone\n\n"
    assert files.read_finish_file(tmp_path) == Finish(7, "done")
    assert files.read_finish_file(tmp_path / "nowhere") is None


# -- the one atomic write ----------------------------------------------------------------


def test_write_atomic_replaces_the_file_and_syncs_it_and_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    target = tmp_path / "vbox_checkpoint.xml"
    target.write_text("old")
    files.write_atomic(target, "new text \u00e9")
    assert target.read_bytes() == "new text \u00e9".encode()
    files.write_atomic(target, b"\xffraw")
    assert target.read_bytes() == b"\xffraw"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary file left
    # each write: the data before the rename (under its temporary name), the directory after
    assert len(synced) == 4
    assert all(Path(p).name.startswith(".vbox_checkpoint.xml.tmp") for p in synced[0::2])
    assert synced[1::2] == [str(tmp_path)] * 2
    assert oct(target.stat().st_mode & 0o777) == oct(0o644 & ~_umask())


def test_write_atomic_removes_what_a_killed_writer_left(tmp_path: Path) -> None:
    """A wrapper SIGKILLed between its temporary file and the rename leaves the former; the
    next write removes it, and never the file of a writer that still runs."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "vbox_checkpoint.xml"
    left = tmp_path / f".vbox_checkpoint.xml.tmp{dead.pid}"
    running = tmp_path / f".vbox_checkpoint.xml.tmp{os.getppid()}"
    other = tmp_path / f".vbox_webapi.xml.tmp{dead.pid}"
    for path in (left, running, other):
        path.write_text("<vbox_check")
    files.write_atomic(target, "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [target.name, running.name, other.name]
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- boinc_temporary_exit ------------------------------------------------------------------


def test_temporary_exit_bytes_always_have_a_reason_line() -> None:
    assert files.format_temporary_exit(TemporaryExit(600, "VM busy")) == "600\nVM busy\n"
    assert files.format_temporary_exit(TemporaryExit(86400.7, "x", notice=True)) == (
        "86400\nx\nnotice\n"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("600\nVM busy\n", TemporaryExitRequest(600, "VM busy")),
        ("60\n  why  \nnotice\n", TemporaryExitRequest(60, "why", True)),
        ("100000\nr\n", TemporaryExitRequest(300, "r")),  # out of range: 300 s
        ("-5\nr\n", TemporaryExitRequest(300, "r")),
        ("soon\nr\n", TemporaryExitRequest(300, "r")),  # no number: 300 s
        ("60 extra\nr\n", TemporaryExitRequest(60, "r")),
        ("60\n\n", TemporaryExitRequest(60, "")),  # an empty reason line still counts
        ("60\n", None),  # no reason line: the client ignores the file
        ("60", None),
        ("", None),
    ],
)
def test_temporary_exit_read_as_the_client_does(
    text: str, expected: TemporaryExitRequest | None
) -> None:
    assert files.parse_temporary_exit(text) == expected


def test_temporary_exit_file(tmp_path: Path) -> None:
    files.write_temporary_exit_file(tmp_path, TemporaryExit(30, "later"))
    assert files.read_temporary_exit_file(tmp_path) == TemporaryExitRequest(30, "later")


# -- trickles ------------------------------------------------------------------------------


def test_trickle_up_file_bytes(tmp_path: Path) -> None:
    path = files.write_trickle_up(tmp_path, Trickle("progress", "<a>1 & 2</a>\n"))
    assert path.name == "trickle_up.xml"
    assert path.read_bytes() == b"<variety>progress</variety>\n<a>1 & 2</a>\n"
    assert files.parse_trickle_up(path.read_text()) == Trickle("progress", "<a>1 & 2</a>\n")


def test_trickle_up_refuses_what_would_break_the_file() -> None:
    with pytest.raises(ProtocolError, match="variety"):
        files.format_trickle_up(Trickle("a<b", ""))
    with pytest.raises(ProtocolError, match="<variety>"):
        files.parse_trickle_up("no variety\nbody")


@given(
    st.text(
        alphabet=st.characters(blacklist_characters="<\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029&"),
        min_size=1,
    )
    .map(str.strip)
    .filter(bool),
    st.text(),
)
def test_trickle_up_round_trip(variety: str, body: str) -> None:
    assert files.parse_trickle_up(files.format_trickle_up(Trickle(variety, body))) == Trickle(
        variety, body
    )


def test_trickle_down_files(tmp_path: Path) -> None:
    assert files.find_trickle_down(tmp_path) is None
    first = files.write_trickle_down(tmp_path, "<msg>1</msg>\n", 1000.0)
    second = files.write_trickle_down(tmp_path, "<msg>2</msg>\n", 1000.0)
    assert (first.name, second.name) == ("trickle_down_1000", "trickle_down_1000_1")
    assert files.find_trickle_down(tmp_path) == first


# -- uploads ---------------------------------------------------------------------------------


def test_upload_request_and_status_files(tmp_path: Path) -> None:
    files.write_upload_status(tmp_path, "result.dat", -1)  # stale status of an earlier try
    path = files.write_upload_request(tmp_path, "result.dat")
    assert path.name == "boinc_ufr_result.dat" and path.read_bytes() == b""
    assert files.read_upload_status(tmp_path, "result.dat") is None  # stale one removed
    assert files.list_upload_requests(tmp_path) == ["result.dat"]
    status = files.write_upload_status(tmp_path, "result.dat", 0)
    assert status.name == "boinc_ufs_result.dat"
    assert status.read_bytes() == b"<status>0</status>\n"
    assert files.read_upload_status(tmp_path, "result.dat") == 0
    assert files.parse_upload_status("<status>-161</status>\n") == -161
    assert files.parse_upload_status("garbage") is None
    with pytest.raises(ProtocolError, match="logical name"):
        files.write_upload_request(tmp_path, "shared/out")


# -- soft links ------------------------------------------------------------------------------


def test_link_files_match_the_real_client() -> None:
    for name, target in [
        (
            "main_program.softlink",
            "../../projects/127.0.0.1_9_proj/vmwrapper_1.00_x86_64-pc-linux-gnu",
        ),
        ("vbox_job.xml.softlink", "../../projects/127.0.0.1_9_proj/vbox_job_1.xml"),
    ]:
        assert files.format_soft_link(target).encode() == golden(name)
        assert files.parse_soft_link(golden(name).decode()) == target


def test_resolve_filename(tmp_path: Path) -> None:
    files.write_soft_link(tmp_path / "shared" / "in", "../../projects/p/wu_in")
    assert files.resolve_filename(tmp_path, "shared/in") == tmp_path / "../../projects/p/wu_in"
    (tmp_path / "plain").write_text("not a link\n")
    assert files.resolve_filename(tmp_path, "plain") == tmp_path / "plain"
    os.symlink("/etc/hostname", tmp_path / "sym")
    assert files.resolve_filename(tmp_path, "sym") == tmp_path / "sym"
    assert files.resolve_filename(tmp_path, "missing") == tmp_path / "missing"


# -- boinc_lockfile --------------------------------------------------------------------------

HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o664)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError:
    print("busy", flush=True)
    sys.exit(0)
print("locked", flush=True)
time.sleep(30)
"""


def test_lockfile_is_a_posix_lock_other_processes_see(tmp_path: Path) -> None:
    lock = files.Lockfile(tmp_path)
    lock.acquire()
    assert lock.locked and (tmp_path / "boinc_lockfile").exists()
    other = subprocess.run(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path / "boinc_lockfile")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert other.stdout.strip() == "busy"
    lock.release()
    assert not lock.locked and not (tmp_path / "boinc_lockfile").exists()


def test_lockfile_held_elsewhere_is_busy(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path / "boinc_lockfile")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(files.LockfileBusy, match="second copy"):
            files.Lockfile(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait(timeout=10)
    lock = files.Lockfile(tmp_path)
    lock.acquire()  # free again once the holder is gone
    lock.release()


def test_undecodable_bytes_read_with_surrogateescape_are_written_back(tmp_path: Path) -> None:
    body = b"raw \xff\xfe bytes\n".decode("utf-8", "surrogateescape")
    path = files.write_trickle_up(tmp_path, Trickle("guest", body))
    assert path.read_bytes() == b"<variety>guest</variety>\nraw \xff\xfe bytes\n"
