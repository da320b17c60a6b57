"""Pure pieces of the wrapper's reporting: the VM process's nice value and the error report
that goes into stderr (vboxwrapper's screenshot block and hypervisor log dump,
docs/compatibility.md#logging-and-error-reports)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping

#: BOINC's PROCESS_MEDIUM_PRIORITY: the nice vboxwrapper gives the VM once it is online.
VM_NICE = 10
#: cc_config's process_priority 0..5 as Unix nice values (the client's own mapping).
CLIENT_PRIORITY_NICE = (19, 10, 0, -10, -15, -20)


def vm_nice(no_priority_change: bool, process_priority: int, own_nice: int) -> int | None:
    """The nice value for the VM while it computes, or None to leave it alone.

    The volunteer's ``process_priority`` (cc_config) wins over vboxwrapper's 10, and the VM
    never gets a better priority than the wrapper has (that would need privilege anyway).
    """
    if no_priority_change:
        return None
    wanted = VM_NICE
    if 0 <= process_priority < len(CLIENT_PRIORITY_NICE):
        wanted = CLIENT_PRIORITY_NICE[process_priority]
    return max(wanted, own_nice)


def screenshot_block(png: bytes) -> str:
    """vboxwrapper's "Screen Shot Information" block: MD5 and base64 of the PNG."""
    return (
        "Screen Shot Information (Base64 Encoded PNG):\n"
        f"MD5 Signature: {hashlib.md5(png).hexdigest()}\n"
        f"Data: {base64.b64encode(png).decode('ascii')}\n"
    )


def error_report(
    png: bytes | None, sections: Mapping[str, str], exit_code: int | None = None
) -> str:
    """The text of an error report: screenshot block, then each log under its title, then the
    hypervisor's exit code when it is known and non-zero."""
    parts: list[str] = []
    if png:
        parts.append(screenshot_block(png))
    for title, text in sections.items():
        body = text if text.endswith("\n") or not text else text + "\n"
        parts.append(f"{title}:\n\n{body}")
    if exit_code:
        parts.append(f"VM Exit Code: {exit_code} (0x{exit_code & 0xFFFFFFFF:x})\n")
    return "\n".join(parts)


__all__ = ["CLIENT_PRIORITY_NICE", "VM_NICE", "error_report", "screenshot_block", "vm_nice"]
