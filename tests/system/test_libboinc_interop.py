"""Interop with the real BOINC API: a C++ app linked against Debian's libboinc runs under our
harness (the client side), and our app side runs under the harness too.

The C++ app (tests/data/protocol/boinc_test_app.cpp) is compiled here with g++; it uses the
API's default behaviour, so what is checked is what libboinc itself does with our segment,
init_data.xml, link files and control messages.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.harness_fixtures import DATA, make_pyapp_dir
from vmwrapper.boinc.init_data import parse_init_data
from vmwrapper.harness.job import (
    Action,
    JobOutcome,
    JobReport,
    JobRequest,
    Progress,
    ScheduledAction,
    run_job,
)
from vmwrapper.harness.task import TaskEvent
from vmwrapper.outcome import EXIT_ABORTED_BY_CLIENT

pytestmark = pytest.mark.system

VERSION_XML = """<version>
  <file><physical_name>boinc_test_app_1</physical_name><main_program/></file>
  {api_version}
  <cmdline>{cmdline}</cmdline>
</version>
"""

OUTPUT_TEMPLATE = """<output_template>
<file_info><name><OUTFILE_0/></name><max_nbytes>10000</max_nbytes></file_info>
<result><file_ref><file_name><OUTFILE_0/></file_name><open_name>out</open_name></file_ref></result>
</output_template>
"""


@pytest.fixture(scope="module")
def cpp_app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The C++ test app, compiled against the installed BOINC API."""
    if shutil.which("g++") is None or not Path("/usr/include/boinc/boinc_api.h").exists():
        pytest.fail("g++ and libboinc-app-dev are needed: run scripts/install-deps.sh")
    out = tmp_path_factory.mktemp("cpp") / "boinc_test_app"
    # the static libboinc_api.a of Debian is stripped and does not link: link dynamically
    subprocess.run(
        [
            "g++",
            "-O1",
            "-o",
            str(out),
            str(DATA / "boinc_test_app.cpp"),
            "-I/usr/include/boinc",
            "-lboinc_api",
            "-lboinc",
            "-lpthread",
        ],
        check=True,
        timeout=300,
    )
    return out


def cpp_app_dir(root: Path, binary: Path, cmdline: str, api_version: str = "7.20.5") -> Path:
    """An APP_DIR for the C++ app; without api_version the client uses System V memory."""
    app = root / "cppapp"
    (app / "templates").mkdir(parents=True)
    shutil.copy2(binary, app / "boinc_test_app_1")
    tag = f"<api_version>{api_version}</api_version>" if api_version else ""
    (app / "version.xml").write_text(VERSION_XML.format(cmdline=cmdline, api_version=tag))
    (app / "templates" / "output_template.xml").write_text(OUTPUT_TEMPLATE)
    return app


class Recorder:
    """Collects progress snapshots and events while a job runs."""

    def __init__(self) -> None:
        self.progress: list[Progress] = []
        self.events: list[TaskEvent] = []
        self.sent: dict[str, float] = {}  # control message → elapsed when the harness sent it

    def run(self, request: JobRequest) -> JobReport:
        return run_job(request, on_progress=self.progress.append, on_event=self.on_event)

    def on_event(self, event: TaskEvent) -> None:
        self.events.append(event)
        if event.kind == "control":
            self.sent.setdefault(event.detail, self.progress[-1].elapsed if self.progress else 0)

    def suspended_window(self, settle: float = 1.5) -> list[Progress]:
        """Progress seen from ``settle`` s after the suspend was sent (the API's 1 s tick
        reads it, the next status reports it) until the resume was sent."""
        start, end = self.sent["suspend"] + settle, self.sent["resume"] - 0.1
        return [p for p in self.progress if start <= p.elapsed <= end]

    def exits(self) -> list[TaskEvent]:
        return [e for e in self.events if e.kind == "exit"]


def request(app: Path, work: Path, *schedule: ScheduledAction, **kw: object) -> JobRequest:
    return JobRequest(
        app_dir=app,
        workdir=work,
        schedule=tuple(schedule),
        checkpoint_period=1.0,
        poll_interval=0.25,
        **kw,  # type: ignore[arg-type]
    )


def test_cpp_app_progress_checkpoints_suspend_resume_trickle_and_finish(
    cpp_app: Path, tmp_path: Path
) -> None:
    app = cpp_app_dir(tmp_path, cpp_app, "--steps 40 --step-time 0.1 --trickle")
    rec = Recorder()
    report = rec.run(
        request(
            app,
            tmp_path / "work",
            # tied to the app's first checkpoint, not to the clock: a slow start moves both
            ScheduledAction(0.5, Action.SUSPEND, after_checkpoint=1),
            ScheduledAction(4.0, Action.RESUME, after_checkpoint=1),
        )
    )
    assert report.outcome is JobOutcome.SUCCESS, report.message
    assert report.finish_status == 0 and report.process_exit_code == 0
    # fraction done and checkpoint CPU time reached the client through the segment
    fractions = [p.fraction_done for p in rec.progress]
    assert 0 < min(f for f in fractions if f) < 0.5 and max(fractions) == pytest.approx(1.0)
    assert report.checkpoints >= 2 and report.checkpoint_cpu_time > 0
    # suspended (the app read <suspend/>): no progress between 1 s after the suspend and the
    # resume; progress again after the resume
    frozen = rec.suspended_window()
    assert frozen and len({(p.fraction_done, p.cpu_time) for p in frozen}) == 1
    assert all(p.state == "suspended" for p in frozen)
    after = [p.fraction_done for p in rec.progress if p.elapsed > rec.sent["resume"]]
    assert max(after) > frozen[0].fraction_done
    # the trickle-up arrived with variety and body byte for byte
    assert [(t.variety, t.body) for t in report.trickles] == [
        ("cpp_progress", "<value>42</value>\n<text>a &amp; b, &lt;raw&gt;</text>\n")
    ]
    trickle_file = Path(report.trickles[0].path)
    assert trickle_file.read_text().startswith("<variety>cpp_progress</variety>\n")
    # the output was written through the client's link file into the project dir
    assert [o.logical_name for o in report.outputs] == ["out"]
    assert Path(report.outputs[0].destination).read_text() == "boinc_test_app did 40 steps\n"


def test_cpp_app_quit_is_a_restartable_exit(cpp_app: Path, tmp_path: Path) -> None:
    app = cpp_app_dir(tmp_path, cpp_app, "--steps 40 --step-time 0.1")
    rec = Recorder()
    report = rec.run(request(app, tmp_path / "work", ScheduledAction(2.5, Action.QUIT)))
    first, last = rec.exits()[0], rec.exits()[-1]
    # <quit/>: the API exits 0 without a finish file; the client restarts the task
    assert first.data["returncode"] == 0 and first.data["finish_file"] is False
    assert first.data["disposition"] == "restart"
    assert report.episodes == 2 and last.data["disposition"] == "finished"
    assert report.outcome is JobOutcome.SUCCESS
    # the second run resumed from the API checkpoint, not from step 0
    assert "start at step 0 of 40" in report.stderr_tail
    starts = [line for line in report.stderr_tail.splitlines() if "start at step" in line]
    assert len(starts) == 2 and starts[1] != "boinc_test_app: start at step 0 of 40"


def test_cpp_app_abort_exits_194(cpp_app: Path, tmp_path: Path) -> None:
    app = cpp_app_dir(tmp_path, cpp_app, "--steps 100 --step-time 0.1")
    report = Recorder().run(request(app, tmp_path / "work", ScheduledAction(1.5, Action.ABORT)))
    assert report.outcome is JobOutcome.ABORTED
    assert report.process_exit_code == EXIT_ABORTED_BY_CLIENT
    assert report.finish_status is None and report.elapsed < 30


def test_cpp_app_finish_status_is_read_back(cpp_app: Path, tmp_path: Path) -> None:
    app = cpp_app_dir(tmp_path, cpp_app, "--steps 5 --step-time 0.05 --finish-status 5")
    report = Recorder().run(request(app, tmp_path / "work"))
    # boinc_finish(5): finish file says 5 and the process exits 5, a compute error
    assert report.finish_status == 5 and report.process_exit_code == 5
    assert report.outcome is JobOutcome.ERROR and report.exit_status == 5
    assert "process exited with code 5" in report.message


def test_python_app_side_under_the_harness(tmp_path: Path) -> None:
    """Our AppClient through suspend, resume, quit-and-restart, trickles, upload, finish."""
    app = make_pyapp_dir(
        tmp_path, "--steps 40 --step-time 0.05 --trickles 2 --upload out --checkpoint-every 4"
    )
    rec = Recorder()
    report = rec.run(
        request(
            app,
            tmp_path / "work",
            ScheduledAction(1.0, Action.SUSPEND),
            ScheduledAction(2.5, Action.RESUME),
            ScheduledAction(3.0, Action.QUIT),
        )
    )
    assert report.outcome is JobOutcome.SUCCESS, report.message
    assert report.episodes == 2 and rec.exits()[0].data["disposition"] == "restart"
    assert [t.body for t in report.trickles] == [
        f"<n>{n}</n>\n<msg>trickle & body {n}</msg>\n" for n in range(2)
    ]
    # the client's status after a good upload: 1, FILE_PRESENT (what boinc-client writes)
    assert [(u.logical_name, u.status) for u in report.uploads] == [("out", 1)]
    assert Path(report.uploads[0].path).read_text() == "done 40 steps\n"
    assert "upload status 1" in report.stderr_tail


def test_cpp_app_over_system_v_shared_memory(cpp_app: Path, tmp_path: Path) -> None:
    """An app version without api_version: the API attaches the System V segment we made."""
    app = cpp_app_dir(tmp_path, cpp_app, "--steps 30 --step-time 0.1 --trickle", api_version="")
    rec = Recorder()
    report = rec.run(
        request(
            app,
            tmp_path / "work",
            ScheduledAction(0.5, Action.SUSPEND, after_checkpoint=1),
            ScheduledAction(3.5, Action.RESUME, after_checkpoint=1),
            keep_slot=True,
        )
    )
    assert report.outcome is JobOutcome.SUCCESS, report.message
    assert not (Path(report.slot_dir) / "boinc_mmap_file").exists()
    frozen = rec.suspended_window()
    assert frozen and len({p.fraction_done for p in frozen}) == 1
    assert frozen[0].fraction_done < 1 and report.fraction_done == pytest.approx(1.0)
    assert [t.variety for t in report.trickles] == ["cpp_progress"]


def test_python_app_side_under_the_real_clients_run_test_app(tmp_path: Path) -> None:
    """boinc-client 7.20.5 ``--run_test_app``: the real client runs ./test_app over System V
    shared memory and toggles suspend/resume every 0.1-0.3 s until the app exits."""
    boinc = shutil.which("boinc")
    if boinc is None:
        pytest.fail("boinc-client is needed: run scripts/install-deps.sh")
    shutil.copyfile(DATA / "pyapp.py", tmp_path / "pyapp.py")
    launcher = tmp_path / "test_app"
    launcher.write_text('#!/bin/sh\nexec "$VMWRAPPER_PYTHON" pyapp.py --steps 30 "$@"\n')
    launcher.chmod(0o755)
    done = subprocess.run(
        [boinc, "--run_test_app"],
        cwd=tmp_path,
        env={**os.environ, "VMWRAPPER_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0 and "test app finished" in done.stdout + done.stderr
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "standalone=False" in stderr  # attached to the client's System V segment
    suspensions = int(re.findall(r"pyapp: suspended (\d+) times", stderr)[0])
    assert suspensions >= 1  # the client's <suspend/> messages reached our app side
    assert (tmp_path / "boinc_finish_called").read_text() == "0\n"
    key = parse_init_data((tmp_path / "init_data.xml").read_bytes()).shm_key
    assert key != -1
