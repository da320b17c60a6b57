"""Settings only VirtualBox reads (pure): the job's graphics and disk controller choices.

They stay out of the back-end-neutral :class:`~vmwrapper.hypervisor.base.VmConfig`; cli/run.py
builds them (``runconfig.virtualbox_options``) and passes them to ``VirtualBoxBackend`` alone.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VirtualBoxOptions:
    vram_mb: int = 16  # vram_size_mb
    graphics_controller: str = "VBoxVGA"  # vm_graphics_controller_type
    disk_controller_type: str = "sata"  # vm_disk_controller_type
    disk_controller_model: str = "IntelAHCI"  # vm_disk_controller_model


#: what a job that names none of them gets (vboxwrapper's defaults)
DEFAULT_OPTIONS = VirtualBoxOptions()
