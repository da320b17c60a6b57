"""The wrapper's command line and the run configuration computed from it (pure).

``vmwrapper run`` accepts vboxwrapper's command line exactly (docs/compatibility.md#command-line):
options are scanned left to right, an option with a value takes the next argument. Unlike the
original, a missing or malformed value is a clear error (exit 206) instead of a crash or a silent 0.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vmwrapper.boinc.init_data import AppInitData
from vmwrapper.errors import CommandLineError
from vmwrapper.hypervisor.base import (
    NetworkConfig,
    PortRule,
    RemoteDesktop,
    Share,
    VmConfig,
)
from vmwrapper.hypervisor.virtualbox.options import VirtualBoxOptions
from vmwrapper.spec.model import MIN_MEMORY_SIZE_MB, JobSpec
from vmwrapper.supervisor.select import choose_backend

MAX_CLI_THREADS = 32
BACKENDS = ("qemu", "virtualbox", "fake")
STANDALONE_VM_NAME = "boinc_standalone"
#: Bytes of guest console lines stderr.txt and events.jsonl may each take over the task's life
#: (--guest_log_limit; docs/compatibility.md#runtime).
GUEST_LOG_LIMIT = 1 << 20


@dataclass(frozen=True)
class WrapperArgs:
    """vboxwrapper's options, plus our own `--dry-run`, `--backend` and `--guest_log_limit`."""

    trickle: float = 0.0
    nthreads: float = 0.0
    memory_size_mb: float = 0.0
    vmimage: int = 0
    register_only: bool = False
    sporadic: bool = False
    dry_run: bool = False
    backend: str = ""
    guest_log_limit: int = GUEST_LOG_LIMIT


def _number(option: str, text: str, convert: Callable[[str], float]) -> float:
    try:
        value = convert(text)
    except ValueError:
        raise CommandLineError(f"{option} needs a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise CommandLineError(f"{option} needs a number of 0 or more, got {text!r}")
    return value


_VALUE_OPTIONS: dict[str, tuple[str, Callable[[str], float]]] = {
    "--trickle": ("trickle", float),
    "--nthreads": ("nthreads", float),
    "--memory_size_mb": ("memory_size_mb", float),
    "--vmimage": ("vmimage", int),
    "--guest_log_limit": ("guest_log_limit", int),
}
_FLAG_OPTIONS = {
    "--register_only": "register_only",
    "--sporadic": "sporadic",
    "--dry-run": "dry_run",
}

USAGE = """\
usage: vmwrapper [run] [--trickle SECONDS] [--nthreads N] [--memory_size_mb MB]
                 [--vmimage N] [--register_only] [--sporadic]
                 [--backend qemu|virtualbox|fake] [--guest_log_limit BYTES] [--dry-run]"""


def parse_wrapper_args(argv: Sequence[str]) -> WrapperArgs:
    """Scan vboxwrapper's options left to right. Raises CommandLineError (BOINC exit 206)."""
    values: dict[str, object] = {}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _FLAG_OPTIONS:
            values[_FLAG_OPTIONS[arg]] = True
        elif arg in _VALUE_OPTIONS or arg == "--backend":
            if i + 1 >= len(args):
                raise CommandLineError(f"{arg} needs a value")
            i += 1
            if arg == "--backend":
                if args[i] not in BACKENDS:
                    raise CommandLineError(f"--backend must be one of {', '.join(BACKENDS)}")
                values["backend"] = args[i]
            else:
                name, convert = _VALUE_OPTIONS[arg]
                number = _number(arg, args[i], convert)
                values[name] = int(number) if convert is int else number
        else:
            raise CommandLineError(f"Unrecognized option: {arg!r}\n{USAGE}")
        i += 1
    return WrapperArgs(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RunConfig:
    """What this run of the wrapper is: names, sizes and switches, before any VM exists."""

    standalone: bool
    result_name: str
    slot: int
    vm_name: str
    image_name: str
    floppy_name: str
    cpus: int
    memory_mb: int
    trickle_period: float
    register_only: bool
    sporadic: bool
    headless: bool
    backend: str  # "" when no back end can run this job here (see backend_reason)
    #: human lines for the log: every adjustment made, never silently
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: why this back end (or why none): docs/compatibility.md#back-end-selection
    backend_reason: str = ""


def vm_name_for(result_name: str, standalone: bool) -> str:
    """``boinc_`` + the first 16 hex digits of MD5(result name); fixed name when standalone."""
    if standalone:
        return STANDALONE_VM_NAME
    return "boinc_" + hashlib.md5(result_name.encode("utf-8")).hexdigest()[:16]


def cpu_count(args: WrapperArgs, aid: AppInitData, notes: list[str]) -> int:
    """vboxwrapper's rule: more than one CPU only if --nthreads or init_data's ncpus says so."""
    if aid.ncpus > 1 or args.nthreads > 1:
        if args.nthreads:
            threads = args.nthreads
            if threads > MAX_CLI_THREADS:
                notes.append(f"--nthreads {threads:g} capped at {MAX_CLI_THREADS}")
                threads = MAX_CLI_THREADS
            return math.ceil(threads)
        return math.ceil(aid.ncpus)
    return 1


def memory_size(args: WrapperArgs, spec: JobSpec, notes: list[str]) -> int:
    memory = args.memory_size_mb or spec.memory_size_mb
    if memory < MIN_MEMORY_SIZE_MB:
        notes.append(
            f"Memory size {memory:g}MB is too small; setting it to {MIN_MEMORY_SIZE_MB:g}MB"
        )
        memory = MIN_MEMORY_SIZE_MB
    return int(memory)


def build_run_config(
    args: WrapperArgs,
    spec: JobSpec,
    aid: AppInitData,
    *,
    standalone: bool,
    backend_from_env: str = "",
    installed: frozenset[str] = frozenset(BACKENDS),
) -> RunConfig:
    """``installed``: the back ends this host has (the caller probes; default: all)."""
    notes: list[str] = []
    if backend_from_env and backend_from_env not in BACKENDS:
        raise CommandLineError(f"VMWRAPPER_BACKEND must be one of {', '.join(BACKENDS)}")
    choice = choose_backend(
        command_line=args.backend,
        environment=backend_from_env,
        job_backends=spec.backends,
        installed=installed,
    )
    if standalone:
        image, floppy = "vm_image.vdi", "vm_floppy.img"
        if args.vmimage:
            notes.append("--vmimage is ignored in standalone mode")
    else:
        image = f"vm_image_{args.vmimage}.vdi" if args.vmimage else "vm_image.vdi"
        floppy = f"vm_floppy_{aid.slot}.img"
    return RunConfig(
        standalone=standalone,
        result_name=aid.result_name,
        slot=aid.slot,
        vm_name=vm_name_for(aid.result_name, standalone),
        image_name=image,
        floppy_name=floppy,
        cpus=cpu_count(args, aid, notes),
        memory_mb=memory_size(args, spec, notes),
        trickle_period=args.trickle,
        register_only=args.register_only,
        sporadic=args.sporadic,
        # vbox_window shows the console; standalone too (docs/compatibility.md#start-up); never in a
        # sandbox
        headless=not ((aid.vbox_window and not aid.using_sandbox) or standalone),
        backend=choice.name,
        notes=tuple(notes),
        backend_reason=choice.reason,
    )


@dataclass(frozen=True)
class RuntimePorts:
    """Ports chosen at run time and kept across restarts (from vbox_checkpoint.xml)."""

    webapi_port: int = 0  # host side of pf_guest_port; 0 = choose a free one
    remote_desktop_port: int = 0
    console_password: str = ""


# -- the remote console's credential (docs/compatibility.md#runtime) --------------------------

#: The slot file that tells the volunteer how to open the VM console. Never uploaded, readable
#: by the client's account and group only (the wrapper writes it with mode 0640).
CONSOLE_FILE = "vm_console.txt"
_PASSWORD_LINE = "password: "


def console_password_bytes(backend: str) -> int:
    """Random bytes for a new password: VNC authentication (QEMU) checks only the first 8
    characters, so it gets exactly 8 (6 bytes in URL-safe base64); VRDE takes longer ones."""
    return 6 if backend != "virtualbox" else 12


def format_console_file(backend: str, port: int, password: str, result_name: str) -> str:
    """What ``vm_console.txt`` says: where the console is, how to log in, with what."""
    from vmwrapper.hypervisor.virtualbox.commands import VRDE_USER

    if backend == "virtualbox":
        how = [
            "protocol: RDP (VirtualBox VRDE)",
            f"user: {VRDE_USER}",
            "BOINC Manager: Tasks > Show VM Console opens an RDP client on this address;",
            "give it the user and the password below when it asks.",
        ]
    else:
        how = [
            "protocol: VNC (QEMU), VNC authentication, no user name",
            "BOINC Manager's Show VM Console starts an RDP client, which cannot speak VNC:",
            f"open a VNC viewer on 127.0.0.1:{port} instead (e.g. `vncviewer 127.0.0.1::{port}`)",
            "and give it the password below.",
        ]
    return "\n".join(
        [
            f"VM console of task {result_name or 'standalone'}",
            f"address: 127.0.0.1:{port}",
            *how,
            f"{_PASSWORD_LINE}{password}",
            "",
        ]
    )


def parse_console_password(text: str) -> str | None:
    """The password an earlier run of this task wrote (kept across restarts), if any."""
    for line in text.splitlines():
        if line.startswith(_PASSWORD_LINE) and line[len(_PASSWORD_LINE) :].strip():
            return line[len(_PASSWORD_LINE) :].strip()
    return None


def _shares(spec: JobSpec, slot_dir: Path, project_dir: Path) -> tuple[Share, ...]:
    shares: list[Share] = []
    transport = spec.vmwrapper_share_transport.strip().lower() or "auto"
    if spec.enable_shared_directory:
        shares.append(Share("shared", slot_dir / "shared", transport=transport))
    elif spec.share_slot_dir:
        shares.append(Share("shared", slot_dir, transport=transport))
    if spec.share_project_dir:
        shares.append(Share("project", project_dir))
    elif spec.enable_scratch_directory:
        shares.append(Share("scratch", project_dir / "scratch"))
    return tuple(shares)


def _network(spec: JobSpec, ports: RuntimePorts, count_bytes: bool) -> NetworkConfig:
    if not spec.enable_network:
        return NetworkConfig(enabled=False)  # forwards need a network (vboxwrapper skips them)
    rules: list[PortRule] = []
    if spec.pf_guest_port:
        rules.append(PortRule(ports.webapi_port, spec.pf_guest_port))
    for forward in spec.port_forward:
        for host, guest, remote in forward.rules():
            rules.append(PortRule(host, guest, "" if remote else "127.0.0.1"))
    return NetworkConfig(
        enabled=True,
        bridged=spec.network_bridged_mode,
        driver=spec.vm_network_driver,
        nat_dns_host_resolver=spec.enable_nat_dns_host_resolver,
        port_rules=tuple(rules),
        count_bytes=count_bytes,
    )


def detected_lines(aid: AppInitData, *, anonymous_platform: bool) -> list[str]:
    """vboxwrapper's "Detected:" lines about how the client runs us (anonymous platform: an
    app_info.xml in the project directory; the sandboxed client account)."""
    lines = []
    if anonymous_platform:
        lines.append("Detected: Anonymous Platform Enabled")
    if aid.using_sandbox:
        lines.append("Detected: Sandbox Configuration Enabled")
    return lines


#: Clients before 7.2.16 cannot report VM extensions that failed (vm_extensions_disabled).
CLIENT_REPORTS_VM_EXTENSIONS = (7, 2, 16)


def hw_acceleration_usable(aid: AppInitData, standalone: bool, cpus: int = 1) -> bool:
    """Whether the host offers VT-x/AMD-V to us, by vboxwrapper's rules
    (docs/compatibility.md#virtualbox-failures); a back end may still refine this (VirtualBox
    up to 7.1 under another hypervisor, see ``VmConfig.under_hypervisor``)."""
    if standalone:
        return True
    if not aid.host_info.has_vm_extensions:
        return False
    version = aid.client_version
    if version == (0, 0, 0) or version >= CLIENT_REPORTS_VM_EXTENSIONS:
        return not aid.vm_extensions_disabled
    # an old client cannot say that acceleration failed before: vboxwrapper's "legacy
    # fallback" runs single-CPU VMs without it, so a host it crashed on still gets work done
    return cpus > 1


def virtualbox_options(spec: JobSpec) -> VirtualBoxOptions:
    """The job's settings only VirtualBox reads."""
    controller = (spec.vm_disk_controller_type, spec.vm_disk_controller_model)
    if spec.enable_isocontextualization and spec.vm_disk_controller_model == "PIIX4":
        controller = ("sata", "IntelAHCI")  # vboxwrapper forces this for ISO contextualization
    return VirtualBoxOptions(
        vram_mb=int(spec.vram_size_mb),
        graphics_controller=spec.vm_graphics_controller_type,
        disk_controller_type=controller[0],
        disk_controller_model=controller[1],
    )


def build_vm_config(
    run: RunConfig,
    spec: JobSpec,
    aid: AppInitData,
    slot_dir: Path,
    project_dir: Path,
    ports: RuntimePorts = RuntimePorts(),
) -> VmConfig:
    """The back-end-neutral VM definition for this run."""
    iso_mode = spec.enable_isocontextualization
    multiattach = project_dir / spec.multiattach_vdi_file if spec.multiattach_vdi_file else None
    remote = (
        RemoteDesktop(ports.remote_desktop_port, ports.console_password)
        if spec.enable_remotedesktop
        else None
    )
    return VmConfig(
        name=run.vm_name,
        description=run.result_name or "standalone",
        slot_dir=slot_dir,
        project_dir=project_dir,
        os_name=spec.os_name,
        memory_mb=run.memory_mb,
        cpus=run.cpus,
        disk_image=None if (iso_mode or multiattach) else slot_dir / run.image_name,
        multiattach_parent=None if iso_mode else multiattach,
        iso_image=slot_dir / "vm_isocontext.iso" if iso_mode else None,
        cache_disk=slot_dir / "vm_cache.vdi" if iso_mode and spec.enable_cache_disk else None,
        floppy_image=slot_dir / run.floppy_name if spec.enable_floppyio else None,
        boot_iso=spec.boot_iso,
        shares=_shares(spec, slot_dir, project_dir),
        network=_network(spec, ports, aid.global_prefs.daily_xfer_limit_mb > 0),
        remote_desktop=remote,
        headless=run.headless,
        rtc_utc=True,
        hw_acceleration=hw_acceleration_usable(aid, run.standalone, run.cpus),
        under_hypervisor=not run.standalone and aid.host_info.under_hypervisor,
        allow_software_emulation=spec.vmwrapper_software_emulation,
        screen=spec.enable_screenshots_on_error,
    )
