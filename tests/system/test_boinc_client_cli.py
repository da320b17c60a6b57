"""`python -m vmwrapper.boincclient APP_DIR` (scripts/boinc-client-run.sh), real client."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.boinc_client_fixtures import require_boinc_client, write_probe_app_dir
from vmwrapper.boincclient.run import EXIT_JOB_FAILED, EXIT_SUCCESS, main

pytestmark = pytest.mark.system

FAILING_VERSION_XML = """<version>
    <file><physical_name>fail_1.sh</physical_name><main_program/></file>
    <api_version>7.20.5</api_version>
</version>
"""


def test_runs_a_job_and_reports_success_and_the_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_boinc_client()
    app_dir = write_probe_app_dir(tmp_path / "app")
    (tmp_path / "mine").write_text("admin input\n")
    code = main(
        [
            str(app_dir),
            "--dir",
            str(tmp_path / "data"),
            "--app-name",
            "probe",
            "--job",
            "check1",
            "--command-line",
            "--steps 3 --hold-at 99",
            "--input",
            f"shared/in={tmp_path / 'mine'}",
            "--timeout",
            "120",
        ]
    )
    out = capsys.readouterr().out
    assert code == EXIT_SUCCESS, out
    assert "check1_0: success (state uploaded, exit status 0" in out
    produced = next((tmp_path / "data" / "projects").glob("*/check1_0_0"))
    assert produced.read_text() == "probe output: admin input steps=3\n"
    assert f"output shared/out: {produced} (" in out


def test_a_failing_main_program_is_reported_as_a_failed_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_boinc_client()
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "version.xml").write_text(FAILING_VERSION_XML)
    (app_dir / "fail_1.sh").write_text("#!/bin/sh\necho 'bad things' >&2\nexit 7\n")
    code = main([str(app_dir), "--dir", str(tmp_path / "data"), "--timeout", "120"])
    out = capsys.readouterr().out
    assert code == EXIT_JOB_FAILED, out
    assert "job1_0: FAILED (state compute_error, exit status 7" in out
    assert "bad things" in out  # the app's stderr, as the client recorded it
