"""The multiattach race lock: one per parent image, so concurrent wrappers don't race
(docs/compatibility.md#multiattach-lock).

vboxwrapper uses a POSIX shared-memory object created with O_EXCL, which outlives a crashed
wrapper and then blocks every other task for 90 s before failing
(docs/compatibility.md#multiattach-lock). An ``flock`` on a lock file (a byte-range lock on
Windows: vmwrapper.hostos.locks) is released by the kernel when its holder dies, so a crash
cannot wedge the parent. The file name keeps vboxwrapper's
``boinc_lock_`` + 16 hex of MD5(parent path).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from vmwrapper.errors import BackendError
from vmwrapper.hostos import locks

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 90.0
ERR_TIMEOUT = -182
ERR_FOPEN = -108


def lock_name(parent: Path) -> str:
    return "boinc_lock_" + hashlib.md5(str(parent).encode()).hexdigest()[:16]


def default_lock_dir() -> Path:
    return Path(tempfile.gettempdir()) / "vmwrapper-locks"


class MultiattachLock:
    """``with MultiattachLock(parent): ...`` holds the lock for ``parent`` inside the block."""

    def __init__(
        self,
        parent: Path,
        *,
        lock_dir: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.parent = parent
        self.path = (lock_dir or default_lock_dir()) / (lock_name(parent) + ".lock")
        self.timeout = timeout
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise BackendError(
                f"cannot open the multiattach lock file {self.path}: {exc}; "
                "fix: make its directory writable for the BOINC user",
                code=ERR_FOPEN,
            ) from exc
        deadline = self._clock() + self.timeout
        while not locks.try_lock(fd):
            if self._clock() >= deadline:
                os.close(fd)
                raise BackendError(
                    f"another task held the multiattach lock for {self.parent} longer than "
                    f"{self.timeout:.0f} s ({self.path})",
                    code=ERR_TIMEOUT,
                ) from None
            # vboxwrapper's randomised back-off: 0.7 s + up to 2.4 s
            self._sleep(0.7 + 2.4 * self._rng.random())
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        log.debug("multiattach lock %s acquired", self.path)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            locks.unlock(self._fd)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> MultiattachLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
