"""Real VBoxManage outputs (tests/data/vbox/real/, sources in its README): the cause and the
reaction each gets (docs/compatibility.md#virtualbox-failures) match what vboxwrapper does, and
the simulator's error format is VirtualBox's."""

from __future__ import annotations

import pytest

from helpers.vbox_real import CONTEXT_RE, DETAILS_RE, ERRORS, EXPECTED, REAL
from vmwrapper.hypervisor.base import VmState
from vmwrapper.hypervisor.virtualbox import failures, logs, output


def test_every_real_file_is_listed_here_and_in_the_readme() -> None:
    files = {p.name for p in ERRORS.glob("*.txt")}
    assert files == set(EXPECTED)
    readme = (REAL / "README.md").read_text(encoding="utf-8")
    for name in files:
        assert f"errors/{name}" in readme


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_error_is_classified_as_vboxwrapper_reacts(name: str) -> None:
    operation, cause, reaction, diagnoses = EXPECTED[name]
    text = (ERRORS / name).read_text(encoding="utf-8")
    hresult = output.error_code(text)
    assert failures.cause_of(text, hresult) is cause
    assert failures.reaction(operation, cause) is reaction
    assert logs.diagnose(text) == diagnoses


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_error_lines_have_virtualboxs_shape(name: str) -> None:
    """The ``Details:`` and ``Context:`` lines of every real output match the shape the
    simulator is checked against (tests/system/test_vbox_real_failures.py)."""
    for line in (ERRORS / name).read_text(encoding="utf-8").splitlines():
        if ": error: Details:" in line:
            assert DETAILS_RE.match(line), line
        if ": error: Context:" in line:
            assert CONTEXT_RE.match(line), line


def test_real_codes_and_names_are_read() -> None:
    text = (ERRORS / "lock_startvm_windows.txt").read_text(encoding="utf-8")
    assert output.error_code(text) == output.VBOX_E_INVALID_OBJECT_STATE
    assert output.error_name(text) == "VBOX_E_INVALID_OBJECT_STATE"
    text = (ERRORS / "startvm_nem_create_failed_hyperv.txt").read_text(encoding="utf-8")
    assert output.error_code(text) == output.E_FAIL  # not the "(Last=0xc000000d/87)" part


@pytest.mark.parametrize(
    ("name", "vm", "uuid", "snapshot", "extra"),
    [
        (
            "vbox60_linux_poweroff_snapshot.txt",
            "ubuntu-18.04-amd64_1549746024485_35372",
            "6294f16b-4f05-4430-afb9-773bdb237aec",
            "base",
            {
                "vrdeproperty[TCP/Ports]": "5947",
                "SATA Controller-ImageUUID-0-0": ("1c182745-4b09-41a1-a147-d3ced46f72f6"),
            },
        ),
        (
            "vbox70_linux_poweroff_encryption_line.txt",
            "manjaro-gnome-x64-full-clean",
            "19e117b3-06f4-4a1e-851d-47336ad6a142",
            "",
            {
                "description": "name1=value1\nname2=value2",
                "BIOS NVRAM File": "/home/user/VirtualBox VMs/manjaro-gnome-x64-full-clean/"
                "manjaro-gnome-x64-full-clean.nvram",
                "graphicscontroller": "vmsvga",
            },
        ),
    ],
)
def test_real_showvminfo_is_read(
    name: str, vm: str, uuid: str, snapshot: str, extra: dict[str, str]
) -> None:
    text = (REAL / "showvminfo" / name).read_text(encoding="utf-8")
    info = output.parse_vminfo(text)
    assert (info.name, info.uuid, info.state_name) == (vm, uuid, "poweroff")
    assert info.state is VmState.POWERED_OFF
    assert (info.nic_type, info.paravirt_provider) == ("82540EM", "kvm")
    assert info.current_snapshot == snapshot
    assert info.values["memory"].isdigit() and info.values["GuestMemoryBalloon"] == "0"
    for key, value in extra.items():
        assert info.values[key] == value
    # no line became a bogus name (7.0's "Encryption:" line, a description's second line)
    assert not {"Encryption", "name2", "rec_screen0"} & set(info.values)


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("6.0.12_after_module_warning.txt", (6, 0, 12)),
        ("5.2.6_after_module_warning.txt", (5, 2, 6)),
        ("4.3.36_debian_suffix.txt", (4, 3, 36)),
        ("4.3.28_plain.txt", (4, 3, 28)),
    ],
)
def test_real_version_strings_are_read(name: str, version: tuple[int, int, int]) -> None:
    text = (REAL / "version" / name).read_text(encoding="utf-8")
    assert output.parse_version(text) == version
    assert not output.is_known_bad(output.parse_version(text))
    # the warning makes `list hostinfo` say the host is not ready (vboxwrapper's check)
    if "WARNING" in text:
        assert not output.parse_hostinfo("Processor count: 4\n" + text).ready


def test_every_real_output_is_listed_in_the_readme() -> None:
    readme = (REAL / "README.md").read_text(encoding="utf-8")
    for path in REAL.rglob("*.txt"):
        assert path.relative_to(REAL).as_posix() in readme, path
