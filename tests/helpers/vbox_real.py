"""The real VBoxManage outputs of tests/data/vbox/real/ and what each one means (shared by the
unit test of the parsers and the simulator's system test)."""

from __future__ import annotations

import re
from pathlib import Path

from vmwrapper.hypervisor.base import Diagnosis
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
