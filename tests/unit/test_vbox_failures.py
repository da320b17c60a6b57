"""The VirtualBox failure table (docs/compatibility.md#virtualbox-failures): one test per row.

Each row's cause is made from VBoxManage output as VirtualBox prints it; the reaction per
operation is what vboxwrapper does for it (BOINC's samples/vboxwrapper), or our documented
difference. ``test_docs_table_matches_the_code`` keeps the page and the code in step.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vmwrapper.errors import BackendError, CheckpointError, HostNotReady, VmStartError
from vmwrapper.hypervisor.virtualbox import failures, output
from vmwrapper.hypervisor.virtualbox.failures import Cause, Operation, Reaction
from vmwrapper.hypervisor.virtualbox.runner import CommandResult, VBoxManageError
from vmwrapper.supervisor import backoff

DOCS = Path(__file__).resolve().parents[2] / "docs" / "compatibility.md"

T, IG, H, F = Reaction.TEMPORARY, Reaction.IGNORE, Reaction.HOST, Reaction.FINAL
OPS = failures.OPERATIONS  # the docs' column order

LOCK = (
    "VBoxManage: error: The machine 'boinc_x' is already locked by a session (or being locked "
    "or unlocked)\nVBoxManage: error: Details: code VBOX_E_INVALID_OBJECT_STATE (0x80bb0007), "
    "component MachineWrap, interface IMachine, callee nsISupports\n"
)
SERVICE_LINUX = (
    "VBoxManage: error: Failed to create the VirtualBox object!\nVBoxManage: error: Code "
    "NS_BASE_STREAM_WOULD_BLOCK (0x80470007) - Stream operation would block (extended info not "
    "available)\nVBoxManage: error: Most likely, the VirtualBox COM server is not running or "
    "failed to start.\n"
)
NOT_READY = (
    "VBoxManage: error: The object is not ready\nVBoxManage: error: Details: code E_ACCESSDENIED "
    "(0x80070005), component SessionMachine, interface IMachine, callee nsISupports\n"
)
BUSY = (
    "VBoxManage: error: Code E_FAIL (0x80004005) - Unspecified error (extended info not "
    'available)\nVBoxManage: error: Context: "LockMachine(a->session, LockType_Write)" at line '
    "507 of file VBoxManageModifyVM.cpp\n"
)
WRONG_STATE = (
    "VBoxManage: error: Machine 'boinc_x' is not currently running\nVBoxManage: error: Details: "
    "code VBOX_E_INVALID_VM_STATE (0x80bb0002), component ConsoleWrap, interface IConsole\n"
)
VTX = (
    "VBoxManage: error: VT-x is not available (VERR_VMX_NO_VMX)\nVBoxManage: error: Details: "
    "code NS_ERROR_FAILURE (0x80004005), component ConsoleWrap, interface IConsole\n"
)
MULTIATTACH = (
    "VBoxManage: error: Cannot attach medium '/p/vm_image.vdi': the media type 'MultiAttach' can "
    "only be attached to machines that were created with VirtualBox 4.0 or later\n"
    "VBoxManage: error: Details: code VBOX_E_INVALID_OBJECT_STATE (0x80bb0007)\n"
)
OTHER = (
    "VBoxManage: error: Could not find a registered machine named 'boinc_x'\nVBoxManage: error: "
    "Details: code VBOX_E_OBJECT_NOT_FOUND (0x80bb0001), component VirtualBoxWrap, interface "
    "IVirtualBox, callee nsISupports\n"
)

# cause: (sample output, timed out?, reactions per operation in OPS order)
ROWS: dict[Cause, tuple[str, bool, tuple[Reaction, ...]]] = {
    Cause.SERVICE_UNREACHABLE: (SERVICE_LINUX, False, (T, T, T, T, T, T, IG, IG)),
    Cause.SESSION_LOCKED: (LOCK, False, (T, T, T, T, T, T, IG, IG)),
    Cause.NOT_READY: (NOT_READY, False, (T, T, T, IG, IG, T, IG, IG)),
    Cause.SERVICE_BUSY: (BUSY, False, (T, T, T, IG, IG, T, IG, IG)),
    Cause.TIMEOUT: ("", True, (T, T, T, IG, IG, T, IG, IG)),
    Cause.WRONG_STATE: (WRONG_STATE, False, (T, T, T, IG, IG, T, IG, IG)),
    Cause.VM_EXTENSIONS: (VTX, False, (F, F, H, IG, IG, T, IG, IG)),
    Cause.MULTIATTACH_REGISTRY: (MULTIATTACH, False, (F, F, F, IG, IG, T, IG, IG)),
    Cause.OTHER: (OTHER, False, (F, F, T, IG, IG, T, IG, IG)),
}


@pytest.mark.parametrize("cause", list(ROWS), ids=lambda c: c.value)
def test_row(cause: Cause) -> None:
    text, timed_out, reactions = ROWS[cause]
    assert failures.cause_of(text, output.error_code(text), timed_out=timed_out) is cause
    for operation, expected in zip(OPS, reactions, strict=True):
        assert failures.reaction(operation, cause) is expected, operation


def test_every_cause_has_a_row() -> None:
    assert set(ROWS) == set(Cause) == set(failures.table())


@pytest.mark.parametrize(
    "hresult",
    [0x80080005, 0x800706BA, 0x80470007, 0x800706BE, 0x80010108, 0x80010105, 0x80010001],
)
def test_every_unreachable_service_code(hresult: int) -> None:
    """CO_E_SERVER_EXEC_FAILURE, RPC_S_SERVER_UNAVAILABLE, NS_BASE_STREAM_WOULD_BLOCK,
    NS_ERROR_CALL_FAILED and the RPC_E_* family, even without VBoxManage's explanation."""
    text = f"VBoxManage: error: Details: code X (0x{hresult:08x})\n"
    assert failures.cause_of(text, hresult) is Cause.SERVICE_UNREACHABLE


def test_a_plain_ns_error_failure_is_no_busy_service() -> None:
    text = "VBoxManage: error: Details: code NS_ERROR_FAILURE (0x80004005), component Medium\n"
    assert failures.cause_of(text, output.E_FAIL) is Cause.OTHER


@pytest.mark.parametrize(
    ("args", "operation"),
    [
        (("showvminfo", "vm", "--machinereadable"), Operation.QUERY),
        (("--version",), Operation.QUERY),
        (("list", "hostinfo"), Operation.QUERY),
        (("createvm", "--name", "vm"), Operation.CREATE),
        (("modifyvm", "vm", "--memory", "256"), Operation.CREATE),
        (("bandwidthctl", "vm", "add", "vm_net"), Operation.CREATE),
        (("startvm", "vm", "--type", "headless"), Operation.START),
        (("snapshot", "vm", "restore", "boinc_1"), Operation.START),
        (("controlvm", "vm", "pause"), Operation.PAUSE),
        (("controlvm", "vm", "resume"), Operation.RESUME),
        (("snapshot", "vm", "take", "boinc_1"), Operation.CHECKPOINT),
        (("snapshot", "vm", "list"), Operation.CHECKPOINT),
        (("controlvm", "vm", "cpuexecutioncap", "50"), Operation.THROTTLE),
        (("controlvm", "vm", "setlinkstate1", "off"), Operation.THROTTLE),
        (("bandwidthctl", "vm", "set", "vm_net", "--limit", "1K"), Operation.THROTTLE),
        (("controlvm", "vm", "poweroff"), Operation.CLEANUP),
        (("snapshot", "vm", "delete", "uuid"), Operation.CLEANUP),
        (("unregistervm", "vm", "--delete"), Operation.CLEANUP),
    ],
)
def test_operation_of(args: tuple[str, ...], operation: Operation) -> None:
    assert failures.operation_of(args) is operation


def _error(args: tuple[str, ...], text: str, *, timed_out: bool = False) -> VBoxManageError:
    result = CommandResult(
        ("VBoxManage", "-q", *args),
        None if timed_out else 1,
        text,
        output.error_code(text),
        timed_out=timed_out,
    )
    return VBoxManageError(args[0], result)


def test_a_lock_still_held_after_the_retries_at_creation_is_temporary() -> None:
    """The task is postponed (backoff's TRANSIENT), not ended: vboxwrapper's SESSION_LOCK."""
    exc = _error(("modifyvm", "vm", "--memory", "256"), LOCK)
    assert exc.lock_error and exc.temporary
    assert backoff.classify(exc).error_class is backoff.ErrorClass.TRANSIENT


def test_an_unreachable_service_on_the_first_call_is_temporary() -> None:
    """``exists()`` runs showvminfo first; VBoxSVC down on Linux must not end the task."""
    exc = _error(("showvminfo", "vm", "--machinereadable"), SERVICE_LINUX)
    assert exc.cause is Cause.SERVICE_UNREACHABLE
    assert backoff.classify(exc).error_class is backoff.ErrorClass.TRANSIENT


def test_object_not_ready_in_a_query_is_temporary() -> None:
    exc = _error(("showvminfo", "vm", "--machinereadable"), NOT_READY)
    assert backoff.classify(exc).error_class is backoff.ErrorClass.TRANSIENT


def test_a_job_error_keeps_its_code() -> None:
    exc = _error(("modifyvm", "vm", "--memory", "256"), OTHER)
    failure = backoff.classify(exc)
    assert failure.error_class is backoff.ErrorClass.JOB_BUG
    assert failure.code == output.VBOX_E_OBJECT_NOT_FOUND - (1 << 32)


def test_ignorable_failures_are_marked() -> None:
    assert _error(("controlvm", "vm", "pause"), NOT_READY).ignorable
    assert _error(("controlvm", "vm", "cpuexecutioncap", "5"), WRONG_STATE).ignorable
    assert not _error(("controlvm", "vm", "pause"), LOCK).ignorable  # vboxwrapper: 300 s exit


def test_temporary_flag_is_what_backoff_reads() -> None:
    assert backoff.classify(BackendError("x", code=-1)).error_class is backoff.ErrorClass.JOB_BUG
    flagged = BackendError("x", code=-1)
    flagged.temporary = True
    assert backoff.classify(flagged).error_class is backoff.ErrorClass.TRANSIENT
    # start and snapshot failures stay temporary, a diagnosed host problem is no job error
    assert backoff.classify(VmStartError("x", code=-1)).error_class is backoff.ErrorClass.TRANSIENT
    assert (
        backoff.classify(CheckpointError("x", code=-1)).error_class is backoff.ErrorClass.TRANSIENT
    )
    assert backoff.classify(HostNotReady("x")).error_class is backoff.ErrorClass.HOST_PROBLEM


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (VTX, ("VERR_VMX_NO_VMX",)),
        (
            "error: Not in a hypervisor partition (HVP=0) (VERR_NEM_NOT_AVAILABLE).\n"
            "error: AMD-V is disabled in the BIOS (or by the host OS) (VERR_SVM_DISABLED)\n",
            ("VERR_NEM_NOT_AVAILABLE", "VERR_SVM_DISABLED"),
        ),
        (
            "error: (VERR_SUPDRV_NO_RAW_MODE_HYPER_V_ROOT)",
            ("VERR_SUPDRV_NO_RAW_MODE_HYPER_V_ROOT",),
        ),
        (OTHER, ()),
    ],
)
def test_vm_extension_errors(text: str, names: tuple[str, ...]) -> None:
    assert failures.vm_extension_errors(text) == names


def _docs_table() -> dict[str, list[str]]:
    section = DOCS.read_text(encoding="utf-8").split("## VirtualBox failures", 1)[1]
    section = section.split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = [c.lower() for c in cells[2:]]
    return rows


def test_docs_table_matches_the_code() -> None:
    rows = _docs_table()
    table = failures.table()
    assert set(rows) == {cause.value for cause in table}
    for cause, reactions in table.items():
        expected = [reactions[op].value for op in OPS]
        assert [re.sub(r"[^a-z]", "", cell) for cell in rows[cause.value]] == expected, cause
