"""What a running job exposes, checked on real QEMU guests run by the harness (two boots).

* A hung guest (the network-off job's app never finishes) is ended by ``job_duration``: finish
  0 with its outputs, once the elapsed time reaches it.
* Network off by default, seen from inside the guest: its only interface is ``lo`` and nothing
  answers at the NAT gateway address. (The second job, with ``<enable_network/>``, sees a NIC:
  the check would notice one.)
* Port forwards and the console (VNC) listen on 127.0.0.1 only, by default.
* The console refuses a client without the per-task password: a minimal RFB 3.8 client sees
  VNC authentication as the only security type offered (never "None"), and a response that
  is not the DES encryption of the challenge under the password is refused. An RFB 3.3
  client, which cannot choose, is told VNC authentication too.
* The volunteer can log in: the password in the slot's ``vm_console.txt`` (mode 0640, not
  world-readable) passes VNC authentication (DES of the challenge, as a VNC viewer computes
  it), and it is in neither stderr.txt (uploaded) nor events.jsonl.
"""

from __future__ import annotations

import os
import re
import socket
import struct
from pathlib import Path

import psutil
import pytest

from helpers.common import GUEST_MEMORY_MB
from helpers.fault_fixtures import (
    events,
    no_qemu_left,
    output_text,
    package_app,
    qemu_procs,
    run,
)
from vmwrapper.harness.job import JobReport, Progress
from vmwrapper.hostports import free_port
from vmwrapper.runconfig import CONSOLE_FILE, parse_console_password

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]

PROBE = """#!/bin/sh
{
  echo "interfaces: $(ls /sys/class/net | tr '\\n' ' ')"
  if ping -c 1 -W 2 10.0.2.2 >/dev/null 2>&1; then echo "gateway: reachable"; else
    echo "gateway: unreachable"; fi
} > result
"""
# finishes by itself
PROBE_APP = PROBE + "sleep 12\nprintf '0\\n0\\n' > done\nsleep 600\n"
# hangs: never writes the completion file, never exits (the job_duration must end it)
HUNG_APP = PROBE + "while :; do sleep 1; done\n"
JOB_DURATION = 60  # the guest must boot and write its probe within this


def job(network: bool, job_duration: int = 0) -> str:
    net = (
        "<enable_network/><pf_guest_port>80</pf_guest_port>"
        f"<port_forward><host_port>{free_port()}</host_port><guest_port>22</guest_port>"
        "</port_forward>"
        if network
        else ""
    )
    return f"""<vbox_job>
  <os_name>Linux26_64</os_name>
  <vmwrapper_backends>qemu</vmwrapper_backends>
  <vmwrapper_software_emulation/>
  <memory_size_mb>{GUEST_MEMORY_MB}</memory_size_mb>
  <enable_shared_directory/>
  <enable_remotedesktop/>
  {net}
  {f"<job_duration>{job_duration}</job_duration>" if job_duration else ""}
  <completion_trigger_file>done</completion_trigger_file>
</vbox_job>
"""


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def rfb_probe(port: int) -> dict[str, object]:
    """A minimal RFB client: the security types offered, and the answer to a wrong
    VNC-auth response (16 random bytes instead of DES(challenge, password))."""
    found: dict[str, object] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        found["version"] = _recv_exact(sock, 12)
        sock.sendall(b"RFB 003.008\n")
        count = _recv_exact(sock, 1)[0]
        types = list(_recv_exact(sock, count)) if count else []
        found["types"] = types
        if 2 in types:
            sock.sendall(bytes([2]))
            found["challenge"] = _recv_exact(sock, 16)
            sock.sendall(os.urandom(16))
            (found["result"],) = struct.unpack(">I", _recv_exact(sock, 4))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        _recv_exact(sock, 12)
        sock.sendall(b"RFB 003.003\n")  # the server picks the type
        (found["type_3_3"],) = struct.unpack(">I", _recv_exact(sock, 4))
    return found


def vnc_des_response(password: str, challenge: bytes) -> bytes:
    """What a VNC viewer answers: the challenge DES-encrypted under the password's first 8
    bytes (zero-padded), each key byte bit-reversed (RFB's quirk)."""
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    raw = password.encode("latin-1")[:8].ljust(8, b"\0")
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in raw)
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # K1=K2=K3: single DES
    return encryptor.update(challenge) + encryptor.finalize()


def vnc_login(port: int, password: str) -> tuple[int, bytes]:
    """RFB 3.8 with VNC authentication: (SecurityResult, first bytes of ServerInit)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        _recv_exact(sock, 12)
        sock.sendall(b"RFB 003.008\n")
        count = _recv_exact(sock, 1)[0]
        assert 2 in _recv_exact(sock, count)
        sock.sendall(bytes([2]))
        challenge = _recv_exact(sock, 16)
        sock.sendall(vnc_des_response(password, challenge))
        (result,) = struct.unpack(">I", _recv_exact(sock, 4))
        if result != 0:
            return result, b""
        sock.sendall(bytes([1]))  # ClientInit: shared
        return result, _recv_exact(sock, 4)  # ServerInit: framebuffer width and height


def listeners(pid: int) -> list[tuple[str, int]]:
    found = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.pid == pid and conn.status == psutil.CONN_LISTEN and conn.laddr:
            ip, port = conn.laddr[0], conn.laddr[1]
            found.append((str(ip), int(port)))
    return found


Probed = tuple[str, dict[str, object], list[tuple[str, int]], JobReport]


def run_and_probe(app: Path, work: Path) -> Probed:
    slot = work / "slots" / "0"
    seen: dict[str, object] = {}
    bound: list[tuple[str, int]] = []

    def on_progress(progress: Progress) -> None:
        if seen:
            return
        # the console's port, as the wrapper told the client ("Detected: Remote Desktop ...")
        said = [str(e.get("message")) for e in events(slot)]
        pattern = r"Remote Desktop Enabled \(.*:(\d+)\)"
        vnc = [int(m) for line in said for m in re.findall(pattern, line)]
        procs = qemu_procs(slot)
        if not vnc or not procs:
            return
        bound.extend(listeners(procs[0].pid))
        seen.update(rfb_probe(vnc[0]))
        seen["port"] = vnc[0]
        # the volunteer's way in: the credential file in the slot
        console = slot / CONSOLE_FILE
        seen["console_mode"] = console.stat().st_mode & 0o777
        password = parse_console_password(console.read_text())
        assert password is not None
        seen["password"] = password
        seen["login"], seen["server_init"] = vnc_login(vnc[0], password)

    report = run(app, work, on_progress=on_progress, max_episodes=1)
    assert report.success, report.message + report.stderr_tail
    no_qemu_left(slot)
    return output_text(report), seen, bound, report


@pytest.fixture(scope="module")
def network_off(
    tmp_path_factory: pytest.TempPathFactory,
    default_guest_image: Path,
) -> Probed:
    tmp = tmp_path_factory.mktemp("net-off")
    app = package_app(tmp, default_guest_image, HUNG_APP, job(False, JOB_DURATION))
    return run_and_probe(app, tmp / "client")


@pytest.fixture(scope="module")
def network_on(
    tmp_path_factory: pytest.TempPathFactory,
    default_guest_image: Path,
) -> Probed:
    tmp = tmp_path_factory.mktemp("net-on")
    app = package_app(tmp, default_guest_image, PROBE_APP, job(network=True))
    return run_and_probe(app, tmp / "client")


def test_network_is_off_by_default_seen_from_the_guest(
    network_off: Probed,
    network_on: Probed,
) -> None:
    off, on = network_off[0], network_on[0]
    assert "interfaces: lo \n" in off, off
    assert "gateway: unreachable" in off
    # the same probe with <enable_network/> sees a NIC: the check above means something
    assert "interfaces: lo \n" not in on and "eth0" in on, on


def test_forwards_and_console_listen_on_loopback_only(
    network_off: Probed,
    network_on: Probed,
) -> None:
    off_bound, on_bound = network_off[2], network_on[2]
    assert off_bound and all(ip == "127.0.0.1" for ip, _ in off_bound), off_bound
    # VNC, the webapi forward (pf_guest_port) and the extra forward: three listeners
    assert len(on_bound) >= 3 and all(ip == "127.0.0.1" for ip, _ in on_bound), on_bound


def test_a_hung_guest_is_ended_by_job_duration(network_off: Probed) -> None:
    # The app never writes the completion file and never exits: at job_duration the wrapper
    # powers the VM off and finishes with 0 (vboxwrapper's row 24), with the outputs.
    report = network_off[3]
    assert report.finish_status == 0 and report.episodes == 1
    assert "interfaces:" in output_text(report)
    assert JOB_DURATION <= report.elapsed < JOB_DURATION + 120
    slot = Path(report.slot_dir)
    assert not events(slot, "completion_trigger")
    assert [e for e in events(slot, "outcome") if float(str(e.get("elapsed", 0))) >= JOB_DURATION]


@pytest.mark.parametrize("which", ["network_off", "network_on"])
def test_console_refuses_a_client_without_the_password(
    which: str, request: pytest.FixtureRequest
) -> None:
    seen = request.getfixturevalue(which)[1]
    assert seen, "the console was never probed"
    assert (("127.0.0.1", seen["port"])) in request.getfixturevalue(which)[2]
    assert seen["version"] == b"RFB 003.008\n"
    assert seen["types"] == [2], seen  # VNC authentication only: no type 1 ("None")
    assert seen["result"] == 1, seen  # a wrong DES response is refused
    assert seen["type_3_3"] == 2, seen  # an RFB 3.3 client is told VNC auth too


@pytest.mark.parametrize("which", ["network_off", "network_on"])
def test_the_volunteer_logs_in_with_the_password_from_the_slot(
    which: str, request: pytest.FixtureRequest
) -> None:
    seen, report = request.getfixturevalue(which)[1], request.getfixturevalue(which)[3]
    assert seen.get("login") == 0, seen  # VNC authentication passed
    width, height = struct.unpack(">HH", seen["server_init"])
    assert width > 0 and height > 0  # and the server sent the screen's size
    assert seen["console_mode"] & 0o007 == 0, seen["console_mode"]
    password = str(seen["password"])
    assert len(password) == 8  # VNC authentication checks 8 characters: no more are given
    slot = Path(report.slot_dir)
    assert password not in (slot / "stderr.txt").read_text()
    assert password not in (slot / "events.jsonl").read_text()
