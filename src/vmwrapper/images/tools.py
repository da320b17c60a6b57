"""Running the host tools the builder needs (apt-get, dpkg-deb, mkfs.fat, mtools, syslinux,
qemu-img), with a timeout and errors that say what was run and what it answered."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from vmwrapper.errors import ImageError

log = logging.getLogger(__name__)

#: Which Debian package provides each tool (for the error message that says what to install).
PROVIDERS = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "mkfs.fat": "dosfstools",
    "mcopy": "mtools",
    "mdir": "mtools",
    "mdel": "mtools",
    "syslinux": "syslinux",
    "qemu-img": "qemu-utils",
}


def require(tool: str) -> str:
    found = shutil.which(tool) or next(
        (p for p in (f"/usr/sbin/{tool}", f"/sbin/{tool}") if os.access(p, os.X_OK)), None
    )
    if not found:
        package = PROVIDERS.get(tool, tool)
        raise ImageError(
            f"{tool} is not installed; install the Debian package {package} "
            "(scripts/install-deps.sh installs everything the image builder needs)"
        )
    return found


def run(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    timeout: float = 600,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run ``argv``; return its stdout. Raises ImageError with the command and its output."""
    exe = require(argv[0])
    full_env = {**os.environ, **(env or {})}
    log.debug("running %s", " ".join(argv), extra={"event": "image_tool", "argv": list(argv)})
    try:
        proc = subprocess.run(
            [exe, *argv[1:]],
            cwd=cwd,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"{' '.join(argv)} did not finish within {timeout:.0f} s") from exc
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise ImageError(f"{' '.join(argv)} failed with exit code {proc.returncode}:\n{tail}")
    return proc.stdout
