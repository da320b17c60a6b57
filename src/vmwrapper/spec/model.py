"""The job model: what `vbox_job.xml` says, as frozen values (docs/compatibility.md#job-file).

Defaults are vboxwrapper's (`VBOX_JOB::clear`). Runtime state never lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

VRAM_MIN_MB = 16.0
VRAM_MAX_MB = 128.0
MIN_MEMORY_SIZE_MB = 512.0


@dataclass(frozen=True)
class PortForward:
    """A `<port_forward>` block: host port(s) → guest port(s), TCP."""

    host_port: int
    guest_port: int
    nports: int = 0
    is_remote: bool = False

    def rules(self) -> tuple[tuple[int, int, bool], ...]:
        """The NAT rules this block expands to: `nports` consecutive pairs, or one."""
        count = max(self.nports, 1)
        return tuple(
            (self.host_port + i, self.guest_port + i, self.is_remote) for i in range(count)
        )


@dataclass(frozen=True)
class JobSpec:
    """Every element of vbox_job.xml, with vboxwrapper's defaults."""

    os_name: str = ""
    memory_size_mb: float = 0.0
    vram_size_mb: float = VRAM_MIN_MB
    vm_disk_controller_type: str = "sata"
    vm_disk_controller_model: str = "IntelAHCI"
    # Not configurable in vboxwrapper (hard-coded VBoxVGA, docs/compatibility.md#creating-the-vm);
    # we accept it.
    vm_graphics_controller_type: str = "VBoxVGA"
    vm_network_driver: str = ""
    enable_network: bool = False
    network_bridged_mode: bool = False
    enable_nat_dns_host_resolver: bool = False
    enable_shared_directory: bool = False
    share_slot_dir: bool = False
    enable_scratch_directory: bool = False
    share_project_dir: bool = False
    copy_to_shared: tuple[str, ...] = ()
    copy_cmdline_to_shared: bool = False
    enable_floppyio: bool = False
    enable_cern_dataformat: bool = False
    enable_isocontextualization: bool = False
    enable_cache_disk: bool = False
    boot_iso: bool = False
    multiattach_vdi_file: str = ""
    enable_remotedesktop: bool = False
    enable_screenshots_on_error: bool = False
    enable_graphics_support: bool = False
    enable_vm_savestate_usage: bool = False
    disable_automatic_checkpoints: bool = False
    minimum_checkpoint_interval: float = 600.0
    job_duration: float = 0.0
    fraction_done_filename: str = ""
    heartbeat_filename: str = ""
    minimum_heartbeat_interval: float = 600.0
    completion_trigger_file: str = ""
    temporary_exit_trigger_file: str = ""
    trickle_trigger_file: tuple[str, ...] = ()
    intermediate_upload_file: tuple[str, ...] = ()
    pf_guest_port: int = 0
    pf_host_port: int = 0
    port_forward: tuple[PortForward, ...] = field(default_factory=tuple)
    #: our extension: back ends the image runs on, in preference order ("" = VirtualBox only,
    #: as with vboxwrapper; docs/compatibility.md#back-end-selection)
    vmwrapper_backends: str = ""
    #: our extension: a 64-bit guest may run under QEMU's software emulation (TCG)
    vmwrapper_software_emulation: bool = False
    #: our extension: how QEMU carries the shared directory, "9p", "serial" or "" (auto: 9p
    #: where QEMU has it, else serial; docs/shared-transport.md)
    vmwrapper_share_transport: str = ""

    @property
    def shared_dir(self) -> str:
        """The directory (relative to the slot) that the guest sees as `shared`, or ""."""
        if self.enable_shared_directory:
            return "shared"
        if self.share_slot_dir:
            return "."
        return ""

    @property
    def backends(self) -> tuple[str, ...]:
        """``<vmwrapper_backends>`` as words (commas or spaces between them), lower case."""
        return tuple(w for w in self.vmwrapper_backends.lower().replace(",", " ").split() if w)

    @property
    def requires_hw_acceleration(self) -> bool:
        """A 64-bit guest (`_64` in os_name) cannot run without VT-x/AMD-V
        (docs/compatibility.md#creating-the-vm)."""
        return "_64" in self.os_name


@dataclass(frozen=True)
class ParsedJob:
    """A usable job plus what the reader should know: warnings and the clamps applied."""

    spec: JobSpec
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
