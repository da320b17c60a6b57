"""KVM-or-TCG decision helpers (pure parts) and the probe boot sector."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmwrapper.errors import BackendError
from vmwrapper.hypervisor.base import Backend, VmConfig, VmState
from vmwrapper.hypervisor.qemu.accel import (
    DEBUG_EXIT_PORT,
    PROBE_EXIT_CODE,
    PROBE_EXIT_VALUE,
    AccelChoice,
    AccelSetting,
    bundled_data_dir,
    cpu_has_virt_flags,
    listed_accelerators,
    probe_argv,
    probe_boot_sector,
    software_emulation_refused,
)
from vmwrapper.hypervisor.qemu.backend import ACCEL_ENV, QemuBackend
from vmwrapper.hypervisor.qemu.cmdline import Accel

DATA = Path(__file__).resolve().parents[1] / "data" / "qemu"

# What the lab hosts show: a kvm_pvm nested KVM, no vmx/svm flag.
PVM_CPUINFO = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae hypervisor lahf_lm\n"
INTEL_CPUINFO = "processor\t: 0\nflags\t\t: fpu vme vmx ept\n"
AMD_CPUINFO = "processor\t: 0\nflags\t\t: fpu svm npt\n"


def test_virt_flags() -> None:
    assert not cpu_has_virt_flags(PVM_CPUINFO)
    assert cpu_has_virt_flags(INTEL_CPUINFO)
    assert cpu_has_virt_flags(AMD_CPUINFO)
    assert not cpu_has_virt_flags("model name\t: vmx-like cpu svm\n")  # not a flags line


def test_probe_boot_sector() -> None:
    sector = probe_boot_sector()
    assert len(sector) == 512
    assert sector[510:] == b"\x55\xaa"
    assert sector[:5] == bytes([0xBA, DEBUG_EXIT_PORT, 0x00, 0xB0, PROBE_EXIT_VALUE])
    assert PROBE_EXIT_CODE == (PROBE_EXIT_VALUE << 1) | 1


def test_accel_setting_from_argument_or_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = VmConfig(name="vm", description="r", slot_dir=tmp_path, project_dir=tmp_path)
    monkeypatch.delenv(ACCEL_ENV, raising=False)
    assert QemuBackend(config).accel_setting is AccelSetting.AUTO
    monkeypatch.setenv(ACCEL_ENV, "tcg")
    assert QemuBackend(config).accel_setting is AccelSetting.TCG
    assert QemuBackend(config, accel="kvm").accel_setting is AccelSetting.KVM  # argument wins
    monkeypatch.setenv(ACCEL_ENV, "hvf")
    with pytest.raises(BackendError, match="VMWRAPPER_ACCEL"):
        QemuBackend(config)


def test_qemu_backend_is_a_backend(tmp_path: Path) -> None:
    config = VmConfig(name="vm", description="r", slot_dir=tmp_path, project_dir=tmp_path)
    backend = QemuBackend(config, accel="tcg")
    assert isinstance(backend, Backend)
    assert backend.name == "qemu"
    assert backend.status().state is VmState.ABSENT  # nothing created, no process
    assert backend.pid() is None and backend.cpu_time() == 0.0


# ---- a 64-bit guest under software emulation (docs/compatibility.md#software-emulation) -----

TCG = AccelChoice(Accel.TCG, "/dev/kvm missing or not accessible")
KVM = AccelChoice(Accel.KVM, "KVM probe boot succeeded")


@pytest.mark.parametrize(
    ("choice", "os_name", "allowed", "setting", "refused"),
    [
        (TCG, "Linux26_64", False, AccelSetting.AUTO, True),  # vboxwrapper's contract
        (TCG, "Linux26_64", True, AccelSetting.AUTO, False),  # the app version opted in
        (TCG, "Linux26_64", False, AccelSetting.TCG, False),  # TCG forced on purpose
        (TCG, "Linux26", False, AccelSetting.AUTO, False),  # a 32-bit guest runs anyway
        (KVM, "Linux26_64", False, AccelSetting.AUTO, False),  # accelerated: nothing to refuse
    ],
)
def test_software_emulation_rule(
    choice: AccelChoice, os_name: str, allowed: bool, setting: AccelSetting, refused: bool
) -> None:
    why = software_emulation_refused(choice, os_name, allowed=allowed, setting=setting)
    assert bool(why) is refused
    if refused:
        assert "64-bit guest" in why and choice.reason in why


@pytest.mark.parametrize(
    ("capture", "listed"),
    [
        ("accel-help-windows.txt", {"tcg", "whpx"}),  # CRLF line ends
        ("accel-help-linux.txt", {"tcg", "kvm"}),
    ],
)
def test_listed_accelerators_from_real_qemu_builds(capture: str, listed: set[str]) -> None:
    """WHPX is probed only where QEMU lists it (tests/data/qemu/README.md)."""
    assert listed_accelerators((DATA / capture).read_bytes().decode()) == listed


def test_bundled_data_dir_only_beside_a_qemu_that_ships_its_firmware(tmp_path: Path) -> None:
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.write_text("#!/bin/sh\n")
    qemu.chmod(0o755)
    assert bundled_data_dir(str(qemu)) is None  # a distribution's QEMU knows its data dir
    data = tmp_path / "share" / "qemu"
    data.mkdir(parents=True)
    (data / "bios-256k.bin").write_bytes(b"")
    assert bundled_data_dir(str(qemu)) == data
    assert bundled_data_dir(str(tmp_path / "missing")) is None
    argv = probe_argv(str(qemu), Accel.WHPX, tmp_path / "probe.img", data)
    assert argv[argv.index("-accel") + 1] == "whpx" and argv[-2:] == ["-L", str(data)]


def test_accel_setting_whpx(tmp_path: Path) -> None:
    config = VmConfig(name="vm", description="r", slot_dir=tmp_path, project_dir=tmp_path)
    assert QemuBackend(config, accel="whpx").accel_setting is AccelSetting.WHPX
