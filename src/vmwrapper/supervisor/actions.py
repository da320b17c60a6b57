"""What the machine asks the loop to do (its actions) and the fixed texts of its outcomes.

Pure values: :mod:`.machine` builds them, :mod:`.perform` carries them out (one ``match`` case
each, checked for exhaustiveness by mypy).
"""

from __future__ import annotations

from dataclasses import dataclass

from vmwrapper.outcome import VM_EXTENSIONS_TOKEN, Outcome

# -- what the machine asks for ---------------------------------------------------------------


@dataclass(frozen=True)
class PrepareVm:
    """Create the VM or reuse this slot's; power off one left running; drop orphan snapshots."""


@dataclass(frozen=True)
class StartVm:
    restore: str = ""  # snapshot name, "" = boot fresh


@dataclass(frozen=True)
class BringUp:
    """The VM is online: lower its priority, contextualize, announce ports, write the record."""


@dataclass(frozen=True)
class ApplyPreferences:
    """Apply (or re-apply after <reread_app_info/>) cpu_usage_limit, bandwidth, interval."""

    reread: bool = False  # re-read init_data.xml first (the client rewrote it)


@dataclass(frozen=True)
class PauseVm:
    pass


@dataclass(frozen=True)
class ResumeVm:
    pass


@dataclass(frozen=True)
class TakeCheckpoint:
    final: bool = False  # before a temporary exit: a refused snapshot is retried briefly


@dataclass(frozen=True)
class SaveState:
    """Quit with enable_vm_savestate_usage: checkpoint, then save the VM's state and stop."""


@dataclass(frozen=True)
class PowerOff:
    """Stop the VM, keep it (and its checkpoints) for the next run."""


@dataclass(frozen=True)
class DumpLogs:
    """An error report into stderr before the VM goes: the screenshot (with
    enable_screenshots_on_error, while the VM is still up) and the hypervisor's log tails."""

    exit_code: int | None = None  # the hypervisor process's exit status, when known


@dataclass(frozen=True)
class Cleanup:
    """The job is over: power off and remove the VM and everything it made."""


@dataclass(frozen=True)
class SetNetwork:
    connected: bool


@dataclass(frozen=True)
class SendTrickle:
    variety: str
    text: str
    trigger_file: str = ""  # remove this shared-dir file once the trickle is queued


@dataclass(frozen=True)
class RequestUpload:
    name: str


@dataclass(frozen=True)
class RemoveTrigger:
    name: str


@dataclass(frozen=True)
class WriteCernOutput:
    """enable_cern_dataformat and job_duration reached: slot file `output`."""


@dataclass(frozen=True)
class RecordTransientFailure:
    reason: str


@dataclass(frozen=True)
class ResetBackoff:
    pass


@dataclass(frozen=True)
class Exit:
    outcome: Outcome


Action = (
    PrepareVm
    | StartVm
    | BringUp
    | ApplyPreferences
    | PauseVm
    | ResumeVm
    | TakeCheckpoint
    | SaveState
    | PowerOff
    | DumpLogs
    | Cleanup
    | SetNetwork
    | SendTrickle
    | RequestUpload
    | RemoveTrigger
    | WriteCernOutput
    | RecordTransientFailure
    | ResetBackoff
    | Exit
)


# -- messages (fixed texts projects and volunteers see) --------------------------------------

MSG_EXTENSIONS_DISABLED = (
    "Hardware virtualization (VT-x/AMD-V) is disabled in this computer's BIOS/UEFI settings. "
    "Enable it there and restart the computer to run this VM job. "
    f"(Error Code: {VM_EXTENSIONS_TOKEN})"
)
MSG_NO_EXTENSIONS = (
    "This job's VM needs hardware virtualization (VT-x/AMD-V), which this processor lacks or "
    "which another program hides. Run only 32-bit VM jobs on this computer. "
    f"(Error Code: {VM_EXTENSIONS_TOKEN})"
)
MSG_FOREIGN_HYPERVISOR = (
    "Another hypervisor (e.g. Hyper-V, WSL2, another VM program) holds the hardware "
    "virtualization features. Close it or turn it off, then resume this task."
)
MSG_HOST_MEMORY = "VM Hypervisor was unable to allocate enough memory to start VM."
MSG_BOOT_TIMEOUT = "VM Hypervisor failed to enter an online state in a timely fashion."
MSG_PREMATURE = "VM Premature Shutdown Detected."
MSG_GUEST_OOM = "The guest ran out of memory (EXIT_OUT_OF_MEMORY)."
MSG_REGISTER_ONLY = "VM registered and left for debugging (--register_only)."
MSG_HEARTBEAT = "VM Heartbeat file check failed."


def msg_guest_failed(status: int) -> str:
    return f"The guest's app exited with status {status} (VMWRAPPER_GUEST_DONE status={status})."
