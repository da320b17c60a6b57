"""Registering a VM with VirtualBox and removing it: the creation sequence with its probes, the
multiattach parent under its lock, stale VMs and orphaned disks of earlier runs, and the
teardown (docs/compatibility.md#creating-the-vm).

The steps come from :mod:`.creation` and :mod:`.commands` (pure tables); this module runs them
through the injected :class:`.runner.VBoxManage` and decides from what VirtualBox answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from vmwrapper.errors import BackendError
from vmwrapper.hypervisor.base import VmConfig
from vmwrapper.hypervisor.virtualbox import commands as cmd
from vmwrapper.hypervisor.virtualbox import creation, output
from vmwrapper.hypervisor.virtualbox.capabilities import Capabilities
from vmwrapper.hypervisor.virtualbox.commands import Step
from vmwrapper.hypervisor.virtualbox.lock import MultiattachLock
from vmwrapper.hypervisor.virtualbox.options import DEFAULT_OPTIONS, VirtualBoxOptions
from vmwrapper.hypervisor.virtualbox.runner import (
    VBoxManage,
    VBoxManageError,
    is_multiattach_40_error,
)

log = logging.getLogger(__name__)


def vm_info(runner: VBoxManage, vm: str) -> output.VmInfo | None:
    """showvminfo of the VM (None when VirtualBox does not know it)."""
    result = runner.probe(cmd.showvminfo(vm), trace=False)
    if result.ok:
        return output.parse_vminfo(result.output)
    if result.hresult == output.VBOX_E_OBJECT_NOT_FOUND:
        return None
    raise VBoxManageError("showvminfo", result)


class Registrar:
    """Creates the VM of one slot and removes it, with what earlier runs left behind."""

    def __init__(
        self,
        config: VmConfig,
        runner: VBoxManage,
        *,
        options: VirtualBoxOptions = DEFAULT_OPTIONS,
        lock_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.options = options
        self.runner = runner
        self._lock_dir = lock_dir
        self._clock = clock
        self._sleep = sleep

    def _lock(self, parent: Path) -> MultiattachLock:
        return MultiattachLock(
            parent, lock_dir=self._lock_dir, clock=self._clock, sleep=self._sleep
        )

    # ---- creation ----------------------------------------------------------------------

    def define(self, caps: Capabilities, acceleration: list[Step]) -> None:
        """The creation sequence in vboxwrapper's order, with the probes it needs between."""
        config = self.config
        for step in creation.define_steps(config, caps, self.options):
            self.runner.perform(step)
        info = vm_info(self.runner, config.name)
        nic_type = self._nic_type(caps, info)
        bridge = ""
        if config.network.bridged:
            bridge = output.first_bridged_interface(
                self.runner.probe(Step(("list", "bridgedifs"), "list bridgedifs")).output
            )
        steps: list[Step] = [
            *creation.network_steps(config, caps, nic_type, bridge),
            *creation.devices_off_steps(config, caps),
            *acceleration,
            *creation.controller_steps(config, caps, self.options),
            *creation.media_steps(config, caps),
        ]
        for step in steps:
            self.runner.perform(step)
        if config.multiattach_parent is not None and config.iso_image is None:
            self._attach_multiattach_parent(config.multiattach_parent)
        later = [
            *creation.guest_additions_after_multiattach(config, caps),
            *creation.floppy_steps(config),
            *creation.bandwidth_steps(config, caps),
            *creation.port_forward_steps(config, caps),
            *self._remote_desktop_steps(caps),
            *creation.shared_folder_steps(config),
        ]
        for step in later:
            self.runner.perform(step)

    def _nic_type(self, caps: Capabilities, info: output.VmInfo | None) -> str:
        driver = self.config.network.driver
        if driver:
            if caps.accepts_nic_type(driver):
                return driver
            log.warning(
                "Invalid Network Driver Specified: %s (not in `VBoxManage help modifyvm`);"
                " using the default",
                driver,
            )
        if info is None:
            return ""
        return creation.default_nic_type(info.nic_type, info.paravirt_provider)

    def _remote_desktop_steps(self, caps: Capabilities) -> list[Step]:
        if self.config.remote_desktop is None:
            return []
        packs = self.runner.probe(Step(("list", "extpacks"), "list extpacks", retry=False))
        if not output.has_vrde_extpack(packs.output):
            log.warning("Required extension pack not installed, remote desktop not enabled.")
            return []
        log.info("Enabling remote desktop for VM.")
        return creation.remote_desktop_steps(self.config, caps)

    # ---- what earlier runs left ----------------------------------------------------------

    def remove_stale_vm(self) -> None:
        """A VM of an earlier run may still hold this slot's disk
        (docs/compatibility.md#creating-the-vm): unregister it when `showhdinfo` names it, else
        forget the slot's media."""
        config = self.config
        disk = config.cache_disk if config.iso_image is not None else config.disk_image
        if disk is None or config.multiattach_parent is not None or not disk.is_file():
            return
        result = self.runner.probe(cmd.showhdinfo(str(disk)))
        if not result.ok:
            return
        info = output.parse_hdinfo(result.output)
        for vm_name, vm_uuid in info.in_use_by:
            log.info("Deregistering stale VM %s (%s) that still uses %s", vm_name, vm_uuid, disk)
            self.teardown(vm_uuid, delete=False)
        self.close_media()

    def _attach_multiattach_parent(self, parent: Path) -> None:
        """Attach the project's shared parent image in multiattach mode
        (docs/compatibility.md#creating-the-vm), under the per-parent lock; orphaned children left
        by crashed runs are removed once."""
        config = self.config
        with self._lock(parent):
            for attempt in (1, 2):
                hd = self.runner.probe(cmd.showhdinfo(str(parent)))
                setuuid = False
                if not hd.ok:
                    text = hd.output
                    if "Cannot register the hard disk" in text and "already exists" in text:
                        setuuid = True
                        log.warning(
                            "%s has the UUID of another registered disk; attaching with "
                            "a new UUID (re-clone the image on the server)",
                            parent,
                        )
                    else:
                        raise VBoxManageError("showhdinfo (multiattach parent)", hd)
                info = output.parse_hdinfo(hd.output)
                if attempt == 1 and info.multiattach and info.child_uuids:
                    # children of VMs that are gone (crashed or stale runs) only fill the disk
                    self._remove_disk_orphans(parent, close_parent=False)
                if not info.multiattach:  # registers it (with a new UUID on a clash)
                    self.runner.perform(
                        creation.attach_step(
                            config,
                            0,
                            "hdd",
                            str(parent),
                            setuuid=setuuid,
                            item="storage attach (fixed disk)",
                        )
                    )
                    self.runner.perform(
                        creation.attach_step(
                            config, 0, "", "none", item="storage detach (fixed disk)"
                        )
                    )
                try:
                    self.runner.perform(
                        creation.attach_step(
                            config,
                            0,
                            "hdd",
                            str(parent),
                            mtype="multiattach",
                            item="storage attach (fixed disk - multiattach)",
                        )
                    )
                    return
                except VBoxManageError as exc:
                    if attempt == 1 and is_multiattach_40_error(exc.output):
                        self._remove_disk_orphans(parent)
                        continue
                    raise

    def _remove_disk_orphans(self, parent: Path, *, close_parent: bool = True) -> None:
        """Delete every differencing child of ``parent`` that no VM (or snapshot) uses, children
        first; with ``close_parent`` also close the parent itself, so VirtualBox forgets a broken
        registry entry (docs/compatibility.md#creating-the-vm). Runs under the parent's lock."""
        info = output.parse_hdinfo(self.runner.probe(cmd.showhdinfo(str(parent))).output)
        for child in info.child_uuids:
            self._remove_orphan_tree(child, parent)
        if close_parent:
            self.runner.probe(cmd.closemedium("disk", info.location or str(parent)))

    def _remove_orphan_tree(self, uuid: str, parent: Path) -> bool:
        result = self.runner.probe(cmd.showhdinfo(uuid))
        if not result.ok:
            return False
        info = output.parse_hdinfo(result.output)
        if info.in_use_by:
            return False
        if not all([self._remove_orphan_tree(child, parent) for child in info.child_uuids]):
            return False  # a descendant is still in use: keep the chain
        log.info("Removing orphaned child disk %s of %s", info.location or uuid, parent)
        return self.runner.probe(cmd.closemedium("disk", uuid, delete=True)).ok

    # ---- removal ------------------------------------------------------------------------

    def teardown(self, vm: str, *, delete: bool = True) -> None:
        """Delete snapshots, the bandwidth group, the floppy controller; unregister (with
        ``--delete`` for our own VM; a stale VM's disks are this slot's, so they stay)."""
        config = self.config
        target = config if vm == config.name else replace(config, name=vm)
        for entry in reversed(self.snapshots_of(vm)):
            self.runner.probe(cmd.snapshot_delete(target, entry.uuid))
        steps = cmd.teardown_steps(target, delete=delete)
        unregister = steps[-1]
        for step in steps[:-1]:
            self.runner.probe(step)
        if config.multiattach_parent is not None:
            try:
                with self._lock(config.multiattach_parent):
                    self.runner.probe(unregister)
            except BackendError:
                self.runner.probe(unregister)  # as vboxwrapper: go on without the lock
        else:
            self.runner.probe(unregister)

    def snapshots_of(self, vm: str) -> tuple[output.SnapshotEntry, ...]:
        result = self.runner.probe(Step(("snapshot", vm, "list"), "snapshot list", retry=False))
        return output.parse_snapshot_list(result.output) if result.ok else ()

    def close_media(self) -> None:
        """Forget the slot's media in VirtualBox's registry (best effort; files stay)."""
        for step in cmd.close_media_steps(self.config):
            self.runner.probe(step)
