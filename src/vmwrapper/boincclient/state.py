"""A hand-made data directory for the real BOINC client: the files' text, written and read (pure).

A 7.20.5 client runs a job without a scheduler when its data directory holds (lab.md):

* ``client_state.xml`` whose **first line** is ``<client_state>`` (an XML declaration makes the
  client ignore the file and start afresh), with, in this order, the project, the app, every
  file (``<status>1</status>`` = present; the main program ``<executable/>``), the app version
  (``<api_version>`` >= 6.0 for the mmap segment), the workunit and the result (a future
  ``<report_deadline>``; outputs with ``<max_nbytes>`` > 0, else any output is "too big", and
  ``<sticky/>``, as there is no upload URL);
* ``account_<project dir>.xml``, else the client drops the project;
* ``cc_config.xml`` and ``global_prefs_override.xml`` so a busy or shared host neither
  suspends the job nor reaches the network;
* ``gui_rpc_auth.cfg`` with the GUI RPC password (no ``remote_hosts.cfg``: RPC stays on
  loopback).

The client rewrites ``client_state.xml`` itself once it runs; :func:`parse_results` reads the
outcome back from it.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET

from vmwrapper.errors import HarnessError

#: The client version our hand-made state claims, so the client does not act as a fresh install.
CLIENT_VERSION = (7, 20, 5)
DEFAULT_PLATFORM = "x86_64-pc-linux-gnu"
#: ``RESULT_FILES_DOWNLOADING``: the client checks the files and moves on to "downloaded".
_RESULT_STATE_NEW_JOB = 1


class BoincClientError(HarnessError):
    """The real BOINC client could not run the job; the message says what happened."""


class HandMadeStateError(BoincClientError):
    """The job cannot be described to the BOINC client (names, files, or the state it wrote)."""


class ResultState(enum.IntEnum):
    """``RESULT_*`` in ``lib/common_defs.h``: the ``<state>`` of a result."""

    NEW = 0
    DOWNLOADING = 1
    DOWNLOADED = 2
    COMPUTE_ERROR = 3
    UPLOADING = 4
    UPLOADED = 5
    ABORTED = 6
    UPLOAD_FAILED = 7


# --- the model -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileInfo:
    """A ``<file>``: a physical file in the project directory."""

    name: str
    present: bool = True  # <status>1</status>; an output not yet made is 0
    executable: bool = False
    max_nbytes: float = 0.0  # outputs: the size limit (0 means every output is too big)
    sticky: bool = False  # kept after the job (outputs: there is no upload URL)
    upload_url: str = ""  # outputs: where the client uploads them (a file upload handler)


@dataclass(frozen=True)
class FileRef:
    """A ``<file_ref>`` of an app version, workunit or result."""

    file_name: str
    open_name: str = ""  # the logical name; empty = the physical name
    copy_file: bool = False
    main_program: bool = False


@dataclass(frozen=True)
class AppVersionInfo:
    app_name: str
    version_num: int
    file_refs: tuple[FileRef, ...]
    platform: str = DEFAULT_PLATFORM
    plan_class: str = "vbox64"
    api_version: str = "7.20.5"
    avg_ncpus: float = 1.0
    flops: float = 1e9  # with rsc_fpops_bound this sets the elapsed-time limit
    cmdline: str = ""
    dont_throttle: bool = True
    is_wrapper: bool = True


@dataclass(frozen=True)
class WorkunitInfo:
    name: str
    app_name: str
    version_num: int
    file_refs: tuple[FileRef, ...] = ()
    command_line: str = ""
    rsc_fpops_est: float = 1e10
    rsc_fpops_bound: float = 1e15  # / flops = 1e6 s of elapsed time before the client aborts
    rsc_memory_bound: float = 6e8  # not enforced by the client
    rsc_disk_bound: float = 8e9  # slot + outputs; a VM slot holds the image and snapshots


@dataclass(frozen=True)
class ResultInfo:
    name: str
    wu_name: str
    version_num: int
    report_deadline: float  # Unix time; must be in the future or the client will not start it
    received_time: float
    file_refs: tuple[FileRef, ...] = ()
    platform: str = DEFAULT_PLATFORM
    plan_class: str = "vbox64"
    suspended_via_gui: bool = False  # held until `boinccmd --task URL NAME resume`


@dataclass(frozen=True)
class ProjectInfo:
    master_url: str
    project_name: str = "vmwrapper-local"
    authenticator: str = "vmwrapper-local"


@dataclass(frozen=True)
class ClientState:
    """Everything the hand-made ``client_state.xml`` describes: one project, one app."""

    project: ProjectInfo
    app_name: str
    files: tuple[FileInfo, ...]
    app_versions: tuple[AppVersionInfo, ...]
    workunits: tuple[WorkunitInfo, ...] = ()
    results: tuple[ResultInfo, ...] = ()
    platform: str = DEFAULT_PLATFORM


# --- names -----------------------------------------------------------------------------------

_URL_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def project_dir_name(master_url: str) -> str:
    """The client's ``escape_project_url``: ``http://127.0.0.1:9/proj/`` -> ``127.0.0.1_9_proj``.

    Everything up to the first ``://`` dropped; each byte (of the UTF-8 text: C ``isalnum``)
    other than a letter, digit, ``.``, ``_`` or ``-`` becomes ``_``; one trailing ``_`` dropped.
    """
    _, sep, rest = master_url.partition("://")
    raw = (rest if sep else master_url).encode("utf-8")
    text = "".join(chr(b) if b in _URL_SAFE else "_" for b in raw)
    return text[:-1] if text.endswith("_") else text


def account_file_name(master_url: str) -> str:
    return f"account_{project_dir_name(master_url)}.xml"


_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def check_name(kind: str, name: str) -> str:
    """BOINC physical, workunit and result names: no path parts, no spaces (boinccmd argv)."""
    if not _SAFE_NAME.match(name):
        raise HandMadeStateError(
            f"{kind} name {name!r} is not usable: use letters, digits, '.', '_' or '-' only"
        )
    return name


# --- writing ---------------------------------------------------------------------------------


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _f(value: float) -> str:
    """The client's ``%f``."""
    return f"{value:.6f}"


def _file_lines(info: FileInfo) -> list[str]:
    lines = [
        "<file>",
        f"    <name>{_escape(info.name)}</name>",
        f"    <nbytes>{_f(0.0)}</nbytes>",
        f"    <max_nbytes>{_f(info.max_nbytes)}</max_nbytes>",
        f"    <status>{1 if info.present else 0}</status>",
    ]
    if info.executable:
        lines.append("    <executable/>")
    if info.sticky:
        lines.append("    <sticky/>")
    if info.upload_url:
        lines.append(f"    <upload_url>{_escape(info.upload_url)}</upload_url>")
    lines.append("</file>")
    return lines


def _ref_lines(ref: FileRef) -> list[str]:
    lines = ["    <file_ref>", f"        <file_name>{_escape(ref.file_name)}</file_name>"]
    if ref.open_name:
        lines.append(f"        <open_name>{_escape(ref.open_name)}</open_name>")
    if ref.main_program:
        lines.append("        <main_program/>")
    if ref.copy_file:
        lines.append("        <copy_file/>")
    lines.append("    </file_ref>")
    return lines


def _app_version_lines(av: AppVersionInfo) -> list[str]:
    lines = [
        "<app_version>",
        f"    <app_name>{_escape(av.app_name)}</app_name>",
        f"    <version_num>{av.version_num}</version_num>",
        f"    <platform>{_escape(av.platform)}</platform>",
        f"    <avg_ncpus>{_f(av.avg_ncpus)}</avg_ncpus>",
        f"    <flops>{_f(av.flops)}</flops>",
    ]
    if av.plan_class:
        lines.append(f"    <plan_class>{_escape(av.plan_class)}</plan_class>")
    if av.api_version:
        lines.append(f"    <api_version>{_escape(av.api_version)}</api_version>")
    if av.cmdline:
        lines.append(f"    <cmdline>{_escape(av.cmdline)}</cmdline>")
    for ref in av.file_refs:
        lines += _ref_lines(ref)
    if av.dont_throttle:
        lines.append("    <dont_throttle/>")
    if av.is_wrapper:
        lines.append("    <is_wrapper/>")
    lines.append("</app_version>")
    return lines


def _workunit_lines(wu: WorkunitInfo) -> list[str]:
    lines = [
        "<workunit>",
        f"    <name>{_escape(wu.name)}</name>",
        f"    <app_name>{_escape(wu.app_name)}</app_name>",
        f"    <version_num>{wu.version_num}</version_num>",
    ]
    if wu.command_line:
        lines.append(f"    <command_line>{_escape(wu.command_line)}</command_line>")
    for name in ("rsc_fpops_est", "rsc_fpops_bound", "rsc_memory_bound", "rsc_disk_bound"):
        lines.append(f"    <{name}>{_f(getattr(wu, name))}</{name}>")
    for ref in wu.file_refs:
        lines += _ref_lines(ref)
    lines.append("</workunit>")
    return lines


def _result_lines(r: ResultInfo) -> list[str]:
    lines = [
        "<result>",
        f"    <name>{_escape(r.name)}</name>",
        f"    <final_cpu_time>{_f(0.0)}</final_cpu_time>",
        f"    <final_elapsed_time>{_f(0.0)}</final_elapsed_time>",
        "    <exit_status>0</exit_status>",
        f"    <state>{_RESULT_STATE_NEW_JOB}</state>",
        f"    <platform>{_escape(r.platform)}</platform>",
        f"    <version_num>{r.version_num}</version_num>",
    ]
    if r.plan_class:
        lines.append(f"    <plan_class>{_escape(r.plan_class)}</plan_class>")
    lines += [
        f"    <wu_name>{_escape(r.wu_name)}</wu_name>",
        f"    <report_deadline>{_f(r.report_deadline)}</report_deadline>",
        f"    <received_time>{_f(r.received_time)}</received_time>",
    ]
    if r.suspended_via_gui:
        lines.append("    <suspended_via_gui/>")
    for ref in r.file_refs:
        lines += _ref_lines(ref)
    lines.append("</result>")
    return lines


def _check_refs(state: ClientState) -> None:
    """Every file_ref names a <file>, and the client's cross references hold."""
    names = {f.name for f in state.files}
    refs = [r for av in state.app_versions for r in av.file_refs]
    refs += [r for wu in state.workunits for r in wu.file_refs]
    refs += [r for res in state.results for r in res.file_refs]
    for ref in refs:
        if ref.file_name not in names:
            raise HandMadeStateError(f"file_ref {ref.file_name!r} has no <file> entry")
    for av in state.app_versions:
        if sum(r.main_program for r in av.file_refs) != 1:
            raise HandMadeStateError(
                f"app version {av.version_num} needs exactly one main program "
                "(version.xml: mark one <file> with <main_program/>)"
            )
    versions = {av.version_num for av in state.app_versions}
    wus = {wu.name for wu in state.workunits}
    for wu in state.workunits:
        if wu.version_num not in versions:
            raise HandMadeStateError(f"workunit {wu.name}: no app version {wu.version_num}")
    for res in state.results:
        if res.wu_name not in wus:
            raise HandMadeStateError(f"result {res.name}: no workunit {res.wu_name}")


def format_client_state(state: ClientState) -> str:
    """``client_state.xml`` in the order the client parses it; the first line is the root tag."""
    _check_refs(state)
    p = state.project
    lines = [
        "<client_state>",
        "<project>",
        f"    <master_url>{_escape(p.master_url)}</master_url>",
        f"    <project_name>{_escape(p.project_name)}</project_name>",
        f"    <resource_share>{_f(100.0)}</resource_share>",
        "    <dont_request_more_work/>",  # no scheduler: never ask it for work
        "</project>",
        "<app>",
        f"    <name>{_escape(state.app_name)}</name>",
        f"    <user_friendly_name>{_escape(state.app_name)}</user_friendly_name>",
        "    <non_cpu_intensive>0</non_cpu_intensive>",
        "</app>",
    ]
    for info in state.files:
        lines += _file_lines(info)
    for av in state.app_versions:
        lines += _app_version_lines(av)
    for wu in state.workunits:
        lines += _workunit_lines(wu)
    for res in state.results:
        lines += _result_lines(res)
    major, minor, release = CLIENT_VERSION
    lines += [
        f"<platform_name>{_escape(state.platform)}</platform_name>",
        f"<core_client_major_version>{major}</core_client_major_version>",
        f"<core_client_minor_version>{minor}</core_client_minor_version>",
        f"<core_client_release>{release}</core_client_release>",
        "</client_state>",
    ]
    return "\n".join(lines) + "\n"


def format_account(project: ProjectInfo) -> str:
    """``account_<dir>.xml``: without it the client drops the project at start."""
    return (
        "<account>\n"
        f"    <master_url>{_escape(project.master_url)}</master_url>\n"
        f"    <authenticator>{_escape(project.authenticator)}</authenticator>\n"
        f"    <project_name>{_escape(project.project_name)}</project_name>\n"
        "</account>\n"
    )


def format_cc_config() -> str:
    """No GPU probing, no network fetches of project lists or versions, no benchmarks."""
    return (
        "<cc_config>\n"
        "    <options>\n"
        "        <no_gpus>1</no_gpus>\n"
        "        <no_info_fetch>1</no_info_fetch>\n"
        "        <dont_contact_ref_site>1</dont_contact_ref_site>\n"
        "        <skip_cpu_benchmarks>1</skip_cpu_benchmarks>\n"
        "    </options>\n"
        "</cc_config>\n"
    )


def format_global_prefs_override(checkpoint_period: float) -> str:
    """Preferences that let a job run on a busy, shared host.

    ``suspend_cpu_usage`` 0: other load would otherwise suspend every task; ``leave_apps_in_memory``
    1: a GUI suspend then sends ``<suspend/>`` instead of ``<quit/>``; ``disk_interval``: the
    checkpoint period the wrapper finds in init_data.xml.
    """
    return (
        "<global_preferences>\n"
        "    <run_if_user_active>1</run_if_user_active>\n"
        "    <run_gpu_if_user_active>1</run_gpu_if_user_active>\n"
        "    <suspend_cpu_usage>0</suspend_cpu_usage>\n"
        "    <leave_apps_in_memory>1</leave_apps_in_memory>\n"
        "    <cpu_usage_limit>100</cpu_usage_limit>\n"
        "    <max_ncpus_pct>100</max_ncpus_pct>\n"
        f"    <disk_interval>{_f(checkpoint_period)}</disk_interval>\n"
        "</global_preferences>\n"
    )


# --- reading what the client wrote -------------------------------------------------------------


@dataclass(frozen=True)
class ResultRecord:
    """A ``<result>`` as the client saved it."""

    name: str
    state: ResultState
    exit_status: int
    final_cpu_time: float
    final_elapsed_time: float
    ready_to_report: bool
    stderr_out: str = ""
    output_files: tuple[str, ...] = field(default=())

    @property
    def success(self) -> bool:
        """Finished, outputs in place, exit status 0: what the client reports as a success."""
        return self.exit_status == 0 and self.state in (ResultState.UPLOADING, ResultState.UPLOADED)


def _float(elem: Element, tag: str) -> float:
    try:
        return float((elem.findtext(tag) or "0").strip())
    except ValueError:
        return 0.0


def _int(elem: Element, tag: str) -> int:
    try:
        return int((elem.findtext(tag) or "0").strip())
    except ValueError:
        return 0


def _results(root: Element) -> Iterable[ResultRecord]:
    for elem in root.iter("result"):
        try:
            state = ResultState(_int(elem, "state"))
        except ValueError:
            state = ResultState.NEW
        yield ResultRecord(
            name=(elem.findtext("name") or "").strip(),
            state=state,
            exit_status=_int(elem, "exit_status"),
            final_cpu_time=_float(elem, "final_cpu_time"),
            final_elapsed_time=_float(elem, "final_elapsed_time"),
            ready_to_report=elem.find("ready_to_report") is not None,
            stderr_out=elem.findtext("stderr_out") or "",
            output_files=tuple(
                (ref.findtext("file_name") or "").strip() for ref in elem.iter("file_ref")
            ),
        )


def parse_results(text: str | bytes) -> dict[str, ResultRecord]:
    """The results in a ``client_state.xml`` the client wrote, by name."""
    if isinstance(text, bytes):
        # stderr_out holds whatever the app printed; keep parsing if it is not UTF-8
        text = text.decode("utf-8", errors="replace")
    try:
        root = SafeET.fromstring(text)
    except SafeET.ParseError as exc:
        raise HandMadeStateError(f"client_state.xml is not well-formed XML: {exc}") from exc
    return {r.name: r for r in _results(root)}
