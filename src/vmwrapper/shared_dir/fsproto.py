"""The file-service protocol between the guest's share agent and the wrapper (pure).

The ``serial`` share transport (docs/shared-transport.md) carries the slot's ``shared``
directory over one virtio-serial port instead of virtio-9p: the guest asks, the host answers,
one request at a time, so neither side ever reads past the end of a message (the guest's
busybox tools cannot). Every message is one ASCII header line ending in ``\\n``; some are
followed by a payload whose length the header gives::

    guest                                   host
    HELLO <nonce>                     →     HELLO <nonce>       (re-synchronises a window)
    PULL                              →     DATA <n> + n bytes  (a tar of the share)
    PUT <size> <mtime> <hex path>     →     GO                  (then the guest sends size bytes
    <size bytes>END <hex path>        →     OK                   and the trailer; written: temp
                                                                 name, rename)
    a refused request                 →     ERR <why>

The guest starts each window with an empty line (ending any partial line left over) and
``HELLO``. The host says nothing until a ``HELLO``, and goes silent again after a line it
cannot parse (until the next ``HELLO``): after a restore from a snapshot the guest may be in
the middle of a window whose other half died with the old QEMU, and its leftover bytes must
neither get answers it could take for its own nor be written anywhere. The trailer after a
payload names the file again: a payload that is really the guest's next window (it gave up
waiting) does not end in it, so the host drops that file instead of writing those bytes.
A payload that stops coming (bytes lost on the way) is dropped too, after a few seconds of
silence from a running guest, and the host waits for the next ``HELLO``; the guest, which got
no ``OK``, sends the file again in a new window.

``<mtime>`` is the guest file's modification time, ``SECONDS[.FRACTION]`` (up to 9 digits, as
``stat -c %Y`` and the fraction of ``%y`` print it); ``<hex path>`` is the path relative to
the share, as lower-case hex of its UTF-8 bytes (so names with spaces or newlines survive a
line protocol). Paths are checked here: relative, no empty, ``.`` or ``..`` component, no NUL
or backslash, bounded length. The host checks the file system side (symlinks, quota) itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vmwrapper.errors import VmWrapperError

#: The longest header line either side accepts (a PUT's hex path dominates it).
MAX_LINE = 8192
#: The longest path, in bytes of UTF-8, a PUT may name (Linux's PATH_MAX is 4096).
MAX_PATH_BYTES = 3000
#: A component longer than this is refused (NAME_MAX of Linux and NTFS).
MAX_NAME_BYTES = 255
#: The nonce of a HELLO: what the guest generates (busybox: digits of the clock and $RANDOM).
_NONCE = re.compile(r"[0-9A-Za-z]{1,64}")
_MTIME = re.compile(r"([0-9]{1,12})(?:\.([0-9]{1,9}))?")
_SIZE = re.compile(r"[0-9]{1,19}")
_HEX = re.compile(r"(?:[0-9a-f]{2})+")


class FsProtocolError(VmWrapperError):
    """A message that breaks the protocol; ``str()`` is the reason sent back in ``ERR``."""


class Refused(FsProtocolError):
    """A well-formed request the host will not do (a path outside the share, the quota): the
    two sides are still in step, unlike after a line that is no request at all."""


@dataclass(frozen=True)
class Hello:
    nonce: str


@dataclass(frozen=True)
class Pull:
    pass


@dataclass(frozen=True)
class Put:
    size: int
    mtime_ns: int
    path: tuple[str, ...]  # checked components, never empty


Request = Hello | Pull | Put


@dataclass(frozen=True)
class Data:
    size: int


@dataclass(frozen=True)
class Go:
    pass


@dataclass(frozen=True)
class Ok:
    pass


@dataclass(frozen=True)
class Err:
    reason: str


Reply = Hello | Data | Go | Ok | Err


def check_path(text: str) -> tuple[str, ...]:
    """The components of a path the guest names, or FsProtocolError: only plain relative
    names below the share (what a hostile guest must not get past: ``..``, ``/etc``, ``C:``)."""
    raw = text.encode("utf-8", "surrogateescape")
    if not raw:
        raise Refused("empty path")
    if len(raw) > MAX_PATH_BYTES:
        raise Refused(f"path longer than {MAX_PATH_BYTES} bytes")
    if "\0" in text or "\\" in text:
        raise Refused("path with a NUL or a backslash")
    if text.startswith("/"):
        raise Refused("absolute path")
    parts = tuple(text.split("/"))
    for part in parts:
        if part in ("", ".", ".."):
            raise Refused(f"path component {part!r} (only plain names below the share)")
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise Refused(f"a name longer than {MAX_NAME_BYTES} bytes")
        if ":" in part and len(part) >= 2 and part[1] == ":":
            raise Refused("a drive-letter path")  # "C:x" is absolute on Windows
    return parts


def _words(line: bytes) -> list[str]:
    if len(line) > MAX_LINE:
        raise FsProtocolError(f"header longer than {MAX_LINE} bytes")
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise FsProtocolError("header is not ASCII") from None
    text = text.removesuffix("\n")
    if not text or text != text.strip() or "  " in text or "\n" in text or "\r" in text:
        raise FsProtocolError("malformed header")
    return text.split(" ")


def parse_mtime(text: str) -> int:
    """``SECONDS[.FRACTION]`` → nanoseconds since the epoch."""
    match = _MTIME.fullmatch(text)
    if match is None:
        raise FsProtocolError(f"bad mtime {text[:40]!r}")
    seconds, fraction = match.group(1), match.group(2) or ""
    return int(seconds) * 1_000_000_000 + int(fraction.ljust(9, "0") or "0")


def format_mtime(mtime_ns: int) -> str:
    seconds, ns = divmod(mtime_ns, 1_000_000_000)
    return f"{seconds}.{ns:09d}"


def parse_request(line: bytes) -> Request:
    """One header line from the guest → a request (FsProtocolError: say ERR, go on)."""
    words = _words(line)
    match words:
        case ["HELLO", nonce] if _NONCE.fullmatch(nonce):
            return Hello(nonce)
        case ["PULL"]:
            return Pull()
        case ["PUT", size, mtime, hexpath]:
            if not _SIZE.fullmatch(size):
                raise FsProtocolError(f"bad size {size[:40]!r}")
            if not _HEX.fullmatch(hexpath):
                raise FsProtocolError("path is not lower-case hex")
            try:
                path = bytes.fromhex(hexpath).decode("utf-8")
            except UnicodeDecodeError:
                raise FsProtocolError("path is not UTF-8") from None
            return Put(int(size), parse_mtime(mtime), check_path(path))
    raise FsProtocolError(f"unknown request {words[0][:40]!r}")


def encode_request(request: Request) -> bytes:
    """What the guest sends (the guest's own is busybox sh; this is for tests and benches)."""
    match request:
        case Hello(nonce):
            return f"HELLO {nonce}\n".encode()
        case Pull():
            return b"PULL\n"
        case Put(size, mtime_ns, path):
            hexpath = "/".join(path).encode("utf-8", "surrogateescape").hex()
            return f"PUT {size} {format_mtime(mtime_ns)} {hexpath}\n".encode()


def encode_trailer(put: Put) -> bytes:
    """The line that follows a PUT's payload."""
    return f"END {'/'.join(put.path).encode('utf-8', 'surrogateescape').hex()}\n".encode()


def trailer_matches(line: bytes, put: Put) -> bool:
    return line == encode_trailer(put)


def encode_reply(reply: Reply) -> bytes:
    match reply:
        case Hello(nonce):
            return f"HELLO {nonce}\n".encode()
        case Data(size):
            return f"DATA {size}\n".encode()
        case Go():
            return b"GO\n"
        case Ok():
            return b"OK\n"
        case Err(reason):
            # one printable ASCII line, whatever the reason's text was
            clean = "".join(c if " " <= c <= "~" else "?" for c in reason)[:200]
            return f"ERR {clean or 'error'}\n".encode()


def parse_reply(line: bytes) -> Reply:
    """One header line from the host (tests and benches act as the guest with it)."""
    if line.startswith(b"ERR ") and line.endswith(b"\n"):
        return Err(line[4:-1].decode("ascii", "replace"))
    words = _words(line)
    match words:
        case ["HELLO", nonce] if _NONCE.fullmatch(nonce):
            return Hello(nonce)
        case ["DATA", size] if _SIZE.fullmatch(size):
            return Data(int(size))
        case ["GO"]:
            return Go()
        case ["OK"]:
            return Ok()
    raise FsProtocolError(f"unknown reply {words[0][:40]!r}")
