"""vboxwrapper's command line and the run configuration rules
(docs/compatibility.md#command-line)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from vmwrapper.boinc.init_data import AppInitData, HostInfo
from vmwrapper.errors import CommandLineError
from vmwrapper.runconfig import (
    RuntimePorts,
    WrapperArgs,
    build_run_config,
    build_vm_config,
    detected_lines,
    hw_acceleration_usable,
    parse_wrapper_args,
    virtualbox_options,
    vm_name_for,
)
from vmwrapper.spec import parse_job

AID = AppInitData(result_name="wu_42_r0", slot=7, ncpus=1.0, project_dir="/p")


def config(argv: list[str], spec_body: str = "", aid: AppInitData = AID, standalone: bool = False):  # type: ignore[no-untyped-def]
    spec = parse_job(f"<vbox_job>{spec_body}</vbox_job>").spec
    return build_run_config(parse_wrapper_args(argv), spec, aid, standalone=standalone)


def test_every_vboxwrapper_option() -> None:
    args = parse_wrapper_args(
        [
            "--trickle",
            "3600",
            "--nthreads",
            "2.5",
            "--memory_size_mb",
            "2048",
            "--vmimage",
            "3",
            "--register_only",
            "--sporadic",
        ]
    )
    assert args == WrapperArgs(
        trickle=3600.0,
        nthreads=2.5,
        memory_size_mb=2048.0,
        vmimage=3,
        register_only=True,
        sporadic=True,
    )


def test_guest_log_limit_option() -> None:
    assert parse_wrapper_args([]).guest_log_limit == 1 << 20
    assert parse_wrapper_args(["--guest_log_limit", "65536"]).guest_log_limit == 65536


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--bogus"], "Unrecognized option: '--bogus'"),
        (["--nthreads"], "--nthreads needs a value"),
        (["--nthreads", "two"], "needs a number"),
        (["--vmimage", "1.5"], "needs a number"),
        (["--guest_log_limit", "1M"], "needs a number"),
        (["--memory_size_mb", "-5"], "0 or more"),
        (["--backend", "xen"], "must be one of"),
        (["--nthreads=2"], "Unrecognized option"),
    ],
)
def test_bad_command_lines(argv: list[str], needle: str) -> None:
    with pytest.raises(CommandLineError, match=needle):
        parse_wrapper_args(argv)


def test_vm_name_is_boinc_plus_md5_prefix() -> None:
    expected = "boinc_" + hashlib.md5(b"wu_42_r0").hexdigest()[:16]
    assert vm_name_for("wu_42_r0", False) == expected
    assert config([]).vm_name == expected
    assert vm_name_for("anything", True) == "boinc_standalone"


@pytest.mark.parametrize(
    ("argv", "ncpus", "cpus"),
    [
        ([], 1.0, 1),
        ([], 2.0, 2),
        ([], 1.5, 2),
        (["--nthreads", "3"], 1.0, 3),
        (["--nthreads", "2.2"], 4.0, 3),
        (["--nthreads", "1"], 1.0, 1),
        (["--nthreads", "64"], 1.0, 32),
        (["--nthreads", "1"], 4.0, 1),
        ([], 0.0, 1),
    ],
)
def test_cpu_rule(argv: list[str], ncpus: float, cpus: int) -> None:
    aid = AppInitData(result_name="r", ncpus=ncpus)
    assert config(argv, aid=aid).cpus == cpus


def test_thread_cap_is_noted() -> None:
    assert any("capped at 32" in n for n in config(["--nthreads", "40"]).notes)


@pytest.mark.parametrize(
    ("argv", "body", "memory"),
    [
        ([], "", 512),
        ([], "<memory_size_mb>2048</memory_size_mb>", 2048),
        (["--memory_size_mb", "4096"], "<memory_size_mb>2048</memory_size_mb>", 4096),
        (["--memory_size_mb", "100"], "<memory_size_mb>2048</memory_size_mb>", 512),
        (["--memory_size_mb", "0"], "<memory_size_mb>1024</memory_size_mb>", 1024),
    ],
)
def test_memory_rule_with_512_floor(argv: list[str], body: str, memory: int) -> None:
    run = config(argv, body)
    assert run.memory_mb == memory
    assert any("too small" in n for n in run.notes) == (memory == 512)


def test_image_and_floppy_names() -> None:
    assert config([]).image_name == "vm_image.vdi"
    assert config(["--vmimage", "2"]).image_name == "vm_image_2.vdi"
    assert config([]).floppy_name == "vm_floppy_7.img"
    standalone = config(["--vmimage", "2"], standalone=True)
    assert (standalone.image_name, standalone.floppy_name) == ("vm_image.vdi", "vm_floppy.img")
    assert any("ignored in standalone" in n for n in standalone.notes)


def test_headless_unless_vbox_window_or_standalone() -> None:
    assert config([]).headless
    assert not config([], aid=AppInitData(result_name="r", vbox_window=True)).headless
    assert config(
        [], aid=AppInitData(result_name="r", vbox_window=True, using_sandbox=True)
    ).headless
    assert not config([], standalone=True).headless


def test_backend_choice() -> None:
    # a job without <vmwrapper_backends> is VirtualBox's (docs/compatibility.md#back-end-selection)
    assert config([]).backend == "virtualbox"
    assert config(["--backend", "qemu"]).backend == "qemu"
    assert config(["--backend", "virtualbox"]).backend == "virtualbox"
    spec = parse_job("<vbox_job></vbox_job>").spec
    run = build_run_config(WrapperArgs(), spec, AID, standalone=False, backend_from_env="fake")
    assert run.backend == "fake"


def test_vm_config_maps_the_job() -> None:
    body = (
        "<enable_network/><enable_shared_directory/><share_project_dir/><enable_floppyio/>"
        "<pf_guest_port>80</pf_guest_port><enable_remotedesktop/><vram_size_mb>32</vram_size_mb>"
        "<port_forward><host_port>2000</host_port><guest_port>22</guest_port><nports>2</nports>"
        "<is_remote/></port_forward>"
    )
    spec = parse_job(f"<vbox_job>{body}</vbox_job>").spec
    run = config([], body)
    slot, project = Path("/s/slots/7"), Path("/s/projects/p")
    vm = build_vm_config(run, spec, AID, slot, project, RuntimePorts(0, 5901, "pw"))
    assert vm.disk_image == slot / "vm_image.vdi"
    assert vm.floppy_image == slot / "vm_floppy_7.img"
    assert [(s.name, s.host_path) for s in vm.shares] == [
        ("shared", slot / "shared"),
        ("project", project),
    ]
    rules = [(r.host_port, r.guest_port, r.bind) for r in vm.network.port_rules]
    assert rules == [(0, 80, "127.0.0.1"), (2000, 22, ""), (2001, 23, "")]
    assert vm.remote_desktop is not None and vm.remote_desktop.bind == "127.0.0.1"
    assert virtualbox_options(spec).vram_mb == 32 and vm.memory_mb == 512


def test_vm_config_network_off_drops_forwards_and_iso_mode() -> None:
    body = (
        "<enable_isocontextualization/><enable_cache_disk/><vm_disk_controller_model>PIIX4"
        "</vm_disk_controller_model><pf_guest_port>80</pf_guest_port>"
        "<multiattach_vdi_file>base.vdi</multiattach_vdi_file>"
    )
    spec = parse_job(f"<vbox_job>{body}</vbox_job>").spec
    vm = build_vm_config(config([], body), spec, AID, Path("/s"), Path("/p"))
    assert not vm.network.enabled and vm.network.port_rules == ()
    assert vm.disk_image is None and vm.multiattach_parent is None
    assert vm.iso_image == Path("/s/vm_isocontext.iso") and vm.cache_disk == Path("/s/vm_cache.vdi")
    options = virtualbox_options(spec)
    assert (options.disk_controller_type, options.disk_controller_model) == ("sata", "IntelAHCI")


def test_multiattach_parent_in_project_dir() -> None:
    body = "<multiattach_vdi_file>base_1.vdi</multiattach_vdi_file>"
    spec = parse_job(f"<vbox_job>{body}</vbox_job>").spec
    vm = build_vm_config(config([], body), spec, AID, Path("/s"), Path("/p"))
    assert vm.multiattach_parent == Path("/p/base_1.vdi") and vm.disk_image is None


def test_hw_acceleration_from_host_features() -> None:
    spec = parse_job("<vbox_job></vbox_job>").spec
    with_vmx = AppInitData(result_name="r", host_info=HostInfo(p_features="fpu vmx sse"))
    no_vmx = AppInitData(result_name="r", host_info=HostInfo(p_features="fpu sse hypervisor"))
    disabled = AppInitData(
        result_name="r", vm_extensions_disabled=True, host_info=HostInfo(p_features="svm")
    )
    for aid, expected in ((with_vmx, True), (no_vmx, False), (disabled, False)):
        run = build_run_config(WrapperArgs(), spec, aid, standalone=False)
        assert build_vm_config(run, spec, aid, Path("/s"), Path("/p")).hw_acceleration is expected


def test_console_file_says_how_to_log_in_per_back_end_and_keeps_the_password() -> None:
    from vmwrapper.runconfig import (
        console_password_bytes,
        format_console_file,
        parse_console_password,
    )

    vnc = format_console_file("qemu", 5901, "Ab3-x_Yz", "wu_1_r0")
    assert "address: 127.0.0.1:5901" in vnc and "VNC" in vnc and "vncviewer" in vnc
    assert parse_console_password(vnc) == "Ab3-x_Yz"
    rdp = format_console_file("virtualbox", 40123, "longer-password", "wu_1_r0")
    assert "RDP" in rdp and "user: boinc" in rdp and "Show VM Console" in rdp
    assert parse_console_password(rdp) == "longer-password"
    assert parse_console_password("password: \n") is None
    assert console_password_bytes("qemu") == 6  # 8 base64 characters: all VNC checks
    assert console_password_bytes("virtualbox") > 6


@pytest.mark.parametrize(
    ("client", "disabled", "cpus", "usable"),
    [
        ((7, 2, 16), False, 1, True),
        ((7, 2, 16), True, 4, False),  # the client says acceleration failed before
        ((7, 2, 15), False, 1, False),  # old client, one CPU: vboxwrapper's legacy fallback
        ((7, 2, 15), True, 2, True),  # an old client's flag is not read; several CPUs need it
        ((0, 0, 0), False, 1, True),  # no version in init_data: taken as a current client
    ],
)
def test_hw_acceleration_rules_of_vboxwrapper(
    client: tuple[int, int, int], disabled: bool, cpus: int, usable: bool
) -> None:
    major, minor, release = client
    aid = AppInitData(
        result_name="r",
        major_version=major,
        minor_version=minor,
        release=release,
        vm_extensions_disabled=disabled,
        host_info=HostInfo(p_features="fpu vmx sse hypervisor"),
    )
    assert hw_acceleration_usable(aid, False, cpus) is usable
    assert hw_acceleration_usable(aid, True, cpus)  # standalone: never disabled
    spec = parse_job("<vbox_job></vbox_job>").spec
    run = build_run_config(WrapperArgs(), spec, aid, standalone=False)
    assert build_vm_config(run, spec, aid, Path("/s"), Path("/p")).under_hypervisor


def test_detected_lines_as_vboxwrapper_logs_them() -> None:
    assert detected_lines(AID, anonymous_platform=False) == []
    assert detected_lines(AID, anonymous_platform=True) == ["Detected: Anonymous Platform Enabled"]
    sandboxed = replace(AID, using_sandbox=True)
    assert detected_lines(sandboxed, anonymous_platform=False) == [
        "Detected: Sandbox Configuration Enabled"
    ]


@pytest.mark.parametrize(
    ("element", "transport"), [("", "auto"), ("Serial", "serial"), ("9p", "9p")]
)
def test_the_shared_directorys_transport_comes_from_the_job(element: str, transport: str) -> None:
    body = "<enable_shared_directory/><share_project_dir/>"
    if element:
        body += f"<vmwrapper_share_transport>{element}</vmwrapper_share_transport>"
    spec = parse_job(f"<vbox_job>{body}</vbox_job>").spec
    slot, project = Path("/s/slots/7"), Path("/s/projects/p")
    vm = build_vm_config(config([], body), spec, AID, slot, project, RuntimePorts(0, 0, "pw"))
    assert [(s.name, s.transport) for s in vm.shares] == [("shared", transport), ("project", "9p")]
