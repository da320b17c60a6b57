"""Checkpoint record (vbox_checkpoint.xml compatible), atomic write, naming and interval policy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmwrapper.supervisor import checkpoint as ckpt

VBOXWRAPPER_RECORD = """<vbox_checkpoint>
    <elapsed_time>1234.500000</elapsed_time>
    <cpu_time>1000.250000</cpu_time>
    <webapi_port>8080</webapi_port>
    <remote_desktop_port>0</remote_desktop_port>
</vbox_checkpoint>
"""


def test_reads_a_record_vboxwrapper_wrote() -> None:
    record = ckpt.parse_record(VBOXWRAPPER_RECORD)
    assert record == ckpt.CheckpointRecord(1234.5, 1000.25, 8080, 0, "")


def test_writes_vboxwrappers_elements_first_in_its_format() -> None:
    text = ckpt.format_record(ckpt.CheckpointRecord(1234.5, 1000.25, 8080, 0))
    assert text == VBOXWRAPPER_RECORD
    with_snapshot = ckpt.format_record(ckpt.CheckpointRecord(1.0, 2.0, 0, 0, "boinc_1"))
    assert with_snapshot.index("<remote_desktop_port>") < with_snapshot.index(
        "<vmwrapper_snapshot>"
    )
    assert ckpt.parse_record(with_snapshot).snapshot == "boinc_1"


@pytest.mark.parametrize(
    "text", ["", "<vbox_checkpoint><elapsed_time>1", "<other/>", "<vbox_checkpoint><cpu_time>nan"]
)
def test_damaged_records_mean_no_checkpoint(text: str) -> None:
    assert ckpt.parse_record(text) == ckpt.CheckpointRecord()


def test_nonfinite_and_negative_numbers_are_zero() -> None:
    text = (
        "<vbox_checkpoint><elapsed_time>inf</elapsed_time><cpu_time>-5</cpu_time></vbox_checkpoint>"
    )
    assert ckpt.parse_record(text) == ckpt.CheckpointRecord()


def test_write_is_atomic_and_port_files_are_written_once(tmp_path: Path) -> None:
    ckpt.write_record(tmp_path, ckpt.CheckpointRecord(10.0, 5.0, 8080, 5901, "boinc_10"))
    assert ckpt.read_record(tmp_path) == ckpt.CheckpointRecord(10.0, 5.0, 8080, 5901, "boinc_10")
    webapi = (tmp_path / ckpt.WEBAPI_FILE).read_text()
    assert webapi == "<webapi>\n  <host_port>8080</host_port>\n</webapi>\n"
    assert "<host_port>5901</host_port>" in (tmp_path / ckpt.REMOTE_DESKTOP_FILE).read_text()
    ckpt.write_record(tmp_path, ckpt.CheckpointRecord(20.0, 6.0, 9999, 1, "boinc_20"))
    assert (tmp_path / ckpt.WEBAPI_FILE).read_text() == webapi  # only if absent, as vboxwrapper
    assert ckpt.read_record(tmp_path).elapsed_time == 20.0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [ckpt.CHECKPOINT_FILE, ckpt.WEBAPI_FILE, ckpt.REMOTE_DESKTOP_FILE]
    )  # no temporary file left behind


def test_a_crash_before_rename_leaves_the_old_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt.write_record(tmp_path, ckpt.CheckpointRecord(10.0, 5.0, 0, 0, "boinc_10"))

    def crash(src: object, dst: object) -> None:
        raise OSError("killed")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        ckpt.write_record(tmp_path, ckpt.CheckpointRecord(20.0, 6.0, 0, 0, "boinc_20"))
    assert ckpt.read_record(tmp_path).snapshot == "boinc_10"


def test_snapshot_names_are_unique() -> None:
    assert ckpt.snapshot_name(600.7, ()) == "boinc_600"
    assert ckpt.snapshot_name(600.7, ("boinc_600",)) == "boinc_600_2"
    assert ckpt.snapshot_name(600.7, ("boinc_600", "boinc_600_2")) == "boinc_600_3"


def test_orphans_are_our_snapshots_the_record_does_not_name() -> None:
    existing = ("boinc_600", "boinc_1200", "user_snapshot")
    assert ckpt.orphan_snapshots(existing, "boinc_600") == ("boinc_1200",)
    assert ckpt.orphan_snapshots(existing, "") == ("boinc_600", "boinc_1200")


def test_interval_is_the_larger_of_client_period_and_job_minimum() -> None:
    assert ckpt.desired_interval(60.0, 600.0, True) == 600.0
    assert ckpt.desired_interval(3600.0, 600.0, True) == 3600.0
    assert ckpt.desired_interval(0.0, 0.0, True) == ckpt.DEFAULT_CLIENT_PERIOD
    assert ckpt.desired_interval(60.0, 600.0, False) == 60.0  # disabled: the record only


def test_first_offset_is_seeded_and_applies_once() -> None:
    a = ckpt.make_policy(client_period=60, minimum=600, automatic=True, seed=7)
    b = ckpt.make_policy(client_period=60, minimum=600, automatic=True, seed=7)
    c = ckpt.make_policy(client_period=60, minimum=600, automatic=True, seed=8)
    assert a == b and a.first_offset != c.first_offset
    assert 0 <= a.first_offset < ckpt.FIRST_OFFSET_RANGE
    assert not a.due(600 + a.first_offset - 1, 0, taken_this_run=False)
    assert a.due(600 + a.first_offset, 0, taken_this_run=False)
    assert a.due(1200, 600, taken_this_run=True)
    assert not a.due(1199, 600, taken_this_run=True)


def test_disabled_checkpoints_have_no_offset() -> None:
    policy = ckpt.make_policy(client_period=60, minimum=600, automatic=False, seed=7)
    assert policy.first_offset == 0 and policy.due(60, 0, taken_this_run=False)
