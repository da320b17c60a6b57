"""Intermediate uploads under Debian's real boinc-client (7.20.5), end to end.

The app version is the wrapper with the fake back end (the guest is scripted: the client's
upload path is what is under test, not the VM); the project's side is a file upload handler
on loopback (``helpers.boinc_client_fixtures.UploadServer``). The guest writes
``partial.dat`` early and its result later; the wrapper asks the client to upload
``partial.dat`` while the job runs (``boinc_ufr_partial.dat``, ``<have_new_upload_file/>``),
the client uploads it at once and tells the wrapper (``boinc_ufs_partial.dat``), and the
final output goes up when the job ends. The result template this needs, and that
``vmwrapper lint`` checks, is in docs/compatibility.md#runtime: the intermediate upload is an
output whose ``<open_name>`` is the file's name in the shared directory, **without**
``<copy_file/>`` (the client then puts a link to the project file in the slot, which the
wrapper fills from the shared directory).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from helpers.boinc_client_fixtures import ClientSession, UploadServer
from helpers.supervisor_fixtures import make_vm_app_dir
from vmwrapper.boincclient import JobRequest, Naming, ResultState
from vmwrapper.cli.lint import gather
from vmwrapper.hypervisor.fake import FakeScript, GuestStep
from vmwrapper.packaging.lint import lint_app_dir
from vmwrapper.packaging.templates import OutputFile, OutputTemplate, format_output_template
from vmwrapper.supervisor.events import read_events

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

JOB_XML = """<vbox_job>
  <os_name>Linux26_64</os_name>
  <memory_size_mb>256</memory_size_mb>
  <enable_shared_directory/>
  <completion_trigger_file>done</completion_trigger_file>
  <intermediate_upload_file>partial.dat</intermediate_upload_file>
  <vmwrapper_backends>qemu</vmwrapper_backends>
  <vmwrapper_software_emulation/>
</vbox_job>
"""

# the final output in shared/ as usual; the intermediate upload: its shared-dir name as the
# open name, no <copy_file/> (docs/compatibility.md#runtime)
OUTPUT_TEMPLATE = format_output_template(
    OutputTemplate(
        (
            OutputFile("shared/result", max_nbytes=100000),
            OutputFile("partial.dat", max_nbytes=100000, copy_file=False),
        )
    )
)

JOB = JobRequest(name="up1")
RESULT = JOB.result_name
WAIT = 120.0
#: the guest ends the job this long after it starts: the intermediate upload must be done first
DONE_AT = 30.0


@pytest.fixture(scope="module")
def uploads(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ClientSession, UploadServer]]:
    base = tmp_path_factory.mktemp("boinc_uploads")
    script = FakeScript(
        steps=(
            GuestStep(1.0, "write", "partial.dat", "partial result\n"),
            GuestStep(DONE_AT - 1, "write", "result", "final result\n"),
            GuestStep(DONE_AT, "write", "done", "0\n0\n"),
        )
    )
    app = make_vm_app_dir(base, JOB_XML, script, with_output=False)
    (app / "templates" / "output_template.xml").write_text(OUTPUT_TEMPLATE)
    # the template lint accepts is the one the real client needs (no intermediate-upload or
    # job-file finding about it)
    codes = {f.code for f in lint_app_dir(gather(app, None, None))}
    assert not codes & {"VMW017", "VMW018", "VMW042", "VMW043"}, codes
    with UploadServer() as server:
        session = ClientSession(
            base / "data",
            app,
            [JOB],
            naming=Naming(app_name="vmup", upload_url=server.url),
            checkpoint_period=600.0,
        )
        session.start()
        try:
            yield session, server
        finally:
            session.close()


def test_the_intermediate_file_is_uploaded_while_the_job_runs(
    uploads: tuple[ClientSession, UploadServer],
) -> None:
    session, server = uploads
    client = session.client
    partial = f"{RESULT}_1"  # <OUTFILE_1/>
    client.wait_for(
        lambda: partial in server.files(), timeout=WAIT, what=f"the upload of {partial}"
    )
    assert server.files()[partial] == b"partial result\n"
    # the client told the wrapper (boinc_ufs_partial.dat), while the task still runs
    slot = next(session.data.path.glob("slots/*/events.jsonl")).parent
    done = client.wait_for(
        lambda: [e for e in read_events(slot) if e["event"] == "upload_done"],
        timeout=WAIT,
        what="the wrapper to see the client's upload status",
    )
    # the status the client writes is the file's state: 1 = FILE_PRESENT (< 0: an error)
    assert done[0]["file"] == "partial.dat" and done[0]["status"] == 1
    assert not (slot / "boinc_ufr_partial.dat").exists()  # the client took the request
    assert not [e for e in read_events(slot) if e["event"] == "outcome"]  # still running


def test_the_job_completes_and_the_final_output_is_uploaded(
    uploads: tuple[ClientSession, UploadServer],
) -> None:
    session, server = uploads
    session.client.wait_task(
        RESULT, lambda t: t.ready_to_report, timeout=WAIT, what="ready to report"
    )
    assert server.files()[f"{RESULT}_0"] == b"final result\n"
    assert server.files()[f"{RESULT}_1"] == b"partial result\n"  # uploaded once, not emptied
    report = session.quit()
    assert report.graceful
    record = session.data.results()[RESULT]
    assert record.success and record.state is ResultState.UPLOADED, record
    assert "Intermediate file uploaded. (partial.dat)" in record.stderr_out
