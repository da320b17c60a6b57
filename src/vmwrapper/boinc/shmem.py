"""The shared-memory segment ``boinc_mmap_file``: the only module that maps it (reference §2).

Both sides use :class:`Segment`: the client (our harness) :meth:`Segment.create`\\ s and zeroes
it before each start, the app :meth:`Segment.attach`\\ es to what the client made. Sending
follows ``MSG_CHANNEL::send_msg``: only into an empty channel, text and NUL first, the flag
byte last, so a reader that sees the flag also sees the whole text (there are no locks; each
direction has one writer). Receiving copies the text, then clears the flag.
"""

from __future__ import annotations

import mmap
import os
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

    def __init__(self, path: Path, mm: mmap.mmap) -> None:
        self.path = path
        self._mm: mmap.mmap | None = mm

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

    # -- channels -------------------------------------------------------------------------

    @property
    def _map(self) -> mmap.mmap:
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
        start = channel.offset + 1
        self._map[start : start + len(data) + 1] = data + b"\0"
        self._map[channel.offset] = FLAG_FULL  # last: the reader may now take it
        return True

    def receive(self, channel: Channel) -> str | None:
        """Take the unread message from a channel (the flag is cleared after copying)."""
        if not self.has_message(channel):
            return None
        start = channel.offset
        payload = self._map[start + 1 : start + CHANNEL_SIZE]
        self._map[start] = FLAG_EMPTY
        return decode_payload(payload)

    def peek(self, channel: Channel) -> str | None:
        """The unread message without taking it (for tests and diagnostics)."""
        if not self.has_message(channel):
            return None
        start = channel.offset
        return decode_payload(self._map[start + 1 : start + CHANNEL_SIZE])

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
            self._mm.close()
            self._mm = None

    def __enter__(self) -> Segment:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
