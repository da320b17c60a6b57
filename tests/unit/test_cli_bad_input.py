"""Bad input never produces a traceback: ``spec``, ``lint``, ``package`` and ``run`` each get
garbage where a job file, an app version or init_data.xml belongs, and answer with a message
naming the file, and an exit code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmwrapper.cli.main import main

DATA = Path(__file__).parent.parent / "data"
GARBAGE = {
    "binary": bytes(range(256)) * 4,
    "empty": b"",
    "bom": b"\xef\xbb\xbf<vbox_job><enable_network/></vbox_job>",
    "unclosed": b"<vbox_job><os_name>Linux26_64</os_name><port_forward><host_port>",
    "nul": b"<vbox_job>\0</vbox_job>",
    "huge-text": b"<vbox_job>" + b"x" * 300_000 + b"</vbox_job>",
    "unsafe": b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "b">]><vbox_job>&a;</vbox_job>',
    "escape": b"<vbox_job><enable_shared_directory/>"
    b"<completion_trigger_file>../../../etc/passwd</completion_trigger_file></vbox_job>",
}


def _no_traceback(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text
    return text


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_spec_on_garbage(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = tmp_path / "vbox_job.xml"
    job.write_bytes(GARBAGE[kind])
    assert main(["spec", str(job)]) == 1  # each would make vboxwrapper fail, or is unsafe
    assert main(["spec", "--json", str(job)]) == 1
    assert str(job) in _no_traceback(capsys)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_spec_on_random_bytes(data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "vbox_job.xml"
        job.write_bytes(b"<vbox_job>" + data)
        assert main(["spec", str(job)]) in (0, 1)


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_lint_on_garbage(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "version.xml").write_bytes(
        b"<version><file><physical_name>job_1.xml</physical_name>"
        b"<logical_name>vbox_job.xml</logical_name></file><dont_throttle/></version>"
    )
    (app / "job_1.xml").write_bytes(GARBAGE[kind])
    assert main(["lint", str(app)]) == 1  # VMW007: vbox_job.xml has errors
    (app / "version.xml").write_bytes(GARBAGE[kind])
    templates = app / "templates"
    templates.mkdir()
    (templates / "input_template.xml").write_bytes(GARBAGE[kind])
    assert main(["lint", str(app)]) == 1  # VMW001: version.xml unreadable
    _no_traceback(capsys)


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_package_on_garbage(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = tmp_path / "job.xml"
    job.write_bytes(GARBAGE[kind])
    out = tmp_path / "out"
    code = main(["package", "--app", "x", "--job", str(job), "--out", str(out)])
    assert code == 2 and str(job) in _no_traceback(capsys)
    assert not out.exists()


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_run_on_garbage(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "vbox_job.xml").write_bytes(GARBAGE[kind])
    shutil.copy(DATA / "init_data_real_client.xml", tmp_path / "init_data.xml")
    monkeypatch.chdir(tmp_path)
    assert main(["--dry-run"]) != 0
    assert "vbox_job.xml" in _no_traceback(capsys)
    (tmp_path / "vbox_job.xml").write_bytes(b"<vbox_job></vbox_job>")
    (tmp_path / "init_data.xml").write_bytes(GARBAGE[kind])
    assert main(["--dry-run"]) != 0 or kind == "empty"  # the client's file; empty = defaults
    _no_traceback(capsys)


def test_the_installed_command_prints_no_traceback(tmp_path: Path) -> None:
    """The same through the console entry point, as an admin types it."""
    job = tmp_path / "vbox_job.xml"
    job.write_bytes(GARBAGE["binary"])
    for argv in (["spec", str(job)], ["lint", str(tmp_path)]):
        done = subprocess.run(
            [sys.executable, "-m", "vmwrapper", *argv], capture_output=True, text=True, timeout=60
        )
        assert done.returncode in (1, 2) and "Traceback" not in done.stderr + done.stdout


def test_bytes_that_are_not_utf8_print_escaped_on_any_terminal(tmp_path: Path) -> None:
    job = tmp_path / "vbox_job.xml"
    job.write_bytes(b"<vbox_job><os_name>\xff\xfe\xe9</os_name></vbox_job>")
    for encoding in ("ascii", "utf-8"):
        done = subprocess.run(
            [sys.executable, "-m", "vmwrapper", "spec", str(job)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONIOENCODING": encoding},
        )
        assert done.returncode == 0 and "Traceback" not in done.stderr
        assert "os_name" in done.stdout and "\\udcff" in done.stdout
