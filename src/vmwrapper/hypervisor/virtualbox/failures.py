"""What a failed VBoxManage command means, and what the wrapper does about it (pure).

A failure is read in two steps, both from the command's output (never from the exit status
alone, which some VirtualBox versions get wrong):

1. its **cause** (:func:`cause_of`): VBoxSVC unreachable, a session lock held by someone else,
   an object that is not ready, a busy service, a timeout, a VM in the wrong state, missing or
   blocked hardware virtualization, or anything else;
2. the **reaction** (:func:`reaction`) to that cause in the operation that failed
   (:func:`operation_of`): go on as if nothing happened (``IGNORE``), end the task with a
   temporary exit so the client retries it later (``TEMPORARY``), hand the host problem to the
   supervisor's VM-extensions contract (``HOST``), or end the task for good (``FINAL``).

The table and the vboxwrapper behaviour behind each row are in
``docs/compatibility.md#virtualbox-failures``; every row has a test in
``tests/unit/test_vbox_failures.py``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence

from vmwrapper.hypervisor.virtualbox import output

#: Standard COM / XPCOM result codes VirtualBox passes through (VirtualBox.xidl, winerror.h,
#: nsError.h). RPC_E_* share the RPC facility prefix 0x8001xxxx.
E_ACCESSDENIED = 0x80070005
E_FAIL = output.E_FAIL  # NS_ERROR_FAILURE on Linux and macOS
NS_ERROR_ABORT = 0x80004004
NS_BASE_STREAM_WOULD_BLOCK = 0x80470007  # Linux: the IPC socket to VBoxSVC does not answer
NS_ERROR_CALL_FAILED = 0x800706BE  # RPC_S_CALL_FAILED: VBoxSVC died under the call
RPC_S_SERVER_UNAVAILABLE = output.RPC_S_SERVER_UNAVAILABLE
CO_E_SERVER_EXEC_FAILURE = output.CO_E_SERVER_EXEC_FAILURE
_RPC_FACILITY_MASK = 0xFFFF0000
_RPC_FACILITY = 0x80010000  # RPC_E_DISCONNECTED, RPC_E_SERVERFAULT, RPC_E_CALL_REJECTED, ...

#: Codes that say VBoxManage could not talk to VBoxSVC at all.
SERVICE_CODES = frozenset(
    {
        CO_E_SERVER_EXEC_FAILURE,
        RPC_S_SERVER_UNAVAILABLE,
        NS_BASE_STREAM_WOULD_BLOCK,
        NS_ERROR_CALL_FAILED,
    }
)
#: VBoxManage's own words when it cannot create its VirtualBox client object (any code).
_SERVICE_TEXTS = (
    "Failed to create the VirtualBox object",
    "the VirtualBox COM server is not running",
)

#: VirtualBox status names (``VERR_...``) of a start refused for hardware virtualization:
#: VT-x / AMD-V off, missing, or taken by another hypervisor; NEM is VirtualBox's Hyper-V mode.
_VM_EXTENSION_RE = re.compile(
    r"\bVERR_(?:VMX|SVM|NEM)_[A-Z0-9_]+\b|\bVERR_SUPDRV_NO_RAW_MODE_HYPER_V_ROOT\b"
)


class Cause(enum.Enum):
    SERVICE_UNREACHABLE = "service_unreachable"  # VBoxSVC not running / not answering
    SESSION_LOCKED = "session_locked"  # another process holds the VM's session lock
    NOT_READY = "not_ready"  # E_ACCESSDENIED: "The object is not ready"
    SERVICE_BUSY = "service_busy"  # NS_ERROR_FAILURE with no detail while locking a session
    TIMEOUT = "timeout"  # VBoxManage did not answer within its time
    WRONG_STATE = "wrong_state"  # VBOX_E_INVALID_VM_STATE: not now, in this VM state
    VM_EXTENSIONS = "vm_extensions"  # VERR_VMX_* / VERR_SVM_* / VERR_NEM_*
    MULTIATTACH_REGISTRY = "multiattach_registry"  # VirtualBox's "4.0 or later" registry bug
    OTHER = "other"  # any other error: the command itself is wrong for this VM


class Operation(enum.Enum):
    QUERY = "query"  # showvminfo, list, showhdinfo
    CREATE = "create"  # createvm, modifyvm, storagectl, storageattach, sharedfolder, ...
    START = "start"  # startvm, snapshot restore
    PAUSE = "pause"  # controlvm pause
    RESUME = "resume"  # controlvm resume
    CHECKPOINT = "checkpoint"  # snapshot take / list
    THROTTLE = "throttle"  # cpuexecutioncap, setlinkstate, bandwidthctl set
    CLEANUP = "cleanup"  # poweroff, savestate, snapshot delete, unregistervm, closemedium


class Reaction(enum.Enum):
    IGNORE = "ignore"  # log it and go on (the loop tries again when it still matters)
    TEMPORARY = "temporary"  # temporary exit: the client restarts the task later
    HOST = "host"  # the host cannot run VMs: the supervisor's VM-extensions contract
    FINAL = "final"  # a retry on this host cannot help: end the task with the error


def _is_rpc_facility(hresult: int) -> bool:
    return hresult & _RPC_FACILITY_MASK == _RPC_FACILITY


def service_unreachable(hresult: int | None, text: str) -> bool:
    """VBoxManage could not reach VBoxSVC (so it did not even try the command)."""
    if hresult is not None and (hresult in SERVICE_CODES or _is_rpc_facility(hresult)):
        return True
    return any(marker in text for marker in _SERVICE_TEXTS)


def vm_extension_errors(text: str) -> tuple[str, ...]:
    """The ``VERR_VMX_*`` / ``VERR_SVM_*`` / ``VERR_NEM_*`` names in ``text``, in order, once."""
    return tuple(dict.fromkeys(_VM_EXTENSION_RE.findall(text)))


def cause_of(text: str, hresult: int | None, *, timed_out: bool = False) -> Cause:
    """Why a VBoxManage command failed, from its output and the first HRESULT in it."""
    if service_unreachable(hresult, text):
        return Cause.SERVICE_UNREACHABLE
    if timed_out:
        return Cause.TIMEOUT
    if hresult == output.VBOX_E_INVALID_OBJECT_STATE:
        if all(part in text for part in ("Cannot attach medium", "MultiAttach", "VirtualBox 4.0")):
            return Cause.MULTIATTACH_REGISTRY
        return Cause.SESSION_LOCKED
    if "is already locked" in text and "session" in text:
        return Cause.SESSION_LOCKED
    if vm_extension_errors(text):
        return Cause.VM_EXTENSIONS
    if hresult == E_ACCESSDENIED:
        return Cause.NOT_READY
    if hresult == output.VBOX_E_INVALID_VM_STATE:
        return Cause.WRONG_STATE
    if hresult == E_FAIL and "LockMachine(" in text:
        # "Unspecified error (extended info not available)" while taking the session lock: the
        # service is busy with another client, the command itself was never tried
        return Cause.SERVICE_BUSY
    return Cause.OTHER


_CONTROLVM_OPERATIONS = {
    "pause": Operation.PAUSE,
    "resume": Operation.RESUME,
    "cpuexecutioncap": Operation.THROTTLE,
    "setlinkstate1": Operation.THROTTLE,
    "poweroff": Operation.CLEANUP,
    "savestate": Operation.CLEANUP,
    "acpipowerbutton": Operation.CLEANUP,
    "keyboardputscancode": Operation.CLEANUP,
    "screenshotpng": Operation.CLEANUP,
}
_QUERY_COMMANDS = frozenset({"showvminfo", "list", "showhdinfo", "mediumproperty", "debugvm"})
_CLEANUP_COMMANDS = frozenset({"unregistervm", "closemedium"})


def operation_of(args: Sequence[str]) -> Operation:
    """The operation a VBoxManage argv (without ``VBoxManage -q``) performs."""
    words = [a for a in args if a not in ("-q", "--nologo")]
    if not words:
        return Operation.QUERY
    command = words[0]
    if command in _QUERY_COMMANDS or command.startswith("-"):
        return Operation.QUERY
    if command in _CLEANUP_COMMANDS:
        return Operation.CLEANUP
    if command == "startvm":
        return Operation.START
    if command == "controlvm" and len(words) > 2:
        return _CONTROLVM_OPERATIONS.get(words[2], Operation.THROTTLE)
    if command == "snapshot" and len(words) > 2:
        verb = words[2]
        if verb in ("take", "list"):
            return Operation.CHECKPOINT
        if verb in ("restore", "restorecurrent"):
            return Operation.START
        return Operation.CLEANUP  # delete
    if command == "bandwidthctl" and len(words) > 2 and words[2] == "set":
        return Operation.THROTTLE
    return Operation.CREATE


_T, _I, _H, _F = Reaction.TEMPORARY, Reaction.IGNORE, Reaction.HOST, Reaction.FINAL

#: The operations in the column order of the table (and of the docs' table).
OPERATIONS = (
    Operation.QUERY,
    Operation.CREATE,
    Operation.START,
    Operation.PAUSE,
    Operation.RESUME,
    Operation.CHECKPOINT,
    Operation.THROTTLE,
    Operation.CLEANUP,
)
#: cause → reaction per operation, in the order of OPERATIONS
_TABLE: dict[Cause, tuple[Reaction, ...]] = {
    #                          query create start pause resume ckpt  throttle cleanup
    Cause.SERVICE_UNREACHABLE: (_T, _T, _T, _T, _T, _T, _I, _I),
    Cause.SESSION_LOCKED: (_T, _T, _T, _T, _T, _T, _I, _I),
    Cause.NOT_READY: (_T, _T, _T, _I, _I, _T, _I, _I),
    Cause.SERVICE_BUSY: (_T, _T, _T, _I, _I, _T, _I, _I),
    Cause.TIMEOUT: (_T, _T, _T, _I, _I, _T, _I, _I),
    Cause.WRONG_STATE: (_T, _T, _T, _I, _I, _T, _I, _I),
    Cause.VM_EXTENSIONS: (_F, _F, _H, _I, _I, _T, _I, _I),
    Cause.MULTIATTACH_REGISTRY: (_F, _F, _F, _I, _I, _T, _I, _I),
    Cause.OTHER: (_F, _F, _T, _I, _I, _T, _I, _I),
}


def reaction(operation: Operation, cause: Cause) -> Reaction:
    """What the wrapper does when ``operation`` fails for ``cause`` (after the runner's retries)."""
    return _TABLE[cause][OPERATIONS.index(operation)]


def table() -> dict[Cause, dict[Operation, Reaction]]:
    """The whole table (for the docs test and ``vmwrapper`` tooling)."""
    return {cause: dict(zip(OPERATIONS, row, strict=True)) for cause, row in _TABLE.items()}
