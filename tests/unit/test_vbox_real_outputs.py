"""Real VBoxManage outputs (tests/data/vbox/real/, sources in its README): the cause and the
reaction each gets (docs/compatibility.md#virtualbox-failures) match what vboxwrapper does, and
the simulator's error format is VirtualBox's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vmwrapper.hypervisor.base import Diagnosis
from vmwrapper.hypervisor.virtualbox import failures, logs, output
from vmwrapper.hypervisor.virtualbox.failures import Cause, Operation, Reaction

REAL = Path(__file__).resolve().parents[1] / "data" / "vbox" / "real"
ERRORS = REAL / "errors"

# file: (the command that printed it, cause, reaction, diagnoses from the text)
EXPECTED: dict[str, tuple[Operation, Cause, Reaction, tuple[Diagnosis, ...]]] = {
    "lock_launchvm_linux.txt": (Operation.START, Cause.SESSION_LOCKED, Reaction.TEMPORARY, ()),
    "lock_modifyvm_old.txt": (Operation.CREATE, Cause.SESSION_LOCKED, Reaction.TEMPORARY, ()),
    "lock_startvm_windows.txt": (Operation.START, Cause.SESSION_LOCKED, Reaction.TEMPORARY, ()),
    "not_ready_showvminfo.txt": (Operation.QUERY, Cause.NOT_READY, Reaction.TEMPORARY, ()),
    "service_co_e_server_exec_failure.txt": (
        Operation.QUERY,
        Cause.SERVICE_UNREACHABLE,
        Reaction.TEMPORARY,
        (),
    ),
    "service_e_nointerface.txt": (
        Operation.QUERY,
        Cause.SERVICE_UNREACHABLE,
        Reaction.TEMPORARY,
        (),
    ),
    "busy_e_fail_lockmachine.txt": (Operation.CREATE, Cause.SERVICE_BUSY, Reaction.TEMPORARY, ()),
    "startvm_vmx_no_vmx.txt": (
        Operation.START,
        Cause.VM_EXTENSIONS,
        Reaction.HOST,
        (Diagnosis.NO_VM_EXTENSIONS,),
    ),
    "startvm_vmx_all_disabled_linux.txt": (
        Operation.START,
        Cause.VM_EXTENSIONS,
        Reaction.HOST,
        (Diagnosis.VM_EXTENSIONS_DISABLED,),
    ),
    "startvm_nem_vmx_disabled_windows.txt": (
        Operation.START,
        Cause.VM_EXTENSIONS,
        Reaction.HOST,
        (Diagnosis.VM_EXTENSIONS_DISABLED,),
    ),
    "startvm_nem_svm_disabled_windows.txt": (
        Operation.START,
        Cause.VM_EXTENSIONS,
        Reaction.HOST,
        (Diagnosis.VM_EXTENSIONS_DISABLED,),
    ),
    "startvm_nem_create_failed_hyperv.txt": (
        Operation.START,
        Cause.VM_EXTENSIONS,
        Reaction.HOST,
        (Diagnosis.FOREIGN_HYPERVISOR,),
    ),
    "startvm_raw_mode_hyperv.txt": (
        Operation.START,
        Cause.VM_EXTENSIONS,
        Reaction.HOST,
        (Diagnosis.FOREIGN_HYPERVISOR,),
    ),
    "vboxlog_power_up_failed_no_vmx.txt": (
        Operation.START,
        Cause.VM_EXTENSIONS,
        Reaction.HOST,
        (Diagnosis.NO_VM_EXTENSIONS,),
    ),
    "hostonly_ns_error_failure.txt": (Operation.CREATE, Cause.OTHER, Reaction.FINAL, ()),
}

DETAILS_RE = re.compile(
    r"^VBoxManage(?:\.exe)?: error: Details: code [A-Z_]+ \(0x[0-9a-f]{8}\), "
    r"component \w+, interface \w+(?:, callee \w+)?$"
)
CONTEXT_RE = re.compile(
    r'^VBoxManage(?:\.exe)?: error: Context: ".*" at line \d+ of file VBoxManage\w*\.cpp$'
)


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
