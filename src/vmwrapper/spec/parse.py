"""vbox_job.xml → :class:`JobSpec`, read as vboxwrapper reads it, with every problem at once.

Pure: bytes in, :class:`ParsedJob` out, or :class:`SpecError` listing every error.

The values are what BOINC's parser takes (:mod:`.boincxml`, docs/compatibility.md#job-file), so
``vmwrapper run`` runs every file vboxwrapper runs. Everything BOINC reads in a surprising way
(an ignored element, a number in hex, text after ``</vbox_job>``, a file that is not
well-formed XML) is a warning naming the element, what BOINC does, and the fix. Errors are only
what makes the job fail under vboxwrapper, or is unsafe (a path out of the shared directory).
"""

from __future__ import annotations

import enum
import math
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import defusedxml.ElementTree as DefusedET

from vmwrapper.errors import Problem, SpecError
from vmwrapper.spec.boincxml import read_job
from vmwrapper.spec.model import (
    MIN_MEMORY_SIZE_MB,
    JobSpec,
    ParsedJob,
    PortForward,
)

ROOT = "vbox_job"


class Kind(enum.Enum):
    BOOL = "bool"
    STR = "string"
    FILE_NAME = "file name"  # a path under the shared dir / project dir
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
    # our extension: the shared directory's transport under QEMU (docs/shared-transport.md)
    "vmwrapper_share_transport": Kind.STR,
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


@dataclass
class _Report:
    """Collects problems while parsing; turned into warnings / a SpecError at the end."""

    path: str
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    malformed: bool = False  # vboxwrapper's parse fails (ERR_XML_PARSE)

    def error(self, element: str, message: str, fix: str) -> None:
        self.errors.append(Problem(self.path, element, message, fix))

    def warn(self, element: str, message: str, fix: str = "") -> None:
        self.warnings.append(Problem(self.path, element, message, fix, severity="warning"))


def _text(raw: object) -> str:
    """A string BOINC read (bytes) as ours: UTF-8, undecodable bytes kept (surrogateescape)."""
    return raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else str(raw)


def _check_file_name(name: str, text: str, report: _Report) -> None:
    """File-name elements may name a path under the shared directory (``results/progress``)
    as vboxwrapper does; only a path that leaves it is refused (docs/compatibility.md#job-file)."""
    if text.startswith("/"):
        report.error(
            name,
            f"{text!r} is an absolute path; the guest's files are looked up under the shared "
            "directory, and a host path outside the slot is unsafe",
            "write a path relative to the shared directory (or project dir)",
        )
    elif posixpath.normpath(text).split("/")[0] == "..":
        report.error(
            name,
            f"{text!r} leads out of the shared directory with '..' (unsafe)",
            "write a path that stays inside the shared directory (or project dir)",
        )


def _port_forward(raw: dict[str, object], report: _Report) -> PortForward | None:
    """A <port_forward> as BOINC read it (absent children are 0 / false)."""
    forward = PortForward(
        host_port=int(raw.get("host_port", 0)),  # type: ignore[call-overload]
        guest_port=int(raw.get("guest_port", 0)),  # type: ignore[call-overload]
        nports=int(raw.get("nports", 0)),  # type: ignore[call-overload]
        is_remote=bool(raw.get("is_remote", False)),
    )
    ok = True
    for required in ("host_port", "guest_port"):
        if not getattr(forward, required):
            report.error(
                "port_forward",
                f"has no <{required}> (or it is 0); vboxwrapper logs an error and sets up a "
                "rule that cannot work",
                f"add <{required}>N</{required}> (1..65535) to every <port_forward>",
            )
            ok = False
        else:
            ok = _check_port(f"port_forward/{required}", getattr(forward, required), report) and ok
    if not ok:
        return None
    return forward if _check_forward(forward, report) else None


def _check_port(element: str, port: int, report: _Report, allow_zero: bool = False) -> bool:
    low = 0 if allow_zero else 1
    if low <= port <= 65535:
        return True
    report.error(element, f"port {port} is outside {low}..65535", "use a TCP port 1..65535")
    return False


def _check_forward(fw: PortForward, report: _Report) -> bool:
    if fw.nports < 0:
        report.warn(
            "port_forward/nports",
            f"{fw.nports} is negative: vboxwrapper then sets up no rule at all for this block",
            "write 0 (one port) or the number of ports",
        )
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


#: What to tell the admin for each kind of finding, by the words BOINC's reading produced.
_FINDING_FIX = {
    "not read": "write the value in its plain form (see docs/compatibility.md#job-file)",
    "inside <": "move the element directly under <vbox_job>",
    "unknown element": "remove it, or check the spelling",
    "text ": "remove the text, or put it in an element",
    "content after": "remove everything after </vbox_job>",
    "appears more than once": "keep one",
    "an end tag": "remove it",
}


def _fix_for(what: str) -> str:
    return next((fix for key, fix in _FINDING_FIX.items() if what.startswith(key)), "")


def _collect(data: bytes, report: _Report, notes: list[str]) -> dict[str, Any]:
    """The values vboxwrapper would take from ``data``, with every surprise reported."""
    job = read_job(data)
    if not job.started:
        bom = "byte-order mark" in job.start_failure
        fix = "save the file without a byte-order mark" if bom else f"start the file with <{ROOT}>"
        report.error(ROOT, job.start_failure, fix)
        raise SpecError(report.path, report.errors, malformed=True)
    if not job.ended:
        report.malformed = True
        report.error(
            ROOT,
            f"BOINC's parser never reaches </{ROOT}> (the file ends early, has a NUL byte, or "
            "a text or tag too long for BOINC's buffers), so vboxwrapper fails the job",
            f"end the file with </{ROOT}>",
        )
    for finding in job.findings:
        what = LEGACY.get(finding.element, finding.what)
        report.warn(finding.element, what, _fix_for(finding.what))
    for element, form in job.odd_forms:
        report.warn(element, f"{form} (BOINC's number rules)", "write a plain decimal number")
    values: dict[str, Any] = {}
    notes.extend(job.notes)
    for name, raw in {**job.values, **job.extensions}.items():
        if isinstance(raw, list):
            values[name] = tuple(_text(v) for v in raw)
        elif isinstance(raw, bytes):
            values[name] = _text(raw)
        elif ELEMENTS.get(name) is Kind.DOUBLE:
            values[name] = float(raw)  # type: ignore[arg-type]
        else:
            values[name] = raw
    for name, kind in ELEMENTS.items():
        if kind is not Kind.FILE_NAME or name not in values:
            continue
        names = values[name] if isinstance(values[name], tuple) else (values[name],)
        for text in names:
            _check_file_name(name, text, report)
    forwards = (_port_forward(raw, report) for raw in job.port_forwards)
    values["port_forward"] = tuple(f for f in forwards if f is not None)
    return values


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


#: Values of <vmwrapper_share_transport> (docs/shared-transport.md); "" and "auto" are one.
SHARE_TRANSPORTS = ("auto", "9p", "serial")


def _check_share_transport(spec: JobSpec, report: _Report) -> None:
    value = spec.vmwrapper_share_transport.strip().lower()
    if value and value not in SHARE_TRANSPORTS:
        report.error(
            "vmwrapper_share_transport",
            f"{value!r} is no share transport",
            f"write one of {', '.join(SHARE_TRANSPORTS)} (or leave the element out: auto)",
        )
    elif value not in ("", "auto") and not spec.shared_dir:
        report.warn(
            "vmwrapper_share_transport",
            "has no effect: the job has no shared directory",
            "add <enable_shared_directory/> or drop the element",
        )


def _check_values(spec: JobSpec, report: _Report, notes: list[str]) -> JobSpec:
    for check, element, message, fix in ILLEGAL_COMBINATIONS:
        if check(spec):
            report.error(element, message, fix)
    _check_backends(spec, report)
    _check_share_transport(spec, report)
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
    spec = _finite(spec, report)
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


#: A time BOINC reads as infinite or NaN never comes: the same as this many seconds.
NEVER_SECONDS = 1e9


def _finite(spec: JobSpec, report: _Report) -> JobSpec:
    """strtod takes ``inf`` and ``nan``. A VM size cannot be either (vboxwrapper's VM setup
    fails); a time that is never reached becomes one we can count with."""
    changes: dict[str, Any] = {}
    for name in ("memory_size_mb", "vram_size_mb"):
        if not math.isfinite(getattr(spec, name)):
            report.error(name, f"BOINC reads {getattr(spec, name)}", "write a number of MB")
    for name in ("job_duration", "minimum_checkpoint_interval", "minimum_heartbeat_interval"):
        value = getattr(spec, name)
        if not math.isfinite(value):
            changes[name] = 0.0 if name == "job_duration" else NEVER_SECONDS
            report.warn(
                name,
                f"BOINC reads {value}, a time vboxwrapper never reaches; "
                f"vmwrapper uses {changes[name]:g}",
                "write a number of seconds (0 for no job_duration limit)",
            )
    return replace(spec, **changes) if changes else spec


def _clamp(spec: JobSpec, notes: list[str]) -> JobSpec:
    changes: dict[str, Any] = {}
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


def _well_formed(data: bytes, report: _Report) -> None:
    """The strict view: a file an XML library refuses works with BOINC's parser, but other
    tools (and the next person to edit it) will trip over it."""
    try:
        DefusedET.fromstring(data)
    except Exception as exc:  # expat's ParseError, defusedxml's refusals, encoding errors
        report.warn(
            ROOT,
            f"not well-formed XML ({exc}); BOINC's parser reads it anyway, as shown",
            "fix the XML (escape & as &amp;, one root element, nothing after it)",
        )


def parse_job(data: str | bytes, path: str = "vbox_job.xml") -> ParsedJob:
    """Parse vbox_job.xml. Returns the job with warnings and notes, or raises SpecError."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    report = _Report(path)
    notes: list[str] = []
    values = _collect(raw, report, notes)
    _well_formed(raw, report)
    spec = _check_values(JobSpec(**values), report, notes)
    if report.errors:
        raise SpecError(path, report.errors, malformed=report.malformed)
    return ParsedJob(
        spec=spec,
        warnings=tuple(str(w) for w in report.warnings),
        notes=tuple(notes),
    )
