"""An APP_DIR as the harness reads it (docs/compatibility.md#app-version-directory): app version,
templates, default inputs.

The files are parsed by the packaging models (:mod:`vmwrapper.packaging.version`,
:mod:`vmwrapper.packaging.templates`), the same ones ``vmwrapper package``, ``lint`` and the
boinc-client runner use. What is the harness's own: reading the directory, the checks a job
needs before it can be staged (one main program, flat physical names, every file present, open
names), and the client's defaults for what the templates leave unset.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from vmwrapper.errors import HarnessError, InputError
from vmwrapper.packaging.templates import (
    CLIENT_DEFAULT_BOUNDS,
    NO_INPUT_TEMPLATE,
    InputFile,
    InputTemplate,
    OutputFile,
    parse_input_template,
    parse_output_template,
)
from vmwrapper.packaging.version import AppVersion, parse_version_xml

VERSION_FILE = "version.xml"
INPUT_TEMPLATE = "templates/input_template.xml"
OUTPUT_TEMPLATE = "templates/output_template.xml"
INPUTS_DIR = "inputs"

#: An output without ``<max_nbytes>`` may not exist in BOINC (0 = error); we allow this much.
DEFAULT_MAX_NBYTES = 1e9


@dataclass(frozen=True)
class AppDir:
    """A checked APP_DIR; unset bounds and output limits already hold the client's defaults."""

    path: Path
    version: AppVersion
    workunit: InputTemplate
    outputs: tuple[OutputFile, ...]

    @property
    def name(self) -> str:
        return self.path.resolve().name

    def default_input(self, ref: InputFile) -> Path:
        return self.path / INPUTS_DIR / Path(ref.open_name).name


def _check_version(version: AppVersion, where: Path) -> None:
    try:
        version.main_program  # noqa: B018 - raises unless there is exactly one
    except InputError as exc:
        raise HarnessError(f"{where}: {exc}") from exc
    for f in version.files:
        if not f.physical_name or "/" in f.physical_name:
            raise HarnessError(
                f"{where}: a <file> needs a <physical_name> without '/', got {f.physical_name!r}"
            )


def _check_open_names(names: list[str], where: Path) -> None:
    if any(not name for name in names):
        raise HarnessError(f"{where}: a <file_ref> has no <open_name> (fix: add one)")


def load_app_dir(path: Path) -> AppDir:
    """Read an APP_DIR; says which file is missing or wrong."""
    path = Path(path)
    version_path = path / VERSION_FILE
    if not version_path.is_file():
        raise HarnessError(f"{path} is not an app directory: {VERSION_FILE} is missing")
    wu_path, out_path = path / INPUT_TEMPLATE, path / OUTPUT_TEMPLATE
    try:
        version = parse_version_xml(version_path.read_bytes(), str(version_path))
        workunit = (
            parse_input_template(wu_path.read_bytes(), str(wu_path))
            if wu_path.is_file()
            else NO_INPUT_TEMPLATE
        )
        outputs = (
            parse_output_template(out_path.read_bytes(), str(out_path)).files
            if out_path.is_file()
            else ()
        )
    except InputError as exc:  # the parsers name the file; the harness's callers expect this
        raise HarnessError(str(exc)) from exc
    _check_version(version, version_path)
    for f in version.files:
        if not (path / f.physical_name).is_file():
            raise HarnessError(f"{version_path} lists {f.physical_name}, but {path} lacks it")
    _check_open_names([f.open_name for f in workunit.files], wu_path)
    _check_open_names([f.open_name for f in outputs], out_path)
    return AppDir(
        path=path,
        version=version,
        workunit=replace(workunit, bounds=workunit.bounds.or_defaults(CLIENT_DEFAULT_BOUNDS)),
        outputs=tuple(f.or_default_limit(DEFAULT_MAX_NBYTES) for f in outputs),
    )
