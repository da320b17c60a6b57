"""Text helpers the back ends share for their error reports (pure)."""

from __future__ import annotations


def whole_lines_tail(text: str, limit: int) -> str:
    """The last ``limit`` characters of ``text``, cut forward to a whole line (vboxwrapper's
    8 KB log tails in the hypervisor dump)."""
    if len(text) > limit:
        text = text[-limit:]
        text = text[text.find("\n") + 1 :]
    return text


__all__ = ["whole_lines_tail"]
