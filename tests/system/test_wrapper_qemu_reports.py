"""The wrapper's reports on a real QEMU guest under the harness (one boot): the VM's network
bytes reach the client's transfer accounting, and a fatal error (the guest says it ran out of
memory) puts a real screenshot of the still-running VM and QEMU's logs into stderr.
"""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.fault_fixtures import package_app
from vmwrapper.harness.job import JobOutcome, JobRequest, run_job
from vmwrapper.outcome import EXIT_OUT_OF_MEMORY

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]

UPLOAD = 200_000  # bytes the guest sends to the host

JOB = """<vbox_job>
  <os_name>Linux26_64</os_name>
  <vmwrapper_backends>qemu</vmwrapper_backends>
  <vmwrapper_software_emulation/>
  <memory_size_mb>256</memory_size_mb>
  <enable_shared_directory/>
  <enable_network/>
  <enable_screenshots_on_error/>
  <completion_trigger_file>done</completion_trigger_file>
  <disable_automatic_checkpoints/>
</vbox_job>
"""

# Sends UPLOAD bytes to the host's sink (10.0.2.2 is the host under QEMU's user-mode NAT),
# then prints the marker a guest uses to say it ran out of memory: the wrapper ends the job
# with EXIT_OUT_OF_MEMORY while the VM still runs.
APP = f"""#!/bin/sh
port=$(cat sink_port)
head -c {UPLOAD} /dev/zero | nc 10.0.2.2 "$port" && echo "upload done"
sleep 1
echo "EXIT_OUT_OF_MEMORY"
sleep 600
"""


class Sink:
    """A TCP server on the host's loopback that counts what it is sent."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.received = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                while chunk := conn.recv(65536):
                    self.received += len(chunk)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.close()


def test_network_bytes_and_the_error_screenshot(
    tmp_path: Path,
    default_guest_image: Path,
    sink: Sink,
) -> None:
    port_file = tmp_path / "sink_port"
    port_file.write_text(f"{sink.port}\n")
    app = package_app(
        tmp_path,
        default_guest_image,
        APP,
        JOB,
        outputs=(),
        inputs=(("sink_port", port_file),),
        name="reports",
    )
    request = JobRequest(
        app_dir=app,
        workdir=tmp_path / "work",
        inputs={"sink_port": port_file},
        keep_slot=True,
        max_episodes=1,
        daily_xfer_limit_mb=100.0,
    )
    report = run_job(request)
    stderr = (Path(report.slot_dir) / "stderr.txt").read_text(errors="replace")
    assert report.outcome is JobOutcome.ERROR, report.message + stderr[-3000:]
    assert report.finish_status == EXIT_OUT_OF_MEMORY, stderr[-3000:]
    assert "upload done" in stderr and sink.received == UPLOAD
    # the guest's upload, counted at its NIC, reached the client's transfer accounting
    assert UPLOAD <= report.bytes_sent < UPLOAD * 1.3, (report.bytes_sent, report.bytes_received)
    assert 0 < report.bytes_received < UPLOAD
    # the screenshot of the running VM, in vboxwrapper's block
    md5 = re.search(r"^MD5 Signature: ([0-9a-f]{32})$", stderr, re.M)
    data = re.search(r"^Data: ([A-Za-z0-9+/=]+)$", stderr, re.M)
    assert md5 and data, stderr[-3000:]
    png = base64.b64decode(data.group(1))
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and hashlib.md5(png).hexdigest() == md5.group(1)
    assert "VM Console Log (qemu-console.log):" in stderr
