"""An APP_DIR as the harness reads it (contract §1): app version, templates, default inputs.

The parsers are pure (text in, frozen values out); :func:`load_app_dir` reads the files. Only
what the client needs to run a job is kept: which files exist under which logical names, which
one is the main program, what is copied, the command lines and the workunit's bounds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET

from vmwrapper.errors import HarnessError

VERSION_FILE = "version.xml"
INPUT_TEMPLATE = "templates/input_template.xml"
OUTPUT_TEMPLATE = "templates/output_template.xml"
INPUTS_DIR = "inputs"

#: The client's defaults for a workunit without bounds (``WORKUNIT`` in the scheduler).
DEFAULT_FPOPS_EST = 1e10
DEFAULT_FPOPS_BOUND = 1e15
DEFAULT_MEMORY_BOUND = 6e8
DEFAULT_DISK_BOUND = 1e9
#: An output without ``<max_nbytes>`` may not exist in BOINC (0 = error); we allow this much.
DEFAULT_MAX_NBYTES = 1e9


@dataclass(frozen=True)
class VersionFile:
    """One ``<file>`` of version.xml."""

    physical_name: str
    logical_name: str | None = None
    main_program: bool = False
    copy_file: bool = False
    executable: bool = False
    gzip: bool = False
    sticky: bool = False

    @property
    def open_name(self) -> str:
        """The name the app opens it by in the slot (the physical name if none is given)."""
        return self.logical_name or self.physical_name


@dataclass(frozen=True)
class AppVersion:
    files: tuple[VersionFile, ...]
    api_version: str = ""
    is_wrapper: bool = False
    dont_throttle: bool = False
    cmdline: str = ""
    version_num: int = 100
    avg_ncpus: float = 1.0

    @property
    def main_program(self) -> VersionFile:
        return next(f for f in self.files if f.main_program)

    @property
    def uses_mmap(self) -> bool:
        """api_version >= 6.0 gets the mmap segment; older or none gets System V (§2.1)."""
        match = re.match(r"\s*(\d+)\.(\d+)", self.api_version)
        return match is not None and int(match.group(1)) >= 6


@dataclass(frozen=True)
class InputRef:
    """A workunit input: ``<file_ref>`` of the input template."""

    number: int
    open_name: str
    copy_file: bool = False
    optional: bool = False


@dataclass(frozen=True)
class Workunit:
    inputs: tuple[InputRef, ...] = ()
    command_line: str = ""
    rsc_fpops_est: float = DEFAULT_FPOPS_EST
    rsc_fpops_bound: float = DEFAULT_FPOPS_BOUND
    rsc_memory_bound: float = DEFAULT_MEMORY_BOUND
    rsc_disk_bound: float = DEFAULT_DISK_BOUND


@dataclass(frozen=True)
class OutputRef:
    """A result output: ``<file_ref>`` of the output template (``<OUTFILE_n/>``)."""

    number: int
    open_name: str
    copy_file: bool = False
    optional: bool = False
    max_nbytes: float = DEFAULT_MAX_NBYTES

    def physical_name(self, result_name: str) -> str:
        """The server names output n ``<result>_<n>``."""
        return f"{result_name}_{self.number}"


@dataclass(frozen=True)
class AppDir:
    path: Path
    version: AppVersion
    workunit: Workunit
    outputs: tuple[OutputRef, ...]

    @property
    def name(self) -> str:
        return self.path.resolve().name

    def default_input(self, ref: InputRef) -> Path:
        return self.path / INPUTS_DIR / Path(ref.open_name).name


def _flag(elem: Element, name: str) -> bool:
    child = elem.find(name)
    if child is None:
        return False
    text = (child.text or "").strip()
    return text in ("", "1", "true")


def _text(elem: Element, name: str, default: str = "") -> str:
    child = elem.find(name)
    return default if child is None or child.text is None else child.text.strip()


def _float(elem: Element, name: str, default: float, where: str) -> float:
    text = _text(elem, name)
    if not text:
        return default
    try:
        return float(text)
    except ValueError as exc:
        raise HarnessError(f"{where}: <{name}> is not a number: {text!r}") from exc


def _parse(text: str | bytes, where: str, root_tag: str) -> Element:
    try:
        root: Element = SafeET.fromstring(text)
    except Exception as exc:  # ParseError, defusedxml's refusals
        raise HarnessError(f"{where}: not well-formed XML: {exc}") from exc
    if root.tag != root_tag:
        raise HarnessError(f"{where}: root element is <{root.tag}>, expected <{root_tag}>")
    return root


def parse_version_xml(text: str | bytes, where: str = VERSION_FILE) -> AppVersion:
    root = _parse(text, where, "version")
    files = []
    for elem in root.findall("file"):
        physical = _text(elem, "physical_name")
        if not physical or "/" in physical:
            raise HarnessError(f"{where}: a <file> needs a <physical_name> without '/'")
        files.append(
            VersionFile(
                physical_name=physical,
                logical_name=_text(elem, "logical_name") or None,
                main_program=_flag(elem, "main_program"),
                copy_file=_flag(elem, "copy_file"),
                executable=_flag(elem, "executable"),
                gzip=_flag(elem, "gzip"),
                sticky=_flag(elem, "sticky"),
            )
        )
    mains = [f for f in files if f.main_program]
    if len(mains) != 1:
        raise HarnessError(
            f"{where}: exactly one <file> must have <main_program/>, found {len(mains)}"
        )
    version_num = _text(root, "version_num")
    return AppVersion(
        files=tuple(files),
        api_version=_text(root, "api_version"),
        is_wrapper=_flag(root, "is_wrapper"),
        dont_throttle=_flag(root, "dont_throttle"),
        cmdline=_text(root, "cmdline"),
        version_num=int(version_num) if version_num.isdigit() else 100,
        avg_ncpus=_float(root, "avg_ncpus", 1.0, where),
    )


def parse_input_template(text: str | bytes, where: str = INPUT_TEMPLATE) -> Workunit:
    root = _parse(text, where, "input_template")
    numbers = {int(_text(fi, "number", "0")) for fi in root.findall("file_info")}
    wu = root.find("workunit")
    if wu is None:
        return Workunit()
    inputs = []
    for ref in wu.findall("file_ref"):
        number = int(_text(ref, "file_number", "-1"))
        if number not in numbers:
            raise HarnessError(f"{where}: <file_ref> names file_number {number}: no such file_info")
        open_name = _text(ref, "open_name")
        if not open_name:
            raise HarnessError(f"{where}: <file_ref> for file {number} has no <open_name>")
        inputs.append(InputRef(number, open_name, _flag(ref, "copy_file"), _flag(ref, "optional")))
    return Workunit(
        inputs=tuple(inputs),
        command_line=_text(wu, "command_line"),
        rsc_fpops_est=_float(wu, "rsc_fpops_est", DEFAULT_FPOPS_EST, where),
        rsc_fpops_bound=_float(wu, "rsc_fpops_bound", DEFAULT_FPOPS_BOUND, where),
        rsc_memory_bound=_float(wu, "rsc_memory_bound", DEFAULT_MEMORY_BOUND, where),
        rsc_disk_bound=_float(wu, "rsc_disk_bound", DEFAULT_DISK_BOUND, where),
    )


_OUTFILE = re.compile(r"<OUTFILE_(\d+)/>")


def parse_output_template(text: str | bytes, where: str = OUTPUT_TEMPLATE) -> tuple[OutputRef, ...]:
    raw = text.decode("utf-8") if isinstance(text, bytes) else text
    # <OUTFILE_0/> placeholders are elements; make them text to read them back
    root = _parse(_OUTFILE.sub(r"OUTFILE_\1", raw), where, "output_template")
    max_nbytes: dict[str, float] = {}
    for fi in root.findall("file_info"):
        max_nbytes[_text(fi, "name")] = _float(fi, "max_nbytes", DEFAULT_MAX_NBYTES, where)
    result = root.find("result")
    outputs = []
    for ref in [] if result is None else result.findall("file_ref"):
        name = _text(ref, "file_name")
        match = re.fullmatch(r"OUTFILE_(\d+)", name)
        if match is None:
            raise HarnessError(f"{where}: <file_name> must be <OUTFILE_n/>, got {name!r}")
        open_name = _text(ref, "open_name")
        if not open_name:
            raise HarnessError(f"{where}: <file_ref> for {name} has no <open_name>")
        outputs.append(
            OutputRef(
                number=int(match.group(1)),
                open_name=open_name,
                copy_file=_flag(ref, "copy_file"),
                optional=_flag(ref, "optional"),
                max_nbytes=max_nbytes.get(name, DEFAULT_MAX_NBYTES),
            )
        )
    return tuple(outputs)


def load_app_dir(path: Path) -> AppDir:
    """Read an APP_DIR; says which file is missing or wrong."""
    path = Path(path)
    version_path = path / VERSION_FILE
    if not version_path.is_file():
        raise HarnessError(f"{path} is not an app directory: {VERSION_FILE} is missing")
    version = parse_version_xml(version_path.read_bytes(), str(version_path))
    for f in version.files:
        if not (path / f.physical_name).is_file():
            raise HarnessError(f"{version_path} lists {f.physical_name}, but {path} lacks it")
    wu_path = path / INPUT_TEMPLATE
    workunit = (
        parse_input_template(wu_path.read_bytes(), str(wu_path))
        if wu_path.is_file()
        else Workunit()
    )
    out_path = path / OUTPUT_TEMPLATE
    outputs = (
        parse_output_template(out_path.read_bytes(), str(out_path)) if out_path.is_file() else ()
    )
    return AppDir(path=path, version=version, workunit=workunit, outputs=outputs)
