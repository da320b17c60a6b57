"""`vmwrapper package`: version.xml, versioned files, templates, every form and plan class."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from vmwrapper.cli.main import main as vmwrapper
from vmwrapper.context.iso import read_context_iso
from vmwrapper.errors import InputError
from vmwrapper.packaging.templates import (
    CLIENT_DEFAULT_BOUNDS,
    InputFile,
    InputTemplate,
    OutputFile,
    OutputTemplate,
    WorkunitBounds,
    format_input_template,
    format_output_template,
    parse_input_template,
    parse_output_template,
)
from vmwrapper.packaging.version import (
    ImageMode,
    PackageRequest,
    PlanClass,
    Purpose,
    SourceFile,
    VersionFile,
    format_version_xml,
    parse_version_xml,
    plan_app_version,
    plan_class_from_dir_name,
    versioned_name,
    with_job_backends,
)
from vmwrapper.spec import parse_job

JOB = """<vbox_job>
  <os_name>Linux26_64</os_name>
  <memory_size_mb>512</memory_size_mb>
  <enable_shared_directory/>
  {extra}
</vbox_job>
"""


def _request(**changes: object) -> PackageRequest:
    base: dict[str, object] = {
        "app_name": "hello",
        "version": "1.02",
        "plan_class": PlanClass.VBOX64,
        "purpose": Purpose.SINGLE,
        "wrapper": "/x/vmwrapper",
        "job": "/x/job.xml",
        "image": "/x/debian.vdi",
        "image_mode": ImageMode.COPY,
        "boinc_app": "/x/app.sh",
    }
    base.update(changes)
    return PackageRequest(**base)  # type: ignore[arg-type]


def test_single_purpose_plan() -> None:
    plan = plan_app_version(_request())
    v = plan.version
    assert [f.physical_name for f in v.files] == [
        "vmwrapper",
        "hello_vbox_job_1.02.xml",
        "hello_debian_1.02.vdi",
        "hello_app_1.02.sh",
    ]
    assert v.main_programs == (VersionFile("vmwrapper", main_program=True, executable=True),)
    assert v.by_logical("vbox_job.xml") == VersionFile("hello_vbox_job_1.02.xml", "vbox_job.xml")
    assert v.by_logical("vm_image.vdi") == VersionFile(
        "hello_debian_1.02.vdi", "vm_image.vdi", copy_file=True, gzip=True
    )
    assert v.by_logical("shared/boinc_app") == VersionFile(
        "hello_app_1.02.sh", "shared/boinc_app", copy_file=True
    )
    assert v.dont_throttle and v.is_wrapper and v.api_version == "7.20.5"
    assert [p.executable for p in plan.placements] == [True, False, False, True]


def test_wrapper_name_gets_version_and_platform() -> None:
    plan = plan_app_version(_request(wrapper_version="0.3.1", platform="windows_x86_64"))
    assert plan.version.main_programs[0].physical_name == "vmwrapper_0.3.1_windows_x86_64"
    plan = plan_app_version(_request(wrapper="/d/vboxwrapper_26212", wrapper_version="0.3.1"))
    assert plan.version.main_programs[0].physical_name == "vboxwrapper_26212"


def test_multiattach_plan_keeps_versioned_parent_sticky_without_copy() -> None:
    plan = plan_app_version(
        _request(image_mode=ImageMode.MULTIATTACH, multiattach_name="debian_3.vdi")
    )
    parent = plan.version.by_physical("debian_3.vdi")
    assert parent == VersionFile("debian_3.vdi", sticky=True, gzip=True)
    assert plan.version.by_logical("vm_image.vdi") is None


def test_multiattach_needs_the_job_element() -> None:
    with pytest.raises(InputError, match="multiattach_vdi_file"):
        plan_app_version(_request(image_mode=ImageMode.MULTIATTACH))


def test_multi_purpose_leaves_boinc_app_out_and_single_needs_it() -> None:
    plan = plan_app_version(_request(purpose=Purpose.MULTI, boinc_app=""))
    assert plan.version.by_logical("shared/boinc_app") is None
    with pytest.raises(InputError, match="boinc-app"):
        plan_app_version(_request(boinc_app=""))


def test_extra_files_and_duplicates() -> None:
    plan = plan_app_version(
        _request(extra=(SourceFile("/y/lib.so"), SourceFile("/y/cfg", "app.cfg")))
    )
    assert plan.version.by_logical("shared/lib.so") == VersionFile(
        "hello_lib_1.02.so", "shared/lib.so", copy_file=True
    )
    assert plan.version.by_logical("app.cfg") == VersionFile("hello_cfg_1.02", "app.cfg")
    with pytest.raises(InputError, match="twice"):
        plan_app_version(_request(extra=(SourceFile("/y/app.sh"),)))


def test_version_xml_round_trip() -> None:
    v = plan_app_version(_request(cmdline="--nthreads 2 & more")).version
    text = format_version_xml(v)
    assert "<cmdline>--nthreads 2 &amp; more</cmdline>" in text
    assert parse_version_xml(text) == v
    assert text.startswith("<version>\n    <file>\n        <physical_name>vmwrapper<")


def test_version_xml_reader_accepts_boinc_bools_and_rejects_bad_xml() -> None:
    v = parse_version_xml(
        "<version><file><physical_name>a</physical_name><copy_file>1</copy_file>"
        "<sticky>0</sticky></file><dont_throttle/></version>"
    )
    assert v.files == (VersionFile("a", copy_file=True),)
    assert v.dont_throttle and not v.is_wrapper and v.api_version == ""
    with pytest.raises(InputError, match="well-formed"):
        parse_version_xml("<version>")
    with pytest.raises(InputError, match="<app_version>"):
        parse_version_xml("<app_version/>")
    with pytest.raises(InputError, match="refused"):
        parse_version_xml('<!DOCTYPE v [<!ENTITY e "x">]><version>&e;</version>')


def test_version_xml_harness_fields_and_boinc_rules() -> None:
    v = parse_version_xml(
        "<version><file><physical_name>w_1</physical_name><main_program>0x1</main_program>"
        "<copy_file>010</copy_file><sticky>true</sticky><gzip>0</gzip></file>"
        "<file><physical_name>d_1</physical_name><logical_name>d</logical_name></file>"
        "<version_num>0x66</version_num><avg_ncpus>2.5</avg_ncpus>"
        "<api_version>5.9</api_version></version>"
    )
    # strtol base 0: 0x1 and 010 (octal 8) are true; 'true' is not a BOINC boolean
    assert v.files[0] == VersionFile("w_1", main_program=True, copy_file=True)
    assert v.main_program.physical_name == "w_1"
    assert (v.version_num, v.avg_ncpus, v.uses_mmap) == (102, 2.5, False)
    plain = parse_version_xml("<version><api_version>7.20.5</api_version></version>")
    assert (plain.version_num, plain.avg_ncpus, plain.uses_mmap) == (100, 1.0, True)
    assert not parse_version_xml("<version/>").uses_mmap
    with pytest.raises(InputError, match="found 0"):
        plain.main_program  # noqa: B018
    with pytest.raises(InputError, match=r"v\.xml: <avg_ncpus> is not a number: 'two'"):
        parse_version_xml("<version><avg_ncpus>two</avg_ncpus></version>", "v.xml")
    with pytest.raises(InputError, match=r"<version_num> is not an integer: '1.5'"):
        parse_version_xml("<version><version_num>1.5</version_num></version>")


def test_templates_read_optional_flags_and_leave_unset_numbers_zero() -> None:
    wu = parse_input_template(
        "<input_template><file_info><number>0</number><sticky>1</sticky></file_info>"
        "<workunit><file_ref><file_number>0</file_number><open_name>shared/in</open_name>"
        "<copy_file>0</copy_file><optional/></file_ref>"
        "<rsc_disk_bound>2e9</rsc_disk_bound></workunit></input_template>"
    )
    assert wu.files == (InputFile("shared/in", copy_file=False, sticky=True, optional=True),)
    assert wu.bounds == WorkunitBounds(0.0, 0.0, 0.0, 2e9, 0.0)
    filled = wu.bounds.or_defaults(CLIENT_DEFAULT_BOUNDS)
    assert (filled.rsc_fpops_est, filled.rsc_disk_bound) == (1e10, 2e9)
    with pytest.raises(InputError, match=r"wu\.xml: <rsc_fpops_est> is not a number"):
        parse_input_template(
            "<input_template><workunit><rsc_fpops_est>1e9x</rsc_fpops_est></workunit>"
            "</input_template>",
            "wu.xml",
        )
    out = parse_output_template(
        "<output_template><result><file_ref><file_name><OUTFILE_0/></file_name>"
        "<open_name>out</open_name><optional>1</optional></file_ref></result></output_template>"
    )
    assert out.files == (OutputFile("out", max_nbytes=0.0, copy_file=False, optional=True),)
    assert out.files[0].or_default_limit(5e8).max_nbytes == 5e8
    assert OutputFile("o", 7.0).or_default_limit(5e8).max_nbytes == 7.0
    with_optional = InputTemplate((InputFile("shared/x", optional=True),))
    assert parse_input_template(format_input_template(with_optional)) == with_optional


def test_templates_round_trip() -> None:
    wu = InputTemplate(
        (
            InputFile("shared/boinc_app", sticky=True, no_delete=True, executable=True),
            InputFile("shared/in"),
        ),
        command_line="--n 3",
    )
    wu_text = format_input_template(wu)
    assert "<sticky/>" in wu_text and "<open_name>shared/in</open_name>" in wu_text
    assert parse_input_template(wu_text) == wu
    out = OutputTemplate((OutputFile("shared/out", 5e6), OutputFile("shared/log", 1e5)))
    out_text = format_output_template(out)
    assert "<name><OUTFILE_1/></name>" in out_text
    assert parse_output_template(out_text) == out


def test_names_and_dir_convention() -> None:
    assert versioned_name("a", "2", "vm_image.vdi") == "a_vm_image_2.vdi"
    assert versioned_name("a", "2", "boinc_app") == "a_boinc_app_2"
    assert plan_class_from_dir_name("x86_64-pc-linux-gnu__vbox64_mt") is PlanClass.VBOX64_MT
    assert plan_class_from_dir_name("x86_64-pc-linux-gnu") is None
    assert PlanClass.VBOX32.guest_bits == 32 and PlanClass.VBOX64_MT.multithreaded


# --- the command, on real files -------------------------------------------------------------


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    if shutil.which("qemu-img"):
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "vdi", str(src / "debian.vdi"), "16M"],
            check=True,
            timeout=60,
        )
    else:  # the VDI signature is all the linter looks at
        (src / "debian.vdi").write_bytes(b"<<< VDI >>>".ljust(64, b"\0") + b"\x7f\x10\xda\xbe")
    (src / "app.sh").write_text("#!/bin/sh\necho done > /root/shared/out\n")
    (src / "app.sh").chmod(0o755)
    (src / "vmwrapper").write_text('#!/bin/sh\nexec python3 -m vmwrapper "$@"\n')
    (src / "vmwrapper").chmod(0o755)
    (src / "in.dat").write_text("42\n")
    (src / "job.xml").write_text(JOB.format(extra=""))
    return src


def _package(src: Path, out: Path, *extra: str) -> int:
    return vmwrapper(
        [
            "package",
            "--app",
            "hello",
            "--version",
            "1.02",
            "--job",
            str(src / "job.xml"),
            "--wrapper",
            str(src / "vmwrapper"),
            "--out",
            str(out),
            *extra,
        ]
    )


@pytest.mark.parametrize("plan_class", ["vbox64", "vbox64_mt", "vbox32"])
def test_package_single_purpose(sources: Path, tmp_path: Path, plan_class: str) -> None:
    out = tmp_path / f"x86_64-pc-linux-gnu__{plan_class}"
    job = "<vbox_job><os_name>Linux26</os_name><memory_size_mb>512</memory_size_mb>"
    (sources / "job.xml").write_text(job + "<enable_shared_directory/></vbox_job>")
    rc = _package(
        sources,
        out,
        "--plan-class",
        plan_class,
        "--image",
        str(sources / "debian.vdi"),
        "--boinc-app",
        str(sources / "app.sh"),
        "--input",
        f"in={sources / 'in.dat'}",
        "--output",
        "out",
    )
    assert rc == 0
    v = parse_version_xml((out / "version.xml").read_text())
    for f in v.files:
        assert (out / f.physical_name).is_file()
    # The main program gets the wrapper's version and the platform in its name.
    assert v.main_programs[0].physical_name == "vmwrapper_0.1.0_x86_64-pc-linux-gnu"
    assert (out / "vmwrapper_0.1.0_x86_64-pc-linux-gnu").stat().st_mode & stat.S_IXUSR
    assert (out / "hello_app_1.02.sh").stat().st_mode & stat.S_IXUSR
    assert not (out / "hello_debian_1.02.vdi").stat().st_mode & stat.S_IXUSR
    assert (out / "inputs" / "in").read_text() == "42\n"
    wu = parse_input_template((out / "templates" / "input_template.xml").read_text())
    assert wu.files == (InputFile("shared/in"),)
    assert wu.bounds.rsc_memory_bound == (512 + 256) * 1024 * 1024
    result = parse_output_template((out / "templates" / "output_template.xml").read_text())
    assert result.files == (OutputFile("shared/out", 1e8),)
    assert vmwrapper(["lint", str(out)]) == 0


def test_package_multi_purpose(sources: Path, tmp_path: Path) -> None:
    out = tmp_path / "multi"
    rc = _package(
        sources,
        out,
        "--purpose",
        "multi",
        "--image",
        str(sources / "debian.vdi"),
        "--boinc-app",
        str(sources / "app.sh"),
        "--output",
        "out",
    )
    assert rc == 0
    v = parse_version_xml((out / "version.xml").read_text())
    assert v.by_logical("shared/boinc_app") is None
    wu = parse_input_template((out / "templates" / "input_template.xml").read_text())
    assert wu.files == (
        InputFile("shared/boinc_app", sticky=True, no_delete=True, executable=True),
    )
    assert (out / "inputs" / "boinc_app").stat().st_mode & stat.S_IXUSR


def test_package_multiattach(sources: Path, tmp_path: Path) -> None:
    (sources / "job.xml").write_text(
        JOB.format(extra="<multiattach_vdi_file>debian_7.vdi</multiattach_vdi_file>")
    )
    out = tmp_path / "ma"
    rc = _package(
        sources,
        out,
        "--image",
        str(sources / "debian.vdi"),
        "--boinc-app",
        str(sources / "app.sh"),
    )
    assert rc == 0
    v = parse_version_xml((out / "version.xml").read_text())
    assert v.by_physical("debian_7.vdi") == VersionFile("debian_7.vdi", sticky=True, gzip=True)
    assert (out / "debian_7.vdi").read_bytes() == (sources / "debian.vdi").read_bytes()


def test_package_iso_context(sources: Path, tmp_path: Path) -> None:
    (sources / "job.xml").write_text(
        JOB.format(extra="<enable_isocontextualization>1</enable_isocontextualization>")
    )
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "context.sh").write_text("#!/bin/sh\n")
    out = tmp_path / "iso"
    rc = _package(sources, out, "--iso-context", str(ctx), "--boinc-app", str(sources / "app.sh"))
    assert rc == 0
    v = parse_version_xml((out / "version.xml").read_text())
    iso = v.by_logical("vm_isocontext.iso")
    assert iso == VersionFile("hello_vm_isocontext_1.02.iso", "vm_isocontext.iso", copy_file=True)
    files = read_context_iso((out / iso.physical_name).read_bytes())
    assert files["context.sh"].data == b"#!/bin/sh\n"
    assert not any(p.name.startswith(".") for p in out.iterdir())


def test_package_refuses_to_overwrite_and_reports_bad_job(
    sources: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    args = ("--image", str(sources / "debian.vdi"), "--boinc-app", str(sources / "app.sh"))
    assert _package(sources, out, *args) == 0
    assert _package(sources, out, *args) == 2
    assert "--force" in capsys.readouterr().err
    assert _package(sources, out, *args, "--force") == 0
    (sources / "job.xml").write_text("<vbox_job><memory_size_mb>x")
    assert _package(sources, tmp_path / "o2", *args) == 2
    assert "never reaches </vbox_job>" in capsys.readouterr().err
    # A failure after the directory was made leaves nothing behind.
    (sources / "job.xml").write_text(JOB.format(extra=""))
    assert _package(sources, tmp_path / "o3", "--image", str(sources / "missing.vdi")) == 2
    assert "--image" in capsys.readouterr().err
    assert not (tmp_path / "o3").exists()


def test_package_default_out_is_boinc_apps_tree(
    sources: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    rc = vmwrapper(
        [
            "package",
            "--app",
            "hello",
            "--plan-class",
            "vbox64_mt",
            "--job",
            str(sources / "job.xml"),
            "--image",
            str(sources / "debian.vdi"),
            "--boinc-app",
            str(sources / "app.sh"),
            "--wrapper",
            str(sources / "vmwrapper"),
        ]
    )
    assert rc == 0
    out = tmp_path / "hello" / "1.00" / "x86_64-pc-linux-gnu__vbox64_mt"
    assert (out / "version.xml").is_file()
    assert vmwrapper(["lint", "--json", str(out)]) == 0


def test_lint_json_output_of_packaged_dir(
    sources: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x86_64-pc-linux-gnu__vbox64"
    args = ("--image", str(sources / "debian.vdi"), "--boinc-app", str(sources / "app.sh"))
    assert _package(sources, out, *args) == 0
    capsys.readouterr()
    (out / "hello_app_1.02.sh").chmod(0o644)
    assert vmwrapper(["lint", "--json", str(out)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["errors"] == 1
    assert doc["findings"][0] == {
        "code": "VMW005",
        "severity": "error",
        "file": "hello_app_1.02.sh",
        "message": "a script or executable without execute permission (all must have it)",
        "fix": "chmod +x hello_app_1.02.sh",
    }


def test_lint_command_options(
    sources: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x86_64-pc-linux-gnu__vbox64"
    args = ("--image", str(sources / "debian.vdi"), "--boinc-app", str(sources / "app.sh"))
    assert _package(sources, out, *args) == 0
    wu = tmp_path / "elsewhere" / "wu.xml"
    wu.parent.mkdir()
    wu.write_text(format_input_template(InputTemplate((InputFile("in.dat"),))))
    capsys.readouterr()
    assert vmwrapper(["lint", "--json", "--wu", str(wu), str(out)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [f["code"] for f in doc["findings"]] == ["VMW017"]
    assert doc["findings"][0]["file"].endswith("wu.xml")
    assert vmwrapper(["lint", str(tmp_path / "missing")]) == 2
    assert vmwrapper(["lint", "--codes"]) == 0
    assert "VMW101  warning" in capsys.readouterr().out


def test_package_writes_the_back_ends_into_the_shipped_job(sources: Path, tmp_path: Path) -> None:
    """`--backends qemu` is the QEMU opt-in (docs/compatibility.md#back-end-selection): the
    shipped vbox_job.xml carries it, the project's own file is left alone, lint accepts it."""
    out = tmp_path / "x86_64-pc-linux-gnu__vbox64"
    original = (
        "<vbox_job><os_name>Linux26_64</os_name><memory_size_mb>512</memory_size_mb>"
        "<enable_shared_directory/></vbox_job>"
    )
    (sources / "job.xml").write_text(original)
    files = ("--image", str(sources / "debian.vdi"), "--boinc-app", str(sources / "app.sh"))
    rc = _package(sources, out, *files, "--backends", "virtualbox,qemu")
    assert rc == 0
    shipped = (out / "hello_vbox_job_1.02.xml").read_text()
    assert parse_job(shipped).spec.backends == ("virtualbox", "qemu")
    assert (sources / "job.xml").read_text() == original
    assert vmwrapper(["lint", str(out)]) == 0


def test_package_writes_an_intermediate_upload_as_the_client_uploads_it(
    sources: Path, tmp_path: Path
) -> None:
    """An --output the job names in <intermediate_upload_file> is opened under its own name
    without <copy_file/> (what the real client uploads while the task runs); lint accepts it."""
    out = tmp_path / "x86_64-pc-linux-gnu__vbox64"
    (sources / "job.xml").write_text(
        "<vbox_job><os_name>Linux26_64</os_name><memory_size_mb>512</memory_size_mb>"
        "<enable_shared_directory/><intermediate_upload_file>partial</intermediate_upload_file>"
        "</vbox_job>"
    )
    files = ("--image", str(sources / "debian.vdi"), "--boinc-app", str(sources / "app.sh"))
    assert _package(sources, out, *files, "--output", "result", "--output", "partial") == 0
    template = parse_output_template((out / "templates" / "output_template.xml").read_text())
    assert [(f.open_name, f.copy_file) for f in template.files] == [
        ("shared/result", True),
        ("partial", False),
    ]
    assert vmwrapper(["lint", str(out)]) == 0


@pytest.mark.parametrize(
    "job",
    [
        "<vbox_job><os_name>x</os_name></vbox_job>",
        "<vbox_job><vmwrapper_backends>virtualbox</vmwrapper_backends></vbox_job>",
        "<vbox_job/>",
    ],
)
def test_with_job_backends_sets_one_element(job: str) -> None:
    text = with_job_backends(job, ["qemu"])
    assert text.count("<vmwrapper_backends>") == 1
    assert parse_job(text).spec.backends == ("qemu",)
