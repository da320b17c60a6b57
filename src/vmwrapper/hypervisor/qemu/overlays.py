"""The VM's qcow2 files: overlays over the job's images (a snapshot-capable base converted
once where QEMU cannot snapshot over the image), and their snapshots while QEMU is not
running, all through ``images.qemu_img.QemuImg``."""

from __future__ import annotations

import glob
import hashlib
import logging
import os
from pathlib import Path

import psutil

from vmwrapper.boinc import files as boinc_files
from vmwrapper.errors import BackendError, VmStartError
from vmwrapper.hypervisor.base import VmConfig
from vmwrapper.hypervisor.qemu.cmdline import CACHE_NODE, DISK_NODE, STATE_NODE
from vmwrapper.hypervisor.qemu.slotfiles import SlotFiles
from vmwrapper.images import qemu_img as images_qemu_img

log = logging.getLogger(__name__)

#: Image formats QEMU can snapshot over as a backing file (the others block migration).
SNAPSHOT_SAFE_FORMATS = frozenset({"qcow2", "raw"})


class QemuImg(images_qemu_img.QemuImg):
    """``images.qemu_img.QemuImg`` whose failures are the back end's: a qemu-img that fails
    under a running job (a full disk, a cancelled conversion) is a BackendError, retried
    later, not a broken image."""

    def run(self, *args: str, timeout: float = 120.0) -> str:
        try:
            return super().run(*args, timeout=timeout)
        except images_qemu_img.QemuImgFailed as exc:
            raise BackendError(
                str(exc), argv=exc.argv, exit_code=exc.exit_code, output=exc.output
            ) from exc


class Overlays:
    """The qcow2 files of one VM in its slot."""

    def __init__(self, config: VmConfig, files: SlotFiles, img: QemuImg) -> None:
        self.config = config
        self.files = files
        self.img = img
        self.tops: dict[str, Path] = {}  # node → its top layer, set by the live checkpoints

    def disk_parent(self) -> Path | None:
        return self.config.multiattach_parent or self.config.disk_image

    @property
    def qcow2_files(self) -> tuple[tuple[str, Path], ...]:
        """(node, path of its top file) of every qcow2 this VM uses; the first holds the VM
        state. The top is the overlay create() made, or the newest layer a live checkpoint
        put over it (``tops``)."""
        return tuple((node, self.tops.get(node, path)) for node, path in self.bottom_files)

    @property
    def bottom_files(self) -> tuple[tuple[str, Path], ...]:
        """(node, path) of the overlays create() makes: the bottom of each disk's chain."""
        nodes: list[tuple[str, Path]] = []
        if self.disk_parent() is not None:
            nodes.append((DISK_NODE, self.files.disk_overlay))
        if self.config.cache_disk is not None:
            nodes.append((CACHE_NODE, self.files.cache_overlay))
        if not nodes:
            nodes.append((STATE_NODE, self.files.state_disk))
        return tuple(nodes)

    def exists(self) -> bool:
        return self.bottom_files[0][1].exists()

    def create(self) -> None:
        """Make the overlays in the slot (kept if present: they hold this job's snapshots)."""
        parent = self.disk_parent()
        if parent is not None:
            self._make_overlay(parent, self.files.disk_overlay)
        if self.config.cache_disk is not None:
            self._make_overlay(self.config.cache_disk, self.files.cache_overlay)
        if parent is None and self.config.cache_disk is None and not self.files.state_disk.exists():
            self.img.run("create", "-q", "-f", "qcow2", str(self.files.state_disk), "1M")

    def _make_overlay(self, parent: Path, overlay: Path) -> None:
        if overlay.exists():
            return
        if not parent.is_file():
            raise VmStartError(
                f"disk image {parent} does not exist; check the app version's files "
                "(vm_image.vdi / multiattach_vdi_file / vm_cache.vdi)"
            )
        base, fmt = self._snapshot_capable_base(parent)
        self.img.run(
            "create", "-q", "-f", "qcow2", "-b", str(base.resolve()), "-F", fmt, str(overlay)
        )
        log.info(
            "overlay %s over %s (%s)", overlay.name, base, fmt, extra={"event": "qemu_overlay"}
        )

    def _snapshot_capable_base(self, parent: Path) -> tuple[Path, str]:
        """``parent`` itself if QEMU can snapshot over it, else a qcow2 copy made once.

        QEMU's vdi (and vmdk, vpc, vhdx) drivers block migration and so every snapshot, even
        as a read-only backing file. Such a parent is converted once to qcow2 next to it
        (the slot's own image) or, for a multiattach parent, in the project dir where all
        slots share it; the parent itself is only read.
        """
        in_slot = parent.parent.resolve() == self.config.slot_dir.resolve()
        if in_slot:
            linked = boinc_files.resolve_filename(parent.parent, parent.name)
            if linked != parent:  # an earlier run of this task put the conversion in its place
                if not linked.is_file():
                    raise VmStartError(
                        f"{parent.name} links to {linked}, which is gone; the task cannot "
                        "start (abort it: the client will fetch the image for a new one)"
                    )
                return linked, "qcow2"
        fmt = self.img.info(parent).fmt
        if fmt in SNAPSHOT_SAFE_FORMATS:
            return parent, fmt
        shared_by_tasks = in_slot and self.config.project_dir.is_dir()
        if shared_by_tasks:
            # one conversion per image content (so per app version), in the project dir
            with parent.open("rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
            base = self.config.project_dir / f"{parent.name}.{digest[:16]}.qcow2"
        else:
            stat = parent.stat()
            key = f"{parent.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
            base = parent.with_name(f"{parent.name}.{hashlib.sha256(key).hexdigest()[:12]}.qcow2")
        if not base.exists():
            _remove_dead_converters_files(base)
            tmp = base.with_name(f"{base.name}.{os.getpid()}.tmp")
            try:
                self.img.run(
                    "convert", "-U", "-f", fmt, "-O", "qcow2", str(parent), str(tmp),
                    timeout=3600.0,
                )  # fmt: skip
                tmp.replace(base)  # atomic: a slot converting at the same time is harmless
            finally:
                tmp.unlink(missing_ok=True)
            log.info(
                "%s converted to %s (QEMU cannot snapshot over %s)", parent.name, base.name, fmt,
                extra={"event": "qemu_base_converted"},
            )  # fmt: skip
        if shared_by_tasks:
            _link_in_place(parent, base)
        return base, "qcow2"

    # --- snapshots while QEMU is not running ---------------------------------------------

    def snapshot_names(self) -> tuple[str, ...]:
        """The snapshots of the qcow2 holding the VM state (none before create())."""
        path = self.qcow2_files[0][1]
        if not path.exists():
            return ()
        return self.img.info(path).snapshots

    def delete_snapshot(self, name: str) -> None:
        for _node, path in self.qcow2_files:
            if name in self.img.info(path).snapshots:
                self.img.run("snapshot", "-d", name, str(path))

    def revert_disks(self, name: str) -> bool:
        """If ``name`` holds the disks alone, put them back (QEMU not running); else False.
        The first qcow2 decides: a full snapshot keeps the VM state there (the others have
        none in any snapshot)."""
        infos = [(path, self.img.info(path)) for _node, path in self.qcow2_files]
        if name not in infos[0][1].disk_only_snapshots:
            return False
        for path, info in infos:
            if name in info.snapshots:
                self.img.run("snapshot", "-a", name, str(path))
        return True

    def remove_converted_bases(self) -> None:
        """The slot's own conversions of its images (a multiattach one is shared: kept)."""
        for image in (self.config.disk_image, self.config.cache_disk):
            if image is not None and image.parent == self.config.slot_dir:
                for base in image.parent.glob(f"{glob.escape(image.name)}.*.qcow2"):
                    base.unlink(missing_ok=True)


def _link_in_place(copy: Path, target: Path) -> None:
    """Replace the slot's copy of an image with a BOINC link file to its shared conversion:
    the task's disk is then its overlay and snapshots, and the client, which copies an input
    only when its name is missing from the slot, does not copy it again at a restart
    (docs/compatibility.md#runtime)."""
    tmp = copy.with_name(f"{copy.name}.link.tmp")
    tmp.write_text(boinc_files.format_soft_link(os.path.relpath(target, copy.parent)))
    tmp.replace(copy)
    log.info(
        "%s now links to %s (converted once for every task)", copy.name, target.name,
        extra={"event": "qemu_image_linked"},
    )  # fmt: skip


def _remove_dead_converters_files(base: Path) -> None:
    """Delete ``<base>.<pid>.tmp`` files whose converting process is gone: a wrapper killed
    while converting leaves one (image-sized) behind, and nothing else would remove it."""
    for stale in base.parent.glob(f"{glob.escape(base.name)}.*.tmp"):
        pid = stale.name[len(base.name) + 1 : -len(".tmp")]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            stale.unlink(missing_ok=True)
