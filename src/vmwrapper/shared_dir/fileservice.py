"""The host side of the ``serial`` share transport: the slot's shared directory served to our
QEMU's virtio-serial port over one loopback TCP connection (docs/shared-transport.md).

QEMU connects to :meth:`FileService.port` as a client when it starts (a TCP chardev: the one
kind every QEMU host has, Windows included). Any local program could connect to that port
too, so :meth:`FileService.attach` keeps only the connection whose source port is the one
our QEMU reports for its chardev over QMP, and closes every other. The guest is not trusted
either: it can only write regular files below the share (no ``..``, no absolute path, never
through a symlink, within a byte quota, never over the host's own files when the share is the
slot) and only read the share's regular files. I/O module: sockets, files, one thread.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import select
import socket
import stat
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from vmwrapper.errors import BackendError
from vmwrapper.shared_dir import fsproto
from vmwrapper.shared_dir.fsproto import (
    Data,
    Err,
    FsProtocolError,
    Go,
    Hello,
    Ok,
    Pull,
    Put,
    Refused,
)
from vmwrapper.shared_dir.watch import EXCLUDE_FILE

log = logging.getLogger(__name__)

#: How much the guest may grow the share by in one run (bytes added, less the size of the files
#: they replace: pushing one result again costs nothing more), unless the caller says otherwise.
DEFAULT_QUOTA = 16 * 1024**3
#: The guest agent's own temp prefix: never served, and what the host writes under too.
TMP_PREFIX = ".vmwrapper-tmp."
_CHUNK = 256 * 1024
#: Refused requests logged as warnings per service; the rest go to debug.
MAX_LOGGED_REFUSALS = 10
#: A payload that gets no byte for this long while the guest runs has been given up by the
#: guest (bytes lost on the way, or its wait for GO timed out): the host drops that file and
#: waits for the next HELLO (docs/shared-transport.md#the-protocol). Shorter than the
#: agent's wait for a reply (SERIAL_WAIT, 5 s, in guest/vmwrapper-lib.sh), so the host already
#: listens for HELLO when the guest opens its next window.
PAYLOAD_IDLE = 3.0
#: How often a blocked read looks at the clock and at ``held``.
_POLL = 0.25


class FileService:
    """``FileService(root)``: ``listen()`` before QEMU starts, ``attach(qemu_port)`` once QMP
    says which source port QEMU's chardev connected from, ``close()`` at the end. A restarted
    QEMU (a restore) connects again: call ``attach`` again."""

    def __init__(self, root: Path, *, quota: int = DEFAULT_QUOTA, host: str = "127.0.0.1") -> None:
        self.root = root
        self.quota = quota
        self.written = 0
        self.refused = 0  # requests answered ERR (tests and logs read it)
        self.dropped = 0  # transfers dropped out of step (the guest pushes them again)
        self._host = host
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._thread: threading.Thread | None = None
        #: Set while the VM is stopped (a pause, a savevm): a payload waits without a limit.
        self.held = False
        self.payload_idle = PAYLOAD_IDLE
        # With share_slot_dir the share is the slot: the wrapper's own files (the patterns in
        # .vmwrapper-exclude, written by the wrapper before the start) are neither served nor
        # overwritten. Read once: the guest cannot change the list.
        self._excluded = _read_exclusions(root)

    # --- connection --------------------------------------------------------------------

    def listen(self) -> int:
        """Bind a loopback port (the OS picks it: nothing can take it between pick and bind)."""
        if self._listener is None:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind((self._host, 0))
            listener.listen(8)
            self._listener = listener
        return self.port

    @property
    def address(self) -> tuple[str, int]:
        if self._listener is None:
            raise BackendError("the file service is not listening")
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def port(self) -> int:
        return self.address[1]

    def attach(self, qemu_port: int, timeout: float = 10.0) -> None:
        """Accept connections until the one from ``qemu_port`` (QEMU's side of its chardev);
        close the others (a local program that got there first learns nothing)."""
        if self._listener is None:
            raise BackendError("the file service is not listening")
        self._drop_connection()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BackendError(
                    f"QEMU's share channel did not connect to 127.0.0.1:{self.port} "
                    f"from port {qemu_port} within {timeout:.0f} s"
                )
            self._listener.settimeout(left)
            try:
                conn, peer = self._listener.accept()
            except TimeoutError:
                continue
            if peer[1] != qemu_port:
                log.warning(
                    "Refused a connection to the share channel from %s:%d (not our QEMU)",
                    peer[0],
                    peer[1],
                    extra={"event": "share_channel_refused", "peer_port": peer[1]},
                )
                conn.close()
                continue
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = conn
            self._thread = threading.Thread(
                target=self._serve, args=(conn,), name="share-channel", daemon=True
            )
            self._thread.start()
            return

    def close(self) -> None:
        self._drop_connection()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _drop_connection(self) -> None:
        conn, thread = self._conn, self._thread
        self._conn = self._thread = None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        if thread is not None:
            thread.join(timeout=10.0)

    # --- requests ----------------------------------------------------------------------

    def _serve(self, conn: socket.socket) -> None:
        reader = _Channel(conn, lambda: self.held)
        in_step = False  # a new connection waits for the guest's HELLO (fsproto's docstring)
        try:
            while True:
                line = reader.readline(fsproto.MAX_LINE + 1)
                if not line:
                    return
                if line == b"\n":
                    continue  # the guest ends any leftover partial line before its HELLO
                if not line.endswith(b"\n"):
                    _skip_line(reader)
                    line = b"\0"  # too long: unparsable, like any other junk
                in_step = self._handle(conn, reader, line, in_step)
        except (OSError, ValueError) as exc:  # ValueError: select on a socket just closed
            log.debug("share channel closed: %s", exc)

    def _handle(self, conn: socket.socket, reader: _Channel, line: bytes, in_step: bool) -> bool:
        """Answer one line; whether the two sides are in step after it."""
        try:
            request = fsproto.parse_request(line)
        except Refused as exc:
            if in_step:
                self._refuse(conn, exc)
            return in_step
        except FsProtocolError as exc:
            if in_step:
                self._refuse(conn, exc)
            return False  # silent until the next HELLO: the rest may be a payload's bytes
        if not in_step and not isinstance(request, Hello):
            return False
        try:
            match request:
                case Hello(nonce):
                    self._send(conn, Hello(nonce))
                case Pull():
                    self._pull(conn)
                case Put():
                    return self._put(conn, reader, request)
        except FsProtocolError as exc:
            self._refuse(conn, exc)
        return True

    def _refuse(self, conn: socket.socket, exc: FsProtocolError) -> None:
        self.refused += 1
        # a hostile guest could ask forever: the first few are warnings, then debug lines
        level = logging.WARNING if self.refused <= MAX_LOGGED_REFUSALS else logging.DEBUG
        log.log(
            level,
            "Share channel: refused a request from the guest: %s%s",
            exc,
            " (further refusals are not logged)" if self.refused == MAX_LOGGED_REFUSALS else "",
            extra={"event": "share_request_refused", "reason": str(exc)},
        )
        self._send(conn, Err(str(exc)))

    def _send(self, conn: socket.socket, reply: fsproto.Reply) -> None:
        conn.sendall(fsproto.encode_reply(reply))

    def _pull(self, conn: socket.socket) -> None:
        with tempfile.TemporaryFile() as spool:
            with tarfile.open(fileobj=spool, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for path, rel in self._served_entries():
                    tar.add(path, arcname=rel, recursive=False)
            size = spool.tell()
            spool.seek(0)
            self._send(conn, Data(size))
            while chunk := spool.read(_CHUNK):
                conn.sendall(chunk)

    def _served_entries(self) -> Iterator[tuple[Path, str]]:
        """Directories and regular files below the share, never through or to a symlink."""
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            here = Path(dirpath)
            top = here == self.root
            for name in sorted(dirnames):
                full = here / name
                if (top and self._is_excluded(name)) or full.is_symlink():
                    dirnames.remove(name)
                    continue
                yield full, full.relative_to(self.root).as_posix()
            for name in sorted(filenames):
                full = here / name
                # .vmwrapper-exclude itself is served: the guest's agent skips those names too
                hidden = top and self._is_excluded(name) and name != EXCLUDE_FILE
                if hidden or name.startswith(TMP_PREFIX):
                    continue
                if stat.S_ISREG(os.lstat(full).st_mode):
                    yield full, full.relative_to(self.root).as_posix()

    def _is_excluded(self, top_name: str) -> bool:
        return any(fnmatch.fnmatchcase(top_name, p) for p in self._excluded)

    def _put(self, conn: socket.socket, reader: _Channel, put: Put) -> bool:
        shown = "/".join(put.path)
        if self._is_excluded(put.path[0]) or put.path[-1].startswith(TMP_PREFIX):
            raise Refused(f"{shown!r} is the host's own file")
        if put.size > self.quota:  # before touching anything
            raise Refused(f"{put.size} bytes: more than the share's quota")
        try:
            target, temp, fd, growth = self._open_for(put)
        except OSError as exc:  # the host's file system said no: the channel goes on
            raise Refused(f"cannot write {shown!r} on the host: {exc.strerror}") from exc
        self._send(conn, Go())
        in_step = True
        try:
            with os.fdopen(fd, "wb") as out:
                failed = _receive(reader, out, put.size, self.payload_idle)
            if isinstance(failed, PayloadStalled):
                in_step = False  # the rest of this payload, if it ever comes, is no request
            elif not fsproto.trailer_matches(reader.readline(fsproto.MAX_LINE + 1), put):
                # these bytes were not the file: the guest gave up on it and went on
                in_step = False
                failed = failed or OSError("the payload did not end with its trailer")
            if failed is None:
                os.utime(temp, ns=(put.mtime_ns, put.mtime_ns))
                os.replace(temp, target)  # replaces a symlink itself, never what it points to
        except ConnectionError:
            raise  # the guest is gone: nothing to answer
        except OSError as exc:
            failed = exc
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temp)  # gone after the rename; else a half file
        if failed is not None:
            self.written -= growth  # nothing grew: a retry of the file costs no more quota
        if failed is not None and in_step:  # a disk full, say: this file failed, not the next
            raise Refused(f"writing {shown!r} on the host failed: {failed}")
        if failed is not None:
            self.dropped += 1
            log.warning(
                "Share channel: dropped %r (%s); listening for the guest's next HELLO",
                shown,
                failed,
                extra={"event": "share_transfer_dropped", "path": shown, "reason": str(failed)},
            )
            return False
        self._send(conn, Ok())
        return True

    def _open_for(self, put: Put) -> tuple[Path, Path, int, int]:
        """(target, temp name, fd of the new temp file, bytes it grows the share by), after
        the checks and the quota."""
        parent = self._make_parents(put.path[:-1])
        target = parent / put.path[-1]
        replaced = 0
        with contextlib.suppress(FileNotFoundError):
            mode = os.lstat(target)
            if stat.S_ISDIR(mode.st_mode):
                raise Refused(f"{'/'.join(put.path)!r} is a directory on the host")
            replaced = mode.st_size if stat.S_ISREG(mode.st_mode) else 0
        growth = put.size - replaced
        if self.written + growth > self.quota:
            raise Refused(
                f"{put.size} bytes would grow the share past its quota of {self.quota} bytes"
            )
        temp = parent / f"{TMP_PREFIX}{put.path[-1]}"[: fsproto.MAX_NAME_BYTES]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)  # a stale one (a killed run), or a symlink: unlink never follows
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(temp, flags | getattr(os, "O_BINARY", 0), 0o644)
        self.written += growth  # counted before the bytes come: a refused PUT sends none
        return target, temp, fd, growth

    def _make_parents(self, parts: tuple[str, ...]) -> Path:
        """root/parts..., each a real directory (made when missing), none a symlink."""
        here = self.root
        for part in parts:
            here = here / part
            try:
                mode = os.lstat(here).st_mode
            except FileNotFoundError:
                os.mkdir(here, 0o755)
                continue
            if not stat.S_ISDIR(mode):
                raise Refused(f"{here.relative_to(self.root)} is not a plain directory")
        return here


def _receive(reader: _Channel, out: BinaryIO, size: int, idle: float) -> OSError | None:
    """Read exactly ``size`` payload bytes into ``out``. A failed write (the host's disk) is
    returned, and the rest of the payload read and dropped so the stream stays in step; so is
    PayloadStalled when the bytes stop coming (the guest gave up); a guest gone mid-file raises
    ConnectionError."""
    left, failed = size, None
    while left:
        try:
            chunk = reader.read(min(left, _CHUNK), idle)
        except PayloadStalled as exc:
            return exc
        if not chunk:
            raise ConnectionError(f"the guest closed the channel {left} bytes short")
        left -= len(chunk)
        if failed is None:
            try:
                out.write(chunk)
            except OSError as exc:
                failed = exc
    if failed is None:
        try:
            out.flush()
        except OSError as exc:
            failed = exc
    return failed


class PayloadStalled(OSError):
    """No byte of a payload for ``PAYLOAD_IDLE`` seconds while the guest ran."""


class _Channel:
    """Buffered reads from the guest's connection. Between requests a read waits as long as it
    takes (the guest speaks about once a second, or not at all while the app runs); a payload
    read gives up after ``idle`` seconds without a byte, not counting time the VM was held.
    The socket stays blocking (``select`` waits), so the host's replies are never cut short."""

    def __init__(self, conn: socket.socket, held: Callable[[], bool]) -> None:
        self._conn = conn
        self._held = held
        self._buf = bytearray()

    def _fill(self, idle: float | None) -> bool:
        """More bytes into the buffer; False when the guest's side is closed."""
        quiet_since = time.monotonic()
        while True:
            ready, _, _ = select.select([self._conn], [], [], _POLL)
            if ready:
                chunk = self._conn.recv(_CHUNK)
                self._buf += chunk
                return bool(chunk)
            now = time.monotonic()
            if idle is None or self._held():
                quiet_since = now  # a stopped VM sends nothing, and has given up nothing
            elif now - quiet_since >= idle:
                raise PayloadStalled(f"no byte from the guest for {idle:.0f} s")

    def _take(self, n: int) -> bytes:
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def readline(self, limit: int) -> bytes:
        """Up to and with the next newline, at most ``limit`` bytes; b"" at the end."""
        while True:
            end = self._buf.find(b"\n", 0, limit)
            if end >= 0:
                return self._take(end + 1)
            if len(self._buf) >= limit or not self._fill(None):
                return self._take(limit)

    def read(self, n: int, idle: float) -> bytes:
        """1 to ``n`` bytes (b"" at the end); PayloadStalled after ``idle`` quiet seconds."""
        if not self._buf and not self._fill(idle):
            return b""
        return self._take(n)


def _skip_line(reader: _Channel) -> None:
    while True:
        rest = reader.readline(fsproto.MAX_LINE)
        if not rest or rest.endswith(b"\n"):
            return


def _read_exclusions(root: Path) -> tuple[str, ...]:
    try:
        text = (root / EXCLUDE_FILE).read_text(encoding="utf-8")
    except OSError:
        return ()
    return tuple(line.strip() for line in text.splitlines() if line.strip())
