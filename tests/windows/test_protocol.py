"""vmwrapper.exe under Wine, driven as BOINC's Windows client drives an app
(docs/windows.md#how-it-is-tested): a named file mapping ``shm_boinc_N`` and ``<comm_obj_name>``
in init_data.xml, ``CreateProcess`` with the client's command line and flags, heartbeats,
control messages, statuses, trickle notices, ``TerminateProcess``. The client is
tests/windows/winclient.py running as Windows Python; the guest is the fake back end, so each
test is one short run (a Wine start, the one-file exe's unpacking, a few guest seconds).

What Wine cannot prove is listed in docs/windows.md#what-wine-cannot-prove (CPU times of other
processes, psutil's process names, sessions and the Global namespace, real VirtualBox).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.wine_fixtures import Toolchain, make_slot, run_client
from vmwrapper.boinc import files
from vmwrapper.boinc.init_data import parse_init_data
from vmwrapper.hypervisor.fake import FakeScript, GuestStep
from vmwrapper.outcome import EXIT_ABORTED_BY_CLIENT
from vmwrapper.supervisor.events import read_events

#: A guest that works far longer than any test waits: the client's action ends the run.
LONG = FakeScript(steps=(GuestStep(0.5, "write", "progress", "0.25\n"),))


def events(slot: Path) -> list[str]:
    return [e["event"] for e in read_events(slot)]


def test_status_trickle_and_finish(
    wine_toolchain: Toolchain, windows_exe: Path, tmp_path: Path
) -> None:
    script = FakeScript(
        steps=(
            GuestStep(0.5, "write", "progress", "0.5\n"),
            GuestStep(1.0, "write", "trickle_a", "<progress>half</progress>"),
            GuestStep(3.0, "write", "done", "0\n1\nAll done.\n"),
        )
    )
    slot = make_slot(tmp_path, script)
    report = run_client(wine_toolchain, windows_exe, slot)
    assert report["exit_code"] == 0, report["client_output"]
    # the app found the client's mapping through init_data.xml
    assert report["mapping"] == "shm_boinc_" + report["comm_obj_name"].removeprefix("boinc_")
    assert (
        parse_init_data((slot / "init_data.xml").read_bytes()).comm_obj_name
        == (report["comm_obj_name"])
    )
    assert any(s["fraction"] == 0.5 for s in report["statuses"]), report["statuses"]
    assert report["trickle_files"] == ["<variety>trickle_a</variety>\n<progress>half</progress>"]
    finish = files.read_finish_file(slot)
    # written in text mode, as the API's fopen("w") writes it: CRLF on Windows
    assert b"\r\n" in (slot / files.FINISH_FILE).read_bytes()
    assert finish is not None and finish.status == 0 and finish.message.strip() == "All done."
    stderr = (slot / "stderr.txt").read_text()  # the app opened it itself, as on Windows
    assert "VM Completion File Detected." in stderr
    assert not (slot / files.LOCK_FILE).exists()  # released and deleted at exit


def test_suspend_then_resume_pauses_the_guest(
    wine_toolchain: Toolchain, windows_exe: Path, tmp_path: Path
) -> None:
    script = FakeScript(steps=(GuestStep(3.0, "write", "done", "0\n"),))
    slot = make_slot(tmp_path, script)
    report = run_client(
        wine_toolchain,
        windows_exe,
        slot,
        actions=[
            {"when": {"after": 1.5}, "do": "suspend"},
            {"when": {"suspended_for": 3}, "do": "resume"},
        ],
    )
    assert report["exit_code"] == 0, report["client_output"]
    assert [c["do"] for c in report["controls_sent"]] == ["suspend", "resume"]
    seen = events(slot)
    assert seen.index("suspend") < seen.index("resume") < seen.index("completion_trigger")
    assert files.read_finish_file(slot) is not None


@pytest.mark.parametrize(
    ("control", "exit_code", "finish_status"),
    [
        # quit: exit 0 and no finish file (nor a temporary-exit file): the client restarts it
        ("quit", 0, None),
        ("abort", EXIT_ABORTED_BY_CLIENT, EXIT_ABORTED_BY_CLIENT),
    ],
)
def test_quit_and_abort(
    wine_toolchain: Toolchain,
    windows_exe: Path,
    tmp_path: Path,
    control: str,
    exit_code: int,
    finish_status: int | None,
) -> None:
    slot = make_slot(tmp_path, LONG)
    report = run_client(
        wine_toolchain, windows_exe, slot, actions=[{"when": {"fraction": 0.25}, "do": control}]
    )
    assert report["exit_code"] == exit_code, report["client_output"]
    assert control in events(slot)
    finish = files.read_finish_file(slot)
    assert (finish and finish.status) == finish_status
    assert not (slot / files.TEMPORARY_EXIT_FILE).exists()


def test_temporary_exit_trigger(
    wine_toolchain: Toolchain, windows_exe: Path, tmp_path: Path
) -> None:
    script = FakeScript(steps=(GuestStep(1.0, "write", "later", "120\nwaiting for input\n"),))
    slot = make_slot(tmp_path, script)
    report = run_client(wine_toolchain, windows_exe, slot)
    assert report["exit_code"] == 0, report["client_output"]
    assert (slot / files.TEMPORARY_EXIT_FILE).exists()
    assert not (slot / files.FINISH_FILE).exists()


def test_the_clients_kill_reaches_the_one_file_exes_python(
    wine_toolchain: Toolchain, windows_exe: Path, tmp_path: Path
) -> None:
    """The client kills the pid it started (the PyInstaller bootloader); the Python child
    running the wrapper must end with it (scripts/pyinstaller/rth_parent_death_windows.py)."""
    slot = make_slot(tmp_path, LONG)
    report = run_client(
        wine_toolchain, windows_exe, slot, actions=[{"when": {"fraction": 0.25}, "do": "kill"}]
    )
    assert report["killed"] and report["exit_code"] == EXIT_ABORTED_BY_CLIENT
    assert report["wrapper_pid"] not in (None, report["pid"])  # one-file: two processes
    assert report["wrapper_alive_after"] is False
