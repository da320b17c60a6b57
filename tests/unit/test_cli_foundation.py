"""`vmwrapper spec` and `vmwrapper run --dry-run` as a user runs them (in-process CLI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vmwrapper.cli.main import main
from vmwrapper.outcome import EXIT_INIT_FAILURE

DATA = Path(__file__).parent.parent / "data"


def test_spec_prints_every_element(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["spec", str(DATA / "spec" / "every_element.xml")]) == 0
    out = capsys.readouterr().out
    assert "memory_size_mb                 2048" in out
    assert "port_forward                   host_port=8022 guest_port=22" in out


def test_spec_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["spec", "--json", str(DATA / "spec" / "every_element.xml")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["job_duration"] == 86400.5 and data["copy_to_shared"][1] == "params.json"


def test_spec_bad_file_lists_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "vbox_job.xml"
    bad.write_text(
        "<vbox_job><memory_size_mb>x</memory_size_mb><share_slot_dir/>"
        "<copy_to_shared>a</copy_to_shared></vbox_job>"
    )
    assert main(["spec", str(bad)]) == 1
    err = capsys.readouterr().err
    # 'x' is no number to BOINC either: the default stays (a warning, not a problem)
    assert "2 problem(s)" in err and "<copy_to_shared>" in err and "<share_slot_dir>" in err


def test_spec_unreadable_file(tmp_path: Path) -> None:
    assert main(["spec", str(tmp_path / "missing.xml")]) == 2


@pytest.fixture
def slot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "vbox_job.xml").write_text(
        "<vbox_job><memory_size_mb>1024</memory_size_mb></vbox_job>"
    )
    (tmp_path / "init_data.xml").write_text((DATA / "init_data_real_client.xml").read_text())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_run_dry_run_prints_configuration(slot: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--nthreads", "2", "--dry-run"]) == 0  # bare vboxwrapper-style command line
    out = capsys.readouterr().out
    assert "VM name:         boinc_" in out and "CPUs:            2" in out
    assert "memory:          1024 MB" in out and "disk image:      vm_image.vdi" in out


def test_run_unknown_option_is_exit_206(slot: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--frobnicate"]) == EXIT_INIT_FAILURE
    assert "Unrecognized option" in capsys.readouterr().err


def test_a_subcommand_imports_only_its_own_module() -> None:
    """`vmwrapper spec` must not pay for the harness, image tools and rich at start-up."""
    code = (
        "import sys\n"
        "from vmwrapper.cli.main import main\n"
        "try:\n"
        "    main(['spec', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('vmwrapper.harness.job', 'vmwrapper.images.builder', 'rich')\n"
        "         if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "usage: vmwrapper spec" in out
    assert "HEAVY []" in out
