"""A back end with the lifecycle core alone runs a job: the supervisor asks for each capability
(checkpoints, reports, limits, accounting) and skips, logged once, what the back end lacks.

The same scripted guest runs behind the full FakeBackend and behind CoreOnlyBackend; the
outcomes match, and the core-only run never reaches the extras.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.supervisor_fixtures import Run, run_job
from vmwrapper.boinc.init_data import GlobalPrefs
from vmwrapper.boinc.messages import parse_app_status
from vmwrapper.hypervisor.base import VmState
from vmwrapper.hypervisor.fake import FakeScript, GuestStep
from vmwrapper.outcome import EXIT_ABORTED_BY_CLIENT, Finish, PlainExit
from vmwrapper.spec.model import JobSpec
from vmwrapper.supervisor import events

#: every extra the supervisor can want: snapshots, NIC limits and counts, CPU cap, screenshots
JOB = JobSpec(
    enable_shared_directory=True,
    completion_trigger_file="done",
    enable_network=True,
    enable_screenshots_on_error=True,
    minimum_checkpoint_interval=60.0,
)
PREFS = GlobalPrefs(cpu_usage_limit=50.0, daily_xfer_limit_mb=100.0, max_bytes_sec_up=5000.0)
EXTRAS = ("checkpoint", "set_cpu_cap", "set_bandwidth", "set_network", "save_state")


def run(tmp: Path, script: FakeScript, *, core_only: bool, **kw: object) -> Run:
    return run_job(
        tmp / ("core" if core_only else "full"),
        JOB,
        script,
        prefs=PREFS,
        core_only=core_only,
        init_data={"checkpoint_period": 60.0},
        **kw,  # type: ignore[arg-type]
    )


def missing(result: Run) -> list[str]:
    return [e["capability"] for e in result.events if e["event"] == events.CAPABILITY_MISSING]


def test_a_job_completes_on_the_core_alone(tmp_path: Path) -> None:
    script = FakeScript(
        boot_seconds=3,
        net_rate=(10.0, 20.0),
        steps=(GuestStep(400, "write", "done", "0\n0\n"),),
    )
    full = run(tmp_path, script, core_only=False)
    core = run(tmp_path, script, core_only=True)
    assert full.outcome == core.outcome == Finish(0)
    assert core.backend.state is VmState.ABSENT and core.backend.calls[-1] == "cleanup"
    # the full back end was asked for every extra; the core-only one for none
    assert any(c.startswith("checkpoint:") for c in full.backend.calls)
    assert any(c.startswith("set_cpu_cap") for c in full.backend.calls)
    assert not [c for c in core.backend.calls if c.split(":")[0] in EXTRAS]
    # one line per missing capability, not one a tick
    assert sorted(missing(core)) == ["Checkpointing", "Throttling"]
    assert missing(full) == []
    # no accounting: CPU time and network bytes stay 0 in the client's status messages
    statuses = [parse_app_status(text) for text in core.client.statuses]
    assert {s.current_cpu_time for s in statuses} == {0.0}
    assert {(s.bytes_sent, s.bytes_received) for s in statuses} == {(0.0, 0.0)}
    assert max(s.current_cpu_time for s in map(parse_app_status, full.client.statuses)) > 0


def test_a_crash_is_reported_without_the_report_capability(tmp_path: Path) -> None:
    script = FakeScript(steps=(GuestStep(30, "crash", "", "guest: kernel panic"),))
    full = run(tmp_path, script, core_only=False)
    core = run(tmp_path, script, core_only=True)
    assert full.outcome == core.outcome
    assert isinstance(core.outcome, Finish) and core.outcome.status == EXIT_ABORTED_BY_CLIENT
    assert events.ERROR_REPORT in full.codes() and events.ERROR_REPORT not in core.codes()
    assert "Reporting" in missing(core)


@pytest.mark.parametrize("savestate", [False, True])
def test_a_quit_stops_the_vm_without_the_checkpoint_capability(
    tmp_path: Path, savestate: bool
) -> None:
    job = JobSpec(enable_vm_savestate_usage=savestate)
    result = run_job(
        tmp_path, job, FakeScript(boot_seconds=3), control=[(30, "<quit/>")], core_only=True
    )
    assert result.outcome == PlainExit(0)
    assert result.backend.state is VmState.POWERED_OFF  # stopped, kept for the restart
    assert "save_state" not in result.backend.calls
