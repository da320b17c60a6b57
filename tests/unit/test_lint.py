"""The VM-app linter: each rule fires on the pitfall it names, and only then (pure facts)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from vmwrapper.packaging.lint import (
    CODES,
    AppDirFacts,
    FileFacts,
    Finding,
    Severity,
    has_errors,
    lint_app_dir,
)
from vmwrapper.packaging.templates import (
    InputFile,
    InputTemplate,
    OutputFile,
    OutputTemplate,
    WorkunitBounds,
    format_input_template,
    format_output_template,
)
from vmwrapper.packaging.version import (
    AppVersion,
    PlanClass,
    VersionFile,
    format_version_xml,
)

VDI_HEAD = b"<<< Oracle VM VirtualBox Disk Image >>>\n".ljust(64, b"\0") + b"\x7f\x10\xda\xbe"
EXE = FileFacts(size=100, mode=0o100755, head=b"#!/bin/sh\n")
PLAIN = FileFacts(size=100, mode=0o100644, head=b"<vbox_job>")
IMAGE = FileFacts(size=10 * 2**20, mode=0o100644, head=VDI_HEAD)

WRAPPER = "vmwrapper_0.1.0_x86_64-pc-linux-gnu"

GOOD_JOB = (
    "<vbox_job><os_name>Linux26_64</os_name><memory_size_mb>512</memory_size_mb>"
    "<enable_shared_directory/>{extra}</vbox_job>"
)

GOOD_FILES = (
    VersionFile(WRAPPER, main_program=True, executable=True),
    VersionFile("app_vbox_job_1.xml", "vbox_job.xml"),
    VersionFile("app_vm_image_1.vdi", "vm_image.vdi", copy_file=True, gzip=True),
    VersionFile("app_boinc_app_1.sh", "shared/boinc_app", copy_file=True),
)


def _facts(
    files: tuple[VersionFile, ...] = GOOD_FILES,
    job: str = GOOD_JOB.format(extra=""),
    version: AppVersion | None = None,
    modes: dict[str, FileFacts] | None = None,
    wu: InputTemplate | None = None,
    result: OutputTemplate | None = None,
    plan_class: PlanClass | None = PlanClass.VBOX64,
) -> AppDirFacts:
    v = version or AppVersion(files)
    disk = {
        WRAPPER: EXE,
        "app_vbox_job_1.xml": PLAIN,
        "app_vm_image_1.vdi": IMAGE,
        "app_boinc_app_1.sh": EXE,
        "version.xml": PLAIN,
    }
    for f in v.files:
        disk.setdefault(f.physical_name, IMAGE if f.physical_name.endswith(".vdi") else PLAIN)
    disk.update(modes or {})
    texts = {"version.xml": format_version_xml(v).encode(), "app_vbox_job_1.xml": job.encode()}
    wu_key = result_key = ""
    if wu is not None:
        wu_key = "templates/input_template.xml"
        texts[wu_key] = format_input_template(wu).encode()
    if result is not None:
        result_key = "templates/output_template.xml"
        texts[result_key] = format_output_template(result).encode()
    return AppDirFacts(
        dir_name="x86_64-pc-linux-gnu__vbox64",
        files=disk,
        texts=texts,
        wu_template=wu_key,
        result_template=result_key,
        plan_class=plan_class,
    )


def _codes(findings: tuple[Finding, ...]) -> list[str]:
    return [f.code for f in findings]


def _replace(name: str, new: VersionFile | None) -> tuple[VersionFile, ...]:
    out = tuple(new if f.physical_name == name else f for f in GOOD_FILES)
    return tuple(f for f in out if f is not None)


def test_good_app_version_is_clean() -> None:
    wu = InputTemplate((InputFile("shared/in"),), bounds=WorkunitBounds(rsc_memory_bound=2**30))
    result = OutputTemplate((OutputFile("shared/out"),))
    assert lint_app_dir(_facts(wu=wu, result=result)) == ()


def test_every_code_has_a_severity_and_a_title() -> None:
    for code, (severity, title) in CODES.items():
        assert code.startswith("VMW") and len(code) == 6
        assert isinstance(severity, Severity) and title


CASES: list[tuple[str, Callable[[], AppDirFacts]]] = [
    (
        "VMW001",
        lambda: AppDirFacts("d", {}, {}),
    ),
    (
        "VMW001",
        lambda: AppDirFacts("d", {}, {"version.xml": b"<version><file>"}),
    ),
    ("VMW002", lambda: _facts(modes={"app_boinc_app_1.sh": FileFacts(exists=False)})),
    (
        "VMW003",
        lambda: _facts(_replace(WRAPPER, VersionFile(WRAPPER, executable=True))),
    ),
    ("VMW004", lambda: _facts(modes={WRAPPER: FileFacts(mode=0o100644, head=b"\x7fELF")})),
    (
        "VMW005",
        lambda: _facts(modes={"app_boinc_app_1.sh": FileFacts(mode=0o100644, head=b"#!/bin/sh")}),
    ),
    ("VMW006", lambda: _facts(_replace("app_vbox_job_1.xml", None))),
    ("VMW007", lambda: _facts(job="<vbox_job><memory_size_mb>")),
    ("VMW007", lambda: _facts(job="<not_a_job/>")),
    ("VMW008", lambda: _facts(_replace("app_vm_image_1.vdi", None))),
    (
        "VMW009",
        lambda: _facts(
            _replace(
                "app_vm_image_1.vdi", VersionFile("app_vm_image_1.vdi", "vm_image.vdi", gzip=True)
            )
        ),
    ),
    (
        "VMW010",
        lambda: _facts(
            _replace(
                "app_vm_image_1.vdi",
                VersionFile("app_vm_image_1.vdi", "vm_image.vdi", copy_file=True),
            )
        ),
    ),
    (
        "VMW016",
        lambda: _facts(_replace("app_boinc_app_1.sh", None)),
    ),
    (
        "VMW017",
        lambda: _facts(
            _replace(
                "app_boinc_app_1.sh", VersionFile("app_boinc_app_1.sh", "boinc_app", copy_file=True)
            )
        ),
    ),
    (
        "VMW018",
        lambda: _facts(
            _replace("app_boinc_app_1.sh", VersionFile("app_boinc_app_1.sh", "shared/boinc_app"))
        ),
    ),
    ("VMW019", lambda: _facts(version=AppVersion(GOOD_FILES, dont_throttle=False))),
    ("VMW020", lambda: _facts(job=GOOD_JOB.format(extra="").replace("Linux26_64", "Linux 2.6"))),
    ("VMW020", lambda: _facts(job=GOOD_JOB.format(extra="").replace("Linux26_64", ""))),
    ("VMW021", lambda: _facts(job=GOOD_JOB.format(extra="").replace(">512<", ">256<"))),
    ("VMW022", lambda: _facts(job=GOOD_JOB.format(extra="").replace(">512<", ">0<"))),
    (
        "VMW023",
        lambda: _facts(
            job=GOOD_JOB.format(
                extra="<enable_isocontextualization>1</enable_isocontextualization>"
            )
        ),
    ),
    (
        "VMW024",
        lambda: _facts(
            _replace(
                "app_vm_image_1.vdi",
                VersionFile("ctx_1.iso", "vm_isocontext.iso", copy_file=True),
            ),
            job=GOOD_JOB.format(
                extra="<enable_isocontextualization>1</enable_isocontextualization>"
                "<enable_cache_disk>1</enable_cache_disk>"
            ),
        ),
    ),
    (
        "VMW025",
        lambda: _facts(job=GOOD_JOB.format(extra="").replace("<enable_shared_directory/>", "")),
    ),
    ("VMW026", lambda: _facts(plan_class=PlanClass.VBOX32)),
    ("VMW027", lambda: _facts(version=AppVersion(GOOD_FILES, api_version=""))),
    ("VMW028", lambda: _facts(version=AppVersion(GOOD_FILES, is_wrapper=False))),
    (
        "VMW029",
        lambda: _facts((*GOOD_FILES, VersionFile("app_boinc_app_1.sh", "x"))),
    ),
    ("VMW030", lambda: _facts(result=OutputTemplate((OutputFile("shared/out", 0),)))),
    (
        "VMW031",
        lambda: _facts(wu=InputTemplate((), bounds=WorkunitBounds(rsc_memory_bound=2**28))),
    ),
    (
        "VMW032",
        lambda: _facts(wu=InputTemplate((), bounds=WorkunitBounds(rsc_disk_bound=2**20))),
    ),
    ("VMW034", lambda: _facts(modes={"app_vm_image_1.vdi": FileFacts(head=b"\0" * 512)})),
    (
        "VMW040",
        lambda: _facts(
            modes={
                "app_vm_image_1.vdi": FileFacts(
                    head=VDI_HEAD + b"\x01\x00\x01\x00" + b"\x80\x01\x00\x00" + b"\x04\0\0\0"
                )
            }
        ),
    ),
    (
        "VMW041",
        lambda: _facts(
            job=GOOD_JOB.format(extra="<copy_to_shared>params.txt</copy_to_shared>"),
            wu=InputTemplate((InputFile("shared/in"),)),
        ),
    ),
    (
        "VMW044",
        lambda: _facts(
            job=GOOD_JOB.format(extra="<vmwrapper_backends>qemu</vmwrapper_backends>"),
            plan_class=PlanClass.VBOX64,
        ),
    ),
    ("VMW035", lambda: _facts(job=GOOD_JOB.format(extra="<no_such_element/>"))),
    (
        "VMW037",
        lambda: _facts(
            _replace(
                "app_boinc_app_1.sh",
                VersionFile("app.sh", "shared/boinc_app", copy_file=True),
            ),
            modes={"app.sh": EXE},
        ),
    ),
    (
        "VMW038",
        lambda: _facts(job=GOOD_JOB.format(extra="").replace("Linux26_64", "Debian13_64")),
    ),
    (
        "VMW101",
        lambda: _facts(
            job=GOOD_JOB.format(
                extra="<enable_network/><port_forward><host_port>8080</host_port>"
                "<guest_port>80</guest_port><is_remote>1</is_remote></port_forward>"
            )
        ),
    ),
    (
        "VMW102",
        lambda: _facts(job=GOOD_JOB.format(extra="<enable_network/><network_bridged_mode/>")),
    ),
    ("VMW103", lambda: _facts(job=GOOD_JOB.format(extra="<share_project_dir/>"))),
    (
        "VMW104",
        lambda: _facts(job=GOOD_JOB.format(extra="<enable_remotedesktop>1</enable_remotedesktop>")),
    ),
    ("VMW105", lambda: _facts(job=GOOD_JOB.format(extra="<enable_network/>"))),
    ("VMW106", lambda: _facts(modes={WRAPPER: FileFacts(mode=0o100777, head=b"\x7fELF")})),
    (
        "VMW037",
        lambda: _facts(
            _replace(WRAPPER, VersionFile("vmwrapper", main_program=True)),
            modes={"vmwrapper": EXE},
        ),
    ),
]


@pytest.mark.parametrize(
    ("code", "make"), CASES, ids=[f"{c}-{i}" for i, (c, _) in enumerate(CASES)]
)
def test_rule_fires(code: str, make: Callable[[], AppDirFacts]) -> None:
    findings = lint_app_dir(make())
    assert code in _codes(findings), findings
    hit = next(f for f in findings if f.code == code)
    assert hit.severity is CODES[code][0]
    assert hit.file and hit.message and hit.fix
    assert has_errors(findings) == any(f.severity is Severity.ERROR for f in findings)


def test_errors_come_first_and_exit_decision() -> None:
    facts = _facts(
        job=GOOD_JOB.format(extra="<enable_network/>").replace(">512<", ">256<"),
        version=AppVersion(GOOD_FILES, dont_throttle=False),
    )
    findings = lint_app_dir(facts)
    assert _codes(findings) == ["VMW019", "VMW021", "VMW105"]
    assert has_errors(findings)
    assert not has_errors(lint_app_dir(_facts(job=GOOD_JOB.format(extra="<enable_network/>"))))


MA_JOB = GOOD_JOB.format(extra="<multiattach_vdi_file>{name}</multiattach_vdi_file>")


def _multiattach(parent: VersionFile, name: str = "debian_3.vdi") -> tuple[str, ...]:
    files = _replace("app_vm_image_1.vdi", parent)
    return tuple(_codes(lint_app_dir(_facts(files, job=MA_JOB.format(name=name)))))


def test_multiattach_rules() -> None:
    good = VersionFile("debian_3.vdi", sticky=True, gzip=True)
    assert _multiattach(good) == ()
    assert "VMW011" in _multiattach(good, name="other_3.vdi")
    assert "VMW012" in _multiattach(VersionFile("debian_3.vdi", copy_file=True, sticky=True))
    assert "VMW013" in _multiattach(VersionFile("debian_3.vdi"))
    assert "VMW015" in _multiattach(VersionFile("debian_3.vdi", "vm_image.vdi", sticky=True))
    codes = _multiattach(VersionFile("debian.vdi", sticky=True), name="debian.vdi")
    assert "VMW014" in codes
    # No vm_image.vdi is needed (and none is asked for) in multiattach mode.
    assert "VMW008" not in codes


def test_workunit_rules() -> None:
    files = _replace("app_boinc_app_1.sh", None)
    wu = InputTemplate((InputFile("shared/boinc_app"), InputFile("in", copy_file=False)))
    codes = _codes(lint_app_dir(_facts(files, wu=wu)))
    assert "VMW016" not in codes  # multi-purpose: boinc_app comes with the workunit
    assert "VMW036" in codes  # ... but should be sticky
    assert "VMW039" in codes  # ... and executable
    good_wu = InputTemplate(
        (InputFile("shared/boinc_app", sticky=True, no_delete=True, executable=True),)
    )
    assert _codes(lint_app_dir(_facts(files, wu=good_wu))) == []
    assert codes.count("VMW017") == 1 and codes.count("VMW018") == 1
    result = OutputTemplate((OutputFile("out", copy_file=False),))
    codes = _codes(lint_app_dir(_facts(result=result)))
    assert codes.count("VMW017") == 1 and codes.count("VMW018") == 1


def test_job_in_workunit_is_read_from_inputs() -> None:
    files = _replace("app_vbox_job_1.xml", None)
    wu = InputTemplate((InputFile("vbox_job.xml", copy_file=False),))
    facts = _facts(files, wu=wu)
    texts = dict(facts.texts)
    texts["inputs/vbox_job.xml"] = b"<vbox_job><os_name>Bogus</os_name></vbox_job>"
    findings = lint_app_dir(
        AppDirFacts(facts.dir_name, facts.files, texts, facts.wu_template, plan_class=None)
    )
    codes = _codes(findings)
    assert "VMW006" not in codes
    assert "VMW020" in codes
    assert next(f for f in findings if f.code == "VMW020").file == "inputs/vbox_job.xml"


def test_broken_template_is_reported() -> None:
    facts = _facts()
    texts = {**facts.texts, "wu.xml": b"<input_template><file_info>"}
    findings = lint_app_dir(AppDirFacts(facts.dir_name, facts.files, texts, wu_template="wu.xml"))
    assert _codes(findings) == ["VMW033"]


def test_tutorial_lists_every_code() -> None:
    tutorial = Path(__file__).resolve().parents[2] / "docs" / "tutorial.md"
    text = tutorial.read_text()
    for code, (severity, _title) in CODES.items():
        assert f"| {code} | {severity.value} |" in text, code


def test_copy_to_shared_names_the_slot_has() -> None:
    job = GOOD_JOB.format(
        extra="<copy_to_shared>init_data.xml</copy_to_shared>"
        "<copy_to_shared>params.txt</copy_to_shared>"
    )
    wu = InputTemplate((InputFile("params.txt", copy_file=False),))
    assert "VMW041" not in _codes(lint_app_dir(_facts(job=job, wu=wu)))
    # Without the workunit template the name may come with the workunit: no finding.
    assert "VMW041" not in _codes(lint_app_dir(_facts(job=job)))


def test_vdi_image_types() -> None:
    normal = VDI_HEAD + b"\x01\x00\x01\x00" + b"\x80\x01\x00\x00" + b"\x01\0\0\0"
    codes = _codes(lint_app_dir(_facts(modes={"app_vm_image_1.vdi": FileFacts(head=normal)})))
    assert "VMW040" not in codes and "VMW034" not in codes


# -- intermediate uploads: the result template the real client needs ----

UPLOAD_JOB = GOOD_JOB.format(
    extra="<intermediate_upload_file>partial.dat</intermediate_upload_file>"
)


def test_intermediate_upload_output_without_copy_file_is_clean() -> None:
    result = OutputTemplate((OutputFile("shared/out"), OutputFile("partial.dat", copy_file=False)))
    assert lint_app_dir(_facts(job=UPLOAD_JOB, result=result)) == ()


def test_intermediate_upload_without_its_output_is_an_error() -> None:
    result = OutputTemplate((OutputFile("shared/out"),))
    findings = lint_app_dir(_facts(job=UPLOAD_JOB, result=result))
    assert _codes(findings) == ["VMW042"]
    assert "partial.dat" in findings[0].message and "<open_name>partial.dat" in findings[0].fix
    assert "VMW042" in _codes(lint_app_dir(_facts(job=UPLOAD_JOB)))  # no result template


def test_intermediate_upload_output_with_copy_file_is_an_error() -> None:
    result = OutputTemplate((OutputFile("shared/out"), OutputFile("partial.dat")))
    assert _codes(lint_app_dir(_facts(job=UPLOAD_JOB, result=result))) == ["VMW043"]
