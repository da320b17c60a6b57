"""CPU time as reported to the client: summed over processes, never decreasing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vmwrapper.cputime import CpuTotal

# a reading of the current process (None: that process ends)
EVENTS = st.lists(st.one_of(st.none(), st.floats(0, 1e6)), max_size=40)


@given(st.floats(0, 1e6), EVENTS)
def test_the_total_never_goes_down(start: float, events: list[float | None]) -> None:
    cpu = CpuTotal(ended=start)
    last = cpu.total
    for event in events:
        if event is None:
            cpu.process_ended()
        else:
            cpu.read(event)
        assert cpu.total >= last
        last = cpu.total


@given(st.floats(0, 1e6), EVENTS)
def test_each_process_counts_with_its_highest_reading(
    start: float, events: list[float | None]
) -> None:
    cpu = CpuTotal(ended=start)
    expected, highest = start, 0.0
    for event in events:
        if event is None:
            cpu.process_ended()
            expected, highest = expected + highest, 0.0
        else:
            highest = max(highest, event)
            assert cpu.read(event) == expected + highest


def test_a_tree_whose_helper_exited_keeps_the_higher_sum() -> None:
    cpu = CpuTotal(ended=100.0)  # earlier runs, from the checkpoint record
    assert cpu.read(5.0) == 105.0
    assert cpu.read(3.0) == 105.0  # a child left the process tree: its seconds stay counted
    cpu.process_ended()
    assert cpu.read(1.0) == 106.0  # the next VM process adds to the first one's 5 s
