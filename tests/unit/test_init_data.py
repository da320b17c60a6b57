"""init_data.xml: the real client's file round-trips byte for byte; escapes as BOINC's."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmwrapper.boinc.init_data import (
    AppInitData,
    GlobalPrefs,
    HostInfo,
    ProxyInfo,
    format_init_data,
    parse_init_data,
    xml_escape,
)
from vmwrapper.errors import InitDataError

GOLDEN = Path(__file__).parent.parent / "data" / "init_data_real_client.xml"


def test_real_client_file_round_trips_byte_for_byte() -> None:
    text = GOLDEN.read_text()
    aid = parse_init_data(text)
    assert format_init_data(aid) == text


def test_real_client_values() -> None:
    aid = parse_init_data(GOLDEN.read_bytes())
    assert aid.client_version == (7, 20, 5)
    assert aid.result_name == "wu1_r0"
    assert aid.shm_key == -1
    assert aid.client_pid == 5340
    assert aid.checkpoint_period == 30.0
    assert aid.ncpus == 1.0
    assert aid.project_dir == "/var/lib/boinc-client/projects/127.0.0.1_9_proj"
    assert aid.host_info.p_ncpus == 2
    assert aid.host_info.under_hypervisor and not aid.host_info.has_vm_extensions
    assert aid.global_prefs.cpu_usage_limit == 100.0
    assert aid.global_prefs.leave_apps_in_memory is True
    assert aid.proxy_info.socks_server_port == 80
    assert aid.app_files[0] == "vmwrapper_1.00_x86_64-pc-linux-gnu"
    assert aid.gpu_device_num == -1 and aid.process_priority == -1


def test_missing_elements_take_the_apis_defaults() -> None:
    aid = parse_init_data("<app_init_data></app_init_data>")
    assert aid == AppInitData()
    assert aid.fraction_done_end == 1.0
    assert aid.gpu_opencl_dev_index == -1 and aid.process_priority_special == -1


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("é", "&#195;&#169;"),
        ("a<b&c", "a&lt;b&amp;c"),
        ("tab\tnl\ncr\r", "tab&#9;nl&#10;cr&#13;"),
        ("bell\x07", "bell"),
        ("x]]>y", "x]]&gt;y"),
        ("plain > text", "plain > text"),
    ],
)
def test_xml_escape_is_boincs(text: str, escaped: str) -> None:
    assert xml_escape(text) == escaped


def test_user_name_is_escaped_per_byte_and_read_back() -> None:
    aid = AppInitData(user_name="Zoë <team>", team_name="A&B", result_name="r1")
    text = format_init_data(aid)
    assert "<user_name>Zo&#195;&#171; &lt;team></user_name>" in text
    assert "<team_name>A&amp;B</team_name>" in text
    assert parse_init_data(text.encode()) == aid


def test_client_order_and_formats() -> None:
    aid = AppInitData(
        major_version=7,
        minor_version=20,
        release=5,
        slot=3,
        wu_cpu_time=1.5,
        using_sandbox=True,
        app_files=("a", "b"),
    )
    lines = format_init_data(aid).splitlines()
    assert lines[:4] == [
        "<app_init_data>",
        "<major_version>7</major_version>",
        "<minor_version>20</minor_version>",
        "<release>5</release>",
    ]
    assert "<wu_cpu_time>1.500000</wu_cpu_time>" in lines
    assert "<using_sandbox>1</using_sandbox>" in lines
    assert lines.index("<slot>3</slot>") < lines.index("<host_info>") < lines.index("<proxy_info>")
    assert lines[-3:] == ["<app_file>a</app_file>", "<app_file>b</app_file>", "</app_init_data>"]
    assert not any(line.startswith("<result_name>") for line in lines)  # empty: omitted in 7.20.5


def test_raw_paths_with_ampersand_are_read() -> None:
    aid = parse_init_data("<app_init_data><project_dir>/a&b/p</project_dir></app_init_data>")
    assert aid.project_dir == "/a&b/p"


def test_project_preferences_kept_verbatim() -> None:
    aid = AppInitData(project_preferences="<color>red</color>\n<size>3</size>\n")
    assert parse_init_data(format_init_data(aid)).project_preferences == aid.project_preferences


def test_proxy_flags_and_unknown_prefs_round_trip() -> None:
    aid = AppInitData(
        proxy_info=ProxyInfo(use_http_proxy=True, http_server_name="proxy", http_server_port=3128),
        global_prefs=GlobalPrefs(
            cpu_usage_limit=50.0,
            extra_xml="   <day_prefs><day_of_week>1</day_of_week></day_prefs>\n",
        ),
    )
    text = format_init_data(aid)
    assert "    <use_http_proxy/>\n" in text
    assert parse_init_data(text) == aid


@pytest.mark.parametrize(
    "text",
    [
        "",
        "<x/>",
        "<app_init_data>",
        "<app_init_data><slot>two</slot></app_init_data>",
        '<!DOCTYPE a [<!ENTITY b "c">]><app_init_data>&b;</app_init_data>',
    ],
)
def test_bad_files_raise_init_data_error(text: str) -> None:
    with pytest.raises(InitDataError, match=r"init_data\.xml"):
        parse_init_data(text)


names = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=20)


@settings(max_examples=200, deadline=None)
@given(
    user=names,
    team=names,
    slot=st.integers(0, 10_000),
    ncpus=st.floats(0, 64),
    cpu=st.floats(0, 1e7),
    vendor=names,
    features=names,
)
def test_round_trip_property(
    user: str, team: str, slot: int, ncpus: float, cpu: float, vendor: str, features: str
) -> None:
    aid = AppInitData(
        user_name=user.strip(),
        team_name=team.strip(),
        slot=slot,
        ncpus=float(f"{ncpus:f}"),
        wu_cpu_time=float(f"{cpu:f}"),
        host_info=HostInfo(p_vendor=vendor.strip(), p_features=" ".join(features.split())),
    )
    assert parse_init_data(format_init_data(aid)) == aid
    again = replace(aid, slot=slot + 1)
    assert parse_init_data(format_init_data(again)).slot == slot + 1


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_data_or_our_error(data: bytes) -> None:
    with contextlib.suppress(InitDataError):
        parse_init_data(data)
