"""VBox.log reading: diagnoses, the process id, guest lines, partial lines."""

from __future__ import annotations

import pytest

from vmwrapper.hypervisor.base import Diagnosis
from vmwrapper.hypervisor.virtualbox import logs

HEADER = (
    "00:00:00.000000 VirtualBox VM 7.0.14 r161095 linux.amd64 (Jan 15 2024) release log\n"
    "00:00:00.000123 Log opened 2026-11-27T06:00:00.000000000Z\n"
    "00:00:00.000200 Process ID: 4242\n"
)


@pytest.mark.parametrize(
    ("line", "diagnosis"),
    [
        ("HM: HMR3Init: VERR_VMX_MSR_ALL_VMX_DISABLED", Diagnosis.VM_EXTENSIONS_DISABLED),
        ("VERR_SVM_DISABLED", Diagnosis.VM_EXTENSIONS_DISABLED),
        ("VERR_VMX_MSR_LOCKING_FAILED", Diagnosis.VM_EXTENSIONS_DISABLED),
        ("VERR_VMX_NO_VMX", Diagnosis.NO_VM_EXTENSIONS),
        ("VERR_SVM_NO_SVM", Diagnosis.NO_VM_EXTENSIONS),
        ("VERR_VMX_IN_VMX_ROOT_MODE", Diagnosis.FOREIGN_HYPERVISOR),
        ("VERR_SVM_IN_USE", Diagnosis.FOREIGN_HYPERVISOR),
        (
            "Power up failed (vrc=VERR_NO_MEMORY, rc=E_FAIL (0X80004005))",
            Diagnosis.HOST_OUT_OF_MEMORY,
        ),
        ("VMMDev: Guest Log: EXIT_OUT_OF_MEMORY", Diagnosis.GUEST_OUT_OF_MEMORY),
        (
            "!!         VCPU0: Guru Meditation -2701 (VERR_VMX_INVALID_GUEST_STATE)",
            Diagnosis.GURU_MEDITATION,
        ),
    ],
)
def test_each_diagnosis(line: str, diagnosis: Diagnosis) -> None:
    assert logs.diagnose(HEADER + f"00:00:01.000000 {line}\n") == (diagnosis,)


def test_clean_log_has_no_diagnosis_and_order_is_fixed() -> None:
    assert logs.diagnose(HEADER) == ()
    text = HEADER + "Guru Meditation\nVERR_SVM_IN_USE\nVERR_VMX_MSR_VMX_DISABLED\n"
    assert logs.diagnose(text) == (
        Diagnosis.VM_EXTENSIONS_DISABLED,
        Diagnosis.FOREIGN_HYPERVISOR,
        Diagnosis.GURU_MEDITATION,
    )


def test_process_id() -> None:
    assert logs.process_id(HEADER) == 4242
    assert logs.process_id("00:00:00.000000 nothing here\n") is None


def test_guest_lines() -> None:
    lines = [
        "00:00:05.000000 VMMDev: Guest Log: hello 100% done",
        "00:00:05.100000 Console: Machine state changed to 'Paused'",
        "00:00:06.000000 VMMDev: Guest Log: ",
    ]
    assert logs.guest_lines(lines) == ["hello 100% done", ""]


def test_split_new_keeps_a_partial_line_for_later() -> None:
    data = b"line one\nline two\npartial"
    chunk = logs.split_new(data, 100)
    assert chunk.lines == ("line one", "line two")
    assert chunk.offset == 100 + len(b"line one\nline two\n")
    assert logs.split_new(b"partial", 7) == logs.LogChunk(lines=(), offset=7)


def test_strip_timestamp() -> None:
    assert logs.strip_timestamp("00:00:05.000000 Console: x") == "Console: x"


def test_machine_state_is_the_last_one_the_log_recorded() -> None:
    log = (
        "00:00:01.000000 Console: Machine state changed to 'Starting'\n"
        "00:00:02.000000 Console: Machine state changed to 'Running'\n"
        "00:00:09.000000 Console: Machine state changed to 'Paused'\n"
    )
    assert logs.machine_state(log) == "paused"
    assert logs.machine_state(log + "00:01 Console: Machine state changed to 'Stuck'\n") == (
        "gurumeditation"
    )
    assert logs.machine_state("x Console: Machine state changed to 'PoweredOff'") == "poweroff"
    assert logs.machine_state("no state lines") == ""
