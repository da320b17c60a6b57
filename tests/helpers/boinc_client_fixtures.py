"""Helpers for running jobs under the real BOINC client (Debian boinc-client 7.20.5).

* :func:`require_boinc_client` - fail (not skip) with the fix when the client is missing:
  ``make test`` installs it through scripts/install-deps.sh;
* :func:`write_probe_app_dir` - an APP_DIR (docs/compatibility.md#app-version-directory) whose main
  program is a launcher running ``tests/helpers/boinc_probe_app.py`` on our Python app side;
* :class:`ClientSession` - one data directory and the client on it, restartable, always
  stopped by :meth:`ClientSession.close`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vmwrapper.boincclient import (
    BoincClient,
    DataDir,
    JobRequest,
    Naming,
    StopReport,
    write_data_dir,
)
from vmwrapper.packaging.templates import format_input_template, parse_input_template

PROBE_APP = Path(__file__).with_name("boinc_probe_app.py")
PROBE_LAUNCHER = """#!/bin/sh
# The probe app's main program: like examples/common/vmwrapper-launcher, the interpreter comes
# from VMWRAPPER_PYTHON, which the data-dir writer bakes in (the client passes no variables).
exec "${VMWRAPPER_PYTHON:-python3}" probe_app.py "$@"
"""
PROBE_VERSION_XML = """<version>
    <file>
        <physical_name>probe_launcher_1</physical_name>
        <main_program/>
    </file>
    <file>
        <physical_name>probe_app_1.py</physical_name>
        <logical_name>probe_app.py</logical_name>
        <copy_file/>
    </file>
    <dont_throttle/>
    <is_wrapper/>
    <api_version>7.20.5</api_version>
</version>
"""
PROBE_INPUT_TEMPLATE = """<input_template>
    <file_info>
        <number>0</number>
    </file_info>
    <workunit>
        <file_ref>
            <file_number>0</file_number>
            <open_name>shared/in</open_name>
            <copy_file/>
        </file_ref>
        <command_line>--steps 8 --hold-at 4</command_line>
    </workunit>
</input_template>
"""
PROBE_OUTPUT_TEMPLATE = """<output_template>
    <file_info>
        <name><OUTFILE_0/></name>
        <generated_locally/>
        <upload_when_present/>
        <max_nbytes>100000</max_nbytes>
        <url><UPLOAD_URL/></url>
    </file_info>
    <result>
        <file_ref>
            <file_name><OUTFILE_0/></file_name>
            <open_name>shared/out</open_name>
            <copy_file/>
        </file_ref>
    </result>
</output_template>
"""


def require_boinc_client() -> None:
    missing = [p for p in ("boinc", "boinccmd") if shutil.which(p) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: run scripts/install-deps.sh (Debian boinc-client)"
        )


def write_probe_app_dir(app_dir: Path, input_text: str = "hello-probe") -> Path:
    """The probe app as a project would ship it."""
    (app_dir / "templates").mkdir(parents=True)
    (app_dir / "inputs").mkdir()
    (app_dir / "version.xml").write_text(PROBE_VERSION_XML)
    launcher = app_dir / "probe_launcher_1"
    launcher.write_text(PROBE_LAUNCHER)
    launcher.chmod(0o755)
    shutil.copyfile(PROBE_APP, app_dir / "probe_app_1.py")
    (app_dir / "templates" / "input_template.xml").write_text(PROBE_INPUT_TEMPLATE)
    (app_dir / "templates" / "output_template.xml").write_text(PROBE_OUTPUT_TEMPLATE)
    (app_dir / "inputs" / "in").write_text(input_text + "\n")
    return app_dir


class UploadServer:
    """A project's file upload handler, as far as the client speaks to it: the size query
    (``<get_file_size>``) and the upload (``<file_upload>`` header, then ``<data>`` and the
    bytes), answered with ``<data_server_reply><status>0</status>``. Files land in
    :attr:`received` by name; the URL holds ``file_upload_handler`` as real ones do."""

    def __init__(self) -> None:
        self.received: dict[str, bytes] = {}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                head, _, data = body.partition(b"<data>\n")
                name = re.search(rb"<(?:name|get_file_size)>([^<]+)<", head)
                reply = "<data_server_reply>\n    <status>0</status>\n"
                if b"<get_file_size>" in head:
                    reply += "    <file_size>0</file_size>\n"
                elif name is not None:
                    with server.lock:
                        server.received[name.group(1).decode()] = data
                payload = (reply + "</data_server_reply>\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{port}/vmwrapper_cgi/file_upload_handler"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> UploadServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def files(self) -> dict[str, bytes]:
        with self.lock:
            return dict(self.received)


class ClientSession:
    """A data directory with its client, for one test module."""

    def __init__(
        self,
        data_dir: Path,
        app_dir: Path,
        jobs: Sequence[JobRequest],
        *,
        naming: Naming = Naming(app_name="probe"),  # noqa: B008 - frozen value
        checkpoint_period: float = 2.0,
    ) -> None:
        require_boinc_client()
        self.data: DataDir = write_data_dir(
            data_dir,
            app_dir,
            jobs,
            password="pw-" + data_dir.name,
            naming=naming,
            python=sys.executable,
            checkpoint_period=checkpoint_period,
        )
        self.client = BoincClient(self.data)
        self.stops: list[StopReport] = []

    def start(self) -> BoincClient:
        """A running client on the data directory (a new one if none runs)."""
        if self.client.running():
            return self.client
        self.client = BoincClient(self.data)  # a fresh port: the old one may linger
        self.client.start()
        return self.client

    def quit(self) -> StopReport:
        report = self.client.quit()
        self.stops.append(report)
        return report

    def close(self) -> None:
        self.client.stop()


# --- a VM app version: the wrapper as main program, a real guest -----------------------------

VM_JOB_XML = """<vbox_job>
  <os_name>Linux26_64</os_name>
  <vmwrapper_backends>qemu</vmwrapper_backends>
  <vmwrapper_software_emulation/>
  <memory_size_mb>512</memory_size_mb>
  <enable_shared_directory/>
  <fraction_done_filename>progress</fraction_done_filename>
  <minimum_checkpoint_interval>3</minimum_checkpoint_interval>
</vbox_job>
"""
#: The guest app: one-second steps, a tick counter and the fraction done for the host; `starts`
#: gets a line each time the app starts, so a job resumed from a snapshot shows one start and a
#: job that booted afresh shows two. A minute: the client's shutdown must come while it runs,
#: after a checkpoint that a 15 s interval and a slow TCG boot can put half a minute in.
VM_STEPS = 60
VM_APP = f"""#!/bin/sh
# runs in the guest, in /root/shared
echo started >> starts
N={VM_STEPS}
i=0
while [ $i -lt $N ]; do
  i=$((i+1))
  echo $i > ticks
  awk "BEGIN {{ print $i / $N }}" > progress
  sleep 1
done
echo "vm output: $(cat in) ticks=$i starts=$(wc -l < starts)" > out
"""


def write_vm_app_dir(app_dir: Path, image: Path, work: Path, input_text: str = "hello-vm") -> Path:
    """A VM app version made by `vmwrapper package`, the development launcher as main program."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "job.xml").write_text(VM_JOB_XML)
    (work / "app.sh").write_text(VM_APP)
    (work / "app.sh").chmod(0o755)
    (work / "in").write_text(input_text + "\n")
    argv = [
        sys.executable,
        "-m",
        "vmwrapper",
        "package",
        "--app",
        "vmhello",
        "--version",
        "1.00",
        "--job",
        str(work / "job.xml"),
        "--image",
        str(image),
        "--boinc-app",
        str(work / "app.sh"),
        "--input",
        f"in={work / 'in'}",
        "--output",
        "out",
        "--out",
        str(app_dir),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    # A long estimate: while the app reports no fraction done, the client shows its own
    # guess 1 - exp(-elapsed / (rsc_fpops_est / flops)) once a minute has passed
    # (ACTIVE_TASK::write_gui); with 1e14 FLOPs at 1e9 FLOPS it stays below 0.003 for the
    # first five minutes, so it can never pass for the guest's i / N.
    path = app_dir / "templates" / "input_template.xml"
    template = parse_input_template(path.read_text())
    bounds = replace(template.bounds, rsc_fpops_est=1e14, rsc_fpops_bound=1e16)
    path.write_text(format_input_template(replace(template, bounds=bounds)))
    return app_dir
