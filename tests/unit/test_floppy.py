"""floppyio image: vboxwrapper's byte layout (docs/compatibility.md#floppy-contextualization), CERN
payload, the guest reader."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmwrapper.boinc.init_data import AppInitData
from vmwrapper.context import floppy
from vmwrapper.context.floppy import (
    FLOPPY_SIZE,
    build_floppy,
    cern_payload,
    format_g17,
    parse_cern_payload,
    read_guest_to_host,
    read_host_to_guest,
    write_floppy,
)

READER = Path(floppy.__file__).parent.parent / "guest" / "read_floppy.sh"


def test_layout_constants_match_vboxwrapper() -> None:
    assert FLOPPY_SIZE == 28672
    assert floppy.HOST_TO_GUEST_SIZE == 14335  # bytes 0 .. 14334
    assert floppy.MAX_PAYLOAD == 14334
    assert floppy.GUEST_TO_HOST_OFFSET == 14335
    assert floppy.FLAG_FOR_GUEST_OFFSET == 0x6FFE == 28670
    assert floppy.FLAG_FOR_HOST_OFFSET == 0x6FFF == 28671


def test_small_payload_exact_bytes() -> None:
    image = build_floppy(b"<app_init_data/>\n")
    expected = bytearray(28672)
    expected[0:17] = b"<app_init_data/>\n"
    expected[28670] = 1
    assert image.data == bytes(expected)
    assert image.payload_size == 17
    assert not image.truncated
    assert image.notes == ()


def test_long_payload_is_cut_to_14334_with_a_note() -> None:
    payload = bytes(range(1, 256)) * 100  # 25500 bytes, no NUL inside
    image = build_floppy(payload)
    assert len(image.data) == 28672
    assert image.data[:14334] == payload[:14334]
    assert image.data[14334] == 0  # the terminator byte of the 14335-byte buffer stays NUL
    assert image.data[14335:28670] == bytes(28670 - 14335)
    assert image.data[28670:] == b"\x01\x00"
    assert image.truncated_bytes == 25500 - 14334
    assert len(image.notes) == 1
    assert "14334" in image.notes[0] and "11166" in image.notes[0]


def test_payload_of_exactly_max_is_not_truncated() -> None:
    image = build_floppy(b"x" * 14334)
    assert not image.truncated and image.notes == ()
    assert read_host_to_guest(image.data) == b"x" * 14334


@given(st.binary(max_size=20000).filter(lambda b: b"\0" not in b))
def test_round_trip_any_payload(payload: bytes) -> None:
    image = build_floppy(payload)
    assert len(image.data) == FLOPPY_SIZE
    assert read_host_to_guest(image.data) == payload[:14334]
    assert image.truncated == (len(payload) > 14334)
    assert read_guest_to_host(image.data) is None  # the host never raises the guest's flag


def test_reader_sees_no_message_without_flag() -> None:
    assert read_host_to_guest(bytes(FLOPPY_SIZE)) is None
    with pytest.raises(ValueError, match="28672"):
        read_host_to_guest(b"short")


def test_guest_to_host_buffer() -> None:
    image = bytearray(build_floppy(b"hi").data)
    image[14335:14340] = b"reply"
    image[28671] = 1
    assert read_guest_to_host(bytes(image)) == b"reply"


def test_cern_payload_exact_lines() -> None:
    aid = AppInitData(
        user_name="Ada Lovelace",
        authenticator="abc123_def",
        userid=42,
        hostid=4711,
        user_total_credit=1234.5,
        host_total_credit=0.1,
    )
    assert cern_payload(aid) == (
        b"BOINC_USERNAME=Ada Lovelace\n"
        b"BOINC_AUTHENTICATOR=abc123_def\n"
        b"BOINC_USERID=42\n"
        b"BOINC_HOSTID=4711\n"
        b"BOINC_USER_TOTAL_CREDIT=1234.5\n"
        b"BOINC_HOST_TOTAL_CREDIT=0.10000000000000001\n"
    )


def test_cern_payload_defaults_and_line_breaks() -> None:
    text = cern_payload(AppInitData(user_name="evil\nBOINC_HOSTID=1")).decode()
    assert text.count("\n") == 6
    pairs = parse_cern_payload(text.encode())
    assert pairs["BOINC_USERNAME"] == "evil BOINC_HOSTID=1"
    assert pairs["BOINC_HOSTID"] == "0"
    assert pairs["BOINC_USER_TOTAL_CREDIT"] == "0"


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.0, "0"), (1e20, "1e+20"), (123456789.125, "123456789.125"), (1 / 3, "0.33333333333333331")],
)
def test_g17_matches_c(value: float, text: str) -> None:
    assert format_g17(value) == text


def test_write_floppy_writes_whole_image(tmp_path: Path) -> None:
    target = tmp_path / "vm_floppy_0.img"
    target.write_bytes(b"old contents")
    image = build_floppy(b"payload")
    write_floppy(target, image)
    assert target.read_bytes() == image.data
    assert [p.name for p in tmp_path.iterdir()] == ["vm_floppy_0.img"]


# --- the guest-side reader, run with busybox sh as the guest runs it -------------------------

BUSYBOX = shutil.which("busybox")
needs_busybox = pytest.mark.skipif(BUSYBOX is None, reason="busybox not installed")


def _run_reader(*args: str) -> subprocess.CompletedProcess[bytes]:
    assert BUSYBOX is not None
    return subprocess.run(
        [BUSYBOX, "sh", str(READER), *args], capture_output=True, timeout=30, check=False
    )


@needs_busybox
def test_guest_reader_prints_payload(tmp_path: Path) -> None:
    payload = b"<app_init_data>\n<userid>42</userid>\n</app_init_data>\n"
    img = tmp_path / "fd.img"
    write_floppy(img, build_floppy(payload))
    result = _run_reader(str(img))
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload


@needs_busybox
def test_guest_reader_truncated_payload(tmp_path: Path) -> None:
    img = tmp_path / "fd.img"
    write_floppy(img, build_floppy(b"y" * 20000))
    result = _run_reader(str(img))
    assert result.returncode == 0
    assert result.stdout == b"y" * 14334


@needs_busybox
def test_guest_reader_env_mode_is_eval_safe(tmp_path: Path) -> None:
    aid = AppInitData(user_name="O'Brien $(touch pwned)", userid=7, user_total_credit=2.5)
    img = tmp_path / "fd.img"
    write_floppy(img, build_floppy(cern_payload(aid)))
    result = _run_reader("--env", str(img))
    assert result.returncode == 0, result.stderr
    assert BUSYBOX is not None
    script = result.stdout.decode() + 'printf "%s|%s|%s" "$BOINC_USERNAME" "$BOINC_USERID" '
    script += '"$BOINC_USER_TOTAL_CREDIT"'
    shown = subprocess.run(
        [BUSYBOX, "sh", "-c", script], capture_output=True, cwd=tmp_path, timeout=30, check=True
    )
    assert shown.stdout == b"O'Brien $(touch pwned)|7|2.5"
    assert not (tmp_path / "pwned").exists()


@needs_busybox
def test_guest_reader_no_flag_and_no_device(tmp_path: Path) -> None:
    img = tmp_path / "fd.img"
    img.write_bytes(bytes(FLOPPY_SIZE))
    assert _run_reader(str(img)).returncode == 1
    assert _run_reader(str(tmp_path / "missing")).returncode == 2
