"""The mapped segment: creation and zeroing by the client, attachment by the app, channel
semantics at the byte level (docs/compatibility.md#shared-memory)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vmwrapper.boinc.messages import Channel
from vmwrapper.boinc.shmem import MMAP_FILE_NAME, Segment, sysv_key
from vmwrapper.errors import ProtocolError


def test_create_makes_8192_zero_bytes_even_over_an_old_file(tmp_path: Path) -> None:
    (tmp_path / MMAP_FILE_NAME).write_bytes(b"\x01old" * 3000)  # 12000 bytes of garbage
    with Segment.create(tmp_path) as seg:
        assert seg.raw() == bytes(8192)
    data = (tmp_path / MMAP_FILE_NAME).read_bytes()
    assert data[:8192] == bytes(8192)


def test_create_extends_a_short_file(tmp_path: Path) -> None:
    (tmp_path / MMAP_FILE_NAME).write_bytes(b"abc")
    Segment.create(tmp_path).close()
    assert (tmp_path / MMAP_FILE_NAME).stat().st_size == 8192


def test_attach_without_a_usable_file_is_standalone(tmp_path: Path) -> None:
    assert Segment.attach(tmp_path) is None
    (tmp_path / MMAP_FILE_NAME).write_bytes(b"")
    assert Segment.attach(tmp_path) is None
    (tmp_path / MMAP_FILE_NAME).write_bytes(bytes(100))
    assert Segment.attach(tmp_path) is None


def test_both_sides_see_each_others_bytes(tmp_path: Path) -> None:
    with Segment.create(tmp_path) as client:
        app = Segment.attach(tmp_path)
        assert app is not None
        with app:
            assert client.send(Channel.PROCESS_CONTROL_REQUEST, "<suspend/>")
            raw = app.raw()
            assert raw[0] == 1 and raw[1:12] == b"<suspend/>\0"
            assert app.receive(Channel.PROCESS_CONTROL_REQUEST) == "<suspend/>"
            assert client.raw()[0] == 0  # the reader clears the flag
            assert app.send(Channel.APP_STATUS, "<current_cpu_time>1</current_cpu_time>\n")
            assert client.raw()[0x1400:0x1401] == b"\x01"
            assert client.receive(Channel.APP_STATUS) == "<current_cpu_time>1</current_cpu_time>\n"


@pytest.mark.parametrize("channel", list(Channel))
def test_each_channel_lives_at_its_offset(tmp_path: Path, channel: Channel) -> None:
    with Segment.create(tmp_path) as seg:
        seg.send(channel, "x")
        raw = seg.raw()
        assert raw[channel.offset : channel.offset + 3] == b"\x01x\0"
        assert raw.count(1) == 1  # nothing written to any other channel


def test_full_channel_is_not_overwritten(tmp_path: Path) -> None:
    with Segment.create(tmp_path) as seg:
        assert seg.send(Channel.HEARTBEAT, "<heartbeat/>")
        before = seg.raw()
        assert seg.send(Channel.HEARTBEAT, "<heartbeat/><wss>2</wss>") is False
        assert seg.raw() == before
        assert seg.receive(Channel.HEARTBEAT) == "<heartbeat/>"
        assert seg.receive(Channel.HEARTBEAT) is None


def test_send_overwrite_replaces_an_unread_message_whole(tmp_path: Path) -> None:
    with Segment.create(tmp_path) as seg:
        assert seg.send(Channel.APP_STATUS, "<fraction_done>0.5</fraction_done>")
        seg.send_overwrite(Channel.APP_STATUS, "<done/>")
        assert seg.receive(Channel.APP_STATUS) == "<done/>"  # no tail of the longer one
        seg.send_overwrite(Channel.APP_STATUS, "<again/>")  # an empty channel: a plain send
        assert seg.receive(Channel.APP_STATUS) == "<again/>"
        assert seg.receive(Channel.APP_STATUS) is None


def test_reading_leaves_stale_text_and_a_shorter_message_ends_at_its_nul(tmp_path: Path) -> None:
    with Segment.create(tmp_path) as seg:
        seg.send(Channel.TRICKLE_UP, "<have_new_trickle_up/>\n")
        seg.receive(Channel.TRICKLE_UP)
        seg.send(Channel.TRICKLE_UP, "ab")
        assert seg.raw()[0x1800:0x1806] == b"\x01ab\0ve"  # stale tail after the NUL
        assert seg.peek(Channel.TRICKLE_UP) == "ab"
        assert seg.receive(Channel.TRICKLE_UP) == "ab"


def test_limit_is_1022_bytes(tmp_path: Path) -> None:
    with Segment.create(tmp_path) as seg:
        assert seg.send(Channel.GRAPHICS_REPLY, "u" * 1022)
        assert seg.raw()[0x0C00 + 1023] == 0  # the NUL is the channel's last byte
        assert seg.raw()[0x1000] == 0  # the next channel is untouched
        seg.receive(Channel.GRAPHICS_REPLY)
        with pytest.raises(ProtocolError):
            seg.send(Channel.GRAPHICS_REPLY, "u" * 1023)
        assert not seg.has_message(Channel.GRAPHICS_REPLY)


class RecordingBuffer(bytearray):
    """A segment stand-in that records the order of writes."""

    writes: list[int]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.writes.append(key.start if isinstance(key, slice) else key)
        super().__setitem__(key, value)


def test_payload_is_written_before_the_flag(tmp_path: Path) -> None:
    buf = RecordingBuffer(8192)
    buf.writes = []
    seg = Segment(tmp_path / "x", buf)  # type: ignore[arg-type]
    seg.send(Channel.APP_STATUS, "<fraction_done>0.5</fraction_done>\n")
    assert buf.writes == [0x1401, 0x1400]  # text+NUL first, flag byte last
    buf.writes.clear()
    seg.receive(Channel.APP_STATUS)
    assert buf.writes == [0x1400]  # the reader only clears the flag


def test_closed_segment_says_so(tmp_path: Path) -> None:
    seg = Segment.create(tmp_path)
    seg.close()
    seg.close()  # idempotent
    assert seg.closed
    with pytest.raises(ProtocolError, match="closed"):
        seg.send(Channel.HEARTBEAT, "x")


# -- System V (app versions without api_version >= 6.0, --run_test_app) -----------------------


def test_sysv_segment_both_sides(tmp_path: Path) -> None:
    origin = tmp_path / "init_data.xml"
    origin.write_text("")
    key = sysv_key(origin)
    assert key == sysv_key(origin) != -1  # ftok is stable for the same file
    assert Segment.attach_sysv(key, origin) is None  # nothing made yet: standalone
    client = Segment.create_sysv(key, origin)
    try:
        app = Segment.attach_sysv(key, origin)
        assert app is not None
        with app:
            assert client.raw() == bytes(8192)
            assert client.send(Channel.PROCESS_CONTROL_REQUEST, "<quit/>")
            assert app.raw()[0:9] == b"\x01<quit/>\0"
            assert app.receive(Channel.PROCESS_CONTROL_REQUEST) == "<quit/>"
            assert app.send(Channel.TRICKLE_UP, "<have_new_trickle_up/>\n")
            assert client.receive(Channel.TRICKLE_UP) == "<have_new_trickle_up/>\n"
            assert not client.send(Channel.HEARTBEAT, "a") or not client.send(
                Channel.HEARTBEAT, "b"
            )
        client.close()
        # the client zeroes an existing segment when it makes it again
        again = Segment.create_sysv(key, origin)
        assert again.raw() == bytes(8192)
        again.close()
    finally:
        Segment.destroy_sysv(key)
    assert Segment.attach_sysv(key, origin) is None
