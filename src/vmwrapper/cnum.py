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
