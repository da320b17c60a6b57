"""The share transport's protocol codec (pure): round trips, and what it refuses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmwrapper.hypervisor.base import Share
from vmwrapper.hypervisor.qemu.shareport import (
    CHARDEV_ID,
    chardev_source_port,
    has_virtio_9p,
    resolve_transports,
)
from vmwrapper.shared_dir import fsproto
from vmwrapper.shared_dir.fileservice import PAYLOAD_IDLE
from vmwrapper.shared_dir.fsproto import (
    Data,
    Err,
    FsProtocolError,
    Go,
    Hello,
    Ok,
    Pull,
    Put,
    check_path,
    encode_reply,
    encode_request,
    parse_reply,
    parse_request,
)

# a name the protocol must carry: any text without "/", NUL or backslash, not "." or ".."
names = (
    st.text(
        st.characters(blacklist_categories=["Cs"], blacklist_characters="/\0\\"),
        min_size=1,
        max_size=40,
    )
    .filter(lambda n: n not in (".", "..") and not (len(n) >= 2 and n[1] == ":"))
    .filter(lambda n: len(n.encode()) <= fsproto.MAX_NAME_BYTES)
)
paths = st.lists(names, min_size=1, max_size=6).map(tuple)
mtimes = st.integers(min_value=0, max_value=10**12 * 10**9 - 1)
sizes = st.integers(min_value=0, max_value=10**19 - 1)
nonces = st.from_regex(r"[0-9A-Za-z]{1,64}", fullmatch=True)


@given(sizes, mtimes, paths)
def test_put_round_trips_every_name(size: int, mtime_ns: int, path: tuple[str, ...]) -> None:
    put = Put(size, mtime_ns, path)
    line = encode_request(put)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.isascii()
    assert parse_request(line) == put


@given(nonces)
def test_hello_and_pull_round_trip(nonce: str) -> None:
    assert parse_request(encode_request(Hello(nonce))) == Hello(nonce)
    assert parse_request(encode_request(Pull())) == Pull()
    assert parse_reply(encode_reply(Hello(nonce))) == Hello(nonce)


@given(st.one_of(sizes.map(Data), st.just(Go()), st.just(Ok())))
def test_replies_round_trip(reply: fsproto.Reply) -> None:
    assert parse_reply(encode_reply(reply)) == reply


@given(st.text(max_size=300))
def test_an_err_reply_is_one_printable_line_whatever_the_reason(reason: str) -> None:
    line = encode_reply(Err(reason))
    assert line.startswith(b"ERR ") and line.count(b"\n") == 1 and line.isascii()
    assert isinstance(parse_reply(line), Err)


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_are_refused_with_a_reason(line: bytes) -> None:
    try:
        request = parse_request(line)
    except FsProtocolError as exc:
        assert str(exc)
    else:
        assert isinstance(request, Hello | Pull | Put)


def _put_line(path: str) -> bytes:
    return f"PUT 4 1.5 {path.encode('utf-8', 'surrogateescape').hex()}\n".encode()


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("../escaped", "'..'"),
        ("a/../../escaped", "'..'"),
        ("/etc/passwd", "absolute"),
        ("a//b", "''"),
        ("a/./b", "'.'"),
        ("dir/", "''"),
        ("C:evil", "drive-letter"),
        ("a\\..\\b", "backslash"),
        ("a\0b", "NUL"),
        ("x" * 256, "longer than 255"),
        ("a/" * 1600 + "b", "longer than 3000"),
        ("", "malformed"),
    ],
)
def test_hostile_paths_are_refused(path: str, reason: str) -> None:
    with pytest.raises(FsProtocolError, match=reason):
        parse_request(_put_line(path))


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"PUT -1 1.0 61\n", "bad size"),
        (b"PUT 99999999999999999999 1.0 61\n", "bad size"),
        (b"PUT 1 1.0000000001 61\n", "bad mtime"),
        (b"PUT 1 1.0 6\n", "hex"),
        (b"PUT 1 1.0 ZZ\n", "hex"),
        (b"PUT 1 1.0 ff\n", "UTF-8"),
        (b"PUT  1 1.0 61\n", "malformed"),
        (b"HELLO a-b\n", "unknown"),
        (b"GET /etc/passwd\n", "unknown request 'GET'"),
        (b"PULL \n", "malformed"),
        (b"\xff\n", "ASCII"),
        (b"PUT " + b"6" * 9000 + b"\n", "longer than"),
    ],
)
def test_malformed_headers_are_refused(line: bytes, reason: str) -> None:
    with pytest.raises(FsProtocolError, match=reason):
        parse_request(line)


def test_mtime_is_read_to_the_nanosecond_as_busybox_stat_prints_it() -> None:
    # stat -c %Y and the fraction of %y: "1765000000" and "123456789"
    assert fsproto.parse_mtime("1765000000.123456789") == 1765000000_123456789
    assert fsproto.parse_mtime("1765000000.5") == 1765000000_500000000
    assert fsproto.parse_mtime("1765000000") == 1765000000_000000000
    assert check_path("results/final out.txt") == ("results", "final out.txt")


def test_qemus_side_of_the_connection_comes_from_query_chardev() -> None:
    # query-chardev as QEMU 7.2 answers it for a connected TCP client chardev (lab run)
    reply = [
        {"frontend-open": False, "filename": "tcp:127.0.0.1:37094 <-> 127.0.0.1:38109",
         "label": CHARDEV_ID},
        {"frontend-open": True, "filename": "unix:/tmp/qmp.sock,server=on",
         "label": "compat_monitor0"},
    ]  # fmt: skip
    assert chardev_source_port(reply, 38109) == 37094
    with pytest.raises(Exception, match="not connected to port 40000"):
        chardev_source_port(reply, 40000)
    with pytest.raises(Exception, match="no chardev"):
        chardev_source_port(reply[1:], 38109)


def test_auto_is_9p_where_qemu_has_it_and_serial_where_it_has_not(tmp_path: Path) -> None:
    shares = (Share("shared", tmp_path, transport="auto"), Share("project", tmp_path))
    assert [s.transport for s in resolve_transports(shares, with_9p=True)] == ["9p", "9p"]
    assert [s.transport for s in resolve_transports(shares, with_9p=False)] == ["serial", "9p"]
    chosen = (Share("shared", tmp_path, transport="serial"),)
    assert resolve_transports(chosen, with_9p=True)[0].transport == "serial"
    linux = 'name "virtio-9p-pci", bus PCI, alias "virtio-9p"\nname "virtserialport"'
    assert has_virtio_9p(linux) and not has_virtio_9p('name "virtserialport", bus virtio')


def test_the_host_gives_up_a_payload_before_the_guest_gives_up_its_reply() -> None:
    """The resynchronisation after a broken transfer relies on the order of two timeouts: the
    host drops a payload that stopped coming (PAYLOAD_IDLE) before the guest's wait for OK
    runs out (SERIAL_WAIT in the agent), so the guest's next HELLO finds the host listening."""
    agent = (Path(fsproto.__file__).parents[1] / "guest" / "vmwrapper-lib.sh").read_text()
    match = re.search(r"^SERIAL_WAIT=(\d+)$", agent, re.MULTILINE)
    assert match is not None
    assert 0 < PAYLOAD_IDLE < int(match.group(1))
