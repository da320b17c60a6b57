"""Back-end selection: the rule (`--backend`, VMWRAPPER_BACKEND, <vmwrapper_backends>, what is
installed) and building a back end by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmwrapper.errors import CommandLineError
from vmwrapper.hypervisor.base import Backend, VmConfig
from vmwrapper.hypervisor.fake import SCRIPT_FILE, FakeBackend, FakeScript, GuestStep
from vmwrapper.supervisor.select import choose_backend, make_backend


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


# ---- which back end runs a job (docs/compatibility.md#back-end-selection) -------------------

BOTH = frozenset({"virtualbox", "qemu", "fake"})
QEMU_ONLY = frozenset({"qemu", "fake"})
VBOX_ONLY = frozenset({"virtualbox", "fake"})
NEITHER = frozenset({"fake"})


@pytest.mark.parametrize(
    ("job_backends", "installed", "expected"),
    [
        # an existing VirtualBox app version (no opt-in) runs on VirtualBox wherever it is
        ((), BOTH, "virtualbox"),
        ((), VBOX_ONLY, "virtualbox"),
        # ... and nowhere else: its image expects Guest Additions, vboxsf, VirtualBox's disks
        ((), QEMU_ONLY, ""),
        # the app version asks for QEMU
        (("qemu",), BOTH, "qemu"),
        (("qemu",), VBOX_ONLY, ""),
        # its image runs under both: VirtualBox first, QEMU where VirtualBox is missing
        (("virtualbox", "qemu"), BOTH, "virtualbox"),
        (("virtualbox", "qemu"), QEMU_ONLY, "qemu"),
        (("qemu", "virtualbox"), VBOX_ONLY, "virtualbox"),
        (("virtualbox", "qemu"), NEITHER, ""),
    ],
)
def test_choose_backend_rule(
    job_backends: tuple[str, ...], installed: frozenset[str], expected: str
) -> None:
    choice = choose_backend(job_backends=job_backends, installed=installed)
    assert choice.name == expected
    assert choice.reason


def test_no_back_end_names_what_is_missing() -> None:
    choice = choose_backend(installed=QEMU_ONLY)
    assert not choice.found
    assert "VirtualBox (VBoxManage)" in choice.reason
    assert "does not ask for QEMU" in choice.reason
    choice = choose_backend(job_backends=("virtualbox", "qemu"), installed=NEITHER)
    assert "VirtualBox (VBoxManage) or QEMU (qemu-system-x86_64)" in choice.reason


def test_command_line_and_environment_win_over_the_job_file() -> None:
    assert choose_backend(command_line="qemu", installed=BOTH).name == "qemu"
    assert choose_backend(
        environment="qemu", job_backends=("virtualbox",), installed=BOTH
    ).name == ("qemu")
    assert choose_backend(command_line="virtualbox", environment="qemu", installed=BOTH).name == (
        "virtualbox"
    )
    missing = choose_backend(command_line="virtualbox", installed=QEMU_ONLY)
    assert not missing.found and "--backend virtualbox" in missing.reason
    assert choose_backend(environment="fake", installed=frozenset()).name == "fake"


def test_the_reason_says_what_was_skipped() -> None:
    choice = choose_backend(job_backends=("virtualbox", "qemu"), installed=QEMU_ONLY)
    assert "VirtualBox (VBoxManage) not installed" in choice.reason
