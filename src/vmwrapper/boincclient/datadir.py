"""Write a BOINC data directory that runs jobs of an APP_DIR under the real client (I/O).

Reads the APP_DIR (docs/compatibility.md#app-version-directory: ``version.xml``, the files, optional
templates and default inputs), copies the files into ``projects/<dir>/`` under their physical names,
and writes the hand-made ``client_state.xml`` plus the account, config, preference and password
files (:mod:`vmwrapper.boincclient.state`). Run it before the client's first start: a running client
owns ``client_state.xml``.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmwrapper.boincclient.plan import (
    DEFAULT_NAMING,
    JobRequest,
    Naming,
    Plan,
    PlannedJob,
    bake_interpreter,
    plan_client_state,
)
from vmwrapper.boincclient.state import (
    HandMadeStateError,
    ResultRecord,
    account_file_name,
    format_account,
    format_cc_config,
    format_client_state,
    format_global_prefs_override,
    parse_results,
    project_dir_name,
)
from vmwrapper.errors import InputError
from vmwrapper.packaging.templates import (
    InputTemplate,
    OutputTemplate,
    parse_input_template,
    parse_output_template,
)
from vmwrapper.packaging.version import parse_version_xml

CLIENT_STATE_FILE = "client_state.xml"
PASSWORD_FILE = "gui_rpc_auth.cfg"
PREFS_FILE = "global_prefs_override.xml"
#: The client writes its log here when started with --redirectio; we capture stdout instead.
CLIENT_LOG_FILE = "client.log"


@dataclass(frozen=True)
class DataDir:
    """A data directory made by :func:`write_data_dir`: where things are."""

    path: Path
    master_url: str
    password: str
    jobs: tuple[PlannedJob, ...]

    @property
    def project_dir(self) -> Path:
        return self.path / "projects" / project_dir_name(self.master_url)

    def job(self, name: str) -> PlannedJob:
        """A job by workunit or result name."""
        for job in self.jobs:
            if name in (job.wu_name, job.result_name):
                return job
        raise KeyError(name)

    def output_path(self, job_name: str, open_name: str) -> Path:
        """Where the client leaves the job's output ``open_name`` in the project directory."""
        return self.project_dir / self.job(job_name).outputs[open_name]

    def results(self) -> dict[str, ResultRecord]:
        """The results as the client last saved them in ``client_state.xml``."""
        return parse_results((self.path / CLIENT_STATE_FILE).read_bytes())

    @property
    def client_log(self) -> Path:
        return self.path / CLIENT_LOG_FILE

    def write_preferences(self, checkpoint_period: float) -> None:
        """Rewrite global_prefs_override.xml; a running client reads it on
        :meth:`~vmwrapper.boincclient.client.BoincClient.read_preferences`."""
        (self.path / PREFS_FILE).write_text(
            format_global_prefs_override(checkpoint_period), encoding="utf-8"
        )


def _read_optional(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _templates(app_dir: Path) -> tuple[InputTemplate | None, OutputTemplate | None]:
    inputs = outputs = None
    if (text := _read_optional(app_dir / "templates" / "input_template.xml")) is not None:
        inputs = parse_input_template(text, str(app_dir / "templates" / "input_template.xml"))
    if (text := _read_optional(app_dir / "templates" / "output_template.xml")) is not None:
        outputs = parse_output_template(text, str(app_dir / "templates" / "output_template.xml"))
    return inputs, outputs


def plan_app_dir(
    app_dir: Path, jobs: Sequence[JobRequest], *, naming: Naming = DEFAULT_NAMING, now: float
) -> Plan:
    """Read the APP_DIR's version.xml and templates and plan the client state."""
    version_path = app_dir / "version.xml"
    try:
        version = parse_version_xml(version_path.read_bytes(), str(version_path))
    except FileNotFoundError as exc:
        raise InputError(
            f"{version_path}: missing (fix: give an APP_DIR made by `vmwrapper package`)"
        ) from exc
    inputs, outputs = _templates(app_dir)
    return plan_client_state(version, jobs, inputs=inputs, outputs=outputs, naming=naming, now=now)


def _place(source: Path, target: Path, *, executable: bool, python: str | None) -> None:
    if not source.is_file():
        raise HandMadeStateError(f"{source}: missing (fix: the APP_DIR must hold every file)")
    if python is not None and executable:
        target.write_bytes(bake_interpreter(source.read_bytes(), python))
    else:
        shutil.copyfile(source, target)
    mode = 0o755 if executable else 0o644
    os.chmod(target, mode | stat.S_IRUSR)


def write_data_dir(
    data_dir: Path,
    app_dir: Path,
    jobs: Sequence[JobRequest],
    *,
    password: str,
    naming: Naming = DEFAULT_NAMING,
    python: str | None = None,
    checkpoint_period: float = 60.0,
    clock: Callable[[], float] = time.time,
) -> DataDir:
    """Make ``data_dir`` (empty or missing) ready for ``boinc --dir data_dir``.

    ``python``: bake this interpreter into launcher scripts (the main program of a
    development APP_DIR), since the client passes no ``VMWRAPPER_PYTHON``.
    """
    data_dir = Path(data_dir).absolute()
    app_dir = Path(app_dir).absolute()
    if data_dir.exists() and any(data_dir.iterdir()):
        raise HandMadeStateError(f"{data_dir}: not empty (fix: give a new or empty directory)")
    plan = plan_app_dir(app_dir, jobs, naming=naming, now=clock())
    project_dir = data_dir / "projects" / project_dir_name(naming.master_url)
    project_dir.mkdir(parents=True)
    for copy in plan.copies:
        _place(
            app_dir / copy.source,  # an absolute source stays absolute
            project_dir / copy.name,
            executable=copy.executable,
            python=python if copy.main_program else None,
        )
    project = plan.state.project
    files = {
        CLIENT_STATE_FILE: format_client_state(plan.state),
        account_file_name(project.master_url): format_account(project),
        "cc_config.xml": format_cc_config(),
        PREFS_FILE: format_global_prefs_override(checkpoint_period),
    }
    for name, text in files.items():
        (data_dir / name).write_text(text, encoding="utf-8")
    pw = data_dir / PASSWORD_FILE
    pw.write_text(password + "\n", encoding="utf-8")
    pw.chmod(0o600)
    return DataDir(data_dir, naming.master_url, password, plan.jobs)
