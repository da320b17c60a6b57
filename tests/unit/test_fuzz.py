"""Hostile inputs: hypothesis feeds every reader of outside data arbitrary and near-valid input.

The rule checked everywhere: a reader returns a value or raises *our* error (a subclass of
``VmWrapperError``) whose message names the file and says what is wrong — never a
``KeyError``/``ValueError``/``ParseError`` from deep inside, never a hang. XML bombs (entity
expansion, external entities, DTDs) are refused by defusedxml before anything is expanded.

Readers covered: ``vbox_job.xml`` (spec.parse), ``init_data.xml`` (boinc.init_data), the
guest's completion / temporary-exit / fraction-done trigger files (shared_dir.triggers), the
client's finish and temporary-exit files (boinc.files), the control / heartbeat / status
messages and raw channel frames (boinc.messages), ``vbox_checkpoint.xml`` (supervisor.checkpoint).
"""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmwrapper.boinc import files, messages
from vmwrapper.boinc.init_data import AppInitData, parse_init_data
from vmwrapper.errors import InitDataError, ProtocolError, SpecError, VmWrapperError
from vmwrapper.outcome import MAX_TEMPORARY_EXIT_DELAY, Finish
from vmwrapper.shared_dir import triggers
from vmwrapper.spec.model import JobSpec
from vmwrapper.spec.parse import parse_job
from vmwrapper.supervisor import checkpoint

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- near-valid XML: real element names, hostile values ---------------------------------------

JOB_ELEMENTS = sorted(JobSpec.__dataclass_fields__)
INIT_DATA_ELEMENTS = sorted(AppInitData.__dataclass_fields__)

hostile_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["", "-1", "0x10", "1e999", "nan", "-0", "99999999999999999999999", " 7 ", "1.5",
         "../../etc/passwd", "/etc/shadow", "a\x00b", "&amp;", "<![CDATA[x]]>", "\u202e"]
    ),
)  # fmt: skip


def _escape(text: str) -> str:
    # keep the document well-formed XML 1.0 where possible: hostile, but parseable
    bad = {c for c in text if ord(c) < 0x20 and c not in "\t\n\r"}
    for c in bad:
        text = text.replace(c, "")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@st.composite
def documents(draw: st.DrawFn, root: str, names: list[str]) -> str:
    parts = []
    for name in draw(st.lists(st.sampled_from(names), max_size=12)):
        if draw(st.booleans()):
            parts.append(f"<{name}/>")
        else:
            parts.append(f"<{name}>{_escape(draw(hostile_text))}</{name}>")
    return f"<{root}>{''.join(parts)}</{root}>"


def _our_error_with_context(exc: VmWrapperError, *needles: str) -> None:
    text = str(exc)
    assert text.strip(), "an error without a message"
    assert any(n in text for n in needles), text


# -- vbox_job.xml -----------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=400))
def test_vbox_job_arbitrary_bytes(data: bytes) -> None:
    try:
        parse_job(data, "vbox_job.xml")
    except SpecError as exc:
        _our_error_with_context(exc, "vbox_job.xml")
        assert exc.problems and all(p.message for p in exc.problems)


@FUZZ
@given(documents("vbox_job", JOB_ELEMENTS))
def test_vbox_job_known_elements_hostile_values(text: str) -> None:
    try:
        parsed = parse_job(text, "vbox_job.xml")
    except SpecError as exc:
        # every problem names the element it is about and says how to fix it
        assert all(p.element and p.fix for p in exc.problems), exc
        return
    spec = parsed.spec
    assert spec.memory_size_mb >= 0
    for name in (spec.completion_trigger_file, spec.temporary_exit_trigger_file):
        assert ".." not in name.split("/") and not name.startswith("/"), name


# -- init_data.xml ----------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=400))
def test_init_data_arbitrary_bytes(data: bytes) -> None:
    try:
        parse_init_data(data)
    except InitDataError as exc:
        _our_error_with_context(exc, "init_data.xml")


@FUZZ
@given(documents("app_init_data", INIT_DATA_ELEMENTS))
def test_init_data_known_elements_hostile_values(text: str) -> None:
    try:
        aid = parse_init_data(text)
    except InitDataError as exc:
        _our_error_with_context(exc, "init_data.xml")
        return
    assert isinstance(aid, AppInitData)


# -- XML bombs ---------------------------------------------------------------------------------

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<ROOT><os_name>&lol9;</os_name></ROOT>
"""
QUADRATIC = (
    '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "' + "x" * 50_000 + '">]>'
    "<ROOT><os_name>" + "&a;" * 5_000 + "</os_name></ROOT>"
)
EXTERNAL = (
    '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    "<ROOT><os_name>&x;</os_name></ROOT>"
)
EXTERNAL_DTD = '<?xml version="1.0"?><!DOCTYPE r SYSTEM "http://127.0.0.1:1/x.dtd"><ROOT/>'
PARAMETER = (
    '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><ROOT/>'
)
BOMBS = {
    "billion laughs": BILLION_LAUGHS,
    "quadratic blowup": QUADRATIC,
    "external entity": EXTERNAL,
    "parameter entity": PARAMETER,
}


def test_an_external_dtd_is_never_fetched() -> None:
    # expat does not load external DTDs: the document parses (or is refused), nothing is
    # fetched from 127.0.0.1:1 (a fetch would fail with a connection error, not ours)
    for root, parse in (("vbox_job", parse_job), ("app_init_data", parse_init_data)):
        try:
            parse(EXTERNAL_DTD.replace("ROOT", root))
        except VmWrapperError as exc:
            assert str(exc)


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_vbox_job_xml_bombs_are_refused(bomb: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_job(BOMBS[bomb].replace("ROOT", "vbox_job"), "vbox_job.xml")
    text = str(info.value)
    assert "vbox_job.xml" in text
    # BOINC's parser, which ours follows, sees <!DOCTYPE> where <vbox_job> must be
    assert "must start with <vbox_job>" in text, text
    assert "root:" not in text  # /etc/passwd never came through
    # inside the root, a DTD is an unknown tag and no entity is ever expanded
    inside = BOMBS[bomb].replace('<?xml version="1.0"?>', "<vbox_job>").replace("<ROOT>", "")
    parsed = parse_job(inside.replace("</ROOT>", "").replace("<ROOT/>", "") + "</vbox_job>")
    assert "root:" not in parsed.spec.os_name and len(parsed.spec.os_name) < 20_000


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_init_data_xml_bombs_are_refused(bomb: str) -> None:
    with pytest.raises(InitDataError) as info:
        parse_init_data(
            BOMBS[bomb].replace("ROOT", "app_init_data").replace("os_name", "project_dir")
        )
    text = str(info.value)
    assert "init_data.xml" in text
    assert "unsafe XML" in text or "not well-formed" in text, text
    assert "root:" not in text


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_checkpoint_record_bombs_read_as_no_checkpoint(bomb: str) -> None:
    text = BOMBS[bomb].replace("ROOT", "vbox_checkpoint").replace("os_name", "vmwrapper_snapshot")
    assert checkpoint.parse_record(text) == checkpoint.CheckpointRecord()


# -- the guest's trigger files -----------------------------------------------------------------

guest_text = st.one_of(
    st.text(max_size=300),
    st.lists(hostile_text, max_size=6).map("\n".join),
    st.binary(max_size=300).map(lambda b: b.decode("utf-8", errors="replace")),
)


@FUZZ
@given(guest_text)
def test_completion_trigger_any_text(text: str) -> None:
    trigger = triggers.parse_completion(text)
    assert isinstance(trigger.exit_code, int) and isinstance(trigger.message, str)
    assert -(2**31) <= trigger.exit_code < 2**31  # a number the client's C reader can hold
    # whatever the guest wrote, the finish file we make of it reads back as the same status
    finish = files.parse_finish(
        files.format_finish(
            Finish(trigger.exit_code, trigger.message.splitlines()[0] if trigger.message else "")
        )
    )
    assert finish.status == trigger.exit_code


@FUZZ
@given(guest_text)
def test_temporary_exit_trigger_any_text(text: str) -> None:
    trigger = triggers.parse_temporary_exit(text)
    assert trigger.delay >= 0
    assert trigger.reason.strip()  # never reasonless: the client would ignore the file


@FUZZ
@given(guest_text)
def test_fraction_done_any_text(text: str) -> None:
    value = triggers.parse_fraction_done(text)
    assert value is None or 0.0 <= value <= 1.0


# -- files the client reads from the slot ------------------------------------------------------


@FUZZ
@given(guest_text)
def test_finish_file_any_text(text: str) -> None:
    finish = files.parse_finish(text)
    assert isinstance(finish.status, int) and "\n" not in finish.message


@FUZZ
@given(guest_text)
def test_temporary_exit_file_any_text(text: str) -> None:
    request = files.parse_temporary_exit(text)
    if request is not None:
        assert 0 <= request.delay <= MAX_TEMPORARY_EXIT_DELAY


# -- control messages and channel frames ------------------------------------------------------

tags = st.sampled_from(
    ["<quit/>", "<abort/>", "<suspend/>", "<resume/>", "<reread_app_info/>", "<heartbeat/>",
     "<wss>", "</wss>", "<max_wss>", "<network_suspended/>", "<current_cpu_time>",
     "<fraction_done>", "<checkpoint_cpu_time>", "<other_pid>", "<have_trickle_down/>"]
)  # fmt: skip
message_text = st.lists(st.one_of(tags, hostile_text), max_size=10).map("".join)


@FUZZ
@given(message_text)
def test_control_and_status_messages_any_text(text: str) -> None:
    control = messages.decode_control(text)
    assert control <= frozenset(messages.ControlMessage)
    heartbeat = messages.parse_heartbeat(text)
    assert isinstance(heartbeat, messages.Heartbeat)
    status = messages.parse_app_status(text)
    assert status.current_cpu_time >= 0 and status.checkpoint_cpu_time >= 0
    assert status.fraction_done is None or isinstance(status.fraction_done, float)


@FUZZ
@given(st.binary(max_size=1100))
def test_channel_frames_any_bytes(frame: bytes) -> None:
    try:
        text = messages.decode_frame(frame)
    except ProtocolError as exc:
        assert str(exc)
        return
    assert text is None or isinstance(text, str)


@FUZZ
@given(st.text(alphabet=string.printable, max_size=1100))
def test_channel_encode_refuses_or_round_trips(text: str) -> None:
    try:
        frame = messages.encode_frame(text)
    except ProtocolError as exc:
        assert "1022" in str(exc) or "NUL" in str(exc) or str(exc)
        return
    assert messages.decode_frame(frame) == text


# -- the checkpoint record ---------------------------------------------------------------------


@FUZZ
@given(
    st.one_of(
        st.text(max_size=300),
        documents(
            "vbox_checkpoint",
            [
                "elapsed_time",
                "cpu_time",
                "webapi_port",
                "remote_desktop_port",
                "vmwrapper_snapshot",
            ],
        ),
    )
)
def test_checkpoint_record_any_text(text: str) -> None:  # fmt: skip
    record = checkpoint.parse_record(text)
    assert record.elapsed_time >= 0 and record.cpu_time >= 0
    assert record.elapsed_time != float("inf")
