"""load_app_dir: the shared packaging parsers, the harness's own checks and defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.harness_fixtures import make_golden_like_app_dir, make_pyapp_dir
from vmwrapper.errors import HarnessError
from vmwrapper.harness.appdir import DEFAULT_MAX_NBYTES, load_app_dir
from vmwrapper.packaging.templates import CLIENT_DEFAULT_BOUNDS, InputFile


def test_golden_like_app_dir_reads_through_the_shared_model(tmp_path: Path) -> None:
    app = load_app_dir(make_golden_like_app_dir(tmp_path))
    assert app.version.main_program.physical_name == "vmwrapper_1.00_x86_64-pc-linux-gnu"
    assert app.version.by_logical("vm_image.vdi") is not None
    assert app.version.is_wrapper and app.version.uses_mmap
    assert app.workunit.files == (InputFile("shared/in", copy_file=True),)
    # the template sets rsc_fpops_est only; the others are the client's defaults
    assert app.workunit.bounds.rsc_fpops_est == 1e10
    assert app.workunit.bounds.rsc_fpops_bound == CLIENT_DEFAULT_BOUNDS.rsc_fpops_bound
    assert app.workunit.bounds.rsc_disk_bound == CLIENT_DEFAULT_BOUNDS.rsc_disk_bound
    assert [(o.open_name, o.max_nbytes, o.copy_file) for o in app.outputs] == [
        ("shared/out", 1e7, True)
    ]
    assert app.default_input(app.workunit.files[0]) == app.path / "inputs" / "in"


def test_missing_templates_and_limits_get_defaults(tmp_path: Path) -> None:
    root = make_pyapp_dir(tmp_path, bounds="<rsc_disk_bound>5e9</rsc_disk_bound>")
    out = root / "templates" / "output_template.xml"
    out.write_text(out.read_text().replace("<max_nbytes>100000</max_nbytes>", ""))
    app = load_app_dir(root)
    assert app.workunit.files == ()
    assert app.workunit.bounds.rsc_disk_bound == 5e9
    assert app.workunit.bounds.rsc_memory_bound == CLIENT_DEFAULT_BOUNDS.rsc_memory_bound
    assert app.outputs[0].max_nbytes == DEFAULT_MAX_NBYTES
    (root / "templates" / "input_template.xml").unlink()
    assert load_app_dir(root).workunit.bounds.rsc_fpops_bound == 1e15


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("<main_program/>", ""), r"version\.xml: exactly one <file> must have <main_program/>"),
        (("pyapp_1.py<", "sub/pyapp_1.py<"), r"version\.xml: .*without '/', got 'sub/pyapp_1.py'"),
        (("pyapp_1.py<", "gone_1.py<"), r"version\.xml lists gone_1.py, but .* lacks it"),
        (("<version>", "<version><avg_ncpus>x</avg_ncpus>"), r"version\.xml: <avg_ncpus> is not"),
        (("<version>", "<versio>"), r"version\.xml: not well-formed XML"),
    ],
)
def test_version_xml_errors_are_harness_errors_naming_the_file(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    root = make_pyapp_dir(tmp_path)
    path = root / "version.xml"
    path.write_text(path.read_text().replace(*edit, 1))
    with pytest.raises(HarnessError, match=message):
        load_app_dir(root)


def test_template_errors_are_harness_errors_naming_the_file(tmp_path: Path) -> None:
    root = make_pyapp_dir(tmp_path, input_name="shared/in")
    wu = root / "templates" / "input_template.xml"
    wu.write_text(wu.read_text().replace("1e10", "lots"))
    with pytest.raises(HarnessError, match=r"input_template\.xml: <rsc_fpops_est> is not a num"):
        load_app_dir(root)
    wu.write_text(wu.read_text().replace("lots", "1e10").replace("shared/in", ""))
    with pytest.raises(HarnessError, match=r"input_template\.xml: a <file_ref> has no <open_"):
        load_app_dir(root)
