"""`vmwrapper doctor`: parsing the probes and the verdict for hosts of every kind (pure)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vmwrapper.doctor import (
    HostFacts,
    KvmBoot,
    Status,
    app_backend,
    cpu_flags,
    diagnose,
    installed_backends,
    parse_modules,
    parse_qemu_version,
    parse_vbox_version,
    read_app_version_backends,
    virt_flag,
)

GIB = 1024**3
CPU_VMX = "processor\t: 0\nflags\t\t: fpu vme de pse vmx sse2\n\nprocessor\t: 1\nflags : fpu\n"
CPU_NONE = "processor\t: 0\nflags\t\t: fpu vme hypervisor sse2\n"

GOOD = HostFacts(
    cpuinfo=CPU_VMX,
    kvm_device=True,
    kvm_accessible=True,
    kvm_boot=KvmBoot.OK,
    modules=frozenset({"kvm", "kvm_intel"}),
    qemu_path="/usr/bin/qemu-system-x86_64",
    qemu_version_text="QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n",
    qemu_img_path="/usr/bin/qemu-img",
    mem_available=8 * GIB,
    disk_free=50 * GIB,
)


def _status(facts: HostFacts, name: str) -> Status:
    return next(c.status for c in diagnose(facts).checks if c.name == name)


def test_parsers() -> None:
    assert cpu_flags(CPU_VMX) == frozenset({"fpu", "vme", "de", "pse", "vmx", "sse2"})
    assert virt_flag(cpu_flags(CPU_VMX)) == "vmx"
    assert virt_flag(frozenset({"svm"})) == "svm"
    assert virt_flag(cpu_flags(CPU_NONE)) == ""
    assert parse_qemu_version("QEMU emulator version 8.1 (x)") == (8, 1, 0)
    assert parse_qemu_version("bash: qemu: not found") is None
    assert parse_vbox_version("WARNING: The vboxdrv kernel module is not loaded.\n7.0.14r161095\n")
    assert parse_vbox_version("7.0.14r161095\n") == (7, 0, 14)
    assert parse_modules("kvm_intel 1 0 - Live 0x0\nkvm 2 1 kvm_intel, Live 0x0\n") == {
        "kvm_intel",
        "kvm",
    }


def test_good_kvm_host_runs_qemu_with_kvm() -> None:
    d = diagnose(GOOD)
    assert (d.backend, d.accel) == ("qemu", "kvm")
    assert d.runnable
    assert "QEMU 7.2.22" in d.summary and "KVM" in d.summary
    assert _status(GOOD, "kvm") is Status.OK
    assert d.fixes == ()


def test_this_lab_host_nested_kvm_without_flags_means_tcg() -> None:
    # lab.md: /dev/kvm works and even a probe boot passes, but no vmx/svm (kvm_pvm).
    facts = dataclasses.replace(GOOD, cpuinfo=CPU_NONE, modules=frozenset({"kvm", "kvm_pvm"}))
    d = diagnose(facts)
    assert (d.backend, d.accel) == ("qemu", "tcg")
    kvm = next(c for c in d.checks if c.name == "kvm")
    assert kvm.status is Status.WARN and "kvm_pvm" in kvm.detail and "TCG" in kvm.detail
    assert _status(facts, "cpu virtualization") is Status.WARN
    assert _status(facts, "module kvm_pvm") is Status.WARN
    assert any("VT-x/AMD-V" in f for f in d.fixes)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"kvm_device": False, "kvm_accessible": False}, "/dev/kvm missing"),
        ({"kvm_accessible": False}, "cannot open"),
        ({"kvm_boot": KvmBoot.FAILED}, "failed or timed out"),
    ],
)
def test_kvm_not_usable_falls_back_to_tcg(change: dict[str, object], reason: str) -> None:
    d = diagnose(dataclasses.replace(GOOD, **change))  # type: ignore[arg-type]
    assert (d.backend, d.accel) == ("qemu", "tcg")
    kvm = next(c for c in d.checks if c.name == "kvm")
    assert reason in kvm.detail and kvm.fix


def test_no_qemu_but_virtualbox() -> None:
    facts = dataclasses.replace(
        GOOD,
        qemu_path="",
        qemu_version_text="",
        vboxmanage_path="/usr/bin/VBoxManage",
        vbox_version_text="7.0.14r161095\n",
    )
    # an app version without a choice of its own runs on VirtualBox where it is installed
    d2 = diagnose(facts)
    assert d2.backend == "virtualbox" and "VirtualBox 7.0.14" in d2.summary
    # asked for QEMU, the host has none
    d = diagnose(dataclasses.replace(facts, backend_env="qemu"))
    assert not d.runnable
    assert "virtualbox (--backend virtualbox)" in d.summary
    assert any("apt-get install qemu-system-x86" in f for f in d.fixes)
    # With KVM loaded, VirtualBox is told it must unload it.
    assert any("modprobe -r kvm_intel" in f for f in d.fixes)


def test_broken_virtualbox_and_missing_qemu_img() -> None:
    facts = dataclasses.replace(
        GOOD,
        qemu_img_path="",
        vboxmanage_path="/usr/bin/VBoxManage",
        vbox_version_text="WARNING: The vboxdrv kernel module is not loaded.",
        backend_env="virtualbox",
    )
    d = diagnose(facts)
    assert not d.runnable
    assert _status(facts, "virtualbox") is Status.FAIL
    assert _status(facts, "qemu-img") is Status.FAIL
    assert any("vboxconfig" in f for f in d.fixes)


def test_foreign_hypervisors() -> None:
    facts = dataclasses.replace(GOOD, modules=frozenset({"vboxdrv", "vmmon"}))
    d = diagnose(facts)
    names = {c.name: c for c in d.checks}
    assert names["module vboxdrv"].status is Status.WARN
    assert "VirtualBox holds VT-x" in names["module vboxdrv"].detail
    assert names["module vmmon"].status is Status.WARN
    assert _status(GOOD, "module kvm_intel") is Status.OK  # KVM alone is fine for QEMU


def test_low_memory_and_disk() -> None:
    facts = dataclasses.replace(GOOD, mem_available=300 * 1024**2, disk_free=GIB // 2)
    assert _status(facts, "memory") is Status.WARN
    assert _status(facts, "disk") is Status.WARN
    assert diagnose(facts).runnable  # warnings do not stop the back end


def test_unknown_backend_env() -> None:
    d = diagnose(dataclasses.replace(GOOD, backend_env="xen"))
    assert not d.runnable
    assert "unknown" in d.fixes[0]


def test_cli_rendering() -> None:
    import io

    from rich.console import Console

    from vmwrapper.cli.doctor import as_dict, render

    d = diagnose(dataclasses.replace(GOOD, cpuinfo=CPU_NONE))
    doc = as_dict(d)
    assert doc["backend"] == "qemu" and doc["accel"] == "tcg"
    checks = doc["checks"]
    assert isinstance(checks, list)
    assert {"name": "qemu-img", "status": "ok", "detail": "/usr/bin/qemu-img", "fix": ""} in checks
    buf = io.StringIO()
    render(d, Console(file=buf, width=200, color_system=None))
    text = buf.getvalue()
    assert "Back end: vmwrapper will run VMs with QEMU 7.2.22, emulated (TCG" in text
    assert "To fix:" in text and "enable VT-x/AMD-V" in text


VBOX_AND_QEMU = dataclasses.replace(
    GOOD, vboxmanage_path="/usr/bin/VBoxManage", vbox_version_text="7.0.14r161095\n"
)


@pytest.mark.parametrize(
    ("facts", "job_backends", "cli", "expected"),
    [
        (VBOX_AND_QEMU, (), "", "virtualbox"),  # an existing VirtualBox app version
        (GOOD, (), "", ""),  # ... on a host with QEMU only: runs nowhere
        (VBOX_AND_QEMU, ("qemu",), "", "qemu"),  # the QEMU opt-in
        (GOOD, ("virtualbox", "qemu"), "", "qemu"),  # runs under both: QEMU without VirtualBox
        (VBOX_AND_QEMU, (), "qemu", "qemu"),  # --backend on the command line
    ],
)
def test_app_backend(
    facts: HostFacts, job_backends: tuple[str, ...], cli: str, expected: str
) -> None:
    answer = app_backend(facts, "app", job_backends=job_backends, command_line_backend=cli)
    assert answer.backend == expected
    assert answer.reason


def test_app_version_back_ends_are_read_from_job_and_command_line(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "job.xml").write_text(
        "<vbox_job><os_name>Linux26_64</os_name><vmwrapper_backends>virtualbox qemu"
        "</vmwrapper_backends></vbox_job>"
    )
    (app / "version.xml").write_text(
        "<version><file><physical_name>job.xml</physical_name>"
        "<logical_name>vbox_job.xml</logical_name></file></version>"
    )
    assert read_app_version_backends(app) == (("virtualbox", "qemu"), "")
    (app / "version.xml").write_text(
        "<version><file><physical_name>job.xml</physical_name>"
        "<logical_name>vbox_job.xml</logical_name></file><cmdline>--backend qemu</cmdline>"
        "</version>"
    )
    assert read_app_version_backends(app) == (("virtualbox", "qemu"), "qemu")


def test_installed_back_ends_are_found_where_the_wrapper_looks(tmp_path: Path) -> None:
    for name in ("VBoxManage", "qemu-system-x86_64"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path)}
    assert installed_backends(env) == frozenset({"virtualbox", "qemu", "fake"})
    empty = tmp_path / "empty"
    empty.mkdir()
    found = installed_backends({"PATH": str(empty), "HOME": str(tmp_path)})
    assert "qemu" not in found and "fake" in found
    # VBoxManage is also looked for in /usr/local/bin and /usr/bin, as the back end does
    system_vbox = any(Path(d, "VBoxManage").is_file() for d in ("/usr/local/bin", "/usr/bin"))
    assert ("virtualbox" in found) is system_vbox
