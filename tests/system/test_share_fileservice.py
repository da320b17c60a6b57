"""The share transport's file service over real loopback sockets, with a Python stand-in for
the guest agent (fast: no VM). What a hostile guest or a foreign local program can do to it.
"""

from __future__ import annotations

import io
import os
import resource
import signal
import socket
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers.common import wait_for
from vmwrapper.shared_dir import fsproto
from vmwrapper.shared_dir.fileservice import FileService
from vmwrapper.shared_dir.fsproto import Data, Err, Go, Hello, Ok, Pull, Put
from vmwrapper.shared_dir.watch import write_slot_exclusions


class Guest:
    """The guest's side of one connection, as QEMU relays it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")

    def ask(self, request: fsproto.Request) -> fsproto.Reply:
        self.sock.sendall(fsproto.encode_request(request))
        return self.reply()

    def reply(self) -> fsproto.Reply:
        return fsproto.parse_reply(self.reader.readline())

    def put(
        self, path: str, data: bytes, mtime_ns: int = 1_700_000_000_123_456_789
    ) -> fsproto.Reply:
        answer = self.ask(Put(len(data), mtime_ns, tuple(path.split("/"))))
        if answer != Go():
            return answer
        self.sock.sendall(
            data + fsproto.encode_trailer(Put(len(data), mtime_ns, tuple(path.split("/"))))
        )
        return self.reply()

    def pull(self) -> dict[str, bytes]:
        answer = self.ask(Pull())
        assert isinstance(answer, Data)
        blob = self.reader.read(answer.size)
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            return {
                m.name: (tar.extractfile(m).read() if m.isfile() else b"<dir>")  # type: ignore[union-attr]
                for m in tar.getmembers()
            }


@contextmanager
def served(root: Path, quota: int = 1 << 20) -> Iterator[tuple[FileService, Guest]]:
    service = FileService(root, quota=quota)
    port = service.listen()
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        service.attach(sock.getsockname()[1], timeout=5)
        guest = Guest(sock)
        assert guest.ask(Hello("start")) == Hello("start")  # a window starts in step
        yield service, guest
    finally:
        sock.close()
        service.close()


def test_only_the_connection_qemu_names_is_served(tmp_path: Path) -> None:
    service = FileService(tmp_path)
    port = service.listen()
    rogue = socket.create_connection(("127.0.0.1", port))  # gets there first
    ours = socket.create_connection(("127.0.0.1", port))
    try:
        service.attach(ours.getsockname()[1], timeout=5)
        rogue.settimeout(5)
        assert rogue.recv(100) == b""  # closed unanswered
        assert Guest(ours).ask(Hello("abc123")) == Hello("abc123")
        assert service.address[0] == "127.0.0.1"
    finally:
        rogue.close()
        ours.close()
        service.close()


def test_attach_gives_up_at_its_deadline_when_qemu_never_connects(tmp_path: Path) -> None:
    service = FileService(tmp_path)
    service.listen()
    try:
        with pytest.raises(Exception, match="did not connect"):
            service.attach(1, timeout=0.5)
    finally:
        service.close()


def test_pull_serves_files_and_directories_never_symlinks_or_the_slots_own_files(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret")
    slot = tmp_path / "slot"
    (slot / "sub").mkdir(parents=True)
    (slot / "in.txt").write_text("input")
    (slot / "sub" / "deep.bin").write_bytes(b"\0\1\2")
    (slot / "to_secret").symlink_to(outside / "secret")
    (slot / "to_outside").symlink_to(outside)
    (slot / "vm_image.vdi").write_text("disk")  # share_slot_dir: the wrapper's own files
    (slot / "stderr.txt").write_text("log")
    (slot / ".vmwrapper-tmp.half").write_text("half a file")
    write_slot_exclusions(slot)
    with served(slot) as (_service, guest):
        files = guest.pull()
    assert files == {
        ".vmwrapper-exclude": (slot / ".vmwrapper-exclude").read_bytes(),
        "in.txt": b"input",
        "sub": b"<dir>",
        "sub/deep.bin": b"\0\1\2",
    }


def test_put_writes_atomically_with_the_guests_mtime(tmp_path: Path) -> None:
    with served(tmp_path) as (_service, guest):
        assert guest.put("results/final out.txt", b"result\n") == Ok()
        assert guest.put("results/final out.txt", b"second\n", mtime_ns=5) == Ok()
    out = tmp_path / "results" / "final out.txt"
    assert out.read_bytes() == b"second\n"
    assert os.stat(out).st_mtime_ns == 5
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["final out.txt"]


def test_a_hostile_guest_writes_nothing_outside_the_share(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret")
    share = tmp_path / "share"
    share.mkdir()
    (share / "dir_link").symlink_to(outside)
    (share / "file_link").symlink_to(outside / "secret")
    (share / "a_dir").mkdir()
    write_slot_exclusions(share)
    with served(share, quota=1000) as (service, guest):
        sock = guest.sock
        refused = {
            "dotdot": guest.ask(Put(4, 0, ("..", "escaped"))),
            "through a dir symlink": guest.put("dir_link/escaped", b"evil"),
            "over a directory": guest.put("a_dir", b"evil"),
            "the slot's own file": guest.put("vm_image.vdi", b"evil"),
            "the exclusion list": guest.put(".vmwrapper-exclude", b"*"),
            "a temp name": guest.put(".vmwrapper-tmp.x", b"evil"),
            "huge": guest.ask(Put(10**18, 0, ("big",))),
            "over the quota": guest.put("big", b"x" * 1001),
        }
        # the quota counts growth: a result pushed again (replaced) costs nothing more
        assert guest.put("result", b"r" * 600) == Ok()
        assert guest.put("result", b"R" * 600) == Ok()
        refused["past the quota"] = guest.put("another", b"a" * 600)
        for raw in (b"PUT 4 1.0 2e2e2f6574632f706173737764\n", b"\xff\xfe\n", b"A" * 10000 + b"\n"):
            sock.sendall(raw)
            refused[repr(raw[:12])] = guest.reply()
            assert guest.ask(Hello("again")) == Hello("again")  # junk: silent until a HELLO
        # a symlink to a file is replaced as a link: what it points to is never written
        assert guest.put("file_link", b"safe") == Ok()
        assert guest.ask(Hello("stillok")) == Hello("stillok")  # the stream is still in step
        assert service.refused == len(refused)
    assert all(isinstance(r, Err) for r in refused.values()), refused
    assert (outside / "secret").read_text() == "host secret"
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (share / "file_link").read_bytes() == b"safe" and not (share / "file_link").is_symlink()
    assert not (share / "big").exists() and not (share / "vm_image.vdi").exists()
    assert (share / "result").read_bytes() == b"R" * 600 and not (share / "another").exists()


def test_a_guest_gone_mid_file_leaves_no_half_file(tmp_path: Path) -> None:
    service = FileService(tmp_path)
    port = service.listen()
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        service.attach(sock.getsockname()[1], timeout=5)
        guest = Guest(sock)
        assert guest.ask(Hello("x")) == Hello("x")
        assert guest.ask(Put(100, 0, ("out",))) == Go()
        sock.sendall(b"only ten b")
        sock.shutdown(socket.SHUT_RDWR)  # the guest (QEMU) is gone
        assert wait_for(lambda: not list(tmp_path.iterdir()), timeout=10)
    finally:
        service.close()


def test_a_failed_write_on_the_host_refuses_that_file_and_the_channel_goes_on(
    tmp_path: Path,
) -> None:
    """The host's disk says no (here: a file-size limit, EFBIG, as root cannot be refused by
    permissions): that file gets ERR, its half is removed, the stream stays in step."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, limit[1]))
    try:
        with served(tmp_path, quota=1 << 30) as (_service, guest):
            answer = guest.put("too_big.bin", b"x" * (3 << 20))
            assert isinstance(answer, Err) and "failed" in answer.reason, answer
            assert guest.ask(Hello("after")) == Hello("after")
            assert guest.put("small", b"fine") == Ok()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small"]


def test_the_host_is_silent_until_hello_and_drops_a_payload_without_its_trailer(
    tmp_path: Path,
) -> None:
    """After a restore the guest may be half-way through a window the old QEMU took with it:
    its leftovers get no answer, and bytes that were not the announced file are not written."""
    service = FileService(tmp_path)
    port = service.listen()
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        service.attach(sock.getsockname()[1], timeout=5)
        guest = Guest(sock)
        # the tail of a payload and a request from before the restore: no answer to either
        sock.sendall(b"tail of a file\n" + fsproto.encode_request(Put(4, 0, ("early",))) + b"abcd")
        sock.sendall(b"\n")  # as the guest's agent starts a window: ends the partial line
        assert guest.ask(Hello("n1")) == Hello("n1")  # the first thing said is HELLO's echo
        assert guest.ask(Put(10, 0, ("victim",))) == Go()
        # the guest gave up waiting and started its next window: those bytes are not the file
        sock.sendall(b"HELLO n2\nPUT 3 " + b"\n" + b"END 00\n")
        assert guest.ask(Hello("n3")) == Hello("n3")
        assert guest.put("victim", b"the real one") == Ok()
    finally:
        sock.close()
        service.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]
    assert (tmp_path / "victim").read_bytes() == b"the real one"


def test_a_transfer_the_guest_gave_up_is_dropped_and_the_next_window_is_in_step(
    tmp_path: Path,
) -> None:
    """Bytes lost on the way (a PUT announced 1 MiB, a few KiB came): the host must not wait
    for the rest for ever, eating every later window as payload; it drops the file once no
    byte came for ``payload_idle`` and answers the guest's next HELLO."""
    with served(tmp_path) as (service, guest):
        service.payload_idle = 0.5
        guest.sock.settimeout(20)  # a host still waiting for the payload never answers
        assert guest.ask(Put(1 << 20, 0, ("broken.bin",))) == Go()
        guest.sock.sendall(b"\0" * 4096 + fsproto.encode_trailer(Put(1 << 20, 0, ("broken.bin",))))
        assert wait_for(lambda: service.dropped == 1, timeout=20)
        guest.sock.sendall(b"\n")  # as the agent opens its next window
        assert guest.ask(Hello("again")) == Hello("again")
        assert guest.put("after.txt", b"still flowing") == Ok()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["after.txt"]


def test_a_transfer_waits_without_limit_while_the_vm_is_held(tmp_path: Path) -> None:
    """A savevm or a pause stops the guest in the middle of a payload: that is no give-up."""
    with served(tmp_path) as (service, guest):
        service.payload_idle = 0.2
        service.held = True
        put = Put(8, 0, ("held.bin",))
        assert guest.ask(put) == Go()
        guest.sock.sendall(b"half")
        time.sleep(1.0)  # five idle limits with the VM stopped
        service.held = False
        guest.sock.sendall(b"full" + fsproto.encode_trailer(put))
        assert guest.reply() == Ok()
        assert service.dropped == 0
    assert (tmp_path / "held.bin").read_bytes() == b"halffull"
