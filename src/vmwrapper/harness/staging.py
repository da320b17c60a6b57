"""Staging a job the way the BOINC client does: the data dir, the project dir and the slot
with every file in place (:func:`stage_job`), and the main program's command line."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vmwrapper.errors import HarnessError
from vmwrapper.harness.appdir import DEFAULT_MAX_NBYTES, AppDir, load_app_dir
from vmwrapper.harness.request import JobRequest
from vmwrapper.harness.slot import (
    DataDir,
    StagedFile,
    TaskIdentity,
    setup_output_link,
    setup_slot_file,
    stage_project_file,
)
from vmwrapper.harness.task import (
    NICE_HIGH_PRIORITY,
    NICE_NORMAL,
    LaunchSpec,
    client_environment,
)
from vmwrapper.packaging.templates import InputFile, OutputFile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Staged:
    app: AppDir
    data_dir: DataDir
    slot: int
    slot_dir: Path
    identity: TaskIdentity
    slot_files: tuple[StagedFile, ...]
    outputs: tuple[tuple[OutputFile, StagedFile], ...]
    launch: LaunchSpec


def parse_mapping(items: Mapping[str, Path], what: str) -> dict[str, Path]:
    out = {}
    for logical, path in items.items():
        if not logical or logical.startswith("/") or ".." in Path(logical).parts:
            raise HarnessError(f"{what} {logical!r}: a logical name is relative, without '..'")
        out[logical] = Path(path)
    return out


def stage_job(request: JobRequest) -> Staged:
    """Make the data dir, project dir and slot, and put every file in place."""
    app = load_app_dir(request.app_dir)
    data_dir = DataDir(Path(request.workdir))
    data_dir.make()
    app_name = app.name
    wu_name = f"{app_name}_wu"
    result_name = f"{wu_name}_0"
    # app version files
    slot_files: list[StagedFile] = []
    for vf in app.version.files:
        stage_project_file(
            data_dir,
            app.path / vf.physical_name,
            vf.physical_name,
            vf.main_program or vf.executable,
        )
        slot_files.append(StagedFile(vf.physical_name, vf.open_name, vf.copy_file))
    # workunit inputs: template refs, then extra --input names
    given = parse_mapping(request.inputs, "--input")
    refs = list(app.workunit.files)
    for logical in given:
        if all(r.open_name != logical for r in refs):
            refs.append(InputFile(logical, copy_file=True))
    for number, ref in enumerate(refs):
        source = given.get(ref.open_name, app.default_input(ref))
        if not source.is_file():
            if ref.optional:
                continue
            raise HarnessError(
                f"input {ref.open_name!r}: {source} does not exist "
                f"(give it with --input {ref.open_name}=PATH)"
            )
        physical = f"{wu_name}_{number}_{Path(ref.open_name).name}"
        stage_project_file(data_dir, source, physical, executable=False)
        slot_files.append(StagedFile(physical, ref.open_name, ref.copy_file))
    # result outputs: template refs, then extra --output names
    wanted = parse_mapping(request.outputs, "--output")
    out_refs = list(app.outputs)
    for logical in wanted:
        if all(r.open_name != logical for r in out_refs):
            out_refs.append(OutputFile(logical, DEFAULT_MAX_NBYTES, copy_file=True))
    # the server names output n (<OUTFILE_n/>) "<result>_<n>"
    outputs = tuple(
        (ref, StagedFile(f"{result_name}_{n}", ref.open_name, ref.copy_file))
        for n, ref in enumerate(out_refs)
    )
    slot, slot_dir = data_dir.free_slot()
    for staged in slot_files:
        setup_slot_file(data_dir, slot_dir, staged)
    for _, staged in outputs:
        setup_output_link(data_dir, slot_dir, staged)
    identity = TaskIdentity(
        app_name=app_name,
        wu_name=wu_name,
        result_name=result_name,
        app_version=app.version.version_num,
        ncpus=app.version.avg_ncpus,
        checkpoint_period=request.checkpoint_period,
        rsc_fpops_est=app.workunit.bounds.rsc_fpops_est,
        rsc_fpops_bound=app.workunit.bounds.rsc_fpops_bound,
        rsc_memory_bound=app.workunit.bounds.rsc_memory_bound,
        rsc_disk_bound=app.workunit.bounds.rsc_disk_bound,
        app_files=tuple(f.physical_name for f in app.version.files),
        daily_xfer_limit_mb=request.daily_xfer_limit_mb,
    )
    if not app.version.uses_mmap:
        log.info(
            "%s has no <api_version> >= 6.0: System V shared memory, as the client does",
            app.path / "version.xml",
        )
    command_line = " ".join(x for x in (app.workunit.command_line, app.version.cmdline) if x)
    high_priority = app.version.is_wrapper or app.version.avg_ncpus < 1
    launch = LaunchSpec(
        exec_path=data_dir.link_target(app.version.main_program.physical_name),
        args=tuple(parse_command_line(command_line)),
        env=client_environment(
            os.environ,
            data_dir.project_dir.name,
            {"VMWRAPPER_PYTHON": sys.executable, **request.extra_env},
        ),
        nice=NICE_HIGH_PRIORITY if high_priority else NICE_NORMAL,
        sched_idle=request.sched_idle and not high_priority,
    )
    return Staged(app, data_dir, slot, slot_dir, identity, tuple(slot_files), outputs, launch)


def parse_command_line(text: str) -> list[str]:
    """``parse_command_line`` (``lib/str_util.cpp``): white space splits, quotes group, no
    escapes."""
    args: list[str] = []
    current: list[str] = []
    quote = ""
    in_arg = False
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
            else:
                current.append(ch)
        elif ch in "'\"":
            quote = ch
            in_arg = True
        elif ch.isspace():
            if in_arg:
                args.append("".join(current))
                current, in_arg = [], False
        else:
            current.append(ch)
            in_arg = True
    if in_arg:
        args.append("".join(current))
    return args
