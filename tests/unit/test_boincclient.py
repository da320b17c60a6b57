"""The pure parts of vmwrapper.boincclient: hand-made client state, planning, boinccmd parsing.

Golden data in ``tests/data/boincclient/``: ``boinccmd --get_tasks`` output and a
``client_state.xml`` written by Debian's boinc-client 7.20.5 after running the probe app, and
``reference_client_state.xml``, the hand-made state the real client laid out the reference slot
from (a copy of the ``client_state.xml`` of the real client's slot we keep in
``tests/data/protocol/real-client-slot/``).
"""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from vmwrapper.boincclient.plan import (
    JobRequest,
    Naming,
    bake_interpreter,
    plan_client_state,
)
from vmwrapper.boincclient.state import (
    AppVersionInfo,
    ClientState,
    FileInfo,
    FileRef,
    HandMadeStateError,
    ProjectInfo,
    ResultInfo,
    ResultState,
    WorkunitInfo,
    account_file_name,
    format_account,
    format_client_state,
    format_global_prefs_override,
    parse_results,
    project_dir_name,
)
from vmwrapper.boincclient.tasks import ActiveTaskState, parse_get_tasks
from vmwrapper.packaging.templates import (
    InputFile,
    InputTemplate,
    OutputFile,
    OutputTemplate,
    WorkunitBounds,
)
from vmwrapper.packaging.version import AppVersion, VersionFile

DATA = Path(__file__).parents[1] / "data" / "boincclient"
NOW = 1_795_759_005.0


# --- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:9/proj/", "127.0.0.1_9_proj"),
        ("https://ex.org/proj/", "ex.org_proj"),
        ("http://lhcathome.cern.ch/lhcathome/", "lhcathome.cern.ch_lhcathome"),
        ("https://a.b/x y?z=1", "a.b_x_y_z_1"),
        ("http://h/p__", "h_p_"),  # only one trailing underscore goes
        ("http://ex.org/\u00e9/", "ex.org___"),  # per byte: UTF-8 \u00e9 is two
        ("ex.org/x", "ex.org_x"),  # no scheme
        ("weird/a://b/", "b"),  # up to the first "://", wherever it is
    ],
)
def test_project_dir_name_escapes_like_the_client(url: str, expected: str) -> None:
    assert project_dir_name(url) == expected


def test_account_file_is_named_after_the_project_dir() -> None:
    assert account_file_name("http://127.0.0.1:9/proj/") == "account_127.0.0.1_9_proj.xml"
    text = format_account(ProjectInfo(master_url="http://h/p/", authenticator="k&y"))
    assert "<master_url>http://h/p/</master_url>" in text
    assert "<authenticator>k&amp;y</authenticator>" in text


# --- the hand-made client_state.xml -------------------------------------------------------------


def _reference_like_state(**result_changes: object) -> ClientState:
    """The job of the reference ``client_state.xml`` (``reference_client_state.xml``)."""
    files = (
        FileInfo("vmwrapper_1.00_x86_64-pc-linux-gnu", executable=True),
        FileInfo("vm_image_1.vdi"),
        FileInfo("job_app_1.sh", executable=True),
        FileInfo("vbox_job_1.xml"),
        FileInfo("wu1_in"),
        FileInfo("wu1_r0_out", present=False, max_nbytes=1e7, sticky=True),
    )
    av = AppVersionInfo(
        app_name="vmapp",
        version_num=100,
        file_refs=(
            FileRef("vmwrapper_1.00_x86_64-pc-linux-gnu", main_program=True),
            FileRef("vm_image_1.vdi", "vm_image.vdi", copy_file=True),
            FileRef("job_app_1.sh", "shared/boinc_app", copy_file=True),
            FileRef("vbox_job_1.xml", "vbox_job.xml"),
        ),
    )
    wu = WorkunitInfo("wu1", "vmapp", 100, (FileRef("wu1_in", "shared/in", copy_file=True),))
    result = ResultInfo(
        name="wu1_r0",
        wu_name="wu1",
        version_num=100,
        report_deadline=NOW + 604800,
        received_time=NOW,
        file_refs=(FileRef("wu1_r0_out", "shared/out", copy_file=True),),
        **result_changes,  # type: ignore[arg-type]
    )
    return ClientState(
        project=ProjectInfo(master_url="http://127.0.0.1:9/proj/", project_name="rc"),
        app_name="vmapp",
        files=files,
        app_versions=(av,),
        workunits=(wu,),
        results=(result,),
    )


def test_first_line_is_the_root_tag_without_a_declaration() -> None:
    text = format_client_state(_reference_like_state())
    assert text.splitlines()[0] == "<client_state>"
    assert text.endswith("</client_state>\n")


def test_sections_come_in_the_order_the_client_parses_them() -> None:
    root = ET.fromstring(format_client_state(_reference_like_state()))
    tags = [child.tag for child in root]
    first = {tag: tags.index(tag) for tag in dict.fromkeys(tags)}
    order = ["project", "app", "file", "app_version", "workunit", "result", "platform_name"]
    assert [first[t] for t in order] == sorted(first[t] for t in order)
    assert root.findtext("core_client_major_version") == "7"
    assert root.findtext("core_client_minor_version") == "20"
    assert root.findtext("core_client_release") == "5"
    assert root.find("project/dont_request_more_work") is not None


def _refs(elem: ET.Element) -> list[tuple[str, str, bool, bool]]:
    return [
        (
            (ref.findtext("file_name") or "").strip(),
            (ref.findtext("open_name") or "").strip(),
            ref.find("main_program") is not None,
            ref.find("copy_file") is not None,
        )
        for ref in elem.findall("file_ref")
    ]


def test_the_job_matches_the_reference_state_the_real_client_ran() -> None:
    """Same files, flags and file_refs as the state the real client laid out the slot from."""
    ours = ET.fromstring(format_client_state(_reference_like_state()))
    ref = ET.fromstring((DATA / "reference_client_state.xml").read_text())
    for path in ("app_version", "workunit", "result"):
        assert _refs(ours.find(path)) == _refs(ref.find(path)), path  # type: ignore[arg-type]
    for tag in ("api_version", "plan_class", "version_num", "platform"):
        assert ours.findtext(f"app_version/{tag}") == ref.findtext(f"app_version/{tag}")
    assert (ours.find("app_version/is_wrapper") is not None) and (
        ref.find("app_version/is_wrapper") is not None
    )

    def files(root: ET.Element) -> dict[str, tuple[str | None, bool, bool, str | None]]:
        return {
            (f.findtext("name") or ""): (
                f.findtext("status"),
                f.find("executable") is not None,
                f.find("sticky") is not None,
                f.findtext("max_nbytes"),
            )
            for f in root.findall("file")
        }

    assert files(ours) == files(ref)


def test_a_held_result_is_suspended_via_the_gui() -> None:
    root = ET.fromstring(format_client_state(_reference_like_state(suspended_via_gui=True)))
    assert root.find("result/suspended_via_gui") is not None
    plain = ET.fromstring(format_client_state(_reference_like_state()))
    assert plain.find("result/suspended_via_gui") is None


def test_a_dangling_file_ref_is_refused() -> None:
    state = _reference_like_state()
    broken = ClientState(
        project=state.project,
        app_name=state.app_name,
        files=state.files[1:],  # the main program's <file> is missing
        app_versions=state.app_versions,
        workunits=state.workunits,
        results=state.results,
    )
    with pytest.raises(HandMadeStateError, match=r"vmwrapper_1\.00_x86_64-pc-linux-gnu"):
        format_client_state(broken)


def test_names_are_escaped() -> None:
    state = _reference_like_state()
    text = format_client_state(
        ClientState(
            project=ProjectInfo(master_url="http://h/p/?a=1&b=2", project_name="A<B"),
            app_name=state.app_name,
            files=state.files,
            app_versions=state.app_versions,
        )
    )
    assert "<master_url>http://h/p/?a=1&amp;b=2</master_url>" in text
    assert "<project_name>A&lt;B</project_name>" in text


def test_global_prefs_keep_jobs_running_on_a_busy_host() -> None:
    root = ET.fromstring(format_global_prefs_override(7))
    assert root.findtext("suspend_cpu_usage") == "0"
    assert root.findtext("run_if_user_active") == "1"
    assert root.findtext("leave_apps_in_memory") == "1"
    assert root.findtext("disk_interval") == "7.000000"


# --- planning from an APP_DIR ---------------------------------------------------------------------

VERSION = AppVersion(
    files=(
        VersionFile("vmwrapper-launcher_1.00", main_program=True),
        VersionFile("hello_vbox_job_1.00.xml", logical_name="vbox_job.xml"),
        VersionFile("hello_vm_image_1.00.vdi", logical_name="vm_image.vdi", copy_file=True),
    ),
    cmdline="--backend qemu",
)
INPUTS = InputTemplate(
    files=(InputFile("shared/in"), InputFile("shared/params.txt")),
    command_line="--seed 1",
    bounds=WorkunitBounds(rsc_fpops_est=5e12, rsc_fpops_bound=5e14, rsc_disk_bound=2e9),
)
OUTPUTS = OutputTemplate(files=(OutputFile("shared/out", max_nbytes=1e6),))


def test_plan_names_files_as_the_project_would() -> None:
    plan = plan_client_state(
        VERSION,
        [JobRequest("job1"), JobRequest("job2", command_line="--seed 2", held=True)],
        inputs=INPUTS,
        outputs=OUTPUTS,
        naming=Naming(app_name="hello", version_num=102),
        now=NOW,
    )
    names = [f.name for f in plan.state.files]
    assert names[:3] == [f.physical_name for f in VERSION.files]
    assert "job1_in" in names and "job1_params.txt" in names and "job2_0_0" in names
    assert plan.jobs[0].outputs == {"shared/out": "job1_0_0"}
    out = next(f for f in plan.state.files if f.name == "job1_0_0")
    assert (out.present, out.sticky, out.max_nbytes) == (False, True, 1e6)
    main = next(f for f in plan.state.files if f.name == "vmwrapper-launcher_1.00")
    assert main.executable
    av = plan.state.app_versions[0]
    assert (av.app_name, av.version_num, av.cmdline, av.api_version) == (
        "hello",
        102,
        "--backend qemu",
        "7.20.5",
    )
    wu1, wu2 = plan.state.workunits
    assert wu1.command_line == "--seed 1" and wu2.command_line == "--seed 2"
    assert (wu1.rsc_fpops_est, wu1.rsc_fpops_bound, wu1.rsc_disk_bound) == (5e12, 5e14, 2e9)
    r1, r2 = plan.state.results
    assert not r1.suspended_via_gui and r2.suspended_via_gui
    assert r1.report_deadline > NOW
    copies = {c.name: c.source for c in plan.copies}
    assert copies["job1_in"] == "inputs/in"
    assert copies["vmwrapper-launcher_1.00"] == "vmwrapper-launcher_1.00"
    format_client_state(plan.state)  # consistent


def test_plan_takes_a_job_specific_input() -> None:
    plan = plan_client_state(
        VERSION,
        [JobRequest("j", inputs={"shared/in": "/tmp/elsewhere"})],
        inputs=INPUTS,
        now=NOW,
    )
    assert {c.name: c.source for c in plan.copies}["j_in"] == "/tmp/elsewhere"
    with pytest.raises(HandMadeStateError, match="shared/nope"):
        plan_client_state(
            VERSION, [JobRequest("j", inputs={"shared/nope": "x"})], inputs=INPUTS, now=NOW
        )


def test_plan_refuses_what_the_client_cannot_run() -> None:
    no_main = AppVersion(files=(VersionFile("a_1"),))
    with pytest.raises(HandMadeStateError, match="main_program"):
        plan_client_state(no_main, [], now=NOW)
    with pytest.raises(HandMadeStateError, match="two jobs"):
        plan_client_state(VERSION, [JobRequest("a"), JobRequest("a")], now=NOW)
    with pytest.raises(HandMadeStateError, match="letters, digits"):
        plan_client_state(VERSION, [JobRequest("a b")], now=NOW)


def test_bake_interpreter_fixes_the_launchers_python() -> None:
    launcher = b'#!/bin/sh\n# comment\nexec "${VMWRAPPER_PYTHON:-python3}" -m vmwrapper "$@"\n'
    baked = bake_interpreter(launcher, "/opt/py's/bin/python")
    lines = baked.decode().splitlines()
    assert lines[0] == "#!/bin/sh"
    assert lines[1].startswith(
        "VMWRAPPER_PYTHON='/opt/py'\\''s/bin/python'; export VMWRAPPER_PYTHON"
    )
    assert lines[2:] == launcher.decode().splitlines()[1:]
    elf = b"\x7fELF\x02\x01\x01"
    assert bake_interpreter(elf, "/p") == elf
    assert bake_interpreter(b"#!/bin/sh\nexec foo\n", "/p") == b"#!/bin/sh\nexec foo\n"


# --- reading the client ---------------------------------------------------------------------


def test_get_tasks_while_running() -> None:
    running, held = parse_get_tasks((DATA / "get_tasks_running.txt").read_text())
    assert running.name == "probe1_0" and running.wu_name == "probe1"
    assert running.project_url == "http://127.0.0.1:9/vmwrapper-local/"
    assert running.active_task_state is ActiveTaskState.EXECUTING and running.running
    assert running.scheduler_state == "scheduled" and running.state == "downloaded"
    assert running.fraction_done == pytest.approx(1 / 3, abs=1e-6)
    assert running.checkpoint_cpu_time == 2.0 and running.current_cpu_time == 2.0
    assert running.slot == 0 and running.pid == 25726
    assert not running.ready_to_report and not running.suspended_via_gui
    assert held.name == "probe2_0" and held.suspended_via_gui
    assert held.active_task_state is ActiveTaskState.UNINITIALIZED
    assert held.pid is None and held.fraction_done is None


def test_get_tasks_while_suspended() -> None:
    task = parse_get_tasks((DATA / "get_tasks_suspended.txt").read_text())[0]
    assert task.suspended and task.suspended_via_gui
    assert task.scheduler_state == "preempted"
    assert task.fraction_done == 0.5 and task.current_cpu_time == 3.0


def test_get_tasks_when_done() -> None:
    task = parse_get_tasks((DATA / "get_tasks_done.txt").read_text())[0]
    assert task.ready_to_report and task.state == "uploaded"
    assert task.exit_status == 0 and task.final_cpu_time == 6.0
    assert task.active_task_state is ActiveTaskState.UNINITIALIZED


def test_get_tasks_empty_and_unknown_state() -> None:
    assert parse_get_tasks("\n======== Tasks ========\n") == ()
    (task,) = parse_get_tasks("1) -----------\n   name: x\n   active_task_state: NEW_ONE\n")
    assert task.active_task_state is ActiveTaskState.UNKNOWN


def test_results_as_the_client_saved_them() -> None:
    results = parse_results((DATA / "client_state_after_success.xml").read_bytes())
    done, held = results["probe1_0"], results["probe2_0"]
    assert done.success and done.state is ResultState.UPLOADED and done.ready_to_report
    assert done.exit_status == 0 and done.final_cpu_time == 6.0
    assert done.output_files == ("probe1_0_0",)
    assert "<stderr_txt>" in done.stderr_out
    assert not held.success and held.state is ResultState.DOWNLOADED


def test_results_survive_non_utf8_stderr() -> None:
    text = (DATA / "client_state_after_success.xml").read_bytes()
    text = text.replace(b"<stderr_txt>", b"<stderr_txt>\xff\xfe")
    assert parse_results(text)["probe1_0"].success
    with pytest.raises(HandMadeStateError, match="well-formed"):
        parse_results(b"<client_state><result>")
