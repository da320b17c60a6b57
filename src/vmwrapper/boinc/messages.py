"""Codecs for the messages of the BOINC shared-memory segment (docs/compatibility.md#messages).
Pure.

The segment (``boinc_mmap_file``) holds eight 1024-byte channels. A channel is a flag byte (1 =
unread) followed by NUL-terminated text of at most 1022 bytes. This module knows the layout,
turns one channel's 1024 bytes into text and back (:func:`encode_frame`, :func:`decode_frame`)
and formats / parses every message the 7.20.5 client and API exchange. ``shmem.py`` does the
mmap I/O; nothing here touches a file.

Parsing follows BOINC's old substring parser (``lib/parse.h``): a tag is found with ``strstr``,
numbers are read with ``strtod`` / ``strtol`` base 0 right after the tag, so element order,
white space and extra text are free and a missing element leaves the default. The only input we
refuse (with :class:`~vmwrapper.errors.ProtocolError`) is input the C side could not have
produced: a frame of the wrong size, a flag that is not 0/1 where we check it, text that is not
UTF-8, text too long for a channel or holding a NUL.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass

from vmwrapper.errors import ProtocolError

SEGMENT_SIZE = 8192
CHANNEL_SIZE = 1024
#: The longest text a channel carries: 1024 bytes minus the flag byte minus the NUL.
MAX_MESSAGE_BYTES = CHANNEL_SIZE - 2
FLAG_FULL = 1
FLAG_EMPTY = 0


class Channel(enum.IntEnum):
    """The eight channels of ``struct SHARED_MEM`` in their fixed order."""

    PROCESS_CONTROL_REQUEST = 0  # client -> app: suspend, resume, quit, abort, ...
    PROCESS_CONTROL_REPLY = 1  # app -> client: never used
    GRAPHICS_REQUEST = 2  # client -> app: never used
    GRAPHICS_REPLY = 3  # app -> client: web graphics URL, remote desktop address
    HEARTBEAT = 4  # client -> app: once a second
    APP_STATUS = 5  # app -> client: CPU times, fraction done
    TRICKLE_UP = 6  # app -> client: new trickle-up / upload request
    TRICKLE_DOWN = 7  # client -> app: new trickle-down / upload status

    @property
    def offset(self) -> int:
        """Byte offset of the channel's flag byte in the segment."""
        return int(self) * CHANNEL_SIZE


# ---------------------------------------------------------------------------------------------
# one channel: flag byte + NUL-terminated text


def encode_text(text: str) -> bytes:
    """The bytes a channel carries for ``text``; refuses what ``strlcpy`` would cut or end."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates
        raise ProtocolError(f"a channel message must be valid Unicode: {text[:60]!r}") from exc
    if b"\0" in data:
        raise ProtocolError(f"a channel message cannot hold a NUL byte: {text[:60]!r}")
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(
            f"a channel message holds at most {MAX_MESSAGE_BYTES} bytes, this one has "
            f"{len(data)}: {text[:60]!r}... (shorten it)"
        )
    return data


def encode_frame(text: str) -> bytes:
    """The full 1024 bytes of a channel holding the unread message ``text``.

    Bytes after the NUL are zero here; in a live segment they are stale and never read.
    """
    data = encode_text(text)
    return bytes([FLAG_FULL]) + data + b"\0" * (CHANNEL_SIZE - 1 - len(data))


def decode_payload(payload: bytes) -> str:
    """Text of a channel's bytes 1..1023, read as the C side does: up to the first NUL.

    ``strlcpy(msg, buf+1, 1023)`` copies at most 1022 bytes, so a payload without a NUL is cut
    there.
    """
    end = payload.find(b"\0")
    data = payload[: MAX_MESSAGE_BYTES if end < 0 else min(end, MAX_MESSAGE_BYTES)]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"channel text is not UTF-8: {data[:60]!r}") from exc


def decode_frame(frame: bytes) -> str | None:
    """The unread message in a channel's 1024 bytes, or None if the channel is empty."""
    if len(frame) != CHANNEL_SIZE:
        raise ProtocolError(f"a channel is {CHANNEL_SIZE} bytes, got {len(frame)}")
    if frame[0] == FLAG_EMPTY:
        return None
    return decode_payload(frame[1:])


# ---------------------------------------------------------------------------------------------
# BOINC's substring parser (lib/parse.h), on text

_STRTOD = re.compile(
    r"[ \t\n\v\f\r]*[+-]?(?:"
    r"0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?"
    r"|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
    r"|inf(?:inity)?|nan(?:\([0-9A-Za-z_]*\))?"
    r")",
    re.IGNORECASE,
)
_STRTOL = re.compile(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_DBL_MIN = 2.2250738585072014e-308
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


def _strtod_prefix(text: str) -> float | None:
    """``strtod`` on the start of ``text`` as BOINC's parse_double uses it.

    Returns None where parse_double fails (ERANGE, non-finite); no number at all reads as 0.0.
    """
    match = _STRTOD.match(text)
    if match is None:
        return 0.0
    token = match.group(0).strip()
    body = token.lstrip("+-")
    low = body.lower()
    if low.startswith(("inf", "nan")):
        return None
    sign = -1.0 if token.startswith("-") else 1.0
    if low.startswith("0x"):
        mantissa = low[2:].split("p")[0]
        try:
            value = sign * float.fromhex(body if "p" in low else body + "p0")
        except OverflowError:
            return None
    else:
        mantissa = low.split("e")[0]
        value = float(token)
    if math.isinf(value):
        return None  # ERANGE: overflow
    if value == 0.0 and mantissa.strip(".0"):
        return None  # ERANGE: a non-zero number underflowed to zero
    if value != 0.0 and abs(value) < _DBL_MIN:
        return None  # ERANGE: glibc reports subnormal results as underflow
    return value


def _strtol_prefix(text: str) -> int | None:
    """``(int) strtol(text, 0, 0)`` as BOINC's parse_int uses it; None on ERANGE."""
    match = _STRTOL.match(text)
    if match is None:
        return 0
    sign, digits = match.groups()
    if digits[:2] in ("0x", "0X"):
        value = int(digits[2:], 16)
    elif digits.startswith("0") and len(digits) > 1:
        value = int(digits[1:], 8)
    else:
        value = int(digits)
    value = -value if sign == "-" else value
    if not _LONG_MIN <= value <= _LONG_MAX:
        return None
    # the long is stored into an int: keep the low 32 bits, two's complement
    value &= 0xFFFFFFFF
    return value - 2**32 if value >= 2**31 else value


def match_tag(text: str, tag: str) -> bool:
    """BOINC's ``match_tag``: a plain substring search."""
    return tag in text


def parse_double(text: str, tag: str) -> float | None:
    """BOINC's ``parse_double``: the number right after ``tag``, or None."""
    at = text.find(tag)
    if at < 0:
        return None
    return _strtod_prefix(text[at + len(tag) :])


def parse_int(text: str, tag: str) -> int | None:
    """BOINC's ``parse_int``: strtol base 0 right after ``tag`` (``010`` is 8), or None."""
    at = text.find(tag)
    if at < 0:
        return None
    return _strtol_prefix(text[at + len(tag) :])


def parse_bool(text: str, name: str) -> bool | None:
    """BOINC's ``parse_bool``: ``<name/>``, ``<name />`` or ``<name>int</name>``, or None."""
    if name not in text:
        return None
    if f"<{name}/>" in text or f"<{name} />" in text:
        return True
    value = parse_int(text, f"<{name}>")
    return None if value is None else value != 0


_ENTITY = re.compile(r"&(lt|gt|quot|apos|amp|#[xX][dDaA]|#[0-9]+);")
_NAMED = {"lt": "<", "gt": ">", "quot": '"', "apos": "'", "amp": "&"}


def xml_unescape(text: str) -> str:
    """BOINC's ``xml_unescape``: named entities, ``&#xD;``/``&#xA;``, ``&#NNN;`` bytes < 256.

    ``&#NNN;`` is one byte, so escapes are undone on bytes: ``&#195;&#169;`` is UTF-8 "é".
    """
    if "&" not in text:
        return text
    raw = bytearray()
    pos = 0
    for match in _ENTITY.finditer(text):
        raw += text[pos : match.start()].encode("utf-8", "surrogatepass")
        name = match.group(1)
        if name in _NAMED:
            raw += _NAMED[name].encode()
        elif name[1:].lower() in ("xd", "xa"):
            raw += b"\r" if name[2].lower() == "d" else b"\n"
        elif int(name[1:]) < 256:
            raw.append(int(name[1:]))
        else:
            raw += match.group(0).encode()
        pos = match.end()
    raw += text[pos:].encode("utf-8", "surrogatepass")
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:  # a lone escaped byte that is not UTF-8
        return raw.decode("utf-8", "replace")


def parse_str(text: str, tag: str) -> str | None:
    """BOINC's ``parse_str``: text from the ``>`` of ``tag`` to the next ``<``, trimmed."""
    at = text.find(tag)
    if at < 0:
        return None
    gt = text.find(">", at)
    if gt < 0:
        return None
    lt = text.find("<", gt + 1)
    if lt < 0:
        return None
    return xml_unescape(text[gt + 1 : lt].strip())


# ---------------------------------------------------------------------------------------------
# process_control_request (client -> app), docs/compatibility.md#messages


class ControlMessage(enum.Enum):
    """The process-control messages the 7.20.5 client sends, exact bytes (no newline)."""

    SUSPEND = "<suspend/>"
    RESUME = "<resume/>"
    QUIT = "<quit/>"
    ABORT = "<abort/>"
    REREAD_APP_INFO = "<reread_app_info/>"
    NETWORK_AVAILABLE = "<network_available/>"


def decode_control(text: str) -> frozenset[ControlMessage]:
    """Every control message found in one channel text (the API matches each by substring)."""
    return frozenset(m for m in ControlMessage if m.value in text)


# ---------------------------------------------------------------------------------------------
# heartbeat (client -> app), docs/compatibility.md#messages


@dataclass(frozen=True)
class Heartbeat:
    """One heartbeat channel message. ``beat`` is False if ``<heartbeat/>`` was missing."""

    wss: float = 0.0
    max_wss: float = 0.0
    network_suspended: bool = False
    beat: bool = True


def format_heartbeat(hb: Heartbeat) -> str:
    """The client's heartbeat text (``app_control.cpp``), e.g.
    ``<heartbeat/><wss>1.000000e+06</wss><max_wss>2.000000e+09</max_wss>``."""
    text = f"<heartbeat/><wss>{hb.wss:e}</wss><max_wss>{hb.max_wss:e}</max_wss>"
    return text + ("<network_suspended/>" if hb.network_suspended else "")


def parse_heartbeat(text: str) -> Heartbeat:
    """Read a heartbeat as the API should: both spellings of network suspension count.

    The 7.20.5 client writes ``<network_suspended/>`` but its API looks for
    ``suspend_network`` (fixed in 8.2.14); we accept both.
    """
    suspended = parse_bool(text, "network_suspended") or parse_bool(text, "suspend_network")
    return Heartbeat(
        wss=parse_double(text, "<wss>") or 0.0,
        max_wss=parse_double(text, "<max_wss>") or 0.0,
        network_suspended=bool(suspended),
        beat=match_tag(text, "<heartbeat/>"),
    )


# ---------------------------------------------------------------------------------------------
# app_status (app -> client), docs/compatibility.md#messages


@dataclass(frozen=True)
class AppStatus:
    """What an app reports once a second. ``fraction_done`` None = not reported (API format)."""

    current_cpu_time: float = 0.0
    checkpoint_cpu_time: float = 0.0
    fraction_done: float | None = None
    other_pid: int | None = None
    bytes_sent: float = 0.0
    bytes_received: float = 0.0
    want_network: bool = False


def format_wrapper_status(status: AppStatus) -> str:
    """``boinc_report_app_status_aux``'s text: the wrapper's format (all three always there)."""
    fraction = 0.0 if status.fraction_done is None else status.fraction_done
    text = (
        f"<current_cpu_time>{status.current_cpu_time:e}</current_cpu_time>\n"
        f"<checkpoint_cpu_time>{status.checkpoint_cpu_time:e}</checkpoint_cpu_time>\n"
        f"<fraction_done>{fraction:e}</fraction_done>\n"
    )
    if status.other_pid:
        text += f"<other_pid>{status.other_pid}</other_pid>\n"
    if status.bytes_sent:
        text += f"<bytes_sent>{status.bytes_sent:f}</bytes_sent>\n"
    if status.bytes_received:
        text += f"<bytes_received>{status.bytes_received:f}</bytes_received>\n"
    return text


def format_api_status(status: AppStatus) -> str:
    """The API timer's text (``update_app_progress``, 7.20.5): optional parts left out."""
    text = (
        f"<current_cpu_time>{status.current_cpu_time:e}</current_cpu_time>\n"
        f"<checkpoint_cpu_time>{status.checkpoint_cpu_time:e}</checkpoint_cpu_time>\n"
    )
    if status.want_network:
        text += "<want_network>1</want_network>\n"
    if status.fraction_done is not None:
        text += f"<fraction_done>{status.fraction_done:e}</fraction_done>\n"
    if status.bytes_sent:
        text += f"<bytes_sent>{status.bytes_sent:f}</bytes_sent>\n"
    if status.bytes_received:
        text += f"<bytes_received>{status.bytes_received:f}</bytes_received>\n"
    return text


def parse_app_status(text: str) -> AppStatus:
    """Read a status message as the 7.20.5 client does (``get_app_status_msg``).

    Both CPU times start at 0 (a message without them reports 0), negative CPU is clamped to 0
    and a fraction done of exactly 0 is ignored (None).
    """
    fraction = parse_double(text, "<fraction_done>")
    other_pid = parse_int(text, "<other_pid>")
    return AppStatus(
        current_cpu_time=max(parse_double(text, "<current_cpu_time>") or 0.0, 0.0),
        checkpoint_cpu_time=max(parse_double(text, "<checkpoint_cpu_time>") or 0.0, 0.0),
        fraction_done=fraction if fraction else None,
        other_pid=other_pid if other_pid else None,
        bytes_sent=parse_double(text, "<bytes_sent>") or 0.0,
        bytes_received=parse_double(text, "<bytes_received>") or 0.0,
        want_network=bool(parse_int(text, "<want_network>")),
    )


# ---------------------------------------------------------------------------------------------
# trickle_up (app -> client), trickle_down (client -> app), docs/compatibility.md#messages

HAVE_NEW_TRICKLE_UP = "<have_new_trickle_up/>\n"
HAVE_NEW_UPLOAD_FILE = "<have_new_upload_file/>\n"
HAVE_TRICKLE_DOWN = "<have_trickle_down/>\n"
UPLOAD_FILE_STATUS = "<upload_file_status/>\n"


@dataclass(frozen=True)
class TrickleUpNotice:
    """The app's notice on the trickle_up channel: a new trickle file and/or upload request."""

    trickle_up: bool = False
    upload_file: bool = False

    def __bool__(self) -> bool:
        return self.trickle_up or self.upload_file


def format_trickle_up_notice(notice: TrickleUpNotice) -> str:
    """``<have_new_trickle_up/>\\n`` and/or ``<have_new_upload_file/>\\n``, in the API's order."""
    return (HAVE_NEW_TRICKLE_UP if notice.trickle_up else "") + (
        HAVE_NEW_UPLOAD_FILE if notice.upload_file else ""
    )


def parse_trickle_up_notice(text: str) -> TrickleUpNotice:
    return TrickleUpNotice(
        trickle_up=match_tag(text, "<have_new_trickle_up/>"),
        upload_file=match_tag(text, "<have_new_upload_file/>"),
    )


@dataclass(frozen=True)
class TrickleDownNotice:
    """The client's notice on the trickle_down channel (one of the two per message)."""

    trickle_down: bool = False
    upload_status: bool = False


def format_trickle_down_notice(notice: TrickleDownNotice) -> str:
    """The client sends these separately; combined here only if both are asked for."""
    return (HAVE_TRICKLE_DOWN if notice.trickle_down else "") + (
        UPLOAD_FILE_STATUS if notice.upload_status else ""
    )


def parse_trickle_down_notice(text: str) -> TrickleDownNotice:
    return TrickleDownNotice(
        trickle_down=match_tag(text, "<have_trickle_down/>"),
        upload_status=match_tag(text, "<upload_file_status/>"),
    )


# ---------------------------------------------------------------------------------------------
# graphics_reply (app -> client), docs/compatibility.md#messages

#: The client keeps at most this many characters of a graphics reply value.
MAX_GRAPHICS_VALUE = 255


@dataclass(frozen=True)
class GraphicsReply:
    web_graphics_url: str | None = None
    remote_desktop_addr: str | None = None


def format_web_graphics_url(url: str) -> str:
    return f"<web_graphics_url>{url}</web_graphics_url>"


def format_remote_desktop_addr(addr: str) -> str:
    return f"<remote_desktop_addr>{addr}</remote_desktop_addr>"


def parse_graphics_reply(text: str) -> GraphicsReply:
    url = parse_str(text, "<web_graphics_url>")
    addr = parse_str(text, "<remote_desktop_addr>")
    return GraphicsReply(
        web_graphics_url=None if url is None else url[:MAX_GRAPHICS_VALUE],
        remote_desktop_addr=None if addr is None else addr[:MAX_GRAPHICS_VALUE],
    )
