"""The message codecs, byte for byte against the 7.20.5 client and API
(docs/compatibility.md#messages)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmwrapper.boinc import messages as m
from vmwrapper.boinc.messages import (
    AppStatus,
    Channel,
    ControlMessage,
    GraphicsReply,
    Heartbeat,
    TrickleDownNotice,
    TrickleUpNotice,
)
from vmwrapper.errors import ProtocolError

# -- layout --------------------------------------------------------------------------------


def test_segment_layout_is_struct_shared_mem() -> None:
    assert m.SEGMENT_SIZE == 8192 and m.CHANNEL_SIZE == 1024 and m.MAX_MESSAGE_BYTES == 1022
    assert [(c.name.lower(), c.offset) for c in Channel] == [
        ("process_control_request", 0x0000),
        ("process_control_reply", 0x0400),
        ("graphics_request", 0x0800),
        ("graphics_reply", 0x0C00),
        ("heartbeat", 0x1000),
        ("app_status", 0x1400),
        ("trickle_up", 0x1800),
        ("trickle_down", 0x1C00),
    ]


def test_frame_is_flag_then_text_then_nul() -> None:
    frame = m.encode_frame("<quit/>")
    assert frame == b"\x01<quit/>\x00" + bytes(1024 - 9)
    assert m.decode_frame(frame) == "<quit/>"


def test_frame_holds_exactly_1022_bytes() -> None:
    text = "x" * 1022
    frame = m.encode_frame(text)
    assert len(frame) == 1024 and frame[1023] == 0
    assert m.decode_frame(frame) == text
    with pytest.raises(ProtocolError, match="at most 1022 bytes"):
        m.encode_frame("x" * 1023)
    with pytest.raises(ProtocolError, match="at most 1022"):
        m.encode_frame("é" * 512)  # 1024 bytes in UTF-8


def test_frame_refuses_nul() -> None:
    with pytest.raises(ProtocolError, match="NUL"):
        m.encode_text("a\0b")


def test_decode_reads_to_the_first_nul_and_ignores_stale_bytes() -> None:
    frame = b"\x01<resume/>\x00pend/>" + bytes(1024 - 17)
    assert m.decode_frame(frame) == "<resume/>"


def test_decode_empty_channel_is_none_even_with_stale_text() -> None:
    frame = b"\x00<suspend/>\x00" + bytes(1024 - 12)
    assert m.decode_frame(frame) is None


def test_decode_without_nul_stops_at_1022_bytes_like_strlcpy() -> None:
    frame = b"\x01" + b"y" * 1023
    assert m.decode_frame(frame) == "y" * 1022


def test_decode_refuses_wrong_size_and_non_utf8() -> None:
    with pytest.raises(ProtocolError, match="1024 bytes"):
        m.decode_frame(b"\x01abc")
    with pytest.raises(ProtocolError, match="not UTF-8"):
        m.decode_frame(b"\x01\xff\xfe\x00" + bytes(1020))


# -- the substring parser ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<a>1.5</a>", 1.5),
        ("<a> \n 2e3</a>", 2000.0),
        ("<a>-0.25junk", -0.25),
        ("<a>.5", 0.5),
        ("<a>abc</a>", 0.0),  # no number: strtod gives 0 and parse_double succeeds
        ("<a>0x1.8p1</a>", 3.0),
        ("<a>1e400</a>", None),  # ERANGE
        ("<a>1e-400</a>", None),  # ERANGE (underflow)
        ("<a>nan</a>", None),  # not finite
        ("<a>-inf</a>", None),
        ("<b>1</b>", None),  # tag absent
    ],
)
def test_parse_double_is_strtod_after_the_tag(text: str, expected: float | None) -> None:
    assert m.parse_double(text, "<a>") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<i>4242</i>", 4242),
        ("<i>010</i>", 8),  # strtol base 0: octal
        ("<i>0x1A</i>", 26),
        ("<i>  -7x", -7),
        ("<i>x</i>", 0),
        ("<i>4294967297</i>", 1),  # long stored into an int
        ("<i>99999999999999999999</i>", None),  # ERANGE
    ],
)
def test_parse_int_is_strtol_base_0(text: str, expected: int | None) -> None:
    assert m.parse_int(text, "<i>") == expected


def test_parse_bool_forms() -> None:
    assert m.parse_bool("<x/>", "x") is True
    assert m.parse_bool("<x />", "x") is True
    assert m.parse_bool("<x>0</x>", "x") is False
    assert m.parse_bool("<x>2</x>", "x") is True
    assert m.parse_bool("<y/>", "x") is None


def test_parse_str_trims_and_unescapes() -> None:
    # trimmed first, then unescaped (as BOINC does): an escaped newline survives
    assert m.parse_str("<u> a&lt;b&amp;c&#xA; </u>", "<u>") == "a<b&c\n"
    assert m.parse_str("<u>&#195;&#169;</u>", "<u>") == "é"  # per-byte escapes of UTF-8
    assert m.parse_str("<u>no end", "<u>") is None


# -- process control -----------------------------------------------------------------------


def test_control_messages_exact_bytes() -> None:
    assert [c.value for c in ControlMessage] == [
        "<suspend/>",
        "<resume/>",
        "<quit/>",
        "<abort/>",
        "<reread_app_info/>",
        "<network_available/>",
    ]


def test_decode_control_finds_every_message_by_substring() -> None:
    assert m.decode_control("<quit/>") == {ControlMessage.QUIT}
    assert m.decode_control("x<suspend/>\n<reread_app_info/>") == {
        ControlMessage.SUSPEND,
        ControlMessage.REREAD_APP_INFO,
    }
    assert m.decode_control("<suspend>") == frozenset()


# -- heartbeat -----------------------------------------------------------------------------


def test_heartbeat_bytes_as_the_client_writes_them() -> None:
    assert (
        m.format_heartbeat(Heartbeat(wss=1048576, max_wss=2147483648))
        == "<heartbeat/><wss>1.048576e+06</wss><max_wss>2.147484e+09</max_wss>"
    )
    assert m.format_heartbeat(Heartbeat(0, 1, network_suspended=True)).endswith(
        "<max_wss>1.000000e+00</max_wss><network_suspended/>"
    )


def test_heartbeat_parse_accepts_both_network_spellings() -> None:
    client = "<heartbeat/><wss>1.0e6</wss><max_wss>2.0e9</max_wss><network_suspended/>"
    assert m.parse_heartbeat(client) == Heartbeat(1e6, 2e9, True, True)
    assert m.parse_heartbeat("<heartbeat/><suspend_network>1</suspend_network>").network_suspended
    assert not m.parse_heartbeat("<heartbeat/><wss>5</wss>").network_suspended
    assert m.parse_heartbeat("<wss>5</wss>").beat is False  # no <heartbeat/>: not a beat


# -- app status ----------------------------------------------------------------------------


def test_wrapper_status_format_exact() -> None:
    status = AppStatus(123.45, 100.0, 0.5, other_pid=4242, bytes_sent=10, bytes_received=2.5)
    assert m.format_wrapper_status(status) == (
        "<current_cpu_time>1.234500e+02</current_cpu_time>\n"
        "<checkpoint_cpu_time>1.000000e+02</checkpoint_cpu_time>\n"
        "<fraction_done>5.000000e-01</fraction_done>\n"
        "<other_pid>4242</other_pid>\n"
        "<bytes_sent>10.000000</bytes_sent>\n"
        "<bytes_received>2.500000</bytes_received>\n"
    )
    # fraction always there in the wrapper format, optional parts only when non-zero
    assert m.format_wrapper_status(AppStatus(1, 0)) == (
        "<current_cpu_time>1.000000e+00</current_cpu_time>\n"
        "<checkpoint_cpu_time>0.000000e+00</checkpoint_cpu_time>\n"
        "<fraction_done>0.000000e+00</fraction_done>\n"
    )


def test_api_status_format_exact() -> None:
    assert m.format_api_status(AppStatus(2.0, 1.0)) == (
        "<current_cpu_time>2.000000e+00</current_cpu_time>\n"
        "<checkpoint_cpu_time>1.000000e+00</checkpoint_cpu_time>\n"
    )
    assert m.format_api_status(AppStatus(2.0, 1.0, 0.25, want_network=True)) == (
        "<current_cpu_time>2.000000e+00</current_cpu_time>\n"
        "<checkpoint_cpu_time>1.000000e+00</checkpoint_cpu_time>\n"
        "<want_network>1</want_network>\n"
        "<fraction_done>2.500000e-01</fraction_done>\n"
    )


def test_parse_app_status_as_the_client_does() -> None:
    text = (
        "<fraction_done>0</fraction_done><other_pid>0x10</other_pid>"
        "<checkpoint_cpu_time>-3</checkpoint_cpu_time>"
    )
    status = m.parse_app_status(text)
    assert status.current_cpu_time == 0.0  # missing: reset to 0 before parsing
    assert status.checkpoint_cpu_time == 0.0  # negative: clamped
    assert status.fraction_done is None  # exactly 0 is ignored
    assert status.other_pid == 16
    assert m.parse_app_status("<want_network>1</want_network>").want_network


# -- trickle and graphics notices ------------------------------------------------------------


def test_trickle_notices_exact_bytes() -> None:
    assert m.format_trickle_up_notice(TrickleUpNotice(trickle_up=True)) == (
        "<have_new_trickle_up/>\n"
    )
    assert m.format_trickle_up_notice(TrickleUpNotice(True, True)) == (
        "<have_new_trickle_up/>\n<have_new_upload_file/>\n"
    )
    assert m.format_trickle_down_notice(TrickleDownNotice(trickle_down=True)) == (
        "<have_trickle_down/>\n"
    )
    assert m.format_trickle_down_notice(TrickleDownNotice(upload_status=True)) == (
        "<upload_file_status/>\n"
    )
    assert m.parse_trickle_up_notice("<have_new_upload_file/>\n") == TrickleUpNotice(False, True)
    assert not m.parse_trickle_up_notice("nothing")
    assert m.parse_trickle_down_notice("<upload_file_status/>\n") == TrickleDownNotice(False, True)


def test_graphics_replies() -> None:
    assert m.format_web_graphics_url("http://localhost:8080") == (
        "<web_graphics_url>http://localhost:8080</web_graphics_url>"
    )
    assert m.format_remote_desktop_addr("localhost:3389") == (
        "<remote_desktop_addr>localhost:3389</remote_desktop_addr>"
    )
    assert m.parse_graphics_reply(m.format_remote_desktop_addr("h:1")) == GraphicsReply(None, "h:1")
    long_url = "http://" + "a" * 400
    parsed = m.parse_graphics_reply(m.format_web_graphics_url(long_url)).web_graphics_url
    assert parsed == long_url[:255]


# -- fuzzing: bytes in -> value or ProtocolError -------------------------------------------


@given(st.binary(min_size=0, max_size=1100))
def test_decode_frame_never_fails_otherwise(data: bytes) -> None:
    try:
        text = m.decode_frame(data)
    except ProtocolError:
        return
    assert len(data) == 1024
    assert text is None or len(text.encode()) <= 1022


@given(st.binary(max_size=1022))
def test_every_decoder_takes_any_channel_bytes(data: bytes) -> None:
    try:
        text = m.decode_payload(data)
    except ProtocolError:
        return
    status = m.parse_app_status(text)
    assert status.current_cpu_time >= 0 and status.checkpoint_cpu_time >= 0
    assert status.fraction_done is None or math.isfinite(status.fraction_done)
    beat = m.parse_heartbeat(text)
    assert math.isfinite(beat.wss) and math.isfinite(beat.max_wss)
    assert m.decode_control(text) <= set(ControlMessage)
    m.parse_trickle_up_notice(text)
    m.parse_trickle_down_notice(text)
    m.parse_graphics_reply(text)


@given(st.text(max_size=300))
def test_number_parsers_take_any_text(text: str) -> None:
    value = m.parse_double("<a>" + text, "<a>")
    assert value is None or math.isfinite(value)
    number = m.parse_int("<a>" + text, "<a>")
    assert number is None or -(2**31) <= number < 2**31


@given(st.text(max_size=400))
def test_frame_round_trip(text: str) -> None:
    try:
        size = len(text.encode())
    except UnicodeEncodeError:  # lone surrogates cannot go into a channel
        with pytest.raises(ProtocolError):
            m.encode_frame(text)
        return
    if "\0" in text or size > 1022:
        with pytest.raises(ProtocolError):
            m.encode_frame(text)
    else:
        assert m.decode_frame(m.encode_frame(text)) == text


finite = st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)


@given(finite, finite, st.floats(min_value=1e-6, max_value=1), st.integers(0, 2**31 - 1))
def test_status_round_trip(cpu: float, ckpt: float, fraction: float, pid: int) -> None:
    status = AppStatus(cpu, ckpt, fraction, other_pid=pid or None)
    back = m.parse_app_status(m.format_wrapper_status(status))
    # %e keeps 7 significant digits
    assert back.current_cpu_time == pytest.approx(cpu, rel=1e-6, abs=1e-300)
    assert back.checkpoint_cpu_time == pytest.approx(ckpt, rel=1e-6, abs=1e-300)
    assert back.fraction_done == pytest.approx(fraction, rel=1e-6)
    assert back.other_pid == (pid or None)


@given(finite, finite, st.booleans())
def test_heartbeat_round_trip(wss: float, max_wss: float, net: bool) -> None:
    back = m.parse_heartbeat(m.format_heartbeat(Heartbeat(wss, max_wss, net)))
    assert back.beat and back.network_suspended is net
    assert back.wss == pytest.approx(wss, rel=1e-6) and back.max_wss == pytest.approx(
        max_wss, rel=1e-6
    )


@given(st.text(max_size=200))
def test_unescape_takes_any_text(text: str) -> None:
    result = m.xml_unescape(text)
    assert "&" in text or result == text
