"""KVM-or-TCG decision helpers (pure parts) and the probe boot sector."""

from __future__ import annotations

from vmwrapper.hypervisor.qemu.accel import (
    DEBUG_EXIT_PORT,
    PROBE_EXIT_CODE,
    PROBE_EXIT_VALUE,
    cpu_has_virt_flags,
    probe_boot_sector,
)

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
