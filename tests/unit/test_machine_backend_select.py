"""Back-end selection by name (`--backend`, VMWRAPPER_BACKEND)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmwrapper.errors import CommandLineError
from vmwrapper.hypervisor.base import Backend, VmConfig
from vmwrapper.hypervisor.fake import SCRIPT_FILE, FakeBackend, FakeScript, GuestStep
from vmwrapper.supervisor.select import make_backend


def config(tmp_path: Path) -> VmConfig:
    return VmConfig(name="boinc_x", description="r", slot_dir=tmp_path, project_dir=tmp_path)


def test_fake_reads_its_script_from_the_slot(tmp_path: Path) -> None:
    script = FakeScript(boot_seconds=2, steps=(GuestStep(1.0, "write", "f", "x"),))
    (tmp_path / SCRIPT_FILE).write_text(script.to_json())
    backend = make_backend("fake", config(tmp_path))
    assert isinstance(backend, FakeBackend) and isinstance(backend, Backend)
    assert backend.script == script


def test_qemu_is_constructed_without_starting_anything(tmp_path: Path) -> None:
    backend = make_backend("qemu", config(tmp_path))
    assert backend.name == "qemu" and not backend.exists() and backend.pid() is None


def test_unknown_back_end_says_what_to_use(tmp_path: Path) -> None:
    with pytest.raises(CommandLineError, match="fake, qemu, virtualbox"):
        make_backend("vmware", config(tmp_path))
