"""vbox_job.xml parsing: every element, BOINC's boolean and number forms, errors and warnings."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmwrapper.errors import SpecError
from vmwrapper.spec import ELEMENTS, JobSpec, PortForward, parse_job, spec_as_dict

DATA = Path(__file__).parent.parent / "data" / "spec"


def job(body: str) -> JobSpec:
    return parse_job(f"<vbox_job>{body}</vbox_job>").spec


def problems(body: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_job(f"<vbox_job>{body}</vbox_job>", "job.xml")
    return [str(p) for p in info.value.problems]


def test_every_element_golden() -> None:
    parsed = parse_job((DATA / "every_element.xml").read_bytes(), "every_element.xml")
    assert parsed.spec == JobSpec(
        os_name="Linux26_64",
        memory_size_mb=2048.0,
        vram_size_mb=64.0,
        vm_disk_controller_type="scsi",
        vm_disk_controller_model="LsiLogic",
        vm_graphics_controller_type="VMSVGA",
        vm_network_driver="virtio",
        enable_network=True,
        enable_nat_dns_host_resolver=True,
        enable_shared_directory=True,
        enable_scratch_directory=True,
        copy_to_shared=("input & data.txt", "params.json"),
        copy_cmdline_to_shared=True,
        enable_floppyio=True,
        enable_cern_dataformat=True,
        multiattach_vdi_file="cernvm_4.0.vdi",
        enable_remotedesktop=True,
        enable_screenshots_on_error=True,
        enable_graphics_support=True,
        enable_vm_savestate_usage=True,
        minimum_checkpoint_interval=900.0,
        job_duration=86400.5,
        fraction_done_filename="progress",
        heartbeat_filename="heartbeat",
        minimum_heartbeat_interval=1200.0,
        completion_trigger_file="finished",
        temporary_exit_trigger_file="retry_later",
        trickle_trigger_file=("trickle_a", "trickle_b"),
        intermediate_upload_file=("partial_1", "partial_2"),
        pf_guest_port=80,
        port_forward=(PortForward(8022, 22), PortForward(9000, 9100, 3, True)),
        vmwrapper_backends="virtualbox qemu",
        vmwrapper_software_emulation=True,
        vmwrapper_share_transport="serial",
    )
    # the strict view: the elements vboxwrapper skips (ours), and a boolean written in hex
    assert [w.split(">")[0] for w in parsed.warnings] == [
        "every_element.xml: <vm_graphics_controller_type",
        "every_element.xml: <vmwrapper_backends",
        "every_element.xml: <vmwrapper_software_emulation",
        "every_element.xml: <vmwrapper_share_transport",
        "every_element.xml: <enable_nat_dns_host_resolver",
    ]
    # the golden covers every element we know
    text = (DATA / "every_element.xml").read_text()
    assert all(f"<{name}" in text for name in ELEMENTS)


def test_defaults_are_vboxwrappers() -> None:
    spec = job("")
    assert spec.vram_size_mb == 16
    assert spec.vm_disk_controller_type == "sata"
    assert spec.vm_disk_controller_model == "IntelAHCI"
    assert spec.minimum_checkpoint_interval == 600
    assert spec.minimum_heartbeat_interval == 600
    assert spec.job_duration == 0
    assert not spec.enable_network
    assert spec.shared_dir == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<T/>", True),
        ("<T />", True),
        ("<T></T>", False),  # BOINC takes no value from an empty boolean: default kept
        ("<T>  </T>", False),
        ("<T>1</T>", True),
        ("<T>0</T>", False),
        ("<T>0x1</T>", True),
        ("<T> 2 </T>", True),
        ("<T>0x0</T>", False),
        ("<T>-1</T>", True),
    ],
)
def test_boolean_forms(text: str, expected: bool) -> None:
    assert job(text.replace("T", "enable_network")).enable_network is expected


def test_boolean_text_is_ignored_with_a_warning_like_vboxwrapper() -> None:
    parsed = parse_job("<vbox_job><enable_network>true</enable_network></vbox_job>", "j.xml")
    assert parsed.spec.enable_network is False
    assert any("<enable_network>" in w and "keeps its default" in w for w in parsed.warnings)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0x10", 16), ("010", 8), ("+22", 22), (" 8080 ", 8080), ("", 0)],
)
def test_integer_forms_follow_strtol_base_0(text: str, expected: int) -> None:
    assert job(f"<pf_guest_port>{text}</pf_guest_port>").pf_guest_port == expected


@pytest.mark.parametrize(("text", "expected"), [("1.5e3", 1500.0), ("", 0.0), (" 42 ", 42.0)])
def test_double_forms(text: str, expected: float) -> None:
    assert job(f"<job_duration>{text}</job_duration>").job_duration == expected


def test_strings_are_trimmed_and_unescaped() -> None:
    assert job("<os_name>  Linux &lt;64&gt; </os_name>").os_name == "Linux <64>"
    assert job("<os_name/>").os_name == ""


def test_prolog_and_comments_are_accepted() -> None:
    parsed = parse_job('<?xml version="1.0"?>\n<!-- c --><vbox_job><os_name>x</os_name></vbox_job>')
    assert parsed.spec.os_name == "x"


def test_unknown_and_legacy_elements_are_warnings() -> None:
    parsed = parse_job("<vbox_job><enable_gbac/><colour>red</colour></vbox_job>", "j.xml")
    assert len(parsed.warnings) == 2
    assert "enable_gbac" in parsed.warnings[0] and "removed" in parsed.warnings[0]
    assert "<colour>" in parsed.warnings[1]


def test_port_forward_nports_expansion() -> None:
    fw = job(
        "<port_forward><host_port>100</host_port><guest_port>200</guest_port>"
        "<nports>3</nports></port_forward>"
    ).port_forward[0]
    assert fw.rules() == ((100, 200, False), (101, 201, False), (102, 202, False))
    assert PortForward(5, 6).rules() == ((5, 6, False),)


def test_all_problems_reported_at_once_with_element_and_fix() -> None:
    found = problems(
        "<memory_size_mb>-1</memory_size_mb>"
        "<share_slot_dir/><enable_shared_directory/>"
        "<port_forward><guest_port>70000</guest_port></port_forward>"
        "<completion_trigger_file>../../etc/passwd</completion_trigger_file>"
        "<trickle_trigger_file>/tmp/b</trickle_trigger_file>"
    )
    joined = "\n".join(found)
    assert len(found) == 6, joined
    for needle in [
        "<memory_size_mb>: error: -1 is negative",
        "<share_slot_dir>: error: cannot be combined with <enable_shared_directory>",
        "<port_forward>: error: has no <host_port>",
        "<port_forward/guest_port>: error: port 70000 is outside 1..65535",
        "<completion_trigger_file>: error: '../../etc/passwd' leads out of the shared directory",
        "<trickle_trigger_file>: error: '/tmp/b' is an absolute path",
    ]:
        assert needle in joined
    assert all(line.startswith("job.xml: <") and "(fix: " in line for line in found)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("<copy_to_shared>x</copy_to_shared>", "needs <enable_shared_directory/>"),
        (
            "<share_slot_dir/><copy_to_shared>x</copy_to_shared>",
            "cannot be combined with <share_slot_dir>",
        ),
        (
            "<enable_scratch_directory/><share_project_dir/>",
            "cannot be combined with <share_project_dir>",
        ),
        ("<completion_trigger_file>done</completion_trigger_file>", "the job has none"),
        (
            "<port_forward><host_port>0</host_port><guest_port>1</guest_port></port_forward>",
            "has no <host_port> (or it is 0)",
        ),
        (
            "<port_forward><host_port>65535</host_port><guest_port>1</guest_port>"
            "<nports>2</nports></port_forward>",
            "run past 65535",
        ),
        ("<pf_guest_port>-2</pf_guest_port>", "port -2 is outside 0..65535"),
        (
            "<heartbeat_filename>hb</heartbeat_filename><enable_shared_directory/>"
            "<minimum_heartbeat_interval>0</minimum_heartbeat_interval>",
            "must be above 0",
        ),
        ("<multiattach_vdi_file>..</multiattach_vdi_file>", "leads out of"),
        (
            "<enable_shared_directory/><heartbeat_filename>a/../../b</heartbeat_filename>",
            "leads out",
        ),
        ("<memory_size_mb>nan</memory_size_mb>", "BOINC reads nan"),
    ],
)
def test_illegal_values_and_combinations(body: str, needle: str) -> None:
    assert any(needle in p for p in problems(body))


def test_clamps_are_documented_not_silent() -> None:
    parsed = parse_job(
        "<vbox_job><vram_size_mb>4</vram_size_mb><memory_size_mb>256</memory_size_mb></vbox_job>"
    )
    assert parsed.spec.vram_size_mb == 16
    assert any("vram_size_mb 4 clamped to 16" in n for n in parsed.notes)
    assert any("memory_size_mb 256 is below the 512 MB minimum" in n for n in parsed.notes)
    assert (
        parse_job("<vbox_job><vram_size_mb>512</vram_size_mb></vbox_job>").spec.vram_size_mb == 128
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "<vbox_job>",
        "<job></job>",
        "not xml",
        "<vbox_job><os_name>x</os_name>",
        "\ufeff<vbox_job></vbox_job>",
        '<!DOCTYPE x [<!ENTITY a "b">]><vbox_job>&a;</vbox_job>',
        "<vbox_job><os_name>x</os_name>\0</vbox_job>",  # BOINC stops at a NUL byte
    ],
)
def test_unusable_files_raise_spec_error(text: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_job(text, "bad.xml")
    assert str(info.value).startswith("bad.xml:")
    assert info.value.malformed


def test_values_that_cannot_work_are_not_malformed() -> None:
    with pytest.raises(SpecError) as info:
        parse_job("<vbox_job><share_slot_dir/><enable_shared_directory/></vbox_job>")
    assert not info.value.malformed


def test_xml_bomb_is_refused() -> None:
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
        "<vbox_job><os_name>&lol2;</os_name></vbox_job>"
    )
    # BOINC's parser sees <!DOCTYPE> where <vbox_job> must be, so the job fails; nothing is
    # ever expanded (BOINC's parser knows no entities but the five built-in ones).
    with pytest.raises(SpecError, match="must start with <vbox_job>"):
        parse_job(bomb)
    inside = bomb.replace("<vbox_job>", "").replace("<?xml", "<vbox_job><?xml")
    assert parse_job(inside).spec.os_name == "&lol2;"


def test_json_form_has_element_names_lists_and_objects() -> None:
    data = spec_as_dict(parse_job((DATA / "every_element.xml").read_bytes()).spec)
    assert list(data) == list(ELEMENTS)
    assert data["port_forward"][1] == {
        "host_port": 9000,
        "guest_port": 9100,
        "nports": 3,
        "is_remote": True,
    }
    assert data["trickle_trigger_file"] == ["trickle_a", "trickle_b"]
    assert json.loads(json.dumps(data)) == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_give_a_model_or_our_error(data: bytes) -> None:
    with contextlib.suppress(SpecError):
        parse_job(data)


element_names = st.sampled_from(sorted(ELEMENTS))
values = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(element_names, values), max_size=8))
def test_arbitrary_elements_give_a_model_or_our_error(items: list[tuple[str, str]]) -> None:
    from xml.sax.saxutils import escape

    body = "".join(f"<{name}>{escape(value)}</{name}>" for name, value in items)
    try:
        parse_job(f"<vbox_job>{body}</vbox_job>")
    except SpecError as exc:
        assert exc.problems


def _warned(parsed_warnings: tuple[str, ...], element: str) -> bool:
    return any(f"<{element}>" in w for w in parsed_warnings)


def test_the_issues_cases_read_as_vboxwrapper_reads_them() -> None:
    """Each form the issue lists: BOINC's value, and a warning naming the element."""
    cases: list[tuple[str, str, object]] = [
        ("<enable_network></enable_network>", "enable_network", False),
        ("<enable_network>  </enable_network>", "enable_network", False),
        ("<minimum_checkpoint_interval/>", "minimum_checkpoint_interval", 600.0),
        ("<memory_size_mb>1_024</memory_size_mb>", "memory_size_mb", 0.0),
        ("<group><enable_network/></group>", "enable_network", True),
        ("<memory_size_mb>0x400</memory_size_mb>", "memory_size_mb", 1024.0),
        ("<pf_guest_port>080</pf_guest_port>", "pf_guest_port", 0),
        ("<pf_guest_port>010</pf_guest_port>", "pf_guest_port", 8),
    ]
    for body, element, expected in cases:
        parsed = parse_job(f"<vbox_job>{body}</vbox_job>", "job.xml")
        assert getattr(parsed.spec, element) == expected, body
        assert _warned(parsed.warnings, element), body


def test_what_xml_libraries_refuse_but_boinc_reads() -> None:
    parsed = parse_job("<vbox_job><os_name>a & b</os_name></vbox_job>\ntrailing", "job.xml")
    assert parsed.spec.os_name == "a & b"
    assert any("not well-formed XML" in w for w in parsed.warnings)
    assert any("after </vbox_job>" in w for w in parsed.warnings)


def test_file_names_take_paths_under_the_shared_dir() -> None:
    spec = job(
        "<enable_shared_directory/><fraction_done_filename>results/progress"
        "</fraction_done_filename><trickle_trigger_file>t/a</trickle_trigger_file>"
        "<copy_to_shared>in/data.txt</copy_to_shared>"
    )
    assert spec.fraction_done_filename == "results/progress"
    assert spec.trickle_trigger_file == ("t/a",) and spec.copy_to_shared == ("in/data.txt",)


def test_a_byte_order_mark_fails_like_vboxwrapper() -> None:
    with pytest.raises(SpecError, match="byte-order mark") as info:
        parse_job(b"\xef\xbb\xbf<vbox_job><enable_network/></vbox_job>", "job.xml")
    assert info.value.malformed


@pytest.mark.parametrize(
    ("text", "words"),
    [("qemu", ("qemu",)), ("VirtualBox, QEMU", ("virtualbox", "qemu")), ("", ())],
)
def test_vmwrapper_backends_is_a_preference_list(text: str, words: tuple[str, ...]) -> None:
    assert job(f"<vmwrapper_backends>{text}</vmwrapper_backends>").backends == words


def test_vmwrapper_backends_names_only_known_back_ends() -> None:
    found = problems("<vmwrapper_backends>qemu kvm</vmwrapper_backends>")
    assert found == [
        "job.xml: <vmwrapper_backends>: error: 'kvm' is no back end (fix: list one or more of "
        "virtualbox, qemu, in preference order)"
    ]


@pytest.mark.parametrize(
    ("text", "value"), [("serial", "serial"), ("9p", "9p"), ("auto", "auto"), ("", "")]
)
def test_vmwrapper_share_transport_is_read(text: str, value: str) -> None:
    body = (
        f"<enable_shared_directory/><vmwrapper_share_transport>{text}</vmwrapper_share_transport>"
    )
    assert job(body).vmwrapper_share_transport == value


def test_vmwrapper_share_transport_names_a_transport_and_needs_a_share() -> None:
    found = problems("<vmwrapper_share_transport>virtiofs</vmwrapper_share_transport>")
    assert found == [
        "job.xml: <vmwrapper_share_transport>: error: 'virtiofs' is no share transport (fix: "
        "write one of auto, 9p, serial (or leave the element out: auto))"
    ]
    parsed = parse_job(
        "<vbox_job><vmwrapper_share_transport>serial</vmwrapper_share_transport></vbox_job>"
    )
    assert any("has no effect" in w for w in parsed.warnings)
