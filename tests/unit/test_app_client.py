"""AppClient (the app side) against a segment driven by the test as the client would."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.common import FakeClock
from vmwrapper.boinc import files
from vmwrapper.boinc.app import AppClient, ClientStatus
from vmwrapper.boinc.init_data import AppInitData, format_init_data
from vmwrapper.boinc.messages import Channel
from vmwrapper.boinc.shmem import Segment, sysv_key
from vmwrapper.outcome import Finish, PlainExit, TemporaryExit


class Probe:
    def __init__(self) -> None:
        self.alive = True
        self.calls: list[int] = []

    def __call__(self, pid: int) -> bool:
        self.calls.append(pid)
        return self.alive


class Slot:
    """A slot with init_data.xml and a zeroed segment; the test plays the client."""

    def __init__(self, root: Path, client_pid: int = 4321, shm_key: int = -1) -> None:
        self.dir = root
        self.write_init_data(AppInitData(shm_key=shm_key, client_pid=client_pid, slot=0))
        self.seg = Segment.create(root)
        self.clock = FakeClock()
        self.probe = Probe()

    def write_init_data(self, aid: AppInitData) -> None:
        (self.dir / "init_data.xml").write_text(format_init_data(aid))

    def attach(self) -> AppClient:
        return AppClient.attach(
            self.dir, clock=self.clock, sleep=self.clock.sleep, probe=self.probe
        )

    def take_trickle(self) -> str:
        """What the client does on <have_new_trickle_up/>: move the file away."""
        path = self.dir / "trickle_up.xml"
        text = path.read_text()
        path.unlink()
        return text


@pytest.fixture
def slot(tmp_path: Path) -> Iterator[Slot]:
    s = Slot(tmp_path)
    yield s
    s.seg.close()


# -- attaching ---------------------------------------------------------------------------------


def test_attach_reads_init_data_maps_segment_and_locks(slot: Slot) -> None:
    with slot.attach() as client:
        assert not client.standalone
        assert client.init_data.client_pid == 4321
        assert (slot.dir / "boinc_lockfile").exists()
    assert not (slot.dir / "boinc_lockfile").exists()  # released and deleted by close()


@pytest.mark.parametrize(
    "what", ["no init_data", "no segment", "sysv key without segment", "bad init_data"]
)
def test_standalone_when_the_client_gave_no_segment(tmp_path: Path, what: str) -> None:
    (tmp_path / "key").write_text("")
    s = Slot(tmp_path, shm_key=sysv_key(tmp_path / "key") if what.startswith("sysv") else -1)
    s.seg.close()
    if what == "no init_data":
        (tmp_path / "init_data.xml").unlink()
    if what == "bad init_data":
        (tmp_path / "init_data.xml").write_text("<app_init_data><slot>")
    if what == "no segment":
        (tmp_path / "boinc_mmap_file").unlink()
    with s.attach() as client:
        assert client.standalone
        # every protocol call is a harmless no-op
        assert client.poll() == ClientStatus()
        client.report_status(cpu_time=1, checkpoint_cpu_time=1, fraction_done=0.5)
        client.send_trickle_up("v", "t")
        client.upload_file("out")
        client.web_graphics_url("http://x")
        client.tick()
        assert not (tmp_path / "trickle_up.xml").exists()
        client.write_outcome(Finish(0))
    assert files.read_finish_file(tmp_path) == Finish(0)  # the finish file is still written


# -- control and heartbeat -------------------------------------------------------------------


def test_control_messages_become_flags(slot: Slot) -> None:
    with slot.attach() as client:
        slot.seg.send(Channel.PROCESS_CONTROL_REQUEST, "<suspend/>")
        assert client.poll().suspended
        assert not slot.seg.has_message(Channel.PROCESS_CONTROL_REQUEST)  # read while suspended
        slot.seg.send(Channel.PROCESS_CONTROL_REQUEST, "<resume/>")
        assert not client.poll().suspended
        slot.seg.send(Channel.PROCESS_CONTROL_REQUEST, "<reread_app_info/>")
        assert client.poll().reread_init_data
        slot.write_init_data(AppInitData(shm_key=-1, client_pid=4321, checkpoint_period=123))
        assert client.ack_reread().checkpoint_period == 123
        assert not client.poll().reread_init_data
        slot.seg.send(Channel.PROCESS_CONTROL_REQUEST, "<quit/>")
        assert client.poll().quit_request
        slot.seg.send(Channel.PROCESS_CONTROL_REQUEST, "<abort/>")
        status = client.poll()
        assert status.quit_request and status.abort_request  # both stay set


def test_heartbeat_carries_max_wss_and_network_suspension(slot: Slot) -> None:
    with slot.attach() as client:
        slot.seg.send(
            Channel.HEARTBEAT,
            "<heartbeat/><wss>1.0e6</wss><max_wss>3.0e9</max_wss><network_suspended/>",
        )
        status = client.poll()
        assert status.max_wss == 3e9 and status.network_suspended
        slot.seg.send(Channel.HEARTBEAT, "<heartbeat/><wss>1.0e6</wss><max_wss>3.0e9</max_wss>")
        assert not client.poll().network_suspended


def test_dead_client_by_pid_probe_every_10_s(slot: Slot) -> None:
    with slot.attach() as client:
        for _ in range(9):
            slot.clock.now += 1
            client.poll()
        assert slot.probe.calls == []  # not probed before 10 s
        slot.clock.now += 1
        client.poll()
        assert slot.probe.calls == [4321]
        slot.probe.alive = False
        slot.clock.now += 5
        assert not client.poll().no_heartbeat  # next probe only 10 s after the last
        slot.clock.now += 5
        assert client.poll().no_heartbeat


def test_dead_client_by_heartbeat_gap_without_pid(tmp_path: Path) -> None:
    s = Slot(tmp_path, client_pid=0)
    with s.attach() as client:
        for _ in range(40):  # heartbeats keep it alive
            s.clock.now += 1
            s.seg.send(Channel.HEARTBEAT, "<heartbeat/>")
            assert not client.poll().no_heartbeat
        s.clock.now += 30
        assert not client.poll().no_heartbeat  # exactly 30 s: not yet
        s.clock.now += 1
        assert client.poll().no_heartbeat
        assert s.probe.calls == []
    s.seg.close()


# -- status -----------------------------------------------------------------------------------


def test_status_in_wrapper_format_not_while_suspended_never_overwritten(slot: Slot) -> None:
    with slot.attach() as client:
        client.report_status(
            cpu_time=12.5, checkpoint_cpu_time=10, fraction_done=0.25, other_pid=99
        )
        assert slot.seg.peek(Channel.APP_STATUS) == (
            "<current_cpu_time>1.250000e+01</current_cpu_time>\n"
            "<checkpoint_cpu_time>1.000000e+01</checkpoint_cpu_time>\n"
            "<fraction_done>2.500000e-01</fraction_done>\n"
            "<other_pid>99</other_pid>\n"
        )
        client.report_status(cpu_time=13, checkpoint_cpu_time=10, fraction_done=0.3)
        assert "1.250000e+01" in (slot.seg.receive(Channel.APP_STATUS) or "")  # kept, unread
        slot.seg.send(Channel.PROCESS_CONTROL_REQUEST, "<suspend/>")
        client.poll()
        client.report_status(cpu_time=14, checkpoint_cpu_time=10, fraction_done=0.4)
        assert not slot.seg.has_message(Channel.APP_STATUS)
        slot.seg.send(Channel.PROCESS_CONTROL_REQUEST, "<resume/>")
        client.poll()
        client.report_status(cpu_time=15, checkpoint_cpu_time=10, fraction_done=0.5)
        assert "1.500000e+01" in (slot.seg.receive(Channel.APP_STATUS) or "")


# -- trickles and uploads ------------------------------------------------------------------


def test_two_trickles_in_one_second_both_arrive_in_order(slot: Slot) -> None:
    with slot.attach() as client:
        client.send_trickle_up("a", "first")
        client.send_trickle_up("b", "second")
        assert client.pending_trickles == 2
        assert slot.seg.receive(Channel.TRICKLE_UP) == "<have_new_trickle_up/>\n"
        client.tick()
        # not overwritten: the client has not taken the first file yet
        assert (slot.dir / "trickle_up.xml").read_text() == "<variety>a</variety>\nfirst"
        assert slot.take_trickle() == "<variety>a</variety>\nfirst"
        client.tick()
        assert (slot.dir / "trickle_up.xml").read_text() == "<variety>b</variety>\nsecond"
        assert slot.seg.receive(Channel.TRICKLE_UP) == "<have_new_trickle_up/>\n"
        slot.take_trickle()
        client.tick()
        assert client.pending_trickles == 0
        assert not slot.seg.has_message(Channel.TRICKLE_UP)


def test_next_trickle_waits_until_the_notice_was_read(slot: Slot) -> None:
    with slot.attach() as client:
        slot.seg.send(Channel.TRICKLE_UP, "busy")  # channel still full
        client.send_trickle_up("a", "1")
        client.send_trickle_up("b", "2")
        (slot.dir / "trickle_up.xml").unlink()  # file gone, but our notice never went out
        client.tick()
        assert not (slot.dir / "trickle_up.xml").exists()
        assert slot.seg.receive(Channel.TRICKLE_UP) == "busy"
        client.tick()  # the notice for "a" goes out now; "b" still waits
        assert slot.seg.peek(Channel.TRICKLE_UP) == "<have_new_trickle_up/>\n"
        assert client.pending_trickles == 2


def test_stale_trickle_file_from_an_earlier_run_is_announced(slot: Slot) -> None:
    files.write_trickle_up(slot.dir, files.Trickle("old", "x"))
    with slot.attach() as client:
        client.tick()
        assert slot.seg.receive(Channel.TRICKLE_UP) == "<have_new_trickle_up/>\n"


def test_upload_request_notice_and_status(slot: Slot) -> None:
    with slot.attach() as client:
        client.send_trickle_up("v", "t")
        slot.seg.receive(Channel.TRICKLE_UP)
        slot.seg.send(Channel.TRICKLE_UP, "block")
        client.send_trickle_up("w", "u")
        slot.take_trickle()
        slot.seg.receive(Channel.TRICKLE_UP)
        client.upload_file("result")
        # both notices in one message, as the API sends them
        assert slot.seg.receive(Channel.TRICKLE_UP) == (
            "<have_new_trickle_up/>\n<have_new_upload_file/>\n"
        )
        assert files.list_upload_requests(slot.dir) == ["result"]
        assert client.upload_status("result") is None
        files.write_upload_status(slot.dir, "result", 0)
        slot.seg.send(Channel.TRICKLE_DOWN, "<upload_file_status/>\n")
        client.poll()
        assert client.upload_status("result") == 0
        assert not slot.seg.has_message(Channel.TRICKLE_DOWN)


def test_trickle_down_is_read_and_deleted(slot: Slot) -> None:
    with slot.attach() as client:
        assert client.receive_trickle_down() is None
        files.write_trickle_down(slot.dir, "<cmd>stop</cmd>\n", 5.0)
        slot.seg.send(Channel.TRICKLE_DOWN, "<have_trickle_down/>\n")
        client.poll()
        assert client.receive_trickle_down() == "<cmd>stop</cmd>\n"
        assert files.find_trickle_down(slot.dir) is None


def test_graphics_replies_sent_once_each_when_the_channel_is_free(slot: Slot) -> None:
    with slot.attach() as client:
        client.web_graphics_url("http://localhost:8080")
        client.remote_desktop_addr("localhost:5900")
        assert slot.seg.receive(Channel.GRAPHICS_REPLY) == (
            "<web_graphics_url>http://localhost:8080</web_graphics_url>"
        )
        client.tick()
        assert slot.seg.receive(Channel.GRAPHICS_REPLY) == (
            "<remote_desktop_addr>localhost:5900</remote_desktop_addr>"
        )
        client.tick()
        assert not slot.seg.has_message(Channel.GRAPHICS_REPLY)


def test_resolve_follows_link_files(slot: Slot) -> None:
    files.write_soft_link(slot.dir / "vbox_job.xml", "../../projects/p/vbox_job_1.xml")
    with slot.attach() as client:
        assert client.resolve("vbox_job.xml") == slot.dir / "../../projects/p/vbox_job_1.xml"


# -- the end -------------------------------------------------------------------------------


def test_finish_sends_final_status_then_writes_the_file(slot: Slot) -> None:
    with slot.attach() as client:
        client.report_status(cpu_time=5, checkpoint_cpu_time=4, fraction_done=0.9)
        slot.seg.receive(Channel.APP_STATUS)
        client.write_outcome(Finish(0, "all good", notice=True))
        final = slot.seg.receive(Channel.APP_STATUS) or ""
        assert "<fraction_done>1.000000e+00</fraction_done>" in final
        assert "<current_cpu_time>5.000000e+00</current_cpu_time>" in final
    assert (slot.dir / "boinc_finish_called").read_text() == "0\nall good\nnotice\n"


def test_final_status_replaces_an_unread_one_without_waiting(slot: Slot) -> None:
    with slot.attach() as client:
        client.report_status(cpu_time=5, checkpoint_cpu_time=4, fraction_done=0.9)
        assert slot.seg.has_message(Channel.APP_STATUS)  # the client has not read it yet
        client.write_outcome(Finish(1))
        assert slot.clock.slept == []
        # what the client reads after the exit is the final status, whole
        final = slot.seg.receive(Channel.APP_STATUS) or ""
        assert final.startswith("<current_cpu_time>")
        assert "<fraction_done>1.000000e+00</fraction_done>" in final
    assert files.read_finish_file(slot.dir) == Finish(1)


def test_finish_hands_queued_trickles_over_first(slot: Slot) -> None:
    with slot.attach() as client:
        client.send_trickle_up("a", "1")
        client.send_trickle_up("b", "2")
        taken: list[str] = []

        def client_poll(seconds: float) -> None:  # the client's 1 s poll, while we wait
            slot.clock.now += seconds
            if slot.seg.receive(Channel.TRICKLE_UP):
                taken.append(slot.take_trickle())

        slot.clock.sleep = client_poll  # type: ignore[method-assign]
        client._sleep = client_poll
        client.write_outcome(Finish(0))
        # the last one is announced; the client reads the channel once more after the exit
        if slot.seg.receive(Channel.TRICKLE_UP):
            taken.append(slot.take_trickle())
        assert taken == ["<variety>a</variety>\n1", "<variety>b</variety>\n2"]


def test_temporary_exit_and_plain_exit(slot: Slot) -> None:
    with slot.attach() as client:
        client.write_outcome(TemporaryExit(600, "VM\nbusy"))
        client.write_outcome(PlainExit(0))
    assert (slot.dir / "boinc_temporary_exit").read_text() == "600\nVM busy\n"
    assert not (slot.dir / "boinc_finish_called").exists()


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o664)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(30)
"""


def test_lockfile_held_by_another_process_waits_then_fails(slot: Slot) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(slot.dir / "boinc_lockfile")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(files.LockfileBusy):
            slot.attach()
        assert slot.clock.slept == [35.0]  # the API's wait before the second try
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_garbage_from_the_client_is_dropped_not_fatal(slot: Slot) -> None:
    with slot.attach() as client:
        raw = slot.seg._map  # write a non-UTF-8 control message as a broken client might
        raw[1:4] = b"\xff\xfe\0"
        raw[0] = 1
        assert client.poll() == ClientStatus()
        assert not slot.seg.has_message(Channel.PROCESS_CONTROL_REQUEST)  # taken, dropped
        slot.seg.send(Channel.PROCESS_CONTROL_REQUEST, "<suspend/>")
        assert client.poll().suspended


def test_no_trickle_flush_wait_for_a_dead_client(slot: Slot) -> None:
    with slot.attach() as client:
        client.send_trickle_up("a", "1")
        client.send_trickle_up("b", "2")
        slot.probe.alive = False
        slot.clock.now += 10
        assert client.poll().no_heartbeat
        client.write_outcome(TemporaryExit(86400, "client gone"))
        assert slot.clock.slept == []  # nobody to hand them to: no waiting


def test_system_v_segment_when_init_data_names_a_key(tmp_path: Path) -> None:
    (tmp_path / "init_data.xml").write_text("")
    key = sysv_key(tmp_path / "init_data.xml")
    (tmp_path / "init_data.xml").write_text(format_init_data(AppInitData(shm_key=key)))
    client_side = Segment.create_sysv(key, tmp_path / "init_data.xml")
    try:
        with AppClient.attach(tmp_path) as client:
            assert not client.standalone
            client.report_status(cpu_time=1, checkpoint_cpu_time=0, fraction_done=0.5)
            assert "<fraction_done>5.000000e-01" in (client_side.receive(Channel.APP_STATUS) or "")
            client_side.send(Channel.PROCESS_CONTROL_REQUEST, "<suspend/>")
            assert client.poll().suspended
    finally:
        client_side.close()
        Segment.destroy_sysv(key)
