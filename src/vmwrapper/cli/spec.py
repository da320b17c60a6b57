"""`vmwrapper spec PATH [--json]`: validate a vbox_job.xml and print the normalized job.

The file is read exactly as vboxwrapper reads it (docs/compatibility.md#job-file). Exit 0
when the job is usable (warnings name each element BOINC reads in a surprising way, what
BOINC does, and the fix), 1 when vboxwrapper would fail it or it is unsafe (every problem
listed), 2 when the file cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vmwrapper.errors import SpecError
from vmwrapper.spec import ELEMENTS, parse_job, spec_as_dict

NAME = "spec"
HELP = "validate a vbox_job.xml and print the job with defaults applied"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="the vbox_job.xml to read")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _format_value(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ", ".join(_format_value(v) for v in value) if value else "(none)"
    if isinstance(value, dict):
        return " ".join(f"{k}={_format_value(v)}" for k, v in value.items())
    return repr(value) if value == "" else str(value)


def main(args: argparse.Namespace) -> int:
    path: Path = args.path
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"vmwrapper spec: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        parsed = parse_job(data, str(path))
    except SpecError as exc:
        print(f"{path}: the job cannot be used; {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    for warning in parsed.warnings:
        print(warning, file=sys.stderr)
    values = spec_as_dict(parsed.spec)
    if args.json:
        print(json.dumps(values, indent=2))
    else:
        width = max(len(name) for name in ELEMENTS)
        for name in ELEMENTS:
            print(f"{name:<{width}}  {_format_value(values[name])}")
    for note in parsed.notes:
        print(f"note: {note}", file=sys.stderr if args.json else sys.stdout)
    return 0
