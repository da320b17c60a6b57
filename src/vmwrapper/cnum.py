"""Numbers as BOINC's C parser reads them (``strtol`` base 0, ``strtod``), pure.

BOINC reads integers with ``strtol(text, NULL, 0)``: ``0x1A`` is hex, ``010`` is octal (8),
leading white space and a sign are allowed. We accept exactly the whole-string forms and
reject trailing garbage, so a typo is reported rather than silently truncated.
"""

from __future__ import annotations

import math
import re

_C_INT = re.compile(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\s*")


def c_int(text: str) -> int:
    """Parse ``text`` as strtol base 0 would, requiring the whole string. Raises ValueError."""
    match = _C_INT.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not an integer")
    sign, digits = match.groups()
    if digits[:2] in ("0x", "0X"):
        value = int(digits[2:], 16)
    elif digits.startswith("0") and len(digits) > 1:
        value = int(digits[1:], 8)
    else:
        value = int(digits)
    return -value if sign == "-" else value


def c_double(text: str) -> float:
    """Parse ``text`` as strtod would (finite values only). Empty text is 0, like BOINC."""
    stripped = text.strip()
    if not stripped:
        return 0.0
    value = float(stripped)  # raises ValueError on garbage
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


# -- exactly as BOINC's XML_PARSER takes a number (docs/compatibility.md#job-file) ----------
#
# XML_PARSER calls strtol(text, &end, 0) / strtod(text, &end) on the element's text (already
# stripped of ASCII white space) and takes the value only when ``end`` is the end of the text
# and, for integers and doubles, errno is not ERANGE. A text only partly a number ("1_024",
# "08", "12abc") is therefore not taken at all: the element is ignored.

LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
_STRTOL = re.compile(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_STRTOD = re.compile(
    r"[ \t\n\v\f\r]*[+-]?(?:"
    r"(?P<dec>(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
    r"|(?P<hex>0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?)"
    r"|(?P<inf>[iI][nN][fF](?:[iI][nN][iI][tT][yY])?)"
    r"|(?P<nan>[nN][aA][nN](?:\([0-9A-Za-z_]*\))?))"
)
_SMALLEST_NORMAL = 2.2250738585072014e-308


def strtol_whole(text: str) -> tuple[int, bool] | None:
    """``strtol(text, &end, 0)`` when it consumes all of ``text``: (value, out of range), else
    None. Out of range means errno is ERANGE (the value is then LONG_MIN or LONG_MAX)."""
    match = _STRTOL.fullmatch(text)
    if match is None:
        return None
    sign, digits = match.groups()
    if digits[:2] in ("0x", "0X"):
        value = int(digits[2:], 16)
    elif digits.startswith("0"):
        value = int(digits, 8)
    else:
        value = int(digits)
    value = -value if sign == "-" else value
    if value > LONG_MAX:
        return LONG_MAX, True
    if value < LONG_MIN:
        return LONG_MIN, True
    return value, False


def strtod_whole(text: str) -> tuple[float, bool] | None:
    """``strtod(text, &end)`` (C locale, glibc) when it consumes all of ``text``:
    (value, out of range), else None. Out of range is glibc's ERANGE: overflow to infinity,
    or a non-zero number that comes out subnormal or zero."""
    match = _STRTOD.fullmatch(text)
    if match is None:
        return None
    negative = text.lstrip(" \t\n\v\f\r").startswith("-")
    if match["nan"] is not None:
        return (-math.nan if negative else math.nan), False
    if match["inf"] is not None:
        return (-math.inf if negative else math.inf), False
    if match["hex"] is not None:
        body = match["hex"]
        mantissa = body[2:].split("p")[0].split("P")[0]
        value = float.fromhex(body) if mantissa != "." else 0.0
        nonzero = any(c not in "0." for c in mantissa)
    else:
        body = match["dec"]
        value = float(body)
        nonzero = any(c not in "0." for c in body.split("e")[0].split("E")[0])
    value = -value if negative else value
    out_of_range = math.isinf(value) or (nonzero and abs(value) < _SMALLEST_NORMAL)
    return value, out_of_range


def c_int_cast(value: int) -> int:
    """``(int)`` of a C long on gcc: the low 32 bits, as a signed number."""
    low = value & 0xFFFFFFFF
    return low - 2**32 if low >= 2**31 else low
