"""The loop performs every action the machine can ask for.

A missing handler is a mypy error (``Supervisor._do`` ends in ``assert_never``); these tests
make the same promise at run time, and check that every action class ``machine.py`` defines is
in the :data:`~vmwrapper.supervisor.machine.Action` union the dispatch is checked against.
"""

from __future__ import annotations

import inspect
import typing

from hypothesis import given
from hypothesis import strategies as st

from vmwrapper.outcome import Finish
from vmwrapper.supervisor import machine as m
from vmwrapper.supervisor.loop import Supervisor

ACTIONS: tuple[type, ...] = typing.get_args(m.Action)


def _defined_actions() -> set[type]:
    """The classes written between ``PrepareVm`` and ``Exit`` in machine.py: its actions."""
    first = inspect.getsourcelines(m.PrepareVm)[1]
    last = inspect.getsourcelines(m.Exit)[1]
    return {
        cls
        for _, cls in inspect.getmembers(m, inspect.isclass)
        if cls.__module__ == m.__name__ and first <= inspect.getsourcelines(cls)[1] <= last
    }


def test_every_action_class_is_in_the_action_union() -> None:
    assert _defined_actions() == set(ACTIONS)


def _recording_supervisor(calls: list[tuple[str, object]]) -> Supervisor:
    """A Supervisor whose ``_do_<Action>`` handlers only record what they were given."""
    sup = Supervisor.__new__(Supervisor)  # no back end or client: the handlers are replaced
    for name, _ in inspect.getmembers(Supervisor, inspect.isfunction):
        if name.startswith("_do_"):

            def record(action: object, name: str = name) -> None:
                calls.append((name, action))

            setattr(sup, name, record)
    return sup


def _instances(cls: type) -> st.SearchStrategy[object]:
    if cls is m.Exit:  # an outcome checks its own fields; any valid one will do
        return st.builds(m.Exit, st.builds(Finish, st.integers(0, 255), st.text()))
    return st.from_type(cls)


@given(st.one_of([_instances(cls) for cls in ACTIONS]))
def test_each_action_reaches_the_handler_named_for_it(action: m.Action) -> None:
    calls: list[tuple[str, object]] = []
    _recording_supervisor(calls)._do(action)
    if isinstance(action, m.Exit):
        assert calls == []  # the loop returns the Exit's outcome; nothing to perform
    else:
        assert calls == [(f"_do_{type(action).__name__}", action)]


def test_every_action_but_exit_has_a_handler_method() -> None:
    handlers = {name for name in vars(Supervisor) if name.startswith("_do_")}
    assert handlers == {f"_do_{cls.__name__}" for cls in ACTIONS if cls is not m.Exit}
