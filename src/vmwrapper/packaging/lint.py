"""``vmwrapper lint``: check a VM app version against the VM-apps rules (pure).

Input is :class:`AppDirFacts`, what the CLI gathered from APP_DIR (file modes, the first bytes
of each file, the XML files' text); output is a tuple of :class:`Finding` values, each with a
stable code, a severity, the file, what is wrong and the fix. Codes never change meaning:
``VMW0xx`` are packaging rules and pitfalls of the VM-apps documentation, ``VMW1xx`` are
security warnings. ``docs/tutorial.md`` lists them all.
"""

from __future__ import annotations

import enum
import posixpath
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from vmwrapper.errors import InputError, SpecError
from vmwrapper.packaging.ostypes import OsTypeVerdict, check_os_type, suggest_os_type
from vmwrapper.packaging.templates import (
    SHARED_PREFIX,
    InputFile,
    InputTemplate,
    OutputTemplate,
    parse_input_template,
    parse_output_template,
)
from vmwrapper.packaging.version import (
    APP_LOGICAL_NAME,
    CACHE_DISK_LOGICAL_NAME,
    IMAGE_LOGICAL_NAME,
    ISO_LOGICAL_NAME,
    JOB_LOGICAL_NAME,
    AppVersion,
    PlanClass,
    VersionFile,
    has_version_number,
    parse_version_xml,
    version_problems,
)
from vmwrapper.spec import JobSpec, parse_job
from vmwrapper.spec.model import MIN_MEMORY_SIZE_MB

VERSION_XML = "version.xml"
_VDI_DIFF = 4
#: Files the client (or the wrapper) puts into every slot, besides the logical names.
_SLOT_FILES = frozenset({"init_data.xml", "boinc_task_state.xml"})
INPUTS_DIR = "inputs"
MIB = 1024 * 1024


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Finding:
    code: str
    severity: Severity
    file: str
    message: str
    fix: str

    def as_dict(self) -> dict[str, str]:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "file": self.file,
            "message": self.message,
            "fix": self.fix,
        }

    def __str__(self) -> str:
        return f"{self.file}: {self.code} {self.severity.value}: {self.message} (fix: {self.fix})"


@dataclass(frozen=True)
class FileFacts:
    """What the linter needs to know about one file of APP_DIR."""

    exists: bool = True
    size: int = 0
    mode: int = 0o100644  # st_mode
    head: bytes = b""  # the first bytes: shebang, ELF, VDI header

    @property
    def executable(self) -> bool:
        return bool(self.mode & stat.S_IXUSR)

    @property
    def world_writable(self) -> bool:
        return bool(self.mode & stat.S_IWOTH)

    @property
    def looks_executable(self) -> bool:
        """A script or binary program (which then needs the execute bit)."""
        return self.head.startswith((b"#!", b"\x7fELF"))


@dataclass(frozen=True)
class AppDirFacts:
    """APP_DIR as the linter sees it. Paths are relative to APP_DIR, "/"-separated."""

    dir_name: str  # the directory's own name, e.g. x86_64-pc-linux-gnu__vbox64
    files: Mapping[str, FileFacts]
    texts: Mapping[str, bytes]  # full contents of the XML files (version, job, templates)
    wu_template: str = ""  # path (in ``texts``) of the input template, "" = none
    result_template: str = ""
    plan_class: PlanClass | None = None


#: Every code the linter can emit, with its severity and a one-line title (for docs and --list).
CODES: dict[str, tuple[Severity, str]] = {
    "VMW001": (Severity.ERROR, "version.xml missing or unreadable"),
    "VMW002": (Severity.ERROR, "a file listed in version.xml is missing"),
    "VMW003": (Severity.ERROR, "not exactly one main program"),
    "VMW004": (Severity.ERROR, "the main program has no execute permission"),
    "VMW005": (Severity.ERROR, "a script or executable has no execute permission"),
    "VMW006": (Severity.ERROR, "no file with logical name vbox_job.xml"),
    "VMW007": (Severity.ERROR, "vbox_job.xml does not parse or has errors"),
    "VMW008": (Severity.ERROR, "no VM image with logical name vm_image.vdi"),
    "VMW009": (Severity.ERROR, "vm_image.vdi lacks copy_file"),
    "VMW010": (Severity.WARNING, "the VM image is not gzip-compressed for download"),
    "VMW011": (Severity.ERROR, "the multiattach parent image is not in the app version"),
    "VMW012": (Severity.ERROR, "the multiattach parent image has copy_file"),
    "VMW013": (Severity.WARNING, "the multiattach parent image is not sticky"),
    "VMW014": (Severity.WARNING, "an image name has no version number"),
    "VMW015": (Severity.WARNING, "the multiattach parent also has logical name vm_image.vdi"),
    "VMW016": (Severity.ERROR, "no boinc_app (the program run in the VM)"),
    "VMW017": (Severity.ERROR, "a job file is not under shared/"),
    "VMW018": (Severity.ERROR, "a shared/ file lacks copy_file"),
    "VMW019": (Severity.ERROR, "dont_throttle missing"),
    "VMW020": (Severity.ERROR, "os_name unknown to VirtualBox"),
    "VMW021": (Severity.WARNING, "memory_size_mb below 512"),
    "VMW022": (Severity.ERROR, "memory_size_mb missing"),
    "VMW023": (Severity.ERROR, "ISO contextualization without vm_isocontext.iso"),
    "VMW024": (Severity.ERROR, "cache disk enabled without vm_cache.vdi"),
    "VMW025": (Severity.ERROR, "job files but no shared directory"),
    "VMW026": (Severity.ERROR, "64-bit guest in a vbox32 plan class"),
    "VMW027": (Severity.WARNING, "api_version missing"),
    "VMW028": (Severity.WARNING, "is_wrapper missing"),
    "VMW029": (Severity.ERROR, "duplicate physical or logical names"),
    "VMW030": (Severity.ERROR, "an output file has no max_nbytes"),
    "VMW031": (Severity.WARNING, "workunit memory bound below the VM's memory"),
    "VMW032": (Severity.WARNING, "workunit disk bound smaller than the VM image"),
    "VMW033": (Severity.ERROR, "a template does not parse"),
    "VMW034": (Severity.WARNING, "the VM image is not a VDI"),
    "VMW035": (Severity.WARNING, "vbox_job.xml warning"),
    "VMW036": (Severity.WARNING, "multi-purpose boinc_app is not sticky"),
    "VMW037": (Severity.WARNING, "a physical name has no version number"),
    "VMW038": (Severity.WARNING, "an os_name only recent VirtualBox versions know"),
    "VMW039": (Severity.WARNING, "workunit boinc_app not marked executable"),
    "VMW040": (Severity.ERROR, "the VM image is a differencing (child) VDI"),
    "VMW041": (Severity.WARNING, "copy_to_shared names a file the slot will not have"),
    "VMW042": (Severity.ERROR, "an intermediate upload file has no output in the result template"),
    "VMW043": (Severity.ERROR, "an intermediate upload output has copy_file"),
    "VMW044": (Severity.WARNING, "a vbox plan class for an app version that avoids VirtualBox"),
    "VMW101": (Severity.WARNING, "a port forward is reachable from other computers"),
    "VMW102": (Severity.WARNING, "bridged networking"),
    "VMW103": (Severity.WARNING, "the project directory is shared with the VM"),
    "VMW104": (Severity.WARNING, "remote desktop enabled"),
    "VMW105": (Severity.INFO, "the VM has network access"),
    "VMW106": (Severity.WARNING, "a file is world-writable"),
    "VMW107": (Severity.WARNING, "the whole slot directory is shared with the VM"),
}


class _Out:
    """Collects findings; severity comes from the code table so it cannot drift."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []

    def __call__(self, code: str, file: str, message: str, fix: str) -> None:
        self.findings.append(Finding(code, CODES[code][0], file, message, fix))


@dataclass(frozen=True)
class _Job:
    spec: JobSpec | None
    file: str  # where the job came from ("" = none)
    in_workunit: bool = False


@dataclass
class _Ctx:
    facts: AppDirFacts
    out: _Out
    version: AppVersion
    wu: InputTemplate | None = None
    result: OutputTemplate | None = None
    job: _Job = field(default_factory=lambda: _Job(None, ""))


def lint_app_dir(facts: AppDirFacts) -> tuple[Finding, ...]:
    """Every finding for the app version in ``facts``, errors first, in code order."""
    out = _Out()
    version = _read_version(facts, out)
    if version is None:
        return tuple(out.findings)
    ctx = _Ctx(facts, out, version)
    ctx.wu, ctx.result = _read_templates(facts, out)
    _check_structure(ctx)
    _check_files(ctx)
    ctx.job = _read_job(ctx)
    spec = ctx.job.spec
    _check_image(ctx, spec)
    _check_boinc_app(ctx)
    _check_job_files(ctx, spec)
    if spec is not None:
        _check_intermediate_uploads(ctx, spec)
        _check_job_values(ctx, spec)
        _check_security(ctx, spec)
    _check_bounds(ctx, spec)
    order = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
    return tuple(sorted(out.findings, key=lambda f: (order[f.severity], f.code)))


def has_errors(findings: tuple[Finding, ...]) -> bool:
    return any(f.severity is Severity.ERROR for f in findings)


# --- the parts -------------------------------------------------------------------------------


def _read_version(facts: AppDirFacts, out: _Out) -> AppVersion | None:
    text = facts.texts.get(VERSION_XML)
    if text is None:
        out(
            "VMW001",
            VERSION_XML,
            "APP_DIR has no version.xml",
            "run `vmwrapper package` or write version.xml (see docs/tutorial.md)",
        )
        return None
    try:
        return parse_version_xml(text, VERSION_XML)
    except InputError as exc:
        out("VMW001", VERSION_XML, str(exc), "correct version.xml")
        return None


def _read_templates(
    facts: AppDirFacts, out: _Out
) -> tuple[InputTemplate | None, OutputTemplate | None]:
    wu: InputTemplate | None = None
    result: OutputTemplate | None = None
    if facts.wu_template:
        try:
            wu = parse_input_template(facts.texts[facts.wu_template], facts.wu_template)
        except (InputError, KeyError) as exc:
            out("VMW033", facts.wu_template, str(exc), "correct the input template")
    if facts.result_template:
        try:
            result = parse_output_template(
                facts.texts[facts.result_template], facts.result_template
            )
        except (InputError, KeyError) as exc:
            out("VMW033", facts.result_template, str(exc), "correct the output template")
    return wu, result


def _check_structure(ctx: _Ctx) -> None:
    v, out = ctx.version, ctx.out
    for p in version_problems(v, VERSION_XML):
        out("VMW029", VERSION_XML, p.message, p.fix)
    mains = v.main_programs
    if len(mains) != 1:
        names = ", ".join(f.physical_name for f in mains) or "none"
        out(
            "VMW003",
            VERSION_XML,
            f"{len(mains)} files are marked <main_program/> ({names})",
            "mark exactly one file, the vmwrapper executable, with <main_program/>",
        )
    if not v.dont_throttle:
        out(
            "VMW019",
            VERSION_XML,
            "<dont_throttle/> is missing: the client would stop and start the wrapper to "
            "throttle CPU, while the VM keeps running",
            "add <dont_throttle/> to <version>",
        )
    if not v.api_version:
        out(
            "VMW027",
            VERSION_XML,
            "<api_version> is missing: the client then talks to the wrapper over System V "
            "shared memory instead of the mmap'd file",
            "add <api_version>7.20.5</api_version>",
        )
    if not v.is_wrapper:
        out(
            "VMW028",
            VERSION_XML,
            "<is_wrapper/> is missing: the client then counts the wrapper as the app",
            "add <is_wrapper/>",
        )


def _check_files(ctx: _Ctx) -> None:
    for f in ctx.version.files:
        if not f.physical_name:
            continue
        facts = ctx.facts.files.get(f.physical_name)
        if facts is None or not facts.exists:
            ctx.out(
                "VMW002",
                f.physical_name,
                "listed in version.xml but not in APP_DIR",
                f"copy {f.physical_name} into APP_DIR or remove its <file> entry",
            )
            continue
        if f.main_program and not facts.executable:
            ctx.out(
                "VMW004",
                f.physical_name,
                "the main program has no execute permission; the client cannot start it",
                f"chmod +x {f.physical_name}",
            )
        elif not f.main_program and facts.looks_executable and not facts.executable:
            ctx.out(
                "VMW005",
                f.physical_name,
                "a script or executable without execute permission (all must have it)",
                f"chmod +x {f.physical_name}",
            )
        if facts.world_writable:
            ctx.out(
                "VMW106",
                f.physical_name,
                "world-writable: anyone on the build host can change what volunteers run",
                f"chmod o-w {f.physical_name}",
            )
        if (f.main_program or f.open_name != f.physical_name) and not has_version_number(
            f.physical_name
        ):
            ctx.out(
                "VMW037",
                f.physical_name,
                "the physical name has no version number; BOINC file names must never change "
                "content, so the next version would clash",
                "put the app version in the physical name (vmwrapper package does)",
            )
    for path, facts in sorted(ctx.facts.files.items()):
        if path.startswith(f"{INPUTS_DIR}/") and facts.looks_executable and not facts.executable:
            ctx.out("VMW005", path, "a script without execute permission", f"chmod +x {path}")


def _read_job(ctx: _Ctx) -> _Job:
    entry = ctx.version.by_logical(JOB_LOGICAL_NAME)
    in_workunit = False
    if entry is not None:
        path = entry.physical_name
    else:
        in_wu = ctx.wu is not None and any(f.open_name == JOB_LOGICAL_NAME for f in ctx.wu.files)
        if not in_wu:
            ctx.out(
                "VMW006",
                VERSION_XML,
                "no file has logical name vbox_job.xml (in the app version or the workunit)",
                "add <file><physical_name>APP_vbox_job_VERSION.xml</physical_name>"
                "<logical_name>vbox_job.xml</logical_name></file>",
            )
            return _Job(None, "")
        path, in_workunit = f"{INPUTS_DIR}/{JOB_LOGICAL_NAME}", True
    text = ctx.facts.texts.get(path)
    if text is None:
        return _Job(None, path, in_workunit)  # missing file: reported as VMW002 already
    try:
        parsed = parse_job(text, path)
    except SpecError as exc:
        for p in exc.problems:
            element = f"<{p.element}>: " if p.element else ""
            ctx.out("VMW007", path, f"{element}{p.message}", p.fix or "correct vbox_job.xml")
        return _Job(None, path, in_workunit)
    for warning in parsed.warnings:
        ctx.out("VMW035", path, warning, "correct or remove the element")
    return _Job(parsed.spec, path, in_workunit)


def _image_entries(v: AppVersion) -> Iterator[VersionFile]:
    for f in v.files:
        name = f.open_name
        if name == IMAGE_LOGICAL_NAME or (name.startswith("vm_image_") and name.endswith(".vdi")):
            yield f


def _check_image(ctx: _Ctx, spec: JobSpec | None) -> None:
    v, out = ctx.version, ctx.out
    if spec is not None and spec.enable_isocontextualization:
        iso = v.by_logical(ISO_LOGICAL_NAME)
        if iso is None:
            out(
                "VMW023",
                VERSION_XML,
                "<enable_isocontextualization> is set but no file has logical name "
                "vm_isocontext.iso",
                "add the ISO with <logical_name>vm_isocontext.iso</logical_name><copy_file/>",
            )
        elif not iso.copy_file:
            out(
                "VMW009",
                iso.physical_name,
                "vm_isocontext.iso lacks <copy_file/>",
                "add <copy_file/> to its <file>",
            )
        if spec.enable_cache_disk:
            cache = v.by_logical(CACHE_DISK_LOGICAL_NAME)
            if cache is None or not cache.copy_file:
                out(
                    "VMW024",
                    VERSION_XML,
                    "<enable_cache_disk> is set but there is no vm_cache.vdi with <copy_file/>",
                    "add the cache VDI with <logical_name>vm_cache.vdi</logical_name><copy_file/>",
                )
        return
    if spec is not None and spec.multiattach_vdi_file:
        _check_multiattach(ctx, spec.multiattach_vdi_file)
        return
    images = list(_image_entries(v))
    if not images:
        if ctx.job.in_workunit:
            return
        out(
            "VMW008",
            VERSION_XML,
            "no file has logical name vm_image.vdi",
            "add the VDI with <logical_name>vm_image.vdi</logical_name><copy_file/><gzip/>, "
            "or use <multiattach_vdi_file> in vbox_job.xml",
        )
        return
    for image in images:
        if not image.copy_file:
            out(
                "VMW009",
                image.physical_name,
                f"{image.open_name} lacks <copy_file/>: the hypervisor would open the client's "
                "link file instead of the image",
                "add <copy_file/> (or switch to multiattach to avoid the copy)",
            )
        if not image.gzip:
            out(
                "VMW010",
                image.physical_name,
                "no <gzip/>: 7.0+ clients would download the image uncompressed",
                "add <gzip/> to the image's <file>",
            )
        if not has_version_number(image.physical_name):
            out(
                "VMW014",
                image.physical_name,
                "the image's physical name has no version number",
                "rename it, e.g. myapp_vm_image_1.00.vdi",
            )
        _check_vdi_header(ctx, image.physical_name)


def _check_multiattach(ctx: _Ctx, parent_name: str) -> None:
    out = ctx.out
    parent = ctx.version.by_physical(parent_name)
    wu_files = ctx.wu.files if ctx.wu is not None else ()
    wu_parent = [f for f in wu_files if _is_multiattach_input(f, ctx.job.spec)]
    if parent is None and wu_parent and all(f.sticky for f in wu_parent):
        return  # shipped as a sticky workunit file (one image per batch)
    if parent is None and wu_parent:
        out(
            "VMW013",
            ctx.facts.wu_template,
            f"the multiattach parent {parent_name} comes with the workunit but is not "
            "<sticky/>: the client deletes it when the task ends, under the VMs using it",
            "add <sticky/> and <no_delete/> to its <file_info>",
        )
        return
    if parent is None:
        out(
            "VMW011",
            VERSION_XML,
            f"<multiattach_vdi_file> is {parent_name} but the app version has no file "
            "with that physical name",
            f"add <file><physical_name>{parent_name}</physical_name><sticky/></file>",
        )
        return
    if parent.copy_file:
        out(
            "VMW012",
            parent_name,
            "the multiattach parent has <copy_file/>: every task would copy the whole image "
            "into its slot, which multiattach exists to avoid",
            "remove <copy_file/> from its <file>",
        )
    if not parent.sticky:
        out(
            "VMW013",
            parent_name,
            "the multiattach parent is not <sticky/>; the VM-apps documentation asks for it "
            "so the image stays in the project directory whatever the client cleans up",
            "add <sticky/> to its <file>",
        )
    if parent.logical_name == IMAGE_LOGICAL_NAME:
        out(
            "VMW015",
            parent_name,
            "the multiattach parent should not have logical name vm_image.vdi",
            "remove its <logical_name>",
        )
    if not has_version_number(parent_name):
        out(
            "VMW014",
            parent_name,
            "the multiattach parent's name has no version number; an updated image would "
            "clash with the registered parent on volunteers' hosts",
            "rename it like myimage_2.vdi (in version.xml and <multiattach_vdi_file>)",
        )
    _check_vdi_header(ctx, parent_name)


def _check_vdi_header(ctx: _Ctx, physical_name: str) -> None:
    facts = ctx.facts.files.get(physical_name)
    if facts is None or not facts.exists or len(facts.head) < 68:
        return
    # A VDI starts with a text banner and has the signature 0xbeda107f at offset 64.
    if facts.head[64:68] != b"\x7f\x10\xda\xbe":
        ctx.out(
            "VMW034",
            physical_name,
            "not a VirtualBox VDI image (no VDI signature); VirtualBox hosts cannot use it",
            f"convert it: qemu-img convert -O vdi IMAGE {physical_name}",
        )
        return
    # Header v1.x: the image type (1 normal, 2 fixed, 3 undo, 4 differencing) at offset 76.
    if len(facts.head) >= 80 and int.from_bytes(facts.head[76:80], "little") == _VDI_DIFF:
        ctx.out(
            "VMW040",
            physical_name,
            "a differencing VDI (a snapshot or multiattach child): it needs its parent, which "
            "volunteers do not have",
            "ship the merged image: VBoxManage clonemedium CHILD merged.vdi "
            "(or qemu-img convert -O vdi CHILD merged.vdi)",
        )


def _check_boinc_app(ctx: _Ctx) -> None:
    entry = ctx.version.by_logical(APP_LOGICAL_NAME)
    wu_files = ctx.wu.files if ctx.wu is not None else ()
    wu_entry = next((f for f in wu_files if f.open_name == APP_LOGICAL_NAME), None)
    slot_shared = ctx.job.spec is not None and ctx.job.spec.share_slot_dir
    if entry is None:
        bare = ctx.version.by_logical("boinc_app")
        if bare is not None and slot_shared:
            # <share_slot_dir/>: the VM sees the whole slot (BOINC's samples/worker), but
            # it cannot follow the client's link files
            if not bare.copy_file:
                ctx.out(
                    "VMW018",
                    bare.physical_name,
                    "boinc_app lacks <copy_file/>: the client would put a link file in the "
                    "slot, which the VM cannot follow",
                    "add <copy_file/>",
                )
            return
        if bare is not None:
            ctx.out(
                "VMW017",
                bare.physical_name,
                "logical name boinc_app: the VM only sees files under shared/",
                "use <logical_name>shared/boinc_app</logical_name><copy_file/>",
            )
            return
    if entry is None and wu_entry is None:
        uses_worker = ctx.job.spec is not None and (
            ctx.job.spec.share_slot_dir or ctx.job.spec.enable_isocontextualization
        )
        if uses_worker:
            return  # the image runs its own program (samples/worker style); nothing to ship
        where = " or the workunit template" if ctx.wu is not None else ""
        fix = (
            "add your app with <logical_name>shared/boinc_app</logical_name><copy_file/> "
            "(single-purpose) or as a workunit input opened as shared/boinc_app "
            "(multi-purpose; pass --wu TEMPLATE to check it)"
        )
        ctx.out("VMW016", VERSION_XML, f"no shared/boinc_app in the app version{where}", fix)
        return
    if wu_entry is not None and entry is None and not wu_entry.sticky:
        ctx.out(
            "VMW036",
            ctx.facts.wu_template,
            "shared/boinc_app comes with each workunit but is not <sticky/>; every task "
            "downloads it again",
            "add <sticky/> and <no_delete/> to its <file_info>",
        )
    if wu_entry is not None and entry is None and not wu_entry.executable:
        ctx.out(
            "VMW039",
            ctx.facts.wu_template,
            "shared/boinc_app comes with each workunit but its <file_info> lacks "
            "<executable/>; the client then does not set its execute bit",
            "add <executable/> to its <file_info>",
        )


def _check_job_files(ctx: _Ctx, spec: JobSpec | None) -> None:
    """Files under shared/ need copy_file; workunit and result files need shared/ names."""
    shared_files = [f for f in ctx.version.files if f.open_name.startswith(SHARED_PREFIX)]
    for f in shared_files:
        if not f.copy_file:
            ctx.out(
                "VMW018",
                f.physical_name,
                f"{f.open_name} lacks <copy_file/>: the client would put a link file in the "
                "slot, which the VM cannot follow",
                "add <copy_file/>",
            )
    job_files = 0
    if ctx.wu is not None:
        for wf in ctx.wu.files:
            if wf.open_name == JOB_LOGICAL_NAME or _is_multiattach_input(wf, spec):
                continue
            job_files += 1
            _check_job_file(ctx, ctx.facts.wu_template, wf.open_name, wf.copy_file, "input")
    uploads = spec.intermediate_upload_file if spec is not None else ()
    if ctx.result is not None:
        for of in ctx.result.files:
            job_files += 1
            if of.open_name in uploads:
                _check_upload_output(ctx, of.open_name, of.copy_file)
            else:
                _check_job_file(
                    ctx, ctx.facts.result_template, of.open_name, of.copy_file, "output"
                )
            if of.max_nbytes <= 0:
                ctx.out(
                    "VMW030",
                    ctx.facts.result_template,
                    f"output {of.open_name} has no <max_nbytes>; the client then rejects any "
                    "upload (limit 0)",
                    "add <max_nbytes>100000000</max_nbytes> to its <file_info>",
                )
    if spec is not None and not spec.shared_dir and (job_files or shared_files):
        ctx.out(
            "VMW025",
            ctx.job.file,
            "the job has input or output files but no shared directory",
            "add <enable_shared_directory/> to vbox_job.xml",
        )


def _is_multiattach_input(wf: InputFile, spec: JobSpec | None) -> bool:
    """A workunit input that is the job's multiattach disk (the right way to ship one image
    per batch): the wrapper opens it in the project directory, so it is neither copied nor
    under shared/. VMW013 says if it is not sticky."""
    return (
        spec is not None
        and bool(spec.multiattach_vdi_file)
        and posixpath.basename(wf.open_name) == posixpath.basename(spec.multiattach_vdi_file)
    )


def _check_intermediate_uploads(ctx: _Ctx, spec: JobSpec) -> None:
    """Each intermediate_upload_file needs a result output opened under its name (the client
    uploads the output whose open name the wrapper asks for; docs/compatibility.md#runtime)."""
    outputs = {of.open_name for of in ctx.result.files} if ctx.result is not None else set()
    for name in spec.intermediate_upload_file:
        if name not in outputs:
            ctx.out(
                "VMW042",
                ctx.facts.result_template or ctx.job.file,
                f"<intermediate_upload_file> {name} has no output in the result template: "
                "the client finds no file to upload and the request is lost",
                f"add <file_ref><file_name><OUTFILE_n/></file_name><open_name>{name}"
                "</open_name></file_ref> (no <copy_file/>) with a <file_info> that has "
                "<upload_when_present/> and <url><UPLOAD_URL/></url>",
            )


def _check_upload_output(ctx: _Ctx, name: str, copy_file: bool) -> None:
    if copy_file:
        ctx.out(
            "VMW043",
            ctx.facts.result_template,
            f"output {name} is an intermediate upload but has <copy_file/>: the client then "
            "makes no link in the slot, and uploads an empty or missing file",
            "remove <copy_file/> from its <file_ref> (the wrapper fills the file itself)",
        )


def _check_job_file(ctx: _Ctx, file: str, name: str, copy_file: bool, kind: str) -> None:
    slot_shared = ctx.job.spec is not None and ctx.job.spec.share_slot_dir
    if not name.startswith(SHARED_PREFIX) and not slot_shared:
        ctx.out(
            "VMW017",
            file,
            f"{kind} file opened as {name!r}: VM app job files must have names under shared/",
            f"use <open_name>shared/{name.rsplit('/', 1)[-1] or 'file'}</open_name>",
        )
    if not copy_file:
        ctx.out(
            "VMW018",
            file,
            f"{kind} file {name} lacks <copy_file/>; the client would not copy it "
            f"{'into' if kind == 'input' else 'out of'} slots/N/shared/",
            "add <copy_file/> to its <file_ref>",
        )


def _check_job_values(ctx: _Ctx, spec: JobSpec) -> None:
    file, out = ctx.job.file, ctx.out
    if not spec.os_name:
        out(
            "VMW020",
            file,
            "<os_name> is missing; VirtualBox needs a guest OS type",
            "add <os_name>Linux26_64</os_name> (or the type of your guest)",
        )
    else:
        verdict = check_os_type(spec.os_name)
        if verdict is OsTypeVerdict.UNKNOWN:
            out(
                "VMW020",
                file,
                f"<os_name> {spec.os_name!r} is not a VirtualBox OS type; createvm would fail",
                f"use one of `VBoxManage list ostypes`, e.g. {suggest_os_type(spec.os_name)}",
            )
        elif verdict is OsTypeVerdict.NEWER_ONLY:
            out(
                "VMW038",
                file,
                f"<os_name> {spec.os_name!r} is known only to recent VirtualBox versions",
                "use a long-standing type such as Linux26_64 or Debian_64",
            )
    if spec.memory_size_mb <= 0:
        out(
            "VMW022",
            file,
            "<memory_size_mb> is missing or 0",
            "add <memory_size_mb>512</memory_size_mb> (or what the app needs)",
        )
    elif spec.memory_size_mb < MIN_MEMORY_SIZE_MB:
        out(
            "VMW021",
            file,
            f"<memory_size_mb> {spec.memory_size_mb:g} is below 512: the wrapper raises it to "
            "512 MB, so the host needs more memory than you planned",
            "set <memory_size_mb>512</memory_size_mb> or more",
        )
    if ctx.wu is not None:  # only with the workunit's files known can a name be missing
        known = {f.open_name for f in ctx.version.files}
        known |= {f.open_name for f in ctx.wu.files} | _SLOT_FILES
        for name in (n for n in spec.copy_to_shared if n not in known):
            out(
                "VMW041",
                file,
                f"<copy_to_shared> {name}: no such file in the slot (not init_data.xml, not a "
                "logical name of the app version or the workunit); the copy does nothing",
                "name a file the slot has, e.g. init_data.xml, or add that file",
            )
    plan = ctx.facts.plan_class
    if plan is PlanClass.VBOX32 and spec.requires_hw_acceleration:
        out(
            "VMW026",
            file,
            f"os_name {spec.os_name} is a 64-bit guest, but plan class vbox32 sends the job "
            "to hosts without VT-x/AMD-V, where a 64-bit guest cannot start",
            "use plan class vbox64 (or a 32-bit guest OS type)",
        )
    if plan is not None and spec.backends and "virtualbox" not in spec.backends:
        out(
            "VMW044",
            file,
            f"<vmwrapper_backends> {' '.join(spec.backends)} leaves VirtualBox out, but the "
            f"scheduler sends plan class {plan.value} only to hosts that report VirtualBox; "
            "hosts with QEMU alone never get it, hosts with VirtualBox alone cannot run it",
            "add virtualbox to <vmwrapper_backends> if the image runs there, or publish it "
            "under a plan class of plan_class_spec.xml without <virtualbox/> "
            "(docs/compatibility.md#back-end-selection)",
        )


def _check_security(ctx: _Ctx, spec: JobSpec) -> None:
    file, out = ctx.job.file, ctx.out
    for fw in spec.port_forward:
        if fw.is_remote:
            out(
                "VMW101",
                file,
                f"<port_forward> host port {fw.host_port} has <is_remote>: other computers on "
                "the volunteer's network can reach the VM",
                "remove <is_remote> so the port listens on 127.0.0.1 only",
            )
    if spec.enable_network and spec.network_bridged_mode:
        out(
            "VMW102",
            file,
            "<network_bridged_mode>: the VM sits on the volunteer's LAN with its own address, "
            "past the host's firewall",
            "use NAT (remove <network_bridged_mode/>)",
        )
    if spec.share_project_dir:
        out(
            "VMW103",
            file,
            "<share_project_dir>: the VM can read and write every file of the project on the "
            "host, other tasks' included",
            "share only the slot (<enable_shared_directory/>) and pass files as inputs",
        )
    if spec.enable_remotedesktop:
        out(
            "VMW104",
            file,
            "<enable_remotedesktop>: the VM console is served on all interfaces without "
            "authentication",
            "remove it for production; use it only while debugging",
        )
    if spec.enable_network:
        out(
            "VMW105",
            file,
            "<enable_network/>: the VM can reach the internet through the host",
            "fine if the app needs it; otherwise remove it",
        )
    if spec.share_slot_dir:
        out(
            "VMW107",
            file,
            "<share_slot_dir>: the VM sees the whole slot, init_data.xml with the "
            "authenticator included",
            "use <enable_shared_directory/> and copy only what the VM needs",
        )


def _check_bounds(ctx: _Ctx, spec: JobSpec | None) -> None:
    if ctx.wu is None:
        return
    bounds = ctx.wu.bounds
    if spec is not None and bounds.rsc_memory_bound and spec.memory_size_mb > 0:
        vm_bytes = max(spec.memory_size_mb, MIN_MEMORY_SIZE_MB) * MIB
        if bounds.rsc_memory_bound < vm_bytes:
            ctx.out(
                "VMW031",
                ctx.facts.wu_template,
                f"<rsc_memory_bound> {bounds.rsc_memory_bound:.0f} bytes is below the VM's "
                f"{vm_bytes:.0f}: the client would schedule more tasks than fit in memory",
                f"set <rsc_memory_bound>{vm_bytes + 256 * MIB:.0f}</rsc_memory_bound>",
            )
    image = next(_image_entries(ctx.version), None)
    if image is not None and image.copy_file and bounds.rsc_disk_bound:
        facts = ctx.facts.files.get(image.physical_name)
        if facts is not None and facts.exists and bounds.rsc_disk_bound < facts.size * 2:
            ctx.out(
                "VMW032",
                ctx.facts.wu_template,
                f"<rsc_disk_bound> {bounds.rsc_disk_bound:.0f} bytes is less than twice the "
                f"image ({facts.size} bytes): the slot copy and the VM's writes will not fit",
                f"set <rsc_disk_bound> to at least {facts.size * 3}",
            )
