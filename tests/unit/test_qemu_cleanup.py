"""QemuBackend.cleanup(): as QEMUMachine's shutdown, the slot's files are removed even when
stopping QEMU fails (the failure still reaches the caller)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmwrapper.hypervisor.base import SCREENSHOT_FILE, VmConfig, VmState
from vmwrapper.hypervisor.qemu.backend import QemuBackend


class _StopFails(QemuBackend):
    """A back end whose stop fails in a way no QEMU here can be made to (a wrapper bug)."""

    def poweroff(self, timeout: float = 30.0) -> None:
        raise RuntimeError("stop failed")


def _slot_files(backend: QemuBackend, slot: Path) -> list[Path]:
    f = backend.files
    paths = [f.disk_overlay, f.cache_overlay, f.state_disk, f.console, f.stderr, f.pidfile]
    paths += [slot / SCREENSHOT_FILE, slot / "qemu-net-sent.0.pcap"]
    for path in paths:
        path.write_bytes(b"x")
    return paths


@pytest.mark.parametrize("backend_class", [QemuBackend, _StopFails])
def test_cleanup_removes_the_files_always(tmp_path: Path, backend_class: type[QemuBackend]) -> None:
    config = VmConfig(name="vm", description="r", slot_dir=tmp_path, project_dir=tmp_path)
    backend = backend_class(config, accel="tcg")
    paths = _slot_files(backend, tmp_path)
    if backend_class is _StopFails:
        with pytest.raises(RuntimeError, match="stop failed"):
            backend.cleanup()
    else:
        backend.cleanup()
    assert [p for p in paths if p.exists()] == []
    assert backend.status().state is VmState.ABSENT
