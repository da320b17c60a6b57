"""`vmwrapper lint APP_DIR`: check an app version against the VM-apps rules.

Gathers what the pure linter (:mod:`vmwrapper.packaging.lint`) needs from the directory: each
file's mode, size and first bytes, and the text of the XML files. Prints one line per finding
(or JSON with ``--json``); exits 1 when there is an error, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from vmwrapper.packaging.lint import (
    CODES,
    AppDirFacts,
    FileFacts,
    Finding,
    Severity,
    has_errors,
    lint_app_dir,
)
from vmwrapper.packaging.version import plan_class_from_dir_name

NAME = "lint"
HELP = "check a VM app version directory (version.xml, files, templates) for BOINC pitfalls"

_HEAD_BYTES = 512
_MAX_TEXT = 1024 * 1024  # XML files larger than this are not read (none should be)
_MAX_FILES = 10_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "app_dir", type=Path, nargs="?", metavar="APP_DIR", help="the app version directory"
    )
    parser.add_argument(
        "--wu",
        type=Path,
        metavar="TEMPLATE",
        help="workunit input template (default: APP_DIR/templates/input_template.xml)",
    )
    parser.add_argument(
        "--result",
        type=Path,
        metavar="TEMPLATE",
        help="result output template (default: APP_DIR/templates/output_template.xml)",
    )
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument("--codes", action="store_true", help="list every finding code and exit")


def main(args: argparse.Namespace) -> int:
    if args.codes:
        for code, (severity, title) in CODES.items():
            print(f"{code}  {severity.value:<7}  {title}")
        return 0
    if args.app_dir is None or not args.app_dir.is_dir():
        print(f"vmwrapper lint: {args.app_dir} is not a directory", file=sys.stderr)
        return 2
    return lint_and_report(args.app_dir, args.wu, args.result, as_json=args.json)


def _file_facts(path: Path) -> FileFacts:
    st = path.stat()
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
    return FileFacts(exists=True, size=st.st_size, mode=st.st_mode, head=head)


def gather(app_dir: Path, wu: Path | None, result: Path | None) -> AppDirFacts:
    """Read APP_DIR into AppDirFacts (the one I/O step of linting)."""
    files: dict[str, FileFacts] = {}
    texts: dict[str, bytes] = {}
    for count, path in enumerate(sorted(app_dir.rglob("*"))):
        if count > _MAX_FILES:
            break
        if not path.is_file():
            continue
        rel = path.relative_to(app_dir).as_posix()
        facts = _file_facts(path)
        files[rel] = facts
        if facts.size <= _MAX_TEXT and (rel.endswith(".xml") or facts.head.lstrip()[:1] == b"<"):
            texts[rel] = path.read_bytes()
    wu_key = _template(app_dir, wu, "templates/input_template.xml", texts)
    result_key = _template(app_dir, result, "templates/output_template.xml", texts)
    return AppDirFacts(
        dir_name=app_dir.resolve().name,
        files=files,
        texts=texts,
        wu_template=wu_key,
        result_template=result_key,
        plan_class=plan_class_from_dir_name(app_dir.resolve().name),
    )


def _template(app_dir: Path, given: Path | None, default: str, texts: dict[str, bytes]) -> str:
    if given is None:
        return default if default in texts else ""
    key = os.path.relpath(given, app_dir) if given.is_absolute() else str(given)
    texts[key] = given.read_bytes() if given.is_file() else b""
    return key


def format_finding(f: Finding) -> str:
    return f"{f.file}: {f.code} [{f.severity.value}] {f.message}\n    fix: {f.fix}"


def lint_and_report(app_dir: Path, wu: Path | None, result: Path | None, *, as_json: bool) -> int:
    findings = lint_app_dir(gather(app_dir, wu, result))
    counts = {s: sum(1 for f in findings if f.severity is s) for s in Severity}
    if as_json:
        doc = {
            "app_dir": str(app_dir),
            "findings": [f.as_dict() for f in findings],
            "errors": counts[Severity.ERROR],
            "warnings": counts[Severity.WARNING],
        }
        print(json.dumps(doc, indent=2))
    else:
        for f in findings:
            print(format_finding(f))
        print(
            f"{app_dir}: {counts[Severity.ERROR]} error(s), {counts[Severity.WARNING]} "
            f"warning(s), {counts[Severity.INFO]} note(s)"
        )
    return 1 if has_errors(findings) else 0
