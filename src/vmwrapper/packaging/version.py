"""A BOINC app version of a VM app: the model, ``version.xml`` written and read (pure).

``version.xml`` is what BOINC's ``update_versions`` reads from
``apps/<app>/<version>/<platform>__<plan_class>/`` (docs/compatibility.md#app-version-directory).
Each ``<file>`` names a physical file in the directory, optionally the logical name the app opens it
by, and its attributes (``copy_file``, ``gzip``, ``sticky``, ``executable``, ``main_program``).

The VM-app rules (vm-apps documentation) that shape what :func:`plan_files` produces:

* the VM image has logical name ``vm_image.vdi`` and ``copy_file`` (``gzip`` recommended),
  unless multiattach: then the parent image keeps its versioned physical name, is ``sticky``,
  and is neither ``copy_file`` nor ``vm_image.vdi``;
* ``vbox_job.xml`` is a logical name; its physical name carries app name and version;
* the app run in the VM is ``shared/boinc_app`` with ``copy_file`` (single-purpose form) or
  comes with each workunit (multi-purpose form);
* ``<dont_throttle/>``: VirtualBox/QEMU throttle the VM themselves.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET

from vmwrapper.cnum import c_double, c_int
from vmwrapper.errors import InputError, Problem

#: The API version the real client needs to give the app the mmap segment (lab.md).
DEFAULT_API_VERSION = "7.20.5"
DEFAULT_PLATFORM = "x86_64-pc-linux-gnu"

IMAGE_LOGICAL_NAME = "vm_image.vdi"
JOB_LOGICAL_NAME = "vbox_job.xml"
APP_LOGICAL_NAME = "shared/boinc_app"
CACHE_DISK_LOGICAL_NAME = "vm_cache.vdi"
ISO_LOGICAL_NAME = "vm_isocontext.iso"
#: The app version number when version.xml gives none (the harness reports it in init_data).
DEFAULT_VERSION_NUM = 100

_FLAGS = ("main_program", "copy_file", "gzip", "sticky", "executable", "no_delete")


class PlanClass(enum.Enum):
    """The plan classes a VM app version is made for (scheduler side: sched_customize.cpp)."""

    VBOX64 = "vbox64"  # 64-bit guest: needs VT-x/AMD-V
    VBOX64_MT = "vbox64_mt"  # the same, several cores: the scheduler adds --nthreads
    VBOX32 = "vbox32"  # 32-bit guest: also runs without hardware virtualization

    @property
    def multithreaded(self) -> bool:
        return self.value.endswith("_mt")

    @property
    def guest_bits(self) -> int:
        return 32 if self.value.startswith("vbox32") else 64


class Purpose(enum.Enum):
    """Where the app run in the VM comes from (vm-apps documentation "Packaging options")."""

    SINGLE = "single"  # boinc_app is part of the app version
    MULTI = "multi"  # boinc_app arrives with each workunit (sticky input file)


class ImageMode(enum.Enum):
    """How the VM image reaches the VM."""

    COPY = "copy"  # vm_image.vdi copied into every slot
    MULTIATTACH = "multiattach"  # read-only parent in the project dir, differencing disk per VM
    ISO = "iso"  # enable_isocontextualization: vm_isocontext.iso is the boot medium


@dataclass(frozen=True)
class VersionFile:
    """One ``<file>`` of version.xml."""

    physical_name: str
    logical_name: str = ""
    main_program: bool = False
    copy_file: bool = False
    gzip: bool = False
    sticky: bool = False
    executable: bool = False
    no_delete: bool = False

    @property
    def open_name(self) -> str:
        """The name the app sees: the logical name, or else the physical one."""
        return self.logical_name or self.physical_name


@dataclass(frozen=True)
class AppVersion:
    """The contents of version.xml.

    ``version_num`` and ``avg_ncpus`` are only read (the harness runs a job with them);
    :func:`format_version_xml` leaves them out: update_versions takes the version number from
    the directory name and the scheduler's plan class sets the CPU count.
    """

    files: tuple[VersionFile, ...]
    api_version: str = DEFAULT_API_VERSION
    dont_throttle: bool = True
    is_wrapper: bool = True
    cmdline: str = ""
    version_num: int = DEFAULT_VERSION_NUM
    avg_ncpus: float = 1.0

    def by_logical(self, name: str) -> VersionFile | None:
        return next((f for f in self.files if f.open_name == name), None)

    def by_physical(self, name: str) -> VersionFile | None:
        return next((f for f in self.files if f.physical_name == name), None)

    @property
    def main_programs(self) -> tuple[VersionFile, ...]:
        return tuple(f for f in self.files if f.main_program)

    @property
    def main_program(self) -> VersionFile:
        """The one ``<main_program/>``; raises InputError when there is none or several."""
        mains = self.main_programs
        if len(mains) != 1:
            raise InputError(
                f"exactly one <file> must have <main_program/>, found {len(mains)} "
                "(fix: mark the program the client starts, and only it)"
            )
        return mains[0]

    @property
    def uses_mmap(self) -> bool:
        """api_version >= 6.0 gets the mmap segment; older or none gets System V
        (docs/compatibility.md#shared-memory)."""
        match = _API_MAJOR.match(self.api_version)
        return match is not None and int(match.group(1)) >= 6


_API_MAJOR = re.compile(r"\s*(\d+)\.\d+")


_VERSION_RE = re.compile(r"\d")


def has_version_number(name: str) -> bool:
    """BOINC physical names never change content; a version number in the name says which."""
    return bool(_VERSION_RE.search(name))


def versioned_name(app: str, version: str, basename: str) -> str:
    """``hello_vbox_job_1.02.xml`` from ``hello``, ``1.02``, ``vbox_job.xml``."""
    stem, dot, ext = basename.rpartition(".")
    if not dot or not stem:
        return f"{app}_{basename}_{version}"
    return f"{app}_{stem}_{version}.{ext}"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def format_version_xml(version: AppVersion) -> str:
    """version.xml text, one element per line, in the order update_versions documents."""
    lines = ["<version>"]
    for f in version.files:
        lines.append("    <file>")
        lines.append(f"        <physical_name>{_escape(f.physical_name)}</physical_name>")
        if f.logical_name:
            lines.append(f"        <logical_name>{_escape(f.logical_name)}</logical_name>")
        lines.extend(f"        <{flag}/>" for flag in _FLAGS if getattr(f, flag))
        lines.append("    </file>")
    if version.dont_throttle:
        lines.append("    <dont_throttle/>")
    if version.is_wrapper:
        lines.append("    <is_wrapper/>")
    if version.api_version:
        lines.append(f"    <api_version>{_escape(version.api_version)}</api_version>")
    if version.cmdline:
        lines.append(f"    <cmdline>{_escape(version.cmdline)}</cmdline>")
    lines.append("</version>")
    return "\n".join(lines) + "\n"


# --- reading BOINC XML (shared with templates.py) ---------------------------------------------


def parse_root(text: str | bytes, path: str, tag: str) -> Element:
    """The root element of a BOINC XML file, which must be ``<tag>``; InputError otherwise."""
    try:
        root: Element = SafeET.fromstring(text)
    except SafeET.ParseError as exc:
        raise InputError(f"{path}: not well-formed XML: {exc} (fix: correct the XML)") from exc
    except Exception as exc:  # defusedxml refuses entities and DTDs with its own errors
        raise InputError(f"{path}: refused: {exc} (fix: remove DTDs and entities)") from exc
    if root.tag != tag:
        raise InputError(f"{path}: the root element is <{root.tag}>, BOINC expects <{tag}>")
    return root


def xml_flag(elem: Element | None, name: str) -> bool:
    """BOINC's bool parse: ``<x/>`` is true, ``<x>N</x>`` is N != 0 (strtol base 0), anything
    else (``<x>true</x>`` too) is false."""
    child = None if elem is None else elem.find(name)
    if child is None:
        return False
    text = (child.text or "").strip()
    if not text:
        return True
    try:
        return c_int(text) != 0
    except ValueError:
        return False


def xml_text(elem: Element | None, name: str) -> str:
    child = None if elem is None else elem.find(name)
    return (child.text or "").strip() if child is not None else ""


def xml_number(elem: Element | None, name: str, default: float, path: str) -> float:
    """``<name>`` read as strtod would; ``default`` when absent or empty; InputError on garbage."""
    text = xml_text(elem, name)
    if not text:
        return default
    try:
        return c_double(text)
    except ValueError as exc:
        raise InputError(
            f"{path}: <{name}> is not a number: {text!r} (fix: write a number such as 1e9)"
        ) from exc


def _version_num(root: Element, path: str) -> int:
    text = xml_text(root, "version_num")
    if not text:
        return DEFAULT_VERSION_NUM
    try:
        return c_int(text)
    except ValueError as exc:
        raise InputError(
            f"{path}: <version_num> is not an integer: {text!r} (fix: write e.g. 102)"
        ) from exc


def parse_version_xml(text: str | bytes, path: str = "version.xml") -> AppVersion:
    """Read version.xml; raises InputError naming the file and what is wrong."""
    root = parse_root(text, path, "version")
    files = []
    for elem in root.findall("file"):
        physical = xml_text(elem, "physical_name")
        flags = {flag: xml_flag(elem, flag) for flag in _FLAGS}
        files.append(
            VersionFile(
                physical_name=physical, logical_name=xml_text(elem, "logical_name"), **flags
            )
        )
    return AppVersion(
        files=tuple(files),
        api_version=xml_text(root, "api_version"),
        dont_throttle=xml_flag(root, "dont_throttle"),
        is_wrapper=xml_flag(root, "is_wrapper"),
        cmdline=xml_text(root, "cmdline"),
        version_num=_version_num(root, path),
        avg_ncpus=xml_number(root, "avg_ncpus", 1.0, path),
    )


def version_problems(version: AppVersion, path: str = "version.xml") -> tuple[Problem, ...]:
    """Structural problems a BOINC server would reject (empty names, duplicates)."""
    problems = []
    seen_physical: set[str] = set()
    seen_logical: set[str] = set()
    for f in version.files:
        if not f.physical_name:
            problems.append(
                Problem(path, "physical_name", "a <file> has no physical name", "add one")
            )
            continue
        if f.physical_name in seen_physical:
            problems.append(
                Problem(
                    path,
                    "physical_name",
                    f"{f.physical_name} is listed twice",
                    "list each file once",
                )
            )
        seen_physical.add(f.physical_name)
        if f.open_name in seen_logical:
            problems.append(
                Problem(
                    path,
                    "logical_name",
                    f"two files are opened as {f.open_name}",
                    "give each file its own logical name",
                )
            )
        seen_logical.add(f.open_name)
    return tuple(problems)


# --- planning an app version from the admin's files (pure) ----------------------------------


@dataclass(frozen=True)
class SourceFile:
    """A file the admin gives: where it is (any string the caller understands) and its role."""

    source: str  # the caller's path
    logical_name: str = ""  # "" = keep the physical name
    executable: bool = False


@dataclass(frozen=True)
class PackageRequest:
    """Everything ``vmwrapper package`` needs to decide, with no file system access."""

    app_name: str
    version: str  # e.g. "1.02"
    plan_class: PlanClass
    purpose: Purpose
    wrapper: str  # path of the main program (vmwrapper executable or launcher)
    job: str  # path of vbox_job.xml
    image: str  # path of the VM image (VDI, or ISO for ISO contextualization)
    image_mode: ImageMode
    multiattach_name: str = ""  # <multiattach_vdi_file> of the job (ImageMode.MULTIATTACH)
    boinc_app: str = ""  # path of the app run in the VM (single-purpose form)
    cache_disk: str = ""  # vm_cache.vdi (enable_cache_disk)
    extra: tuple[SourceFile, ...] = ()
    gzip_image: bool = True
    api_version: str = DEFAULT_API_VERSION
    cmdline: str = ""
    wrapper_version: str = ""  # put in the main program's name when it has no version number
    platform: str = DEFAULT_PLATFORM


@dataclass(frozen=True)
class Placement:
    """Copy ``source`` into the app version directory as ``physical_name``."""

    source: str
    physical_name: str
    executable: bool


@dataclass(frozen=True)
class PackagePlan:
    version: AppVersion
    placements: tuple[Placement, ...]

    @property
    def physical_names(self) -> tuple[str, ...]:
        return tuple(p.physical_name for p in self.placements)


def _basename(path: str) -> str:
    return path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _wrapper_name(req: PackageRequest) -> str:
    """The main program keeps a versioned name (``vmwrapper_0.1.0_x86_64-pc-linux-gnu``),
    as BOINC ships ``vboxwrapper_26212_x86_64-pc-linux-gnu``: a new wrapper build must not
    reuse a physical name a host already has."""
    name = _basename(req.wrapper)
    if has_version_number(name) or not req.wrapper_version:
        return name
    return f"{name}_{req.wrapper_version}_{req.platform}"


def plan_app_version(req: PackageRequest) -> PackagePlan:
    """The version.xml entries and file copies for ``req``; raises InputError on contradictions."""
    if req.purpose is Purpose.SINGLE and not req.boinc_app:
        raise InputError(
            "a single-purpose app version needs the app run in the VM "
            "(fix: give --boinc-app FILE, or use --purpose multi and ship it in workunits)"
        )
    if req.image_mode is ImageMode.MULTIATTACH and not req.multiattach_name:
        raise InputError(
            "multiattach needs <multiattach_vdi_file>NAME_VERSION.vdi</multiattach_vdi_file> "
            "in vbox_job.xml (fix: add it; the image is shipped under that name)"
        )
    files: list[VersionFile] = []
    placements: list[Placement] = []

    def add(source: str, entry: VersionFile, exec_bit: bool = False) -> None:
        files.append(entry)
        placements.append(Placement(source, entry.physical_name, exec_bit))

    wrapper = VersionFile(_wrapper_name(req), main_program=True, executable=True)
    add(req.wrapper, wrapper, exec_bit=True)
    job_name = versioned_name(req.app_name, req.version, JOB_LOGICAL_NAME)
    add(req.job, VersionFile(job_name, JOB_LOGICAL_NAME))
    image_base = _basename(req.image)
    if req.image_mode is ImageMode.MULTIATTACH:
        # The parent stays in the project dir under its versioned name; never copied to a slot.
        add(req.image, VersionFile(req.multiattach_name, sticky=True, gzip=req.gzip_image))
    elif req.image_mode is ImageMode.ISO:
        physical = versioned_name(req.app_name, req.version, image_base)
        add(req.image, VersionFile(physical, ISO_LOGICAL_NAME, copy_file=True))
    else:
        physical = versioned_name(req.app_name, req.version, image_base)
        image = VersionFile(physical, IMAGE_LOGICAL_NAME, copy_file=True, gzip=req.gzip_image)
        add(req.image, image)
    if req.cache_disk:
        physical = versioned_name(req.app_name, req.version, _basename(req.cache_disk))
        add(req.cache_disk, VersionFile(physical, CACHE_DISK_LOGICAL_NAME, copy_file=True))
    if req.purpose is Purpose.SINGLE:
        physical = versioned_name(req.app_name, req.version, _basename(req.boinc_app))
        add(req.boinc_app, VersionFile(physical, APP_LOGICAL_NAME, copy_file=True), exec_bit=True)
    for extra in req.extra:
        logical = extra.logical_name or f"shared/{_basename(extra.source)}"
        physical = versioned_name(req.app_name, req.version, _basename(extra.source))
        # Files the VM sees go through shared/, which only copies reach (9p/vboxsf cannot
        # follow the client's soft-link files).
        copy = logical.startswith("shared/")
        add(extra.source, VersionFile(physical, logical, copy_file=copy), extra.executable)
    version = AppVersion(
        files=tuple(files),
        api_version=req.api_version,
        dont_throttle=True,
        is_wrapper=True,
        cmdline=req.cmdline,
    )
    problems = version_problems(version)
    if problems:
        raise InputError("; ".join(str(p) for p in problems))
    return PackagePlan(version, tuple(placements))


_BACKENDS_ELEMENT = re.compile(
    r"<vmwrapper_backends\s*>.*?</vmwrapper_backends\s*>|"
    r"<vmwrapper_backends\s*/>",
    re.DOTALL,
)


def with_job_backends(job_xml: str, backends: Sequence[str]) -> str:
    """vbox_job.xml's text with ``<vmwrapper_backends>`` set to ``backends`` (replacing one that
    is there, else added before ``</vbox_job>``); the rest of the file is kept byte for byte."""
    element = f"<vmwrapper_backends>{' '.join(backends)}</vmwrapper_backends>"
    if _BACKENDS_ELEMENT.search(job_xml):
        return _BACKENDS_ELEMENT.sub(element, job_xml, count=1)
    end = job_xml.rfind("</vbox_job>")
    if end < 0:  # <vbox_job/>: an empty job
        return re.sub(r"<vbox_job\s*/>", f"<vbox_job>\n  {element}\n</vbox_job>", job_xml, count=1)
    return f"{job_xml[:end]}  {element}\n{job_xml[end:]}"


def default_app_dir(app: str, version: str, plan_class: PlanClass, platform: str) -> str:
    """BOINC's apps/ tree location: ``<app>/<version>/<platform>__<plan_class>``."""
    return f"{app}/{version}/{platform}__{plan_class.value}"


def plan_class_from_dir_name(name: str) -> PlanClass | None:
    """The plan class in an app-version directory name such as ``x86_64-pc-linux-gnu__vbox64``."""
    _platform, sep, plan = name.rpartition("__")
    if not sep:
        return None
    try:
        return PlanClass(plan)
    except ValueError:
        return None
