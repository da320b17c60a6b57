"""Host checks for ``vmwrapper doctor``: can this host run VM apps, with which back end?

Two halves: :func:`probe_host` gathers :class:`HostFacts` (reads /proc and /sys, runs
``qemu-system-x86_64 --version``, ``VBoxManage --version`` and a tiny KVM boot with a deadline);
:func:`diagnose` turns facts into a :class:`Diagnosis` (pure): one :class:`Check` per topic,
the back end that will run, and what to fix for the others.

KVM is judged the way the QEMU back end judges it (``hypervisor.qemu.accel``): ``/dev/kvm``
accessible *and* ``vmx``/``svm`` in the CPU flags *and* a probe boot that finishes in time.
A ``/dev/kvm`` from a software nested KVM (``kvm_pvm``, no vmx/svm) is reported as unusable.
"""

from __future__ import annotations

import enum
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1024 * 1024
GIB = 1024 * MIB
#: vboxwrapper's smallest VM (MIN_MEMORY_SIZE_MB) plus the hypervisor's own overhead.
MIN_FREE_MEMORY = 768 * MIB
#: Room for a slot's copy of an image, its growth and a checkpoint.
MIN_FREE_DISK = 2 * GIB

QEMU_BINARY = "qemu-system-x86_64"

#: Kernel modules of hypervisors that claim VT-x/AMD-V for themselves, and what they mean.
FOREIGN_MODULES: Mapping[str, str] = {
    "kvm_intel": "KVM holds VT-x: VirtualBox VMs fail to start while KVM guests run",
    "kvm_amd": "KVM holds AMD-V: VirtualBox VMs fail to start while KVM guests run",
    "kvm_pvm": "a software nested KVM (kvm_pvm): /dev/kvm exists but real guests hang or fail",
    "vboxdrv": "VirtualBox holds VT-x: KVM guests fail while VirtualBox VMs run",
    "vmmon": "VMware holds VT-x: KVM and VirtualBox guests fail while VMware VMs run",
    "vmx86": "VMware holds VT-x: KVM and VirtualBox guests fail while VMware VMs run",
}


class Status(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


class KvmBoot(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    NOT_RUN = "not run"


@dataclass(frozen=True)
class HostFacts:
    """What the probes found. Every field has a "not found" value, so tests build any host."""

    cpuinfo: str = ""
    kvm_device: bool = False  # /dev/kvm exists
    kvm_accessible: bool = False  # ... and is readable + writable by us
    kvm_boot: KvmBoot = KvmBoot.NOT_RUN
    modules: frozenset[str] = frozenset()
    qemu_path: str = ""
    qemu_version_text: str = ""
    qemu_img_path: str = ""
    vboxmanage_path: str = ""
    vbox_version_text: str = ""
    mem_available: int = 0  # bytes
    disk_free: int = 0  # bytes, at disk_path
    disk_path: str = "."
    backend_env: str = ""  # VMWRAPPER_BACKEND


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Diagnosis:
    checks: tuple[Check, ...]
    backend: str  # the back end `vmwrapper run` will use: "qemu", "virtualbox" or ""
    accel: str  # "kvm", "tcg" or "" (QEMU only)
    summary: str
    fixes: tuple[str, ...] = field(default=())

    @property
    def runnable(self) -> bool:
        return bool(self.backend)


def installed_backends(environ: dict[str, str] | None = None) -> frozenset[str]:
    """The back ends this host has: ``virtualbox`` when VBoxManage is found where the
    VirtualBox back end looks for it, ``qemu`` when qemu-system-x86_64 is on PATH."""
    from vmwrapper.hypervisor.virtualbox.runner import vbox_environment

    env = dict(os.environ if environ is None else environ)
    found = {"fake"}
    vbox = vbox_environment(env, boinc_dir=Path("."))
    if os.path.isabs(vbox.executable):
        found.add("virtualbox")
    if shutil.which(QEMU_BINARY, path=env.get("PATH")):
        found.add("qemu")
    return frozenset(found)


# --- pure parsing ----------------------------------------------------------------------------


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The CPU flags of the first ``flags`` line of /proc/cpuinfo."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def virt_flag(flags: frozenset[str]) -> str:
    """ "vmx" (Intel VT-x), "svm" (AMD-V) or ""."""
    return "vmx" if "vmx" in flags else "svm" if "svm" in flags else ""


_QEMU_VERSION = re.compile(r"QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?")


def parse_qemu_version(text: str) -> tuple[int, int, int] | None:
    """``QEMU emulator version 7.2.22 (Debian ...)`` -> (7, 2, 22)."""
    match = _QEMU_VERSION.search(text)
    if not match:
        return None
    major, minor, patch = match.groups()
    return (int(major), int(minor), int(patch or 0))


def parse_vbox_version(text: str) -> tuple[int, int, int] | None:
    """``VBoxManage --version`` (``7.0.14r161095``, maybe after warnings) -> (7, 0, 14)."""
    from vmwrapper.hypervisor.virtualbox.output import parse_version

    return parse_version(text)


def parse_modules(proc_modules: str) -> frozenset[str]:
    """Module names from /proc/modules text (first column)."""
    return frozenset(line.split()[0] for line in proc_modules.splitlines() if line.strip())


def _size(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / MIB:.0f} MiB"


def _version(v: tuple[int, int, int] | None) -> str:
    return ".".join(map(str, v)) if v else "unknown"


# --- pure diagnosis --------------------------------------------------------------------------


def diagnose(facts: HostFacts) -> Diagnosis:
    checks: list[Check] = []
    flags = cpu_flags(facts.cpuinfo)
    vflag = virt_flag(flags)
    checks.append(_check_cpu(flags, vflag))
    kvm_ok, kvm_check = _check_kvm(facts, vflag)
    checks.append(kvm_check)
    qemu_ok, qemu_checks = _check_qemu(facts)
    checks += qemu_checks
    vbox_ok, vbox_check = _check_vbox(facts)
    checks.append(vbox_check)
    checks += _check_foreign(facts)
    checks += _check_resources(facts)

    # what an app version without a choice of its own gets: VirtualBox where it is installed;
    # QEMU speaks for the opt-in app versions (docs/compatibility.md#back-end-selection)
    wanted = facts.backend_env or ("virtualbox" if facts.vboxmanage_path else "qemu")
    fixes = [c.fix for c in checks if c.fix and c.status in (Status.FAIL, Status.WARN)]
    backend, accel = "", ""
    if wanted == "qemu":
        if qemu_ok:
            backend, accel = "qemu", "kvm" if kvm_ok else "tcg"
    elif wanted == "virtualbox":
        if vbox_ok:
            backend = "virtualbox"
    elif wanted == "fake":
        backend = "fake"
    else:
        fixes.insert(0, f"VMWRAPPER_BACKEND={wanted!r} is unknown: use qemu, virtualbox or fake")

    if backend == "qemu":
        speed = (
            "hardware-accelerated (KVM)"
            if accel == "kvm"
            else "emulated (TCG, roughly 10-50x slower than KVM; fine for small guests)"
        )
        summary = f"vmwrapper will run VMs with QEMU {_version(_qv(facts))}, {speed}."
    elif backend == "virtualbox":
        summary = f"vmwrapper will run VMs with VirtualBox {_version(_vv(facts))}."
    elif backend == "fake":
        summary = "VMWRAPPER_BACKEND=fake: no VM is started (for tests only)."
    else:
        alternatives = []
        if wanted != "qemu" and qemu_ok:
            alternatives.append("qemu (--backend qemu)")
        if wanted != "virtualbox" and vbox_ok:
            alternatives.append("virtualbox (--backend virtualbox)")
        other = f"; usable instead: {', '.join(alternatives)}" if alternatives else ""
        summary = f"the {wanted} back end cannot run on this host{other}."
    return Diagnosis(tuple(checks), backend, accel, summary, tuple(dict.fromkeys(fixes)))


@dataclass(frozen=True)
class AppVersionBackend:
    """Which back end this host would give one app version, and why."""

    app_dir: str
    backend: str  # "" when none: the task would end with a temporary exit and a notice
    reason: str
    job_backends: tuple[str, ...] = ()
    command_line_backend: str = ""


def app_backend(
    facts: HostFacts,
    app_dir: str,
    *,
    job_backends: tuple[str, ...],
    command_line_backend: str = "",
) -> AppVersionBackend:
    """The selection rule of ``vmwrapper run`` (docs/compatibility.md#back-end-selection) for an
    app version on the host ``facts`` describe (pure)."""
    from vmwrapper.supervisor.select import choose_backend

    installed = {"fake"}
    if facts.vboxmanage_path:
        installed.add("virtualbox")
    if facts.qemu_path:
        installed.add("qemu")
    choice = choose_backend(
        command_line=command_line_backend,
        environment=facts.backend_env,
        job_backends=job_backends,
        installed=frozenset(installed),
    )
    return AppVersionBackend(
        app_dir, choice.name, choice.reason, job_backends, command_line_backend
    )


def read_app_version_backends(app_dir: Path) -> tuple[tuple[str, ...], str]:
    """``<vmwrapper_backends>`` of the app version's vbox_job.xml and the ``--backend`` of its
    command line (version.xml). Raises InputError/SpecError naming the file when unreadable."""
    from vmwrapper.errors import InputError
    from vmwrapper.packaging.version import JOB_LOGICAL_NAME, parse_version_xml
    from vmwrapper.runconfig import parse_wrapper_args
    from vmwrapper.spec import parse_job

    version_file = app_dir / "version.xml"
    try:
        version = parse_version_xml(version_file.read_bytes(), str(version_file))
    except OSError as exc:
        raise InputError(f"{version_file}: cannot read it ({exc.strerror})") from exc
    jobs = [f for f in version.files if f.logical_name == JOB_LOGICAL_NAME]
    if not jobs:
        raise InputError(
            f"{version_file}: no <file> with <logical_name>{JOB_LOGICAL_NAME}</logical_name> "
            "(fix: ship the job file under that logical name)"
        )
    job_path = app_dir / jobs[0].physical_name
    try:
        spec = parse_job(job_path.read_bytes(), str(job_path)).spec
    except OSError as exc:
        raise InputError(f"{job_path}: cannot read it ({exc.strerror})") from exc
    args = parse_wrapper_args(version.cmdline.split())
    return spec.backends, args.backend


def _qv(facts: HostFacts) -> tuple[int, int, int] | None:
    return parse_qemu_version(facts.qemu_version_text)


def _vv(facts: HostFacts) -> tuple[int, int, int] | None:
    return parse_vbox_version(facts.vbox_version_text)


def _check_cpu(flags: frozenset[str], vflag: str) -> Check:
    guest = (
        " (this host is itself a virtual machine: 'hypervisor' flag)"
        if ("hypervisor" in flags)
        else ""
    )
    if vflag:
        name = "VT-x" if vflag == "vmx" else "AMD-V"
        return Check("cpu virtualization", Status.OK, f"{name} ({vflag}) present{guest}")
    return Check(
        "cpu virtualization",
        Status.WARN,
        f"no vmx/svm flag: VT-x/AMD-V missing, disabled in the firmware, or hidden by the "
        f"hypervisor below{guest}. 64-bit guests under VirtualBox and KVM cannot run.",
        "enable VT-x/AMD-V in the BIOS/UEFI setup (or nested virtualization on the host below); "
        "QEMU still runs guests with TCG",
    )


def _check_kvm(facts: HostFacts, vflag: str) -> tuple[bool, Check]:
    if not facts.kvm_device:
        return False, Check(
            "kvm",
            Status.WARN,
            "/dev/kvm missing: QEMU will use TCG (slow)",
            "load kvm_intel or kvm_amd (modprobe) after enabling VT-x/AMD-V",
        )
    if not facts.kvm_accessible:
        return False, Check(
            "kvm",
            Status.WARN,
            "/dev/kvm exists but this user cannot open it: QEMU will use TCG",
            "add the user to the 'kvm' group (sudo usermod -aG kvm $USER) and log in again",
        )
    boot = {
        KvmBoot.OK: "a probe boot under KVM finished",
        KvmBoot.FAILED: "a probe boot under KVM failed or timed out",
        KvmBoot.NOT_RUN: "no probe boot was run",
    }[facts.kvm_boot]
    if not vflag:
        pvm = " (module kvm_pvm: a software nested KVM)" if "kvm_pvm" in facts.modules else ""
        return False, Check(
            "kvm",
            Status.WARN,
            f"/dev/kvm is accessible{pvm} but the CPU shows no vmx/svm, so KVM is not trusted "
            f"({boot}; full kernels are known to hang on such hosts): QEMU will use TCG",
            "run on a host with VT-x/AMD-V exposed (enable nested virtualization below)",
        )
    if facts.kvm_boot is not KvmBoot.OK:
        return False, Check(
            "kvm",
            Status.WARN,
            f"/dev/kvm accessible and {vflag} present, but {boot}: QEMU will use TCG",
            "check `dmesg` for KVM errors; another hypervisor may hold VT-x",
        )
    return True, Check("kvm", Status.OK, f"usable: /dev/kvm, {vflag}, {boot}")


def _check_qemu(facts: HostFacts) -> tuple[bool, list[Check]]:
    checks = []
    if not facts.qemu_path:
        checks.append(
            Check(
                "qemu",
                Status.FAIL,
                f"{QEMU_BINARY} not found on PATH",
                "install QEMU: sudo apt-get install qemu-system-x86 qemu-utils",
            )
        )
        return False, checks
    version = _qv(facts)
    status = Status.OK if version and version >= (6, 0, 0) else Status.WARN
    fix = "" if status is Status.OK else "install QEMU 6.0 or newer"
    checks.append(Check("qemu", status, f"{facts.qemu_path}, version {_version(version)}", fix))
    if not facts.qemu_img_path:
        checks.append(
            Check(
                "qemu-img",
                Status.FAIL,
                "qemu-img not found: overlays and snapshots need it",
                "install it: sudo apt-get install qemu-utils",
            )
        )
        return False, checks
    checks.append(Check("qemu-img", Status.OK, facts.qemu_img_path))
    return True, checks


def _check_vbox(facts: HostFacts) -> tuple[bool, Check]:
    if not facts.vboxmanage_path:
        return False, Check(
            "virtualbox",
            Status.SKIP,
            "VBoxManage not found (needed for every app version that does not ask for QEMU)",
            "",
        )
    version = _vv(facts)
    if version is None:
        return False, Check(
            "virtualbox",
            Status.FAIL,
            f"{facts.vboxmanage_path} runs but prints no version: "
            f"{facts.vbox_version_text.strip()[-200:]!r}",
            "reinstall VirtualBox or rebuild its kernel module (sudo /sbin/vboxconfig)",
        )
    return True, Check("virtualbox", Status.OK, f"{facts.vboxmanage_path}, version {version}")


def _check_foreign(facts: HostFacts) -> list[Check]:
    found = sorted(m for m in facts.modules if m in FOREIGN_MODULES)
    if not found:
        return [Check("other hypervisors", Status.OK, "no foreign hypervisor module loaded")]
    checks = []
    for module in found:
        relevant = (module.startswith("kvm") and facts.vboxmanage_path) or (
            module in ("vboxdrv", "vmmon", "vmx86")
        )
        status = Status.WARN if relevant or module == "kvm_pvm" else Status.OK
        fix = ""
        if module.startswith("kvm_") and module != "kvm_pvm" and facts.vboxmanage_path:
            fix = f"for VirtualBox, unload KVM while it runs: sudo modprobe -r {module}"
        checks.append(Check(f"module {module}", status, FOREIGN_MODULES[module], fix))
    return checks


def _check_resources(facts: HostFacts) -> list[Check]:
    checks = []
    if facts.mem_available >= MIN_FREE_MEMORY:
        checks.append(Check("memory", Status.OK, f"{_size(facts.mem_available)} available"))
    else:
        checks.append(
            Check(
                "memory",
                Status.WARN,
                f"only {_size(facts.mem_available)} available; a VM needs at least 512 MiB "
                "plus the hypervisor's overhead",
                "close programs or lower the number of concurrent tasks",
            )
        )
    if facts.disk_free >= MIN_FREE_DISK:
        checks.append(
            Check("disk", Status.OK, f"{_size(facts.disk_free)} free at {facts.disk_path}")
        )
    else:
        checks.append(
            Check(
                "disk",
                Status.WARN,
                f"only {_size(facts.disk_free)} free at {facts.disk_path}; slots hold a copy "
                "of the VM image and its checkpoints",
                "free disk space in the BOINC data directory",
            )
        )
    return checks


# --- the I/O probe ---------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _run_version(argv: list[str], timeout: float = 20.0) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"error: {exc}"
    return done.stdout + done.stderr


def _loaded_modules() -> frozenset[str]:
    text = _read("/proc/modules")
    if text:
        return parse_modules(text)
    try:  # containers may hide /proc/modules; /sys/module lists loaded and built-in modules
        return frozenset(p.name for p in Path("/sys/module").iterdir())
    except OSError:
        return frozenset()


def probe_host(
    disk_path: str = ".", *, kvm_boot_probe: bool = True, probe_timeout: float = 8.0
) -> HostFacts:
    """Probe this host (reads /proc and /sys, runs version commands and a short KVM boot)."""
    import psutil

    from vmwrapper.hypervisor.qemu.accel import probe_kvm_boot
    from vmwrapper.hypervisor.qemu.cmdline import Accel

    cpuinfo = _read("/proc/cpuinfo")
    kvm_device = os.path.exists("/dev/kvm")
    kvm_accessible = kvm_device and os.access("/dev/kvm", os.R_OK | os.W_OK)
    qemu = shutil.which(QEMU_BINARY) or ""
    vbox = shutil.which("VBoxManage") or shutil.which("vboxmanage") or ""
    boot = KvmBoot.NOT_RUN
    if kvm_boot_probe and kvm_accessible and qemu:
        ok = probe_kvm_boot(qemu, Accel.KVM, probe_timeout)
        boot = KvmBoot.OK if ok else KvmBoot.FAILED
    try:
        disk_free = shutil.disk_usage(disk_path).free
    except OSError:
        disk_free = 0
    return HostFacts(
        cpuinfo=cpuinfo,
        kvm_device=kvm_device,
        kvm_accessible=kvm_accessible,
        kvm_boot=boot,
        modules=_loaded_modules(),
        qemu_path=qemu,
        qemu_version_text=_run_version([qemu, "--version"]) if qemu else "",
        qemu_img_path=shutil.which("qemu-img") or "",
        vboxmanage_path=vbox,
        vbox_version_text=_run_version([vbox, "--version"]) if vbox else "",
        mem_available=int(psutil.virtual_memory().available),
        disk_free=disk_free,
        disk_path=disk_path,
        backend_env=os.environ.get("VMWRAPPER_BACKEND", ""),
    )
