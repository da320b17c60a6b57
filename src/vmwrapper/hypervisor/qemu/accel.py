"""Choose KVM or TCG, and never trust ``/dev/kvm`` alone.

On some hosts ``/dev/kvm`` opens and QMP's ``query-kvm`` says enabled, yet guests hang or die
with "emulation failure" (a software nested KVM such as ``kvm_pvm``, whose CPUs show no
``vmx``/``svm`` flag). So ``auto`` uses KVM only when (1) ``/dev/kvm`` is readable and
writable, (2) the host CPU shows ``vmx`` or ``svm``, and (3) a tiny boot under KVM finishes
before a deadline: SeaBIOS loads a 512-byte boot sector that writes to QEMU's
``isa-debug-exit`` port, so a working KVM ends QEMU with a known exit code within a second.
Anything else means TCG. The answer is cached per QEMU binary for the process's lifetime.

A host without ``/dev/kvm`` whose QEMU lists ``whpx`` (a Windows host) gets the same probe
boot under WHPX, the Windows Hypervisor Platform: listed is not enough there either, WHPX
fails to start when the Windows feature is off (docs/windows.md#the-qemu-back-end-on-windows).

The decision helpers are pure; :func:`choose_accel` and :func:`probe_kvm_boot` touch the host.
"""

from __future__ import annotations

import enum
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vmwrapper import hostos
from vmwrapper.errors import BackendError, HostNotReady
from vmwrapper.hostos.winnames import choose_windows_accel
from vmwrapper.hypervisor.qemu.cmdline import Accel

log = logging.getLogger(__name__)

#: Environment variable that forces the accelerator when the back end is not told.
ACCEL_ENV = "VMWRAPPER_ACCEL"
DEBUG_EXIT_PORT = 0xF4
PROBE_EXIT_VALUE = 0x21
#: isa-debug-exit makes QEMU exit with (value << 1) | 1.
PROBE_EXIT_CODE = (PROBE_EXIT_VALUE << 1) | 1


class AccelSetting(enum.Enum):
    """The user's choice: probe, or force one (``--accel`` / ``VMWRAPPER_ACCEL``)."""

    AUTO = "auto"
    KVM = "kvm"
    WHPX = "whpx"
    TCG = "tcg"


@dataclass(frozen=True)
class AccelChoice:
    accel: Accel
    reason: str


def cpu_has_virt_flags(cpuinfo: str) -> bool:
    """True when a ``flags`` line of /proc/cpuinfo lists vmx (Intel) or svm (AMD)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features") and {"vmx", "svm"} & set(value.split()):
            return True
    return False


def probe_boot_sector() -> bytes:
    """A BIOS boot sector (16-bit real mode) that asks QEMU to exit with PROBE_EXIT_CODE."""
    code = bytes(
        [
            0xBA, DEBUG_EXIT_PORT, 0x00,  # mov dx, 0xf4
            0xB0, PROBE_EXIT_VALUE,  # mov al, 0x21
            0xEE,  # out dx, al  -> QEMU exits
            0xF4,  # hlt
            0xEB, 0xFD,  # jmp back to hlt
        ]
    )  # fmt: skip
    return code + bytes(510 - len(code)) + b"\x55\xaa"


def probe_argv(binary: str, accel: Accel, image: Path, data_dir: Path | None = None) -> list[str]:
    return [
        binary, "-accel", accel.value, "-machine", "pc", "-m", "16", "-nodefaults",
        "-no-user-config", "-display", "none",
        "-device", f"isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x04",
        "-drive", f"file={image},format=raw,if=ide,index=0",
        *(["-L", str(data_dir)] if data_dir is not None else []),
    ]  # fmt: skip


def listed_accelerators(help_text: str) -> frozenset[str]:
    """The accelerators ``qemu-system-* -accel help`` lists (pure)."""
    return frozenset(
        line.strip()
        for line in help_text.splitlines()
        if line.strip() and ":" not in line and " " not in line.strip()
    )


#: A firmware file every x86 QEMU needs; its directory is what ``-L`` must name.
BIOS_FILE = "bios-256k.bin"


def bundled_data_dir(binary: str) -> Path | None:
    """``share/qemu`` beside ``binary`` when the firmware is there (a QEMU unpacked on its
    own, as the Windows builds are, does not look there by itself); None when it is not, as
    for a distribution's QEMU, which knows its data directory."""
    found = shutil.which(binary)
    if found is None:
        return None
    data = Path(found).resolve().parent / "share" / "qemu"
    return data if (data / BIOS_FILE).is_file() else None


def probe_kvm_boot(binary: str, accel: Accel = Accel.KVM, timeout: float = 8.0) -> bool:
    """Boot the probe sector under ``accel``; True when it reached the exit port in time."""
    with tempfile.TemporaryDirectory(prefix="vmwrapper-kvmprobe-") as tmp:
        image = Path(tmp) / "probe.img"
        image.write_bytes(probe_boot_sector())
        argv = probe_argv(binary, accel, image, bundled_data_dir(binary))
        try:
            done = hostos.run_program(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            log.info("%s probe boot did not finish within %.0f s", accel.value, timeout)
            return False
        except OSError as exc:
            log.info("%s probe boot could not run: %s", accel.value, exc)
            return False
    if done.returncode != PROBE_EXIT_CODE:
        tail = done.stderr.decode(errors="replace").strip()[-300:]
        log.info("%s probe boot exited %d: %s", accel.value, done.returncode, tail)
    return done.returncode == PROBE_EXIT_CODE


def _kvm_device_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


_cache: dict[tuple[str, str], AccelChoice] = {}


def software_emulation_refused(
    choice: AccelChoice, os_name: str, *, allowed: bool, setting: AccelSetting
) -> str:
    """Why a 64-bit guest must not run under TCG here ("" when it may): without KVM it runs
    10-50 times slower and misses deadlines, so it gets vboxwrapper's VM-extensions contract
    unless the app version opted in, or the operator forced TCG (``setting``: the operator's
    ``--accel``/``VMWRAPPER_ACCEL``, not the TCG a client report without VT-x implies). Pure."""
    if choice.accel is not Accel.TCG or "_64" not in os_name:
        return ""
    if allowed or setting is AccelSetting.TCG:
        return ""
    return (
        f"os_name {os_name} is a 64-bit guest and this host has no usable hardware "
        f"acceleration ({choice.reason}); software emulation would be 10-50 times slower"
    )


def accept_software_emulation(
    choice: AccelChoice, os_name: str, *, allowed: bool, setting: AccelSetting
) -> None:
    """A 64-bit guest under TCG only with the app version's opt-in; else HostNotReady, the
    supervisor's VM-extensions contract (docs/compatibility.md#software-emulation). The
    choice is logged either way."""
    why = software_emulation_refused(choice, os_name, allowed=allowed, setting=setting)
    if why:
        raise HostNotReady(f"{why} (fix: enable VT-x/AMD-V and KVM on this host)")
    if choice.accel is Accel.TCG and "_64" in os_name:
        log.info(
            "64-bit guest under software emulation (TCG, %s): allowed by %s",
            choice.reason,
            "--accel tcg" if setting is AccelSetting.TCG else "the app version",
        )


def accel_setting(accel: AccelSetting | str | None) -> AccelSetting:
    """The back end's ``accel`` argument, else ``$VMWRAPPER_ACCEL``, else auto."""
    value = accel if accel is not None else os.environ.get(ACCEL_ENV, "") or "auto"
    try:
        return AccelSetting(value)
    except ValueError:
        raise BackendError(
            f"acceleration {value!r} is not one of auto, kvm, whpx, tcg "
            f"(fix: --accel or ${ACCEL_ENV})"
        ) from None


def choose_accel(
    setting: AccelSetting, arch: str, binary: str, *, probe_timeout: float = 8.0
) -> AccelChoice:
    """The accelerator for a guest of ``arch`` run by ``binary`` (probed once per process)."""
    if setting is AccelSetting.TCG:
        return AccelChoice(Accel.TCG, "forced by setting")
    key = (binary, arch)
    if setting is AccelSetting.AUTO and key in _cache:
        return _cache[key]
    choice = _probe(arch, binary, probe_timeout)
    if setting is not AccelSetting.AUTO:
        if choice.accel.value != setting.value:
            raise HostNotReady(
                f"{setting.value.upper()} was forced but is not usable here ({choice.reason}); "
                "use --accel auto or tcg, or enable VT-x/AMD-V"
            )
        return choice
    _cache[key] = choice
    log.info("QEMU acceleration: %s (%s)", choice.accel.value, choice.reason)
    return choice


def _probe(arch: str, binary: str, probe_timeout: float) -> AccelChoice:
    host = platform.machine().lower()
    same_arch = host == arch or (host, arch) in (("amd64", "x86_64"), ("arm64", "aarch64"))
    if not same_arch:
        return AccelChoice(Accel.TCG, f"guest {arch} on host {host}")
    if not _kvm_device_usable():
        if arch == "x86_64" and "whpx" in _accelerators(binary):
            return _probe_whpx(binary, probe_timeout)
        return AccelChoice(Accel.TCG, "/dev/kvm missing or not accessible")
    if arch != "x86_64":
        return AccelChoice(Accel.KVM, "/dev/kvm usable (no boot probe for this arch)")
    if not cpu_has_virt_flags(_read_cpuinfo()):
        return AccelChoice(Accel.TCG, "/dev/kvm present but the CPU shows no vmx/svm flag")
    if not probe_kvm_boot(binary, Accel.KVM, probe_timeout):
        return AccelChoice(Accel.TCG, "KVM probe boot failed or timed out")
    return AccelChoice(Accel.KVM, "KVM probe boot succeeded")


def _accelerators(binary: str) -> frozenset[str]:
    try:
        done = hostos.run_program(
            [binary, "-accel", "help"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    return listed_accelerators(done.stdout)


def _probe_whpx(binary: str, probe_timeout: float) -> AccelChoice:
    windows = choose_windows_accel(
        whpx_listed=True, whpx_boots=probe_kvm_boot(binary, Accel.WHPX, probe_timeout)
    )
    return AccelChoice(Accel(windows.name), windows.reason)
