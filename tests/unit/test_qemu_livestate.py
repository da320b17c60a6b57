"""The live checkpoints' pure part: names, manifests, merge plans, QMP replies (real ones in
tests/data/qemu, see its README)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmwrapper.errors import CheckpointError, CheckpointRefused
from vmwrapper.hypervisor.qemu import livestate as ls

DATA = Path(__file__).parent.parent / "data" / "qemu"


def _data(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def test_file_names() -> None:
    assert ls.ram_file("boinc_60") == "live_boinc_60.ram"
    assert ls.manifest_name(ls.manifest_file("boinc_60")) == "boinc_60"
    assert ls.manifest_name("live_boinc_60.ram") is None
    assert ls.layer_file("vm_disk.qcow2", 7) == "vm_disk.7.qcow2"
    assert ls.layer_number("vm_cache.12.qcow2") == 12
    # the job image's conversions are not layers (cleanup must not take them for ones)
    assert not ls.is_layer("vm_image.vdi.4ff5002df6ffd134.qcow2")
    assert not ls.is_layer("vm_disk.qcow2")
    assert ls.next_layer_number(["vm_disk.qcow2", "vm_disk.3.qcow2", "vm_cache.9.qcow2"]) == 10
    assert ls.next_layer_number([]) == 1


def test_a_manifest_round_trips_and_damage_means_no_checkpoint() -> None:
    manifest = ls.Manifest("boinc_60", "live_boinc_60.ram", {"disk0": "vm_disk.2.qcow2"})
    assert ls.parse_manifest(ls.format_manifest(manifest)) == manifest
    disks_only = ls.Manifest("d", None, {"disk0": "vm_disk.qcow2", "cache0": "vm_cache.qcow2"})
    assert ls.parse_manifest(ls.format_manifest(disks_only)) == disks_only
    text = ls.format_manifest(manifest)
    assert ls.parse_manifest(text[: len(text) // 2]) is None  # cut short
    assert ls.parse_manifest('{"format": 2, "name": "x", "ram": null, "disks": {}}') is None
    assert ls.parse_manifest('{"format": 1, "name": "x", "ram": 3, "disks": {}}') is None
    assert ls.parse_manifest("[]") is None


def test_layers_file() -> None:
    tops = {"disk0": "vm_disk.4.qcow2"}
    assert ls.parse_layers(ls.format_layers(tops)) == tops
    assert ls.parse_layers("{broken") == {}
    assert ls.parse_layers('{"disk0": 4}') == {}


def test_the_chain_of_a_real_layered_disk() -> None:
    nodes = _data("named-block-nodes-two-layers.json")
    chain = [Path(p).name for p in ls.chain_from_node(nodes, "disk0-2")]
    assert chain[:3] == ["vm_disk.2.qcow2", "vm_disk.1.qcow2", "vm_disk.qcow2"]
    assert chain[3].startswith("vm_image.vdi.")  # the job's image, in the project dir
    slot_file = ls.chain_from_node(nodes, "disk0-2")[1]
    assert ls.node_for_file(nodes, slot_file) == "disk0-1"  # the format node, not "file"
    assert ls.chain_from_node(nodes, "nope") == []
    assert ls.node_for_file(nodes, "/nowhere.qcow2") is None


def test_real_migration_replies() -> None:
    done = _data("query-migrate-background-snapshot-completed.json")
    assert ls.migration_failure(done, "c") is None
    assert ls.migration_blocked(done, "c") is None
    refusal = ls.migration_blocked(_data("query-migrate-9p-mounted.json"), "c")
    assert isinstance(refusal, CheckpointRefused) and "mounted in the guest" in refusal.output
    failed = ls.migration_failure({"status": "failed", "error-desc": "No space left"}, "c")
    assert isinstance(failed, CheckpointError) and "No space left" in str(failed)


def test_stream_check() -> None:
    assert ls.stream_looks_whole(ls.STREAM_MAGIC, 1 << 20)
    assert not ls.stream_looks_whole(ls.STREAM_MAGIC, len(ls.STREAM_MAGIC))
    assert not ls.stream_looks_whole(b"\0" * 8, 1 << 20)


def test_merge_plans() -> None:
    # after a new checkpoint, before the old one is deleted: nothing may move yet
    chain = ["vm_disk.2.qcow2", "vm_disk.1.qcow2", "vm_disk.qcow2"]
    both = {"vm_disk.1.qcow2": "new", "vm_disk.qcow2": "old"}
    assert ls.plan_merge(chain, both) is None
    # the old one deleted: the new one's layer goes into the bottom, which it then names
    plan = ls.plan_merge(chain, {"vm_disk.1.qcow2": "new"})
    assert plan == ls.Merge("vm_disk.1.qcow2", "vm_disk.qcow2", "new", ("vm_disk.1.qcow2",))
    # a restored checkpoint's layer under the new top, and a dead one under it
    chain = ["vm_disk.5.qcow2", "vm_disk.4.qcow2", "vm_disk.3.qcow2", "vm_disk.qcow2"]
    plan = ls.plan_merge(chain, {"vm_disk.3.qcow2": "c"})
    assert plan == ls.Merge("vm_disk.3.qcow2", "vm_disk.qcow2", "c", ("vm_disk.3.qcow2",))
    # no checkpoint at all (its restore failed, the VM booted afresh): merge it all
    plan = ls.plan_merge(chain, {})
    assert plan is not None and plan.owner is None and plan.drop == tuple(chain[1:-1])
    assert ls.plan_merge(["vm_disk.1.qcow2", "vm_disk.qcow2"], {}) is None  # short already


@given(
    depth=st.integers(min_value=0, max_value=6),
    owners=st.lists(st.integers(min_value=0, max_value=7), max_size=4),
)
def test_a_merge_never_changes_what_a_checkpoint_shows(depth: int, owners: list[int]) -> None:
    """Whatever the chain and the checkpoints: a merge rewrites only the bottom, and only
    when no checkpoint shows it; it drops no file a checkpoint other than the owner names,
    nor the running top."""
    chain = ["top.qcow2", *(f"vm_disk.{n}.qcow2" for n in range(depth, 0, -1)), "vm_disk.qcow2"]
    referenced = {chain[1 + i]: f"c{i}" for i in owners if 1 + i < len(chain)}
    plan = ls.plan_merge(chain, referenced)
    if plan is None:
        return
    assert plan.base == chain[-1] and plan.base not in referenced
    assert chain[0] not in plan.drop and plan.top in plan.drop
    assert {f for f in plan.drop if f in referenced} <= {plan.top}
    assert plan.owner == referenced.get(plan.top)
    # the dropped files are exactly the ones from the merged top down to the bottom
    assert plan.drop == tuple(chain[chain.index(plan.top) : -1])


def test_the_setup_lead_waits_for_a_measured_setup() -> None:
    lead = ls.SetupLead()
    assert lead.lead() is None  # the first checkpoint of a QEMU: guest stopped first
    lead.measured(None)
    lead.measured(-1)
    lead.measured("9")
    assert lead.lead() is None  # not a setup time
    lead.measured(24)
    assert lead.lead() == pytest.approx(0.012)
    lead.measured(3)
    assert lead.lead() is None  # 1.5 ms saves too little for the risk of a second try
    lead.measured(24)
    lead.forget()  # a new QEMU
    assert lead.lead() is None


def test_a_late_stop_halves_the_lead_and_stops_in_time_win_it_back() -> None:
    lead = ls.SetupLead()
    lead.measured(20)
    lead.lost()
    assert lead.lead() == pytest.approx(0.005)
    lead.lost()
    lead.lost()
    assert lead.lead() is None  # 1.25 ms: stop first until the lead is worth it again
    lead.won()  # (a checkpoint taken the overlapped way before the losses)
    lead.won()
    lead.won()
    assert lead.lead() == pytest.approx(0.020 * 0.0625 * 1.25**3)
    for _ in range(10):
        lead.won()
    assert lead.lead() == pytest.approx(0.010)  # never more than the first share
