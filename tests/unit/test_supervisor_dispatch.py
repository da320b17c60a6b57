"""The loop performs every action the machine can ask for.

A missing case is a mypy error (``Performer.do`` ends in ``assert_never``); these tests make
the same promise at run time, and check that every action class ``actions.py`` defines is in
the :data:`~vmwrapper.supervisor.actions.Action` union the dispatch is checked against.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import typing

from vmwrapper.supervisor import actions
from vmwrapper.supervisor import machine as m
from vmwrapper.supervisor.perform import Performer

ACTIONS: tuple[type, ...] = typing.get_args(actions.Action)


def _defined_actions() -> set[type]:
    """The classes written between ``PrepareVm`` and ``Exit`` in actions.py: its actions."""
    first = inspect.getsourcelines(actions.PrepareVm)[1]
    last = inspect.getsourcelines(actions.Exit)[1]
    return {
        cls
        for _, cls in inspect.getmembers(actions, inspect.isclass)
        if cls.__module__ == actions.__name__ and first <= inspect.getsourcelines(cls)[1] <= last
    }


def test_every_action_class_is_in_the_action_union() -> None:
    assert _defined_actions() == set(ACTIONS)


def test_the_machine_speaks_the_same_actions() -> None:
    assert all(getattr(m, cls.__name__) is cls for cls in ACTIONS)


def _cases() -> list[str]:
    """The class names of ``Performer.do``'s match cases, in order."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(Performer.do)))
    match = next(node for node in ast.walk(tree) if isinstance(node, ast.Match))
    names = []
    for case in match.cases:
        if isinstance(case.pattern, ast.MatchClass):
            cls = case.pattern.cls
            names.append(cls.attr if isinstance(cls, ast.Attribute) else ast.unparse(cls))
    return names


def test_every_action_has_exactly_one_case() -> None:
    cases = _cases()
    assert sorted(cases) == sorted(cls.__name__ for cls in ACTIONS)
    assert len(cases) == len(set(cases))
