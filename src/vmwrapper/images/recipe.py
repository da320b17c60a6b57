"""What a guest image is made of, and the cache key that names it (pure).

An :class:`ImageRecipe` is the admin's choice (extra files, extra Debian packages, format);
the builder adds what it found on the host (the kernel package's identity, the digests of the
files it will copy) as :class:`BuildInputs`. :func:`cache_key` hashes both together with
:data:`BUILDER_VERSION`, so any change of input gives a new image and nothing else does.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vmwrapper.errors import ImageError

#: Bump when the builder's output changes for the same inputs (layout, /init, defaults).
BUILDER_VERSION = "1"

ImageFormat = Literal["vdi", "qcow2", "raw"]
FORMATS: tuple[ImageFormat, ...] = ("vdi", "qcow2", "raw")

#: Loaded by /init at every boot, in dependency order: shares (9p over virtio-pci, or the
#: file service on a virtio-serial port: virtio_console), virtio disks and NICs, pvpanic (a
#: guest panic makes QEMU exit non-zero), and the ACPI power button with evdev (busybox
#: acpid powers the guest off when the host presses it).
BOOT_MODULES: tuple[str, ...] = (
    "9p",
    "9pnet_virtio",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "pvpanic_mmio",
    "button",
    "evdev",
)
#: Shipped in the image, loaded only when the hardware is there (or on demand with modprobe):
#: VirtualBox shared folders, NICs other than virtio (Intel e1000 as vm_network_driver
#: 82540EM/82543GC/82545EM and VirtualBox's default, AMD PCnet), floppy (floppyio),
#: CD-ROM/ISO contextualization, FAT media, IDE and SATA disks (cache disk).
OPTIONAL_MODULES: tuple[str, ...] = (
    "vboxguest",
    "vboxsf",
    "e1000",
    "pcnet32",
    "floppy",
    "isofs",
    "cdrom",
    "sr_mod",
    "sd_mod",
    "ata_piix",
    "ahci",
    "vfat",
    "nls_cp437",
    "nls_ascii",
)
#: Serial console first so every line reaches the wrapper's log; `quiet` keeps the kernel's
#: own chatter (and boot time under TCG) down; panic=-1 so a panic never hangs the VM.
# no_timer_check: under TCG on a busy host the kernel's IO-APIC timer check can time out and
# panic ("IO-APIC + timer doesn't work!"); emulated timers need no such check.
DEFAULT_CMDLINE = "console=tty0 console=ttyS0,115200 quiet panic=-1 no_timer_check"


@dataclass(frozen=True)
class ExtraFile:
    """`--add SRC:DEST`: a host file or directory copied into the image at DEST."""

    src: Path
    dest: str

    @classmethod
    def parse(cls, text: str) -> ExtraFile:
        src, sep, dest = text.rpartition(":")
        if not sep or not src or not dest.startswith("/"):
            raise ImageError(
                f"--add {text!r}: expected SRC:DEST with an absolute guest path, "
                "e.g. --add ./myprog:/usr/local/bin/myprog"
            )
        norm = posixpath.normpath(dest)
        if norm == "/":
            raise ImageError(f"--add {text!r}: DEST must name a path below /, not / itself")
        return cls(Path(src), norm)


@dataclass(frozen=True)
class ImageRecipe:
    """The inputs an admin chooses. ``ImageRecipe()`` is the default image."""

    extra_files: tuple[ExtraFile, ...] = ()
    debs: tuple[Path, ...] = ()
    fmt: ImageFormat = "vdi"
    cmdline: str = DEFAULT_CMDLINE
    boot_modules: tuple[str, ...] = BOOT_MODULES
    optional_modules: tuple[str, ...] = OPTIONAL_MODULES
    #: e.g. "linux-image-6.1.0-56-amd64"; "" = the one Debian's linux-image-amd64 depends on.
    kernel_package: str = ""

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise ImageError(f"image format {self.fmt!r} is not one of {', '.join(FORMATS)}")

    @property
    def suffix(self) -> str:
        return "img" if self.fmt == "raw" else self.fmt


@dataclass(frozen=True)
class BuildInputs:
    """What the builder found for a recipe: identities of packages and content digests."""

    kernel: str  # "<package>=<version> sha256:<deb digest>"
    busybox: str  # same form, or "host:/bin/busybox sha256:..."
    guest_files: Mapping[str, str] = field(default_factory=dict)  # name -> sha256
    extra_files: Mapping[str, str] = field(default_factory=dict)  # "src:dest" -> tree digest
    debs: Mapping[str, str] = field(default_factory=dict)  # file name -> sha256
    boot_files: Mapping[str, str] = field(default_factory=dict)  # mbr.bin, ldlinux -> sha256


def cache_key(recipe: ImageRecipe, inputs: BuildInputs) -> str:
    """A short stable name for the image these inputs produce (hex, 20 characters)."""
    document = {
        "builder": BUILDER_VERSION,
        "fmt": recipe.fmt,
        "cmdline": recipe.cmdline,
        "boot_modules": list(recipe.boot_modules),
        "optional_modules": list(recipe.optional_modules),
        "kernel": inputs.kernel,
        "busybox": inputs.busybox,
        "guest_files": dict(sorted(inputs.guest_files.items())),
        # Order matters for --add and --deb: later ones overwrite earlier ones.
        "extra_files": [[k, v] for k, v in inputs.extra_files.items()],
        "debs": [[k, v] for k, v in inputs.debs.items()],
        "boot_files": dict(sorted(inputs.boot_files.items())),
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def tree_digest(entries: Mapping[str, str]) -> str:
    """One digest for a file tree given ``relative path -> "mode:sha256"`` (or link target)."""
    text = json.dumps(sorted(entries.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def syslinux_config(cmdline: str, initrds: tuple[str, ...]) -> str:
    """syslinux.cfg: boot the one kernel at once, no prompt, no menu, nothing on the serial
    port (so the guest log starts with the kernel's and our own lines)."""
    if not initrds:
        raise ValueError("the guest needs at least its base initramfs")
    return (
        "DEFAULT vmwrapper\n"
        "PROMPT 0\n"
        "TIMEOUT 0\n"
        "LABEL vmwrapper\n"
        "  KERNEL /vmlinuz\n"
        f"  INITRD {','.join('/' + name for name in initrds)}\n"
        f"  APPEND {cmdline}\n"
    )
