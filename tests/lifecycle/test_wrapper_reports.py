"""The wrapper's reports to the client and to the project, in-process on FakeBackend:

* network bytes for the volunteer's daily transfer limit (docs/compatibility.md#network);
* the VM process's priority: lowered once online, the wrapper's own while paused or stopping
  (vboxwrapper's lower/reset_vm_process_priority), honouring cc_config's settings;
* the error report on fatal exits: screenshot (enable_screenshots_on_error) and log dump.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import replace
from pathlib import Path

from helpers.common import FakeClock, vm_config
from helpers.supervisor_fixtures import Run, run_job
from vmwrapper.boinc.init_data import GlobalPrefs
from vmwrapper.boinc.messages import parse_app_status
from vmwrapper.hypervisor.base import NetworkConfig
from vmwrapper.hypervisor.fake import FAKE_PNG, FakeBackend, FakeScript, GuestStep
from vmwrapper.outcome import EXIT_ABORTED_BY_CLIENT, Finish
from vmwrapper.spec.model import JobSpec
from vmwrapper.supervisor.report import VM_NICE

NETWORKED = JobSpec(
    enable_shared_directory=True, completion_trigger_file="done", enable_network=True
)
SENT_PER_S, RECEIVED_PER_S = 1000.0, 5000.0
DONE_AT = 1500.0  # guest seconds


def networked_run(tmp_path: Path, prefs: GlobalPrefs, period: float = 600.0) -> Run:
    clock = FakeClock()
    slot = tmp_path / "slots" / "0"
    slot.mkdir(parents=True)
    config = replace(vm_config(slot, job=NETWORKED), network=NetworkConfig(enabled=True))
    script = FakeScript(
        net_rate=(SENT_PER_S, RECEIVED_PER_S),
        steps=(GuestStep(DONE_AT, "write", "done", "0\n0\n"),),
    )
    fake = FakeBackend(config, script, clock=clock)
    return run_job(
        tmp_path,
        NETWORKED,
        clock=clock,
        backend=fake,
        prefs=prefs,
        settings={"net_usage_period": period},
    )


def test_network_bytes_reach_the_client_when_a_daily_limit_is_set(tmp_path: Path) -> None:
    run = networked_run(tmp_path, GlobalPrefs(daily_xfer_limit_mb=100.0))
    assert run.outcome == Finish(0)
    statuses = [parse_app_status(text) for text in run.client.statuses]
    sent = [s.bytes_sent for s in statuses]
    received = [s.bytes_received for s in statuses]
    assert sent == sorted(sent) and received == sorted(received)  # episode totals, growing
    # read every 600 s of run time, and once more at the end (the client reads the last
    # status message after the wrapper exited)
    for due in (600, 1200):
        assert any(due * SENT_PER_S <= x <= (due + 2) * SENT_PER_S for x in sent), (due, sent)
    assert DONE_AT * SENT_PER_S <= sent[-1] <= (DONE_AT + 2) * SENT_PER_S
    assert received[-1] == sent[-1] * RECEIVED_PER_S / SENT_PER_S
    usage = [e for e in run.events if e["event"] == "net_usage"]
    assert len(usage) >= 3 and usage[-1]["sent"] == sent[-1]


def test_no_network_bytes_without_a_daily_limit(tmp_path: Path) -> None:
    run = networked_run(tmp_path, GlobalPrefs(), period=60.0)
    assert run.outcome == Finish(0)
    assert all("<bytes_" not in text for text in run.client.statuses)
    assert "net_usage" not in run.codes()


def priority_calls(run: Run) -> list[str]:
    return [c for c in run.backend.calls if c.startswith(("set_priority", "pause", "resume"))]


def test_vm_priority_lowered_online_and_reset_while_paused_and_at_the_end(tmp_path: Path) -> None:
    own = os.getpriority(os.PRIO_PROCESS, 0)
    lowered = max(VM_NICE, own)
    script = FakeScript(steps=(GuestStep(200, "write", "done", "0\n0\n"),))
    run = run_job(
        tmp_path,
        JobSpec(enable_shared_directory=True, completion_trigger_file="done"),
        script,
        control=[(50, "<suspend/>"), (80, "<resume/>")],
    )
    assert run.outcome == Finish(0)
    if lowered == own:
        return  # the test itself runs at nice >= 10: nothing can be lowered
    assert priority_calls(run) == [
        f"set_priority:{lowered}",
        f"set_priority:{own}",  # back to normal before the pause (vboxwrapper's order)
        "pause",
        "resume",
        f"set_priority:{lowered}",
        f"set_priority:{own}",  # before the VM is removed
    ]


def test_cc_config_priority_settings_are_honoured(tmp_path: Path) -> None:
    script = FakeScript(steps=(GuestStep(30, "write", "done", "0\n0\n"),))
    job = JobSpec(enable_shared_directory=True, completion_trigger_file="done")
    untouched = run_job(tmp_path / "a", job, script, init_data={"no_priority_change": True})
    assert not [c for c in untouched.backend.calls if c.startswith("set_priority")]
    lowest = run_job(tmp_path / "b", job, script, init_data={"process_priority": 0})
    assert "set_priority:19" in lowest.backend.calls  # cc_config process_priority 0 = nice 19


def error_reports(run: Run) -> list[dict[str, object]]:
    return [e for e in run.events if e["event"] == "error_report"]


def test_abort_reports_a_screenshot_and_the_logs_before_cleanup(tmp_path: Path) -> None:
    job = JobSpec(enable_shared_directory=True, enable_screenshots_on_error=True)
    run = run_job(tmp_path, job, FakeScript(), control=[(40, "<abort/>")])
    assert run.outcome == Finish(EXIT_ABORTED_BY_CLIENT)
    calls = run.backend.calls
    assert calls.index("screenshot") < calls.index("cleanup")
    (report,) = error_reports(run)
    text = str(report["message"])
    assert "Screen Shot Information (Base64 Encoded PNG):" in text
    assert f"MD5 Signature: {hashlib.md5(FAKE_PNG).hexdigest()}" in text
    assert f"Data: {base64.b64encode(FAKE_PNG).decode()}" in text
    assert "Fake Hypervisor Log:" in text and "fake call: start:" in text


def test_no_screenshot_unless_the_job_asks_and_none_of_a_crashed_vm(tmp_path: Path) -> None:
    script = FakeScript(steps=(GuestStep(20, "crash", text="guru meditation"),), exit_code=-6)
    crashed = run_job(tmp_path / "a", JobSpec(enable_screenshots_on_error=True), script)
    assert isinstance(crashed.outcome, Finish) and crashed.outcome.status == EXIT_ABORTED_BY_CLIENT
    (report,) = error_reports(crashed)
    text = str(report["message"])
    assert "Screen Shot" not in text  # the VM is gone: nothing on screen to capture
    assert "VM Exit Code: -6 (0xfffffffa)" in text
    plain = run_job(tmp_path / "b", JobSpec(), FakeScript(), control=[(40, "<abort/>")])
    assert "screenshot" not in plain.backend.calls
    assert len(error_reports(plain)) == 1


def test_a_successful_job_writes_no_error_report(tmp_path: Path) -> None:
    script = FakeScript(steps=(GuestStep(30, "write", "done", "0\n0\n"),))
    job = JobSpec(
        enable_shared_directory=True,
        completion_trigger_file="done",
        enable_screenshots_on_error=True,
    )
    run = run_job(tmp_path, job, script)
    assert run.outcome == Finish(0)
    assert not error_reports(run) and "screenshot" not in run.backend.calls
