"""The end of a job: the outcome from the last exit, the outputs checked and moved into the
project dir (the client's ``app_finished``), copied back by logical name, and the tail of
stderr.txt."""

from __future__ import annotations

import shutil
from pathlib import Path

from vmwrapper.boinc import files
from vmwrapper.harness.control import (
    Disposition,
    ExitVerdict,
)
from vmwrapper.harness.report import CopiedOutput, JobOutcome
from vmwrapper.harness.request import JobRequest
from vmwrapper.harness.staging import Staged
from vmwrapper.outcome import ERR_FILE_MISSING

ERR_FILE_TOO_BIG = -131
#: The last this many bytes of stderr.txt go into the report (the client keeps 63 KB).
STDERR_TAIL = 64 * 1024


def outcome_of(verdict: ExitVerdict) -> tuple[JobOutcome, str, int]:
    if verdict.disposition is Disposition.FINISHED:
        return JobOutcome.SUCCESS, verdict.message, 0
    if verdict.disposition is Disposition.ABORTED:
        return JobOutcome.ABORTED, verdict.message, verdict.exit_status
    if verdict.disposition is Disposition.ERROR:
        return JobOutcome.ERROR, verdict.message, verdict.exit_status
    # the run stopped (episode limit) while the client would restart the task
    return JobOutcome.POSTPONED, verdict.message, 0


def collect_outputs(staged: Staged) -> tuple[int, str] | None:
    """``app_finished``: move copied outputs into the project dir; check every output."""
    for ref, sf in staged.outputs:
        dest = staged.data_dir.project_dir / sf.physical_name
        if ref.copy_file:
            source = staged.slot_dir / ref.open_name
            if source.is_file():
                shutil.move(source, dest)
        if not dest.is_file():
            if ref.optional:
                continue
            return ERR_FILE_MISSING, f"output file {ref.open_name} ({sf.physical_name}) absent"
        size = dest.stat().st_size
        if size > ref.max_nbytes:
            return (
                ERR_FILE_TOO_BIG,
                f"output file {ref.open_name}: {size} bytes, over <max_nbytes> "
                f"{ref.max_nbytes:.0f}",
            )
    return None


def copy_outputs(staged: Staged, request: JobRequest) -> list[CopiedOutput]:
    wanted = {k: Path(v) for k, v in request.outputs.items()}
    copied = []
    for ref, sf in staged.outputs:
        source = staged.data_dir.project_dir / sf.physical_name
        if not source.is_file():
            continue
        dest = wanted.get(
            ref.open_name, staged.data_dir.root / "outputs" / Path(ref.open_name).name
        )
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        copied.append(CopiedOutput(ref.open_name, sf.physical_name, str(dest), dest.stat().st_size))
    return copied


def read_stderr_tail(slot_dir: Path) -> str:
    path = slot_dir / files.STDERR_FILE
    try:
        with path.open("rb") as f:
            f.seek(max(path.stat().st_size - STDERR_TAIL, 0))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
