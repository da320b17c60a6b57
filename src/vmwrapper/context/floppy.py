"""The floppyio contextualization image: vboxwrapper's exact byte layout
(docs/compatibility.md#floppy-contextualization).

vboxwrapper gives the guest a 28672-byte floppy image whose first half carries a message from
the host (the slot's ``init_data.xml``, or with ``enable_cern_dataformat`` six ``NAME=value``
lines) and whose last two bytes are "data waiting" flags::

    offset 0     .. 14334   host -> guest buffer (14335 bytes; payload <= 14334, NUL-padded)
    offset 14335 .. 28669   guest -> host buffer (the wrapper never reads it)
    offset 28670 (0x6FFE)   0x01 = data for the guest
    offset 28671 (0x6FFF)   data for the host (the host clears it to 0x00)

Everything here is pure byte arithmetic; :func:`write_floppy` is the one small writer.
vboxwrapper truncates a long payload silently (docs/compatibility.md#floppy-contextualization); we
truncate the same way so guests see the same bytes, but say so in :attr:`FloppyImage.notes`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmwrapper.boinc.init_data import AppInitData

#: Total image size (``DEFAULT_FIO_FLOPPY_SIZE``).
FLOPPY_SIZE = 28672
#: The host -> guest buffer: bytes 0 .. 14334.
HOST_TO_GUEST_OFFSET = 0
HOST_TO_GUEST_SIZE = 14335
#: The longest payload: one byte of the buffer always stays NUL, as a terminator.
MAX_PAYLOAD = HOST_TO_GUEST_SIZE - 1
#: The guest -> host buffer: bytes 14335 .. 28669.
GUEST_TO_HOST_OFFSET = HOST_TO_GUEST_OFFSET + HOST_TO_GUEST_SIZE
GUEST_TO_HOST_SIZE = 14335
#: Flag bytes at the very end of the image.
FLAG_FOR_GUEST_OFFSET = 28670
FLAG_FOR_HOST_OFFSET = 28671
FLAG_SET = 0x01

#: The CERN-format keys, in the order vboxwrapper writes them.
CERN_KEYS = (
    "BOINC_USERNAME",
    "BOINC_AUTHENTICATOR",
    "BOINC_USERID",
    "BOINC_HOSTID",
    "BOINC_USER_TOTAL_CREDIT",
    "BOINC_HOST_TOTAL_CREDIT",
)


@dataclass(frozen=True)
class FloppyImage:
    """A complete floppy image and what the reader should know about how it was made."""

    data: bytes
    payload_size: int  # bytes of payload actually stored (after truncation)
    truncated_bytes: int = 0  # bytes of payload that did not fit
    notes: tuple[str, ...] = ()

    @property
    def truncated(self) -> bool:
        return self.truncated_bytes > 0


def build_floppy(payload: bytes) -> FloppyImage:
    """Lay ``payload`` out as vboxwrapper's FloppyIO ``send()`` does, on a zeroed image."""
    stored = payload[:MAX_PAYLOAD]
    cut = len(payload) - len(stored)
    notes: tuple[str, ...] = ()
    if cut:
        notes = (
            f"floppy payload is {len(payload)} bytes; only the first {MAX_PAYLOAD} fit the "
            f"host->guest buffer, {cut} bytes were cut (vboxwrapper cuts silently too). "
            "Fix: pass less data, or use ISO contextualization or the shared directory.",
        )
    image = bytearray(FLOPPY_SIZE)
    image[HOST_TO_GUEST_OFFSET : HOST_TO_GUEST_OFFSET + len(stored)] = stored
    image[FLAG_FOR_GUEST_OFFSET] = FLAG_SET
    return FloppyImage(bytes(image), len(stored), cut, notes)


def format_g17(value: float) -> str:
    """C's ``printf("%.17g")``: Python's %-formatting follows the same C rules."""
    return "%.17g" % value  # noqa: UP031 - the C conversion is the point


def _one_line(text: str) -> str:
    # A line break inside a value would forge further NAME=value lines; BOINC never sends one,
    # so replacing it changes nothing for real data.
    return text.replace("\r", " ").replace("\n", " ")


def cern_payload(aid: AppInitData) -> bytes:
    """The ``enable_cern_dataformat`` payload: six ``NAME=value`` lines, each ``\\n``-ended."""
    values = (
        _one_line(aid.user_name),
        _one_line(aid.authenticator),
        str(int(aid.userid)),
        str(int(aid.hostid)),
        format_g17(aid.user_total_credit),
        format_g17(aid.host_total_credit),
    )
    text = "".join(f"{key}={value}\n" for key, value in zip(CERN_KEYS, values, strict=True))
    return text.encode("utf-8")


def plain_payload(init_data_xml: bytes) -> bytes:
    """The default payload: the slot's ``init_data.xml`` bytes, unchanged."""
    return bytes(init_data_xml)


def read_host_to_guest(image: bytes) -> bytes | None:
    """What a guest reads: the payload up to its first NUL, or None when the flag is not set."""
    _check_size(image)
    if image[FLAG_FOR_GUEST_OFFSET] != FLAG_SET:
        return None
    buffer = image[HOST_TO_GUEST_OFFSET : HOST_TO_GUEST_OFFSET + HOST_TO_GUEST_SIZE]
    return buffer.split(b"\0", 1)[0]


def read_guest_to_host(image: bytes) -> bytes | None:
    """The guest's answer (up to its first NUL), or None when the guest set no flag."""
    _check_size(image)
    if image[FLAG_FOR_HOST_OFFSET] != FLAG_SET:
        return None
    buffer = image[GUEST_TO_HOST_OFFSET : GUEST_TO_HOST_OFFSET + GUEST_TO_HOST_SIZE]
    return buffer.split(b"\0", 1)[0]


def parse_cern_payload(payload: bytes) -> dict[str, str]:
    """The ``NAME=value`` pairs of a CERN-format payload (a guest-side reader's view)."""
    pairs: dict[str, str] = {}
    for line in payload.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            pairs[key] = value
    return pairs


def _check_size(image: bytes) -> None:
    if len(image) < FLOPPY_SIZE:
        raise ValueError(f"a floppyio image has {FLOPPY_SIZE} bytes, this one {len(image)}")


def write_floppy(path: Path, floppy: FloppyImage) -> None:
    """Write the image as a whole (temp file + rename), so a guest never sees half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as out:
        out.write(floppy.data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
