"""From an APP_DIR (docs/compatibility.md#app-version-directory) and a list of jobs to a hand-made
client state (pure).

The app version's files keep their physical names; each job gets a workunit ``<job>`` whose
inputs are ``<job>_<basename of open_name>`` and a result ``<job>_0`` whose outputs are
``<job>_0_<n>`` (BOINC's ``<OUTFILE_n/>`` naming). Outputs are ``sticky`` so the client keeps
them in the project directory (there is no upload URL) and carry the template's
``max_nbytes``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath

from vmwrapper.boincclient.state import (
    AppVersionInfo,
    ClientState,
    FileInfo,
    FileRef,
    HandMadeStateError,
    ProjectInfo,
    ResultInfo,
    WorkunitInfo,
    check_name,
)
from vmwrapper.packaging.templates import (
    RSC_FIELDS,
    InputTemplate,
    OutputTemplate,
    WorkunitBounds,
)
from vmwrapper.packaging.version import AppVersion

#: A master URL nothing listens on (port 9, discard): the client's one report attempt fails fast.
DEFAULT_MASTER_URL = "http://127.0.0.1:9/vmwrapper-local/"
#: An output limit when the APP_DIR has no output template entry for it.
DEFAULT_MAX_NBYTES = 1e8
#: Jobs get this long before their report deadline.
DEADLINE_SECONDS = 7 * 86400.0


@dataclass(frozen=True)
class JobRequest:
    """One job to run: a workunit and its result."""

    name: str  # workunit name; the result is "<name>_0"
    command_line: str = ""  # the workunit's command line (before the app version's cmdline)
    inputs: Mapping[str, str] = field(default_factory=dict)  # open_name -> source file path
    held: bool = False  # suspended via the GUI until `boinccmd --task URL NAME resume`

    @property
    def result_name(self) -> str:
        return f"{self.name}_0"


@dataclass(frozen=True)
class Naming:
    """Names the project would choose."""

    app_name: str = "vmapp"
    version_num: int = 100
    plan_class: str = "vbox64"
    master_url: str = DEFAULT_MASTER_URL
    #: A file upload handler for the outputs ("" = none: outputs stay in the project dir).
    upload_url: str = ""


#: The names used when the caller gives none.
DEFAULT_NAMING = Naming()


@dataclass(frozen=True)
class Copy:
    """A file to place in the project directory: from ``source`` to physical ``name``."""

    source: str  # a path: relative = inside the APP_DIR
    name: str
    executable: bool = False
    main_program: bool = False


@dataclass(frozen=True)
class PlannedJob:
    """Where a job's files end up (names in the project directory)."""

    wu_name: str
    result_name: str
    outputs: Mapping[str, str]  # open_name -> physical name in the project directory


@dataclass(frozen=True)
class Plan:
    state: ClientState
    copies: tuple[Copy, ...]
    jobs: tuple[PlannedJob, ...]


def _basename(open_name: str) -> str:
    return posixpath.basename(open_name.rstrip("/")) or open_name


def _app_version_files(version: AppVersion) -> tuple[list[FileInfo], list[FileRef], list[Copy]]:
    if len(version.main_programs) != 1:
        raise HandMadeStateError(
            "version.xml: the app version needs exactly one <file> with <main_program/>"
        )
    infos, refs, copies = [], [], []
    for f in version.files:
        name = check_name("physical", f.physical_name)
        executable = f.executable or f.main_program
        infos.append(FileInfo(name=name, executable=executable))
        refs.append(
            FileRef(
                file_name=name,
                open_name=f.logical_name,
                copy_file=f.copy_file,
                main_program=f.main_program,
            )
        )
        copies.append(
            Copy(source=name, name=name, executable=executable, main_program=f.main_program)
        )
    return infos, refs, copies


def _job_inputs(
    job: JobRequest, inputs: InputTemplate | None
) -> tuple[list[FileInfo], list[FileRef], list[Copy]]:
    infos, refs, copies = [], [], []
    templated = inputs.files if inputs is not None else ()
    open_names = [f.open_name for f in templated]
    for extra in job.inputs:
        if extra not in open_names:
            raise HandMadeStateError(
                f"job {job.name}: input {extra!r} is not in templates/input_template.xml "
                f"(its inputs: {', '.join(open_names) or 'none'})"
            )
    for f in templated:
        base = _basename(f.open_name)
        name = check_name("input", f"{job.name}_{base}")
        source = job.inputs.get(f.open_name, str(PurePosixPath("inputs") / base))
        infos.append(FileInfo(name=name))
        refs.append(FileRef(file_name=name, open_name=f.open_name, copy_file=f.copy_file))
        copies.append(Copy(source=source, name=name))
    return infos, refs, copies


def _job_outputs(
    job: JobRequest, outputs: OutputTemplate | None, upload_url: str
) -> tuple[list[FileInfo], list[FileRef], dict[str, str]]:
    infos, refs, where = [], [], {}
    for n, f in enumerate(outputs.files if outputs is not None else ()):
        name = check_name("output", f"{job.result_name}_{n}")
        limit = f.max_nbytes or DEFAULT_MAX_NBYTES
        infos.append(
            FileInfo(name=name, present=False, max_nbytes=limit, sticky=True, upload_url=upload_url)
        )
        refs.append(FileRef(file_name=name, open_name=f.open_name, copy_file=f.copy_file))
        where[f.open_name] = name
    return infos, refs, where


def _with_bounds(wu: WorkunitInfo, bounds: WorkunitBounds) -> WorkunitInfo:
    """The template's rsc bounds where it sets them (0 = not set, keep ours)."""
    return replace(wu, **{n: getattr(bounds, n) or getattr(wu, n) for n in RSC_FIELDS})


def plan_client_state(
    version: AppVersion,
    jobs: Sequence[JobRequest],
    *,
    inputs: InputTemplate | None = None,
    outputs: OutputTemplate | None = None,
    naming: Naming = DEFAULT_NAMING,
    now: float,
) -> Plan:
    """The client state and file copies that run ``jobs`` with the app version."""
    check_name("app", naming.app_name)
    files, av_refs, copies = _app_version_files(version)
    av = AppVersionInfo(
        app_name=naming.app_name,
        version_num=naming.version_num,
        file_refs=tuple(av_refs),
        plan_class=naming.plan_class,
        api_version=version.api_version,
        cmdline=version.cmdline,
        dont_throttle=version.dont_throttle,
        is_wrapper=version.is_wrapper,
    )
    workunits, results, planned = [], [], []
    seen: set[str] = set()
    for job in jobs:
        check_name("workunit", job.name)
        if job.name in seen:
            raise HandMadeStateError(f"two jobs are named {job.name!r}")
        seen.add(job.name)
        in_infos, in_refs, in_copies = _job_inputs(job, inputs)
        out_infos, out_refs, where = _job_outputs(job, outputs, naming.upload_url)
        files += in_infos + out_infos
        copies += in_copies
        wu = WorkunitInfo(
            name=job.name,
            app_name=naming.app_name,
            version_num=naming.version_num,
            file_refs=tuple(in_refs),
            command_line=job.command_line or (inputs.command_line if inputs else ""),
        )
        if inputs is not None:
            wu = _with_bounds(wu, inputs.bounds)
        workunits.append(wu)
        results.append(
            ResultInfo(
                name=job.result_name,
                wu_name=job.name,
                version_num=naming.version_num,
                report_deadline=now + DEADLINE_SECONDS,
                received_time=now,
                file_refs=tuple(out_refs),
                plan_class=naming.plan_class,
                suspended_via_gui=job.held,
            )
        )
        planned.append(PlannedJob(job.name, job.result_name, where))
    state = ClientState(
        project=ProjectInfo(master_url=naming.master_url),
        app_name=naming.app_name,
        files=tuple(files),
        app_versions=(av,),
        workunits=tuple(workunits),
        results=tuple(results),
    )
    return Plan(state=state, copies=tuple(copies), jobs=tuple(planned))


def bake_interpreter(script: bytes, python: str) -> bytes:
    """A launcher script with ``VMWRAPPER_PYTHON`` fixed to ``python``
    (docs/compatibility.md#app-version-directory).

    The real client sets no environment variables, so the development launcher
    (``exec "${VMWRAPPER_PYTHON:-python3}" -m vmwrapper``) would find whatever ``python3`` is
    on the PATH. The assignment goes right after the ``#!`` line; anything else is unchanged.
    Non-scripts (a standalone executable) are returned as they are.
    """
    if not script.startswith(b"#!") or b"VMWRAPPER_PYTHON" not in script:
        return script
    first, _, rest = script.partition(b"\n")
    quoted = python.replace("'", "'\\''").encode()
    line = b"VMWRAPPER_PYTHON='" + quoted + b"'; export VMWRAPPER_PYTHON  # baked in for BOINC\n"
    return first + b"\n" + line + rest
