"""vbox_job.xml → :class:`JobSpec`, with BOINC's parsing rules and every problem at once.

Pure: text in, :class:`ParsedJob` out, or :class:`SpecError` listing every error.

Compatibility with files projects deploy today (reference §2):
- booleans are ``<x/>`` or integer text (``0``, ``1``, ``0x1``); other text (``true``) is what
  vboxwrapper ignores, so it is a warning and the element keeps its default;
- unknown elements are warnings, never fatal;
- strings are trimmed and XML-unescaped; repeatable elements append.
Values that cannot work are errors naming the file, the element, the value and the fix.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as DefusedET
from defusedxml import DefusedXmlException

from vmwrapper.cnum import c_double, c_int
from vmwrapper.errors import Problem, SpecError
from vmwrapper.spec.model import (
    MIN_MEMORY_SIZE_MB,
    VRAM_MAX_MB,
    VRAM_MIN_MB,
    JobSpec,
    ParsedJob,
    PortForward,
)

ROOT = "vbox_job"


class Kind(enum.Enum):
    BOOL = "bool"
    STR = "string"
    FILE_NAME = "file name"  # a plain name inside the shared dir / project dir
    DOUBLE = "number"
    INT = "integer"
    PORT_FORWARD = "port_forward block"


#: Every element of vbox_job.xml and how it is read. Repeatable ones are the tuple fields.
ELEMENTS: dict[str, Kind] = {
    "os_name": Kind.STR,
    "memory_size_mb": Kind.DOUBLE,
    "vram_size_mb": Kind.DOUBLE,
    "vm_disk_controller_type": Kind.STR,
    "vm_disk_controller_model": Kind.STR,
    "vm_graphics_controller_type": Kind.STR,
    "vm_network_driver": Kind.STR,
    "enable_network": Kind.BOOL,
    "network_bridged_mode": Kind.BOOL,
    "enable_nat_dns_host_resolver": Kind.BOOL,
    "enable_shared_directory": Kind.BOOL,
    "share_slot_dir": Kind.BOOL,
    "enable_scratch_directory": Kind.BOOL,
    "share_project_dir": Kind.BOOL,
    "copy_to_shared": Kind.FILE_NAME,
    "copy_cmdline_to_shared": Kind.BOOL,
    "enable_floppyio": Kind.BOOL,
    "enable_cern_dataformat": Kind.BOOL,
    "enable_isocontextualization": Kind.BOOL,
    "enable_cache_disk": Kind.BOOL,
    "boot_iso": Kind.BOOL,
    "multiattach_vdi_file": Kind.FILE_NAME,
    "enable_remotedesktop": Kind.BOOL,
    "enable_screenshots_on_error": Kind.BOOL,
    "enable_graphics_support": Kind.BOOL,
    "enable_vm_savestate_usage": Kind.BOOL,
    "disable_automatic_checkpoints": Kind.BOOL,
    "minimum_checkpoint_interval": Kind.DOUBLE,
    "job_duration": Kind.DOUBLE,
    "fraction_done_filename": Kind.FILE_NAME,
    "heartbeat_filename": Kind.FILE_NAME,
    "minimum_heartbeat_interval": Kind.DOUBLE,
    "completion_trigger_file": Kind.FILE_NAME,
    "temporary_exit_trigger_file": Kind.FILE_NAME,
    "trickle_trigger_file": Kind.FILE_NAME,
    "intermediate_upload_file": Kind.FILE_NAME,
    "pf_guest_port": Kind.INT,
    "pf_host_port": Kind.INT,
    "port_forward": Kind.PORT_FORWARD,
    # our extension (vboxwrapper ignores it): the back ends the image runs on, in preference
    # order (docs/compatibility.md#back-end-selection)
    "vmwrapper_backends": Kind.STR,
    # our extension: a 64-bit guest may run under software emulation (QEMU without KVM)
    # instead of ending with the VM-extensions notice (docs/compatibility.md#software-emulation)
    "vmwrapper_software_emulation": Kind.BOOL,
}

REPEATABLE = frozenset(f.name for f in fields(JobSpec) if str(f.type).startswith("tuple"))

PORT_FORWARD_CHILDREN: dict[str, Kind] = {
    "host_port": Kind.INT,
    "guest_port": Kind.INT,
    "nports": Kind.INT,
    "is_remote": Kind.BOOL,
}

#: Elements vboxwrapper no longer reads; named so the warning can say so.
LEGACY = {"enable_gbac": "removed from vboxwrapper; it has no effect"}

_NOT_A_NUMBER = object()


@dataclass
class _Report:
    """Collects problems while parsing; turned into warnings / a SpecError at the end."""

    path: str
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def error(self, element: str, message: str, fix: str) -> None:
        self.errors.append(Problem(self.path, element, message, fix))

    def warn(self, element: str, message: str, fix: str = "") -> None:
        self.warnings.append(Problem(self.path, element, message, fix, severity="warning"))


def _read_value(elem: Element, kind: Kind, name: str, report: _Report) -> Any:
    """One element's value by BOINC's rules, or ``_NOT_A_NUMBER`` when it cannot be read."""
    text = (elem.text or "").strip()
    if kind is Kind.BOOL:
        if not text:
            return True  # <x/> means true
        try:
            return c_int(text) != 0
        except ValueError:
            report.warn(
                name,
                f"{text!r} is not a BOINC boolean; vboxwrapper ignores this element, "
                "so it keeps its default (false)",
                f"write <{name}/> or <{name}>1</{name}> for true, or remove the element",
            )
            return _NOT_A_NUMBER
    if kind is Kind.INT:
        try:
            return c_int(text) if text else 0
        except ValueError:
            report.error(name, f"{text!r} is not an integer", f"write a whole number in <{name}>")
            return _NOT_A_NUMBER
    if kind is Kind.DOUBLE:
        try:
            return c_double(text)
        except ValueError:
            report.error(name, f"{text!r} is not a number", f"write a number in <{name}>")
            return _NOT_A_NUMBER
    if kind is Kind.FILE_NAME:
        _check_file_name(name, text, report)
    return text


def _check_file_name(name: str, text: str, report: _Report) -> None:
    if not text:
        report.error(name, "is empty", f"name a file in <{name}>, or remove the element")
    elif "/" in text or "\\" in text or text in (".", "..") or ".." in text.split("."):
        report.error(
            name,
            f"{text!r} is not a plain file name (no path separators or '..')",
            "name a file directly inside the shared directory (or project dir)",
        )


def _parse_port_forward(elem: Element, report: _Report) -> PortForward | None:
    values: dict[str, Any] = {}
    for child in elem:
        kind = PORT_FORWARD_CHILDREN.get(child.tag)
        if kind is None:
            report.warn(f"port_forward/{child.tag}", "unknown element, ignored")
            continue
        value = _read_value(child, kind, f"port_forward/{child.tag}", report)
        if value is not _NOT_A_NUMBER:
            values[child.tag] = value
    ok = True
    for required in ("host_port", "guest_port"):
        if required in values:
            ok = _check_port(f"port_forward/{required}", values[required], report) and ok
        else:
            report.error(
                "port_forward",
                f"has no <{required}>",
                f"add <{required}>N</{required}> (1..65535) to every <port_forward>",
            )
            ok = False
    if not ok:
        return None
    forward = PortForward(**values)
    return forward if _check_forward(forward, report) else None


def _check_port(element: str, port: int, report: _Report, allow_zero: bool = False) -> bool:
    low = 0 if allow_zero else 1
    if low <= port <= 65535:
        return True
    report.error(element, f"port {port} is outside {low}..65535", "use a TCP port 1..65535")
    return False


def _check_forward(fw: PortForward, report: _Report) -> bool:
    if fw.nports < 0:
        report.error("port_forward/nports", f"{fw.nports} is negative", "use 0 or more")
        return False
    last = max(fw.nports, 1) - 1
    if fw.host_port + last > 65535 or fw.guest_port + last > 65535:
        report.error(
            "port_forward/nports",
            f"{fw.nports} ports from {fw.host_port}/{fw.guest_port} run past 65535",
            "lower nports or the first port",
        )
        return False
    return True


def _collect(root: Element, report: _Report) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for elem in root:
        name = elem.tag
        kind = ELEMENTS.get(name)
        if kind is None:
            why = LEGACY.get(name, "unknown element, ignored (vboxwrapper ignores it too)")
            report.warn(name, why, "remove it, or check the spelling")
            continue
        if kind is Kind.PORT_FORWARD:
            forward = _parse_port_forward(elem, report)
            if forward is not None:
                values.setdefault(name, []).append(forward)
            continue
        value = _read_value(elem, kind, name, report)
        if value is _NOT_A_NUMBER:
            continue
        if name in REPEATABLE:
            values.setdefault(name, []).append(value)
        else:
            if name in values:
                report.warn(name, "appears more than once; the last one counts")
            values[name] = value
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


_Check = Callable[[JobSpec], bool]

#: Combinations that cannot work: (condition, element, message, fix).
ILLEGAL_COMBINATIONS: tuple[tuple[_Check, str, str, str], ...] = (
    (
        lambda s: s.share_slot_dir and s.enable_shared_directory,
        "share_slot_dir",
        "cannot be combined with <enable_shared_directory>",
        "keep one of the two",
    ),
    (
        lambda s: s.share_slot_dir and bool(s.copy_to_shared),
        "copy_to_shared",
        "cannot be combined with <share_slot_dir>",
        "use <enable_shared_directory/> with <copy_to_shared>",
    ),
    (
        lambda s: bool(s.copy_to_shared) and not s.enable_shared_directory,
        "copy_to_shared",
        "needs <enable_shared_directory/>",
        "add <enable_shared_directory/>",
    ),
    (
        lambda s: s.enable_scratch_directory and s.share_project_dir,
        "enable_scratch_directory",
        "cannot be combined with <share_project_dir>",
        "keep one of the two",
    ),
)

#: Elements that name a file in the shared directory, so need one.
_SHARED_DIR_FILES = (
    "completion_trigger_file",
    "temporary_exit_trigger_file",
    "fraction_done_filename",
    "heartbeat_filename",
    "trickle_trigger_file",
    "intermediate_upload_file",
)


#: Back ends <vmwrapper_backends> may name (docs/compatibility.md#back-end-selection).
JOB_BACKENDS = ("virtualbox", "qemu")


def _check_backends(spec: JobSpec, report: _Report) -> None:
    words = spec.backends
    if spec.vmwrapper_backends.strip() and not words:
        report.error("vmwrapper_backends", "names no back end", "write e.g. `qemu`")
    for word in words:
        if word not in JOB_BACKENDS:
            report.error(
                "vmwrapper_backends",
                f"{word!r} is no back end",
                f"list one or more of {', '.join(JOB_BACKENDS)}, in preference order",
            )
    if len(set(words)) != len(words):
        report.warn("vmwrapper_backends", "names a back end twice", "name each once")


def _check_values(spec: JobSpec, report: _Report, notes: list[str]) -> JobSpec:
    for check, element, message, fix in ILLEGAL_COMBINATIONS:
        if check(spec):
            report.error(element, message, fix)
    _check_backends(spec, report)
    if not spec.shared_dir:
        for name in _SHARED_DIR_FILES:
            if getattr(spec, name):
                report.error(
                    name,
                    "names a file in the shared directory, but the job has none",
                    "add <enable_shared_directory/> (or <share_slot_dir/>)",
                )
    for name in (
        "memory_size_mb",
        "vram_size_mb",
        "job_duration",
        "minimum_checkpoint_interval",
        "minimum_heartbeat_interval",
    ):
        value = getattr(spec, name)
        if value < 0:
            report.error(name, f"{value:g} is negative", f"write 0 or more in <{name}>")
    if spec.heartbeat_filename and spec.minimum_heartbeat_interval <= 0:
        report.error(
            "minimum_heartbeat_interval",
            "must be above 0 when <heartbeat_filename> is set",
            "write the number of seconds the guest may take between heartbeats",
        )
    _check_port("pf_guest_port", spec.pf_guest_port, report, allow_zero=True)
    _check_port("pf_host_port", spec.pf_host_port, report, allow_zero=True)
    if spec.enable_cache_disk and not spec.enable_isocontextualization:
        report.warn("enable_cache_disk", "only used with <enable_isocontextualization/>")
    if spec.pf_guest_port and not spec.enable_network:
        report.warn("pf_guest_port", "ignored: port forwards need <enable_network/>")
    if spec.port_forward and not spec.enable_network:
        report.warn("port_forward", "ignored: port forwards need <enable_network/>")
    return _clamp(spec, notes)


def _clamp(spec: JobSpec, notes: list[str]) -> JobSpec:
    changes: dict[str, Any] = {}
    if 0 <= spec.vram_size_mb < VRAM_MIN_MB or spec.vram_size_mb > VRAM_MAX_MB:
        vram = min(max(spec.vram_size_mb, VRAM_MIN_MB), VRAM_MAX_MB)
        notes.append(
            f"vram_size_mb {spec.vram_size_mb:g} clamped to {vram:g} "
            f"(allowed {VRAM_MIN_MB:g}..{VRAM_MAX_MB:g})"
        )
        changes["vram_size_mb"] = vram
    if 0 <= spec.memory_size_mb < MIN_MEMORY_SIZE_MB:
        notes.append(
            f"memory_size_mb {spec.memory_size_mb:g} is below the {MIN_MEMORY_SIZE_MB:g} MB "
            f"minimum: the VM gets {MIN_MEMORY_SIZE_MB:g} MB unless --memory_size_mb sets more"
        )
    if spec.pf_host_port:
        notes.append(
            "pf_host_port is not used as given: the host port is chosen at run time "
            "(a free loopback port) and kept across restarts, as vboxwrapper does"
        )
    return replace(spec, **changes) if changes else spec


def parse_job(data: str | bytes, path: str = "vbox_job.xml") -> ParsedJob:
    """Parse vbox_job.xml. Returns the job with warnings and notes, or raises SpecError."""
    report = _Report(path)
    try:
        root = DefusedET.fromstring(data)
    except DefusedXmlException as exc:
        report.error("", f"refused unsafe XML ({type(exc).__name__})", "remove DTDs and entities")
        raise SpecError(path, report.errors, malformed=True) from exc
    except Exception as exc:  # expat ParseError, encoding errors
        report.error("", f"not well-formed XML: {exc}", "fix the XML syntax at that position")
        raise SpecError(path, report.errors, malformed=True) from exc
    if root.tag != ROOT:
        report.error(root.tag, f"the root element must be <{ROOT}>", f"wrap the job in <{ROOT}>")
        raise SpecError(path, report.errors, malformed=True)
    values = _collect(root, report)
    notes: list[str] = []
    spec = _check_values(JobSpec(**values), report, notes)
    if report.errors:
        raise SpecError(path, report.errors)
    return ParsedJob(
        spec=spec,
        warnings=tuple(str(w) for w in report.warnings),
        notes=tuple(notes),
    )
