"""`vmwrapper job`: summary, --json and the exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.harness_fixtures import make_pyapp_dir, make_shell_app_dir
from vmwrapper.cli.main import main


def test_json_summary_of_a_successful_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = make_pyapp_dir(tmp_path, "--steps 4 --trickles 1 --upload out")
    dest = tmp_path / "got" / "out.txt"
    code = main(
        ["job", str(app), "--workdir", str(tmp_path / "w"), "--output", f"out={dest}", "--json"]
    )
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert summary["outcome"] == "success" and summary["finish_status"] == 0
    assert summary["outputs"] == [
        {
            "logical_name": "out",
            "physical_name": "pyapp_wu_0_0",
            "destination": str(dest),
            "size": len("done 4 steps\n"),
        }
    ]
    assert [t["variety"] for t in summary["trickles"]] == ["pyapp"]
    assert [(u["logical_name"], u["status"]) for u in summary["uploads"]] == [
        ("out", 1)
    ]  # FILE_PRESENT, as the real client
    assert summary["fraction_done"] == pytest.approx(1.0)
    assert summary["workdir"] == str(tmp_path / "w")


def test_human_summary_and_abort_exit_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = make_pyapp_dir(tmp_path, "--steps 500 --step-time 0.02")
    code = main(["job", str(app), "--workdir", str(tmp_path / "w"), "--abort-at", "0.5"])
    out = capsys.readouterr().out
    assert code == 203
    assert "aborted" in out and "episodes" in out


def test_exit_status_of_a_failed_job_is_its_exit_code(tmp_path: Path) -> None:
    app = make_shell_app_dir(tmp_path, "exit 7\n")
    assert main(["job", str(app), "--workdir", str(tmp_path / "w"), "--json"]) == 7


def test_job_stopped_in_a_temporary_exit_is_75(tmp_path: Path) -> None:
    script = "printf '3600\\nno VM here\\n' > boinc_temporary_exit\nexit 0\n"
    app = make_shell_app_dir(tmp_path, script)
    code = main(["job", str(app), "--workdir", str(tmp_path / "w"), "--max-episodes", "1"])
    assert code == 75


def test_unusable_app_dir_is_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["job", str(tmp_path), "--json"]) == 2
    assert "version.xml is missing" in capsys.readouterr().err


def test_bad_input_argument_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["job", str(tmp_path), "--input", "no-equals-sign"])


def test_the_command_runs_as_a_program(tmp_path: Path) -> None:
    app = make_pyapp_dir(tmp_path, "--steps 3")
    env = {k: v for k, v in os.environ.items() if k != "VMWRAPPER_PYTHON"}
    done = subprocess.run(
        [sys.executable, "-m", "vmwrapper", "job", str(app), "--workdir", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "success" in done.stdout and "finished (boinc_finish(0))" in done.stdout


def test_app_text_in_the_summary_is_not_rich_markup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = "printf '0\\n[bold]boom[/bold]\\n\\n' > boinc_finish_called\nexit 0\n"
    app = make_shell_app_dir(tmp_path, script)
    assert main(["job", str(app), "--workdir", str(tmp_path / "w")]) == 0
    assert "[bold]boom[/bold]" in capsys.readouterr().out
