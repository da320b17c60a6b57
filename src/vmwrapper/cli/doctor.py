"""`vmwrapper doctor`: can this host run VM apps? Which back end will, and what to fix."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vmwrapper.doctor import (
    AppVersionBackend,
    Diagnosis,
    Status,
    app_backend,
    diagnose,
    probe_host,
    read_app_version_backends,
)
from vmwrapper.errors import InputError, SpecError

NAME = "doctor"
HELP = "check this host: KVM, QEMU, VirtualBox, other hypervisors, memory, disk"

_STYLE = {Status.OK: "green", Status.WARN: "yellow", Status.FAIL: "red", Status.SKIP: "dim"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "app_dir",
        nargs="?",
        type=Path,
        help="an app version directory: say which back end this host gives it, and why",
    )
    parser.add_argument(
        "--dir", default=".", help="where slots live, for the free-disk check (default: .)"
    )
    parser.add_argument(
        "--backend",
        choices=["qemu", "virtualbox", "fake"],
        help="check for this back end (default: $VMWRAPPER_BACKEND or qemu)",
    )
    parser.add_argument(
        "--no-boot-probe", action="store_true", help="skip the short KVM probe boot"
    )
    parser.add_argument("--json", action="store_true", help="print the diagnosis as JSON")


def main(args: argparse.Namespace) -> int:
    facts = probe_host(args.dir, kvm_boot_probe=not args.no_boot_probe)
    if args.backend:
        facts = dataclasses.replace(facts, backend_env=args.backend)
    diagnosis = diagnose(facts)
    app: AppVersionBackend | None = None
    if args.app_dir is not None:
        try:
            job_backends, cli_backend = read_app_version_backends(args.app_dir)
        except (InputError, SpecError) as exc:
            print(f"vmwrapper doctor: {exc}", file=sys.stderr)
            return 2
        app = app_backend(
            facts, str(args.app_dir), job_backends=job_backends, command_line_backend=cli_backend
        )
    if args.json:
        data = as_dict(diagnosis)
        if app is not None:
            data["app_version"] = dataclasses.asdict(app)
        print(json.dumps(data, indent=2))
    else:
        console = Console(file=sys.stdout, highlight=False, soft_wrap=True)
        render(diagnosis, console)
        if app is not None:
            render_app(app, console)
    if app is not None:
        return 0 if app.backend else 1
    return 0 if diagnosis.runnable else 1


def render_app(app: AppVersionBackend, console: Console) -> None:
    shown = app.backend or "none (the task would end with a temporary exit and a notice)"
    console.print(f"[bold]App version {app.app_dir}:[/bold] back end {shown}")
    console.print(f"  why: {app.reason}")


def as_dict(d: Diagnosis) -> dict[str, object]:
    return {
        "backend": d.backend,
        "accel": d.accel,
        "summary": d.summary,
        "checks": [
            {"name": c.name, "status": c.status.value, "detail": c.detail, "fix": c.fix}
            for c in d.checks
        ],
        "fixes": list(d.fixes),
    }


def render(d: Diagnosis, console: Console) -> None:
    table = Table(show_header=True, header_style="bold")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail")
    for c in d.checks:
        style = _STYLE[c.status]
        table.add_row(c.name, f"[{style}]{c.status.value}[/{style}]", c.detail)
    console.print(table)
    console.print(f"[bold]Back end:[/bold] {d.summary}")
    if d.fixes:
        console.print("[bold]To fix:[/bold]")
        for fix in d.fixes:
            console.print(f"  - {fix}")
