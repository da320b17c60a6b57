"""Real VBoxManage outputs (tests/data/vbox/real/, sources in its README): the cause and the
reaction each gets (docs/compatibility.md#virtualbox-failures) match what vboxwrapper does, and
the simulator's error format is VirtualBox's."""

from __future__ import annotations

import pytest

from helpers.vbox_real import CONTEXT_RE, DETAILS_RE, ERRORS, EXPECTED, REAL
from vmwrapper.hypervisor.virtualbox import failures, logs, output


def test_every_real_file_is_listed_here_and_in_the_readme() -> None:
    files = {p.name for p in ERRORS.glob("*.txt")}
    assert files == set(EXPECTED)
    readme = (REAL / "README.md").read_text(encoding="utf-8")
    for name in files:
        assert f"errors/{name}" in readme


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_error_is_classified_as_vboxwrapper_reacts(name: str) -> None:
    operation, cause, reaction, diagnoses = EXPECTED[name]
    text = (ERRORS / name).read_text(encoding="utf-8")
    hresult = output.error_code(text)
    assert failures.cause_of(text, hresult) is cause
    assert failures.reaction(operation, cause) is reaction
    assert logs.diagnose(text) == diagnoses


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_error_lines_have_virtualboxs_shape(name: str) -> None:
    """The ``Details:`` and ``Context:`` lines of every real output match the shape the
    simulator is checked against (tests/system/test_vbox_real_failures.py)."""
    for line in (ERRORS / name).read_text(encoding="utf-8").splitlines():
        if ": error: Details:" in line:
            assert DETAILS_RE.match(line), line
        if ": error: Context:" in line:
            assert CONTEXT_RE.match(line), line


def test_real_codes_and_names_are_read() -> None:
    text = (ERRORS / "lock_startvm_windows.txt").read_text(encoding="utf-8")
    assert output.error_code(text) == output.VBOX_E_INVALID_OBJECT_STATE
    assert output.error_name(text) == "VBOX_E_INVALID_OBJECT_STATE"
    text = (ERRORS / "startvm_nem_create_failed_hyperv.txt").read_text(encoding="utf-8")
    assert output.error_code(text) == output.E_FAIL  # not the "(Last=0xc000000d/87)" part
