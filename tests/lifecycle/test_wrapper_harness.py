"""The real `vmwrapper` process (launcher → `python -m vmwrapper --backend fake`) under the real
harness (`vmwrapper.harness`): command line, vbox_job.xml, init_data, the shared segment,
finish / temporary-exit files, restarts and the one exit point, all as a BOINC client sees them.
The guest is the FakeBackend, scripted per test; time is real, so these few tests take seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers.supervisor_fixtures import make_vm_app_dir
from vmwrapper.context import floppy
from vmwrapper.harness.job import (
    Action,
    JobOutcome,
    JobRequest,
    Progress,
    ScheduledAction,
    run_job,
)
from vmwrapper.hypervisor.fake import STATE_FILE, FakeScript, GuestStep
from vmwrapper.runconfig import CONSOLE_FILE, parse_console_password
from vmwrapper.supervisor.events import read_events

JOB = """<vbox_job>
  <os_name>Linux26_64</os_name>
  <memory_size_mb>256</memory_size_mb>
  <enable_shared_directory/>
  <completion_trigger_file>done</completion_trigger_file>
  <temporary_exit_trigger_file>later</temporary_exit_trigger_file>
  <trickle_trigger_file>trickle_a</trickle_trigger_file>
  <fraction_done_filename>progress</fraction_done_filename>
  <minimum_checkpoint_interval>2</minimum_checkpoint_interval>
  {extra}
</vbox_job>
"""


def request(app: Path, work: Path, **kw: object) -> JobRequest:
    return JobRequest(
        app_dir=app,
        workdir=work,
        keep_slot=True,
        checkpoint_period=1.0,
        max_restart_delay=0.5,
        max_episodes=5,
        **kw,  # type: ignore[arg-type]
    )


def test_completion_trigger_trickle_and_output_through_the_client(tmp_path: Path) -> None:
    script = FakeScript(
        steps=(
            GuestStep(0.5, "write", "progress", "0.5\n"),
            GuestStep(1.0, "write", "trickle_a", "<progress>half</progress>"),
            GuestStep(2.0, "write", "result", "42\n"),
            GuestStep(2.5, "write", "done", "0\n1\nAll done.\n"),
        )
    )
    app = make_vm_app_dir(tmp_path, JOB.format(extra="<enable_floppyio/>"), script)
    report = run_job(request(app, tmp_path / "work"))
    assert report.outcome is JobOutcome.SUCCESS, report.message + report.stderr_tail
    assert report.finish_message == "All done."
    assert [(t.variety, t.body) for t in report.trickles] == [
        ("trickle_a", "<progress>half</progress>")
    ]
    assert report.outputs and report.outputs[0].size == 3
    slot = Path(report.slot_dir)
    # stderr in vboxwrapper's format, events.jsonl beside it
    assert "VM Completion File Detected." in report.stderr_tail
    codes = [e["event"] for e in read_events(slot)]
    assert "completion_trigger" in codes and codes[-1] == "outcome"
    # floppy contextualization: init_data.xml for the guest, written before the VM existed
    image = (slot / "vm_floppy_0.img").read_bytes()
    payload = floppy.read_host_to_guest(image)
    assert payload is not None and payload.startswith(b"<app_init_data>")


def test_temporary_exit_then_restart_restores_the_checkpoint(tmp_path: Path) -> None:
    script = FakeScript(
        steps=(
            GuestStep(0.5, "write", "phase", "1\n"),
            GuestStep(4.0, "write", "later", "1\n0\n"),
            GuestStep(5.5, "append", "phase", "2\n"),
            GuestStep(6.0, "write", "result", "ok\n"),
            GuestStep(6.5, "write", "done", "0\n0\n"),
        )
    )
    app = make_vm_app_dir(tmp_path, JOB.format(extra=""), script)
    report = run_job(request(app, tmp_path / "work"))
    assert report.outcome is JobOutcome.SUCCESS, report.message + report.stderr_tail
    assert report.episodes == 2
    assert len(report.temporary_exits) == 1
    delay, reason = report.temporary_exits[0]
    assert delay == 1 and reason  # the client recognised it: a reason line was written
    slot = Path(report.slot_dir)
    calls = json.loads((slot / STATE_FILE).read_text())["calls"]
    starts = [c for c in calls if c.startswith("start:")]
    assert starts[0] == "start:" and starts[1].startswith("start:boinc_")  # restored
    assert (slot / "shared" / "phase").read_text() == "1\n2\n"  # phase 1 not redone


def test_suspend_resume_and_abort_from_the_client(tmp_path: Path) -> None:
    script = FakeScript(steps=(GuestStep(30.0, "write", "done", "0\n0\n"),))
    app = make_vm_app_dir(tmp_path, JOB.format(extra=""), script, with_output=False)
    schedule = (
        ScheduledAction(2.0, Action.SUSPEND),
        ScheduledAction(4.0, Action.RESUME),
        ScheduledAction(6.0, Action.ABORT),
    )
    report = run_job(request(app, tmp_path / "work", schedule=schedule))
    assert report.outcome is JobOutcome.ABORTED
    slot = Path(report.slot_dir)
    calls = json.loads((slot / STATE_FILE).read_text())["calls"]
    assert "pause" in calls and "resume" in calls and calls[-1] == "cleanup"


def test_bad_command_line_finishes_206(tmp_path: Path) -> None:
    app = make_vm_app_dir(tmp_path, JOB.format(extra=""), cmdline="--backend fake --bogus")
    report = run_job(request(app, tmp_path / "work"))
    assert report.outcome is JobOutcome.ERROR
    assert report.finish_status == 206 or report.exit_status == 206


def test_invalid_job_file_finishes_with_xml_parse_error(tmp_path: Path) -> None:
    app = make_vm_app_dir(tmp_path, "<vbox_job><os_name>x</os_name>", with_output=False)
    report = run_job(request(app, tmp_path / "work"))
    assert report.outcome is JobOutcome.ERROR
    assert report.finish_status == -112


def test_illegal_combination_finishes_206(tmp_path: Path) -> None:
    job = "<vbox_job><share_slot_dir/><enable_shared_directory/></vbox_job>"
    app = make_vm_app_dir(tmp_path, job, with_output=False)
    report = run_job(request(app, tmp_path / "work"))
    assert report.outcome is JobOutcome.ERROR
    assert report.finish_status == 206


def test_cern_floppy_and_job_duration_end(tmp_path: Path) -> None:
    job = """<vbox_job>
  <enable_floppyio/>
  <enable_cern_dataformat/>
  <job_duration>3</job_duration>
</vbox_job>
"""
    app = make_vm_app_dir(tmp_path, job, FakeScript(), with_output=False)
    report = run_job(request(app, tmp_path / "work"))
    assert report.outcome is JobOutcome.SUCCESS, report.message + report.stderr_tail
    slot = Path(report.slot_dir)
    assert (slot / "output").read_text() == "Work Unit completed!\n"
    payload = floppy.read_host_to_guest((slot / "vm_floppy_0.img").read_bytes())
    assert payload is not None
    keys = [line.split("=")[0] for line in payload.decode().splitlines()]
    assert keys == list(floppy.CERN_KEYS)


def test_network_bytes_reach_the_clients_transfer_accounting(tmp_path: Path) -> None:
    script = FakeScript(
        net_rate=(2000.0, 8000.0), steps=(GuestStep(3.0, "write", "done", "0\n0\n"),)
    )
    app = make_vm_app_dir(
        tmp_path, JOB.format(extra="<enable_network/>"), script, with_output=False
    )
    report = run_job(request(app, tmp_path / "work", daily_xfer_limit_mb=50.0))
    assert report.outcome is JobOutcome.SUCCESS, report.message + report.stderr_tail
    # the last status message (read after the exit) has the guest's 3 s of traffic
    assert 3.0 * 2000 <= report.bytes_sent <= 5.0 * 2000
    assert abs(report.bytes_received - 4 * report.bytes_sent) <= 4  # whole bytes each way
    unlimited = run_job(request(app, tmp_path / "work2"))
    assert unlimited.outcome is JobOutcome.SUCCESS
    assert unlimited.bytes_sent == unlimited.bytes_received == 0


def test_abort_puts_the_screenshot_and_logs_into_stderr(tmp_path: Path) -> None:
    app = make_vm_app_dir(
        tmp_path,
        JOB.format(extra="<enable_screenshots_on_error/>"),
        FakeScript(),
        with_output=False,
    )
    # the abort comes once the VM runs (its first checkpoint), not at a fixed time: a wrapper
    # still starting up on a busy host has no VM to report on yet
    abort = ScheduledAction(0.0, Action.ABORT, after_checkpoint=1)
    report = run_job(request(app, tmp_path / "work", schedule=(abort,)))
    assert report.outcome is JobOutcome.ABORTED
    assert "Screen Shot Information (Base64 Encoded PNG):" in report.stderr_tail
    assert "Fake Hypervisor Log:" in report.stderr_tail


def test_a_chatty_guest_is_capped_in_stderr_and_events(tmp_path: Path) -> None:
    # ~1 MB of console output against a 64 KiB limit (--guest_log_limit, from the app
    # version's command line): both files keep the first and the last lines and a note, and
    # the wrapper's last lines stay at the end of stderr.txt, in the tail the client reports.
    chatter = tuple(
        GuestStep(0.5, "log", "", f"chatter {i:05d} " + "x" * 80) for i in range(10_000)
    )
    script = FakeScript(steps=(*chatter, GuestStep(1.0, "poweroff")))
    job = JOB.format(extra="")
    app = make_vm_app_dir(tmp_path, job, script, cmdline="--backend fake --guest_log_limit 65536")
    report = run_job(request(app, tmp_path / "work"))
    assert report.finish_status == 0, report.message + report.stderr_tail
    slot = Path(report.slot_dir)
    stderr = (slot / "stderr.txt").read_text().splitlines()
    guest = [line for line in stderr if "Guest Log: chatter" in line]
    assert sum(len(line) + 1 for line in guest) <= 65536
    assert guest[0].endswith("chatter 00000 " + "x" * 80)
    assert guest[-1].endswith("chatter 09999 " + "x" * 80)
    note = next(line for line in stderr if "Guest log limit reached" in line)
    assert f"{10_000 - len(guest)} guest lines" in note
    assert "VM state change detected." in report.stderr_tail
    assert "Outcome: Finish (status 0)" in stderr[-1]
    recorded = read_events(slot)
    guest_events = [e for e in recorded if e["event"] == "guest_log"]
    assert sum(len(json.dumps(e)) + 1 for e in guest_events) <= 65536
    assert guest_events[-1]["message"].startswith("Guest Log: chatter 09999")
    assert [e["event"] for e in recorded].count("guest_log_dropped") == 1


def test_console_credential_is_in_the_slot_only_and_kept_across_restarts(tmp_path: Path) -> None:
    script = FakeScript(
        steps=(
            GuestStep(2.0, "write", "later", "1\n0\n"),
            GuestStep(3.0, "write", "result", "ok\n"),
            GuestStep(4.0, "write", "done", "0\n0\n"),
        )
    )
    app = make_vm_app_dir(tmp_path, JOB.format(extra="<enable_remotedesktop/>"), script)
    work = tmp_path / "work"
    seen: dict[int, set[str]] = {}

    def on_progress(progress: Progress) -> None:
        path = work / "slots" / "0" / CONSOLE_FILE
        if path.exists():
            password = parse_console_password(path.read_text())
            if password:
                seen.setdefault(progress.episode, set()).add(password)

    report = run_job(request(app, work), on_progress=on_progress)
    assert report.outcome is JobOutcome.SUCCESS, report.message + report.stderr_tail
    assert report.episodes == 2 and len(seen) == 2, seen
    passwords = set().union(*seen.values())
    assert len(passwords) == 1  # the same password in both runs (a VirtualBox VM keeps it)
    (password,) = passwords
    slot = Path(report.slot_dir)
    assert (slot / CONSOLE_FILE).stat().st_mode & 0o777 == 0o640
    assert report.remote_desktop_addr and report.remote_desktop_addr.startswith("localhost:")
    port = report.remote_desktop_addr.split(":")[1]
    assert f"address: 127.0.0.1:{port}" in (slot / CONSOLE_FILE).read_text()
    assert password not in (slot / "stderr.txt").read_text()
    assert password not in (slot / "events.jsonl").read_text()
    assert f"{CONSOLE_FILE} in the slot" in (slot / "stderr.txt").read_text()
