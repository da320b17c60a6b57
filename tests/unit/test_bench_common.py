"""The benchmarks' pure helpers (bench/common.py): statistics, alternation, the results
document writer, disk-usage sums. No timings are checked here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_common", BENCH / "common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_common"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bc = _load()


def result(key: str, measured: str = "1 s", **changes: object) -> object:
    fields: dict[str, object] = {
        "key": key,
        "title": f"Figure {key}",
        "goal": "< 2 s",
        "measured": measured,
        "ratio": "0.5",
        "met": True,
        "command": f".venv/bin/python bench/bench_{key}.py",
        "date": "2026-11-27 07:00 UTC",
        "machine": "2 cores, TCG",
        "load": "1.0 at start, 1.0 at end (1-min)",
        "body": f"Body of {key}.",
    }
    fields.update(changes)
    return bc.Result(**fields)


def table_rows(doc: str) -> list[str]:
    start = doc.index(bc.TABLE_BEGIN)
    end = doc.index(bc.TABLE_END)
    lines = doc[start:end].splitlines()[3:]  # marker, header, rule
    return [line for line in lines if line.startswith("|")]


def test_stats_median_range_and_text() -> None:
    s = bc.Stats((3.0, 1.0, 2.0, 10.0))
    assert (s.n, s.median, s.low, s.high) == (4, 2.5, 1.0, 10.0)
    assert s.show("s") == "2.50 s (1.00–10.00, n=4)"
    assert s.show("%", 1) == "2.5% (1.0–10.0, n=4)"
    assert bc.Stats(()).show("s") == "no samples"


def test_paired_ratio_is_per_pair_and_refuses_unpaired_samples() -> None:
    r = bc.paired_ratio([2.0, 9.0, 4.0], [1.0, 3.0, 4.0])
    assert r.values == (2.0, 3.0, 1.0)
    assert r.median == 2.0
    with pytest.raises(ValueError, match="unpaired"):
        bc.paired_ratio([1.0], [1.0, 2.0])


def test_alternate_swaps_the_first_variant_every_repetition() -> None:
    assert bc.alternate(("a", "b"), 3) == [
        (0, "a"), (0, "b"), (1, "b"), (1, "a"), (2, "a"), (2, "b"),
    ]  # fmt: skip
    assert bc.alternate(("a", "b"), 0) == []


def test_a_new_document_gets_the_head_the_table_and_the_section() -> None:
    doc = bc.update_document("", result("e2e"))
    assert doc.startswith("# Performance")
    assert table_rows(doc) == [result("e2e").row()]  # type: ignore[attr-defined]
    assert "## Figure e2e" in doc and "Body of e2e." in doc
    assert "* reproduce: `.venv/bin/python bench/bench_e2e.py`" in doc


def test_rewriting_a_figure_replaces_only_its_section_and_row() -> None:
    doc = bc.update_document("", result("e2e", "1 s"))
    doc = bc.update_document(doc, result("trigger_exit", "3 s"))
    doc = doc.replace("<!-- bench-table:end -->", "<!-- bench-table:end -->\n\nHand notes.\n")
    doc = bc.update_document(doc, result("e2e", "7 s"))
    assert doc.count("## Figure e2e") == 1
    assert "measured: 7 s" in doc and "measured: 1 s" not in doc
    assert "measured: 3 s" in doc
    assert "Hand notes." in doc
    assert len(table_rows(doc)) == 2


def test_sections_and_rows_follow_the_figure_order_whatever_order_scripts_ran() -> None:
    doc = ""
    for key in ("disk_multiattach", "share_transport", "e2e", "trigger_exit", "wrapper_cpu_rss"):
        doc = bc.update_document(doc, result(key))
    keys = [k for k in bc.ORDER if k != "checkpoint_pause"]
    positions = [doc.index(f"## Figure {k}") for k in keys]
    assert positions == sorted(positions)
    assert [row.split("](#")[1].split(")")[0] for row in table_rows(doc)] == [
        k.replace("_", "-") for k in keys
    ]


def test_a_missed_goal_is_said_plainly_and_pipes_do_not_break_the_table() -> None:
    r = result("e2e", "a | b", met=False)
    row = r.row()  # type: ignore[attr-defined]
    assert "**MISSED**" in row
    assert "a \\| b" in row
    assert row.count(" | ") == 7  # 8 cells
    assert result("e2e", met=None).verdict == "—"  # type: ignore[attr-defined]


def test_disk_use_sums_sizes_and_allocated_blocks() -> None:
    use = bc.disk_use_of([(1000, 8), (10_000_000, 16)])
    assert use == bc.DiskUse(10_001_000, 24 * 512)


def test_disk_use_of_a_tree_skips_symlinks_and_excluded_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a").write_bytes(b"x" * 5000)
    (tmp_path / "b.sock").write_bytes(b"y" * 100)
    (tmp_path / "link").symlink_to(tmp_path / "sub" / "a")
    use = bc.disk_use(tmp_path, exclude=lambda p: p.suffix == ".sock")
    assert use.apparent == 5000
    assert use.allocated >= 4096


def test_the_longest_stall_is_the_widest_gap_touching_the_interval() -> None:
    arrivals = [0.0, 0.005, 0.010, 0.300, 0.305, 1.0, 1.005]
    assert bc.longest_stall(arrivals, 0.1, 0.2) == pytest.approx(0.29)  # inside one gap
    assert bc.longest_stall(arrivals, 0.302, 0.303) == pytest.approx(0.005)
    assert bc.longest_stall(arrivals, 0.0, 2.0) == pytest.approx(0.695)
    assert bc.longest_stall([0.5], 0.0, 1.0) == 0.0


def test_quiet_stalls_look_between_the_busy_intervals_only() -> None:
    arrivals = [0.0, 0.01, 0.5, 1.0, 1.01, 1.02, 1.5, 2.0, 2.2, 2.21]
    busy = [(0.0, 0.02), (0.9, 1.05), (1.9, 2.3)]
    # between 0.02 and 0.9: 0.5 alone (no gap); between 1.05 and 1.9: 1.5 alone
    assert bc.quiet_stalls(arrivals, busy) == []
    arrivals += [0.6, 0.62, 1.6, 1.7]
    assert bc.quiet_stalls(sorted(arrivals), busy) == pytest.approx([0.1, 0.1])


def test_stalls_inside_take_only_gaps_wholly_inside_each_span() -> None:
    arrivals = [0.0, 0.1, 0.15, 0.4, 1.0, 1.02, 1.1]
    # the gap 0.4 → 1.0 straddles both spans and counts in neither
    assert bc.stalls_inside(arrivals, [(0.05, 0.5), (0.9, 1.2)]) == pytest.approx([0.25, 0.08])
    assert bc.stalls_inside(arrivals, [(0.5, 0.9)]) == []
