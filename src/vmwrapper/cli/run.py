"""`vmwrapper run`: the wrapper proper, as a BOINC client starts it in a slot directory.

The command line is vboxwrapper's (see ``vmwrapper.runconfig``), so argparse is not used: the
arguments are scanned exactly like the original's. This module reads the inputs (init_data.xml,
vbox_job.xml through its soft link), computes the run configuration, and hands over to the
supervisor. The wrapper ends in exactly one place: ``conclude(outcome)``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vmwrapper.boinc.init_data import FILE_NAME as INIT_DATA_FILE
from vmwrapper.boinc.init_data import AppInitData, parse_init_data
from vmwrapper.errors import CommandLineError, InitDataError, SpecError
from vmwrapper.outcome import (
    ERR_FOPEN,
    ERR_XML_PARSE,
    EXIT_INIT_FAILURE,
    Finish,
    Outcome,
)
from vmwrapper.runconfig import RunConfig, WrapperArgs, build_run_config, parse_wrapper_args
from vmwrapper.spec import ParsedJob, parse_job

NAME = "run"
HELP = "run a BOINC job in a VM (what a BOINC client starts; vboxwrapper's options)"
JOB_FILE = "vbox_job.xml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Never used for parsing: cli.main hands `run` its raw arguments (see run_argv).
    parser.add_argument("options", nargs="*", help="vboxwrapper's options, e.g. --nthreads 2")


@dataclass(frozen=True)
class Prepared:
    """Everything read and computed before any VM exists."""

    slot_dir: Path
    args: WrapperArgs
    init_data: AppInitData
    standalone: bool
    job: ParsedJob
    run: RunConfig


def read_soft_link(slot_dir: Path, logical_name: str) -> Path:
    """Resolve a BOINC logical name in the slot (a `<soft_link>` file, a symlink or the file)."""
    from vmwrapper.boinc import files  # the protocol module owns soft-link resolution

    return files.resolve_filename(slot_dir, logical_name)


def read_init_data(slot_dir: Path) -> tuple[AppInitData, bool]:
    """init_data.xml, and whether we run standalone (no file: no BOINC client)."""
    path = slot_dir / INIT_DATA_FILE
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return AppInitData(), True
    return parse_init_data(text), False


def prepare(argv: Sequence[str], slot_dir: Path) -> Prepared | Outcome:
    """Read and check every input; an unusable one becomes the Outcome the original gives."""
    try:
        args = parse_wrapper_args(argv)
    except CommandLineError as exc:
        return Finish(EXIT_INIT_FAILURE, str(exc))
    try:
        aid, standalone = read_init_data(slot_dir)
    except InitDataError as exc:
        return Finish(EXIT_INIT_FAILURE, str(exc))
    job_path = read_soft_link(slot_dir, JOB_FILE)
    try:
        job = parse_job(job_path.read_bytes(), str(job_path))
    except OSError as exc:
        return Finish(ERR_FOPEN, f"cannot read {JOB_FILE} ({job_path}): {exc.strerror}")
    except SpecError as exc:
        return Finish(ERR_XML_PARSE, str(exc))
    try:
        run = build_run_config(
            args,
            job.spec,
            aid,
            standalone=standalone,
            backend_from_env=os.environ.get("VMWRAPPER_BACKEND", ""),
        )
    except CommandLineError as exc:
        return Finish(EXIT_INIT_FAILURE, str(exc))
    return Prepared(slot_dir, args, aid, standalone, job, run)


def describe(prepared: Prepared) -> str:
    """The run configuration as the lines `--dry-run` prints."""
    run = prepared.run
    lines = [
        f"slot directory:  {prepared.slot_dir}",
        f"standalone:      {'yes' if run.standalone else 'no'}",
        f"result name:     {run.result_name or '(none)'}",
        f"VM name:         {run.vm_name}",
        f"back end:        {run.backend}",
        f"disk image:      {run.image_name}",
        f"CPUs:            {run.cpus}",
        f"memory:          {run.memory_mb} MB",
        f"headless:        {'yes' if run.headless else 'no'}",
        f"trickle period:  {run.trickle_period:g} s"
        if run.trickle_period
        else "trickle period:  off",
        f"register only:   {'yes' if run.register_only else 'no'}",
        f"sporadic:        {'yes' if run.sporadic else 'no'}",
    ]
    lines += [f"note: {note}" for note in (*prepared.job.notes, *run.notes)]
    lines += [f"warning: {w}" for w in prepared.job.warnings]
    return "\n".join(lines)


def run_argv(argv: Sequence[str]) -> int:
    """Entry point for `vmwrapper run ARGS` and for the bare vboxwrapper-style command line."""
    if any(a in ("-h", "--help") for a in argv):
        from vmwrapper.runconfig import USAGE

        print(USAGE)
        return 0
    slot_dir = Path.cwd()
    prepared = prepare(argv, slot_dir)
    if isinstance(prepared, Prepared) and prepared.args.dry_run:
        print(describe(prepared))
        return 0
    if not isinstance(prepared, Prepared):
        print(getattr(prepared, "message", ""), file=sys.stderr)
        return conclude(prepared)
    print("vmwrapper run: the VM part of `run` is not wired in yet (supervisor)", file=sys.stderr)
    return 1


def conclude(outcome: Outcome) -> int:
    """The one place the wrapper ends: BOINC files for the outcome, then the exit status."""
    from vmwrapper.outcome import exit_status

    return exit_status(outcome)


def main(args: argparse.Namespace) -> int:
    return run_argv(list(args.options))
