"""The guest's serial console → guest log lines and the guest's marker lines (pure).

The back end reads the console file in the slot and feeds the new bytes here; this module
splits them into lines (a partial last line waits for its newline) and notes the markers of
the guest contract (docs/guest-image.md#what-the-guest-does): ``VMWRAPPER_GUEST_ERROR: <text>``
(fatal guest error), ``VMWRAPPER_GUEST_DONE status=<N>`` (the job finished and the final push is
done) and vboxwrapper's ``EXIT_OUT_OF_MEMORY`` (the guest ran out of memory).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vmwrapper.hypervisor.base import GUEST_OOM_MARKER, done_status

GUEST_ERROR_MARKER = "VMWRAPPER_GUEST_ERROR:"
GUEST_PROGRESS_MARKER = "VMWRAPPER_GUEST:"
# Terminal escape sequences (colours, cursor moves) that a guest may print to its console.
_ANSI_RE = re.compile(r"\x1b\[[0-9;?=]*[A-Za-z]|\x1b[()][A-Za-z0-9]")
#: A line longer than this is cut (a guest printing without newlines must not grow memory).
MAX_LINE = 4096


def clean_line(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    text = _ANSI_RE.sub("", text).replace("\r", "").replace("\x00", "")
    return text.rstrip()


@dataclass
class ConsoleLines:
    """Line assembler plus the markers seen so far in this run."""

    partial: bytes = b""
    guest_error: str | None = None
    done_status: int | None = None
    out_of_memory: bool = False

    def feed(self, data: bytes) -> list[str]:
        """Complete lines in ``partial + data``; the unterminated rest is kept."""
        *lines, self.partial = (self.partial + data).split(b"\n")
        if len(self.partial) > MAX_LINE:
            lines.append(self.partial)
            self.partial = b""
        return self._scan([clean_line(raw) for raw in lines])

    def flush(self) -> list[str]:
        """The unterminated last line too (the VM has exited, nothing more will come)."""
        rest, self.partial = self.partial, b""
        return self._scan([clean_line(rest)]) if rest.strip() else []

    def _scan(self, lines: list[str]) -> list[str]:
        kept = [line for line in lines if line]
        for line in kept:
            if GUEST_ERROR_MARKER in line and self.guest_error is None:
                self.guest_error = line.split(GUEST_ERROR_MARKER, 1)[1].strip()
            if GUEST_OOM_MARKER in line:
                self.out_of_memory = True
            status = done_status(line)
            if status is not None:
                self.done_status = status
        return kept
