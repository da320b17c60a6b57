"""The shared-memory segment: the only module that maps it (docs/compatibility.md#shared-memory).

Both sides use :class:`Segment`: the client (our harness) creates and zeroes it before each
start (:meth:`Segment.create`), the app attaches to what the client made
(:meth:`Segment.attach`). That is the
file ``boinc_mmap_file`` for app versions with api_version >= 6.0; for older ones the client
uses System V shared memory under the key in ``<shm_key>`` (``create_sysv`` / ``attach_sysv``,
through libc with ctypes), as 7.20.5's ``--run_test_app`` always does. The Windows client
makes a named file mapping instead and writes its name into init_data.xml
(``create_named`` / ``attach_named``, through vmwrapper.hostos.winshm). Sending
follows ``MSG_CHANNEL::send_msg``: only into an empty channel, text and NUL first, the flag
byte last, so a reader that sees the flag also sees the whole text (there are no locks; each
direction has one writer). Receiving copies the text, then clears the flag.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from vmwrapper.boinc.messages import (
    CHANNEL_SIZE,
    FLAG_EMPTY,
    FLAG_FULL,
    SEGMENT_SIZE,
    Channel,
    decode_payload,
    encode_text,
)
from vmwrapper.errors import ProtocolError

#: The segment's file name in the slot directory (``lib/shmem.h``).
MMAP_FILE_NAME = "boinc_mmap_file"


class Segment:
    """A mapped ``boinc_mmap_file``; use as a context manager or call :meth:`close`."""

    def __init__(
        self,
        path: Path,
        mm: mmap.mmap | memoryview,
        closer: Callable[[], None] | None = None,
    ) -> None:
        self.path = path  # for messages: the mmap file, or the file the SysV key came from
        self._mm: mmap.mmap | memoryview | None = mm
        self._closer = closer

    # -- opening --------------------------------------------------------------------------

    @classmethod
    def create(cls, slot_dir: Path) -> Segment:
        """The client side (``create_shmem_mmap`` + ``reset_msgs``): make, map and zero it."""
        path = slot_dir / MMAP_FILE_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if os.fstat(fd).st_size < SEGMENT_SIZE:
                os.pwrite(fd, b"\0", SEGMENT_SIZE - 1)  # extend as the client does
            mm = mmap.mmap(fd, SEGMENT_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            raise ProtocolError(f"cannot create the shared segment {path}: {exc}") from exc
        finally:
            os.close(fd)
        segment = cls(path, mm)
        segment.zero()
        return segment

    @classmethod
    def attach(cls, slot_dir: Path) -> Segment | None:
        """The app side (``attach_shmem_mmap``): map what the client made, never create it.

        None when there is no usable segment: the app then runs standalone, as the API does.
        """
        path = slot_dir / MMAP_FILE_NAME
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return None
        try:
            size = os.fstat(fd).st_size
            if size < SEGMENT_SIZE:
                return None  # the API fails on size 0; anything short would be cut channels
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            return None
        finally:
            os.close(fd)
        return cls(path, mm)

    @classmethod
    def create_sysv(cls, key: int, origin: Path) -> Segment:
        """The client side for old app versions: ``shmget(key, 8192, IPC_CREAT|0666)``, zeroed.

        ``origin`` is the file the key came from (:func:`sysv_key`), for messages.
        """
        libc = _libc()
        shmid = libc.shmget(key, SEGMENT_SIZE, _IPC_CREAT | 0o666)
        if shmid < 0:
            err = ctypes.get_errno()
            raise ProtocolError(
                f"cannot create System V shared memory (key {key:#x}): {os.strerror(err)}"
            )
        segment = cls._shmat(shmid, origin)
        if segment is None:
            raise ProtocolError(f"cannot attach System V shared memory (key {key:#x})")
        segment.zero()
        return segment

    @classmethod
    def attach_sysv(cls, key: int, origin: Path) -> Segment | None:
        """The app side for ``<shm_key>`` other than -1; None (standalone) if there is none."""
        shmid = _libc().shmget(key, SEGMENT_SIZE, 0)
        return None if shmid < 0 else cls._shmat(shmid, origin)

    @classmethod
    def create_named(cls, number: int) -> Segment | None:
        """The Windows client's side: a new file mapping ``shm_boinc_<number>``, zeroed; None
        when that name is taken (the client then tries the next number). Windows only."""
        from vmwrapper.hostos import winnames, winshm

        name = winnames.client_mapping_name(number)
        made = winshm.create_mapping(name, SEGMENT_SIZE)
        if made is None:
            return None
        view, closer = made
        segment = cls(Path(name), view, closer=closer)
        segment.zero()
        return segment

    @classmethod
    def attach_named(cls, comm_obj_name: str) -> Segment | None:
        """The app side on Windows: open the mapping init_data.xml's ``<comm_obj_name>`` names
        (global name first), never create it; None (standalone) when there is none."""
        from vmwrapper.hostos import winnames, winshm

        names = winnames.app_mapping_names(comm_obj_name)
        opened = winshm.open_mapping(names, SEGMENT_SIZE) if names else None
        if opened is None:
            return None
        view, closer = opened
        return cls(Path(names[-1]), view, closer=closer)

    @classmethod
    def _shmat(cls, shmid: int, origin: Path) -> Segment | None:
        libc = _libc()
        addr = libc.shmat(shmid, None, 0)
        if addr is None or addr == ctypes.c_void_p(-1).value:
            return None
        view = memoryview((ctypes.c_ubyte * SEGMENT_SIZE).from_address(addr)).cast("B")
        return cls(origin, view, closer=lambda: libc.shmdt(ctypes.c_void_p(addr)))

    @staticmethod
    def destroy_sysv(key: int) -> None:
        """Remove the System V segment (the client does this when the task exits)."""
        libc = _libc()
        shmid = libc.shmget(key, 0, 0)
        if shmid >= 0:
            libc.shmctl(shmid, _IPC_RMID, None)

    # -- channels -------------------------------------------------------------------------

    @property
    def _map(self) -> mmap.mmap | memoryview:
        if self._mm is None:
            raise ProtocolError(f"the shared segment {self.path} is closed")
        return self._mm

    def has_message(self, channel: Channel) -> bool:
        """True while the channel holds a message its reader has not taken."""
        return self._map[channel.offset] != FLAG_EMPTY

    def send(self, channel: Channel, text: str) -> bool:
        """Put ``text`` into an empty channel; False (nothing written) if it is still full."""
        data = encode_text(text)
        if self.has_message(channel):
            return False
        self._write(channel, data)
        return True

    def send_overwrite(self, channel: Channel, text: str) -> None:
        """Put ``text`` into the channel even if the last message is unread (it is replaced),
        as BOINC's ``MSG_CHANNEL::send_msg_overwrite`` does."""
        self._write(channel, encode_text(text))

    def _write(self, channel: Channel, data: bytes) -> None:
        start = channel.offset + 1
        self._map[start : start + len(data) + 1] = data + b"\0"
        self._map[channel.offset] = FLAG_FULL  # last: the reader may now take it

    def receive(self, channel: Channel) -> str | None:
        """Take the unread message from a channel (the flag is cleared after copying)."""
        if not self.has_message(channel):
            return None
        start = channel.offset
        payload = bytes(self._map[start + 1 : start + CHANNEL_SIZE])
        self._map[start] = FLAG_EMPTY
        return decode_payload(payload)

    def peek(self, channel: Channel) -> str | None:
        """The unread message without taking it (for tests and diagnostics)."""
        if not self.has_message(channel):
            return None
        start = channel.offset
        return decode_payload(bytes(self._map[start + 1 : start + CHANNEL_SIZE]))

    def zero(self) -> None:
        """All 8192 bytes to zero, as the client does right before every start."""
        self._map[0:SEGMENT_SIZE] = bytes(SEGMENT_SIZE)

    def raw(self) -> bytes:
        """A copy of the whole segment (byte-level tests)."""
        return bytes(self._map[0:SEGMENT_SIZE])

    # -- closing --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._mm is None

    def close(self) -> None:
        if self._mm is not None:
            if isinstance(self._mm, memoryview):
                self._mm.release()
            else:
                self._mm.close()
            self._mm = None
            if self._closer is not None:
                self._closer()

    def __enter__(self) -> Segment:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# System V shared memory through libc

_IPC_CREAT = 0o1000
_IPC_RMID = 0


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.ftok.argtypes = [ctypes.c_char_p, ctypes.c_int]
    libc.ftok.restype = ctypes.c_int
    libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
    libc.shmget.restype = ctypes.c_int
    libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    libc.shmat.restype = ctypes.c_void_p
    libc.shmdt.argtypes = [ctypes.c_void_p]
    libc.shmdt.restype = ctypes.c_int
    libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    libc.shmctl.restype = ctypes.c_int
    return libc


def sysv_key(path: Path) -> int:
    """``ftok(path, 1)``, the key the client makes from the slot's init_data.xml."""
    key: int = _libc().ftok(os.fsencode(path), 1)
    if key == -1:
        raise ProtocolError(f"ftok({path}) failed: {os.strerror(ctypes.get_errno())}")
    return key
