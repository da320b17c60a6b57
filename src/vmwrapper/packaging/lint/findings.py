"""The linter's vocabulary: findings and their codes, the facts it reads, and the state one run
carries (pure)."""

from __future__ import annotations

import enum
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field

from vmwrapper.packaging.templates import InputTemplate, OutputTemplate
from vmwrapper.packaging.version import AppVersion, PlanClass
from vmwrapper.spec import JobSpec

VERSION_XML = "version.xml"
VDI_DIFF = 4  # the VDI header's image type of a differencing (child) image
#: Files the client (or the wrapper) puts into every slot, besides the logical names.
SLOT_FILES = frozenset({"init_data.xml", "boinc_task_state.xml"})
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


class Out:
    """Collects findings; severity comes from the code table so it cannot drift."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []

    def __call__(self, code: str, file: str, message: str, fix: str) -> None:
        self.findings.append(Finding(code, CODES[code][0], file, message, fix))


@dataclass(frozen=True)
class Job:
    spec: JobSpec | None
    file: str  # where the job came from ("" = none)
    in_workunit: bool = False


@dataclass
class Ctx:
    facts: AppDirFacts
    out: Out
    version: AppVersion
    wu: InputTemplate | None = None
    result: OutputTemplate | None = None
    job: Job = field(default_factory=lambda: Job(None, ""))
