"""`vmwrapper job APP_DIR`: run one job the way the BOINC client would, locally.

The harness stages APP_DIR (docs/compatibility.md#app-version-directory) into a BOINC data
directory, starts the app version's main program in a slot, speaks the client's side of the protocol
and restarts the job when the client would. A live bar shows fraction done, elapsed and CPU time;
the summary says how the job ended. Exit status: 0 success; the job's exit status for an error or
abort (8 bits, e.g. 203 aborted, or the app's own exit code; 1 for BOINC's negative errors such as a
missing output, 193 for a signal); 75 when the job stopped in a temporary exit; 2 when the job could
not be run at all.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from vmwrapper.errors import VmWrapperError
from vmwrapper.harness.job import (
    Action,
    JobOutcome,
    JobReport,
    JobRequest,
    ScheduledAction,
    run_job,
)
from vmwrapper.harness.job import Progress as JobProgress
from vmwrapper.outcome import EXIT_SIGNAL

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

NAME = "job"
HELP = "run one job from an app directory under a local stand-in for the BOINC client"

EXIT_CANNOT_RUN = 2
EXIT_POSTPONED = 75  # sysexits EX_TEMPFAIL


def _pair(text: str) -> tuple[str, Path]:
    logical, sep, path = text.partition("=")
    if not sep or not logical or not path:
        raise argparse.ArgumentTypeError(f"expected LOGICAL=PATH, got {text!r}")
    return logical, Path(path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("app_dir", metavar="APP_DIR", type=Path, help="app version directory")
    parser.add_argument(
        "--input",
        action="append",
        type=_pair,
        default=[],
        metavar="LOGICAL=PATH",
        help="input file for a logical name (default: APP_DIR/inputs/<name>)",
    )
    parser.add_argument(
        "--output",
        action="append",
        type=_pair,
        default=[],
        metavar="LOGICAL=PATH",
        help="where to copy an output (default: WORKDIR/outputs/<name>)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="BOINC data directory to use (default: a new temp dir)"
    )
    parser.add_argument("--keep-slot", action="store_true", help="do not empty the slot")
    for action in Action:
        parser.add_argument(
            f"--{action.value}-at",
            action="append",
            type=float,
            default=[],
            metavar="S",
            help=f"{action.value} the task S seconds after the start (repeatable)",
        )
    parser.add_argument(
        "--checkpoint-period", type=float, default=60.0, metavar="S", help="disk_interval"
    )
    parser.add_argument(
        "--max-restart-delay",
        type=float,
        metavar="S",
        help="wait at most S seconds after a temporary exit before restarting",
    )
    parser.add_argument(
        "--max-episodes", type=int, default=0, metavar="N", help="stop after N starts"
    )
    parser.add_argument(
        "--daily-xfer-limit-mb",
        type=float,
        default=0.0,
        metavar="MB",
        help="the volunteer's daily transfer limit (the wrapper then reports network bytes)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the client does")


def build_request(args: argparse.Namespace) -> JobRequest:
    schedule = tuple(
        ScheduledAction(at, action)
        for action in Action
        for at in getattr(args, f"{action.value}_at")
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vmwrapper-job-"))
    return JobRequest(
        app_dir=args.app_dir,
        workdir=workdir,
        inputs=dict(args.input),
        outputs=dict(args.output),
        keep_slot=args.keep_slot,
        schedule=schedule,
        checkpoint_period=args.checkpoint_period,
        max_restart_delay=args.max_restart_delay,
        max_episodes=args.max_episodes,
        daily_xfer_limit_mb=args.daily_xfer_limit_mb,
    )


def exit_code(report: JobReport) -> int:
    """The command's exit status for a job report (see the module docstring)."""
    if report.outcome is JobOutcome.SUCCESS:
        return 0
    if report.outcome is JobOutcome.POSTPONED:
        return EXIT_POSTPONED
    status = report.exit_status
    if status < 0 and report.process_exit_code is not None and report.process_exit_code < 0:
        return EXIT_SIGNAL
    return status if 0 < status < 256 else 1


def _summary(report: JobReport, console: Console) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    style = "green" if report.success else "red"

    def row(name: str, value: str) -> None:
        # values come from the app (messages, trickle bodies): never read them as markup
        table.add_row(name, Text(value))

    table.add_row("outcome", Text.assemble((report.outcome.value, style), f": {report.message}"))
    if report.exit_status:
        row("exit status", str(report.exit_status))
    if report.finish_status is not None:
        finish = str(report.finish_status)
        if report.finish_message:
            finish += f" ({report.finish_message})"
        row("boinc_finish", finish)
    table.add_row(
        "time",
        f"{report.elapsed:.1f} s elapsed, {report.cpu_time:.2f} s CPU "
        f"({report.checkpoint_cpu_time:.2f} s at the last of {report.checkpoints} checkpoints)",
    )
    row("fraction done", f"{report.fraction_done:.1%}")
    row("episodes", str(report.episodes))
    for delay, reason in report.temporary_exits:
        row("temporary exit", f"{delay:.0f} s: {reason}")
    for out in report.outputs:
        row("output", f"{out.logical_name} -> {out.destination} ({out.size} bytes)")
    for trickle in report.trickles:
        body = " ".join(trickle.body.split())
        body = body if len(body) <= 60 else body[:57] + "..."
        row("trickle-up", f"{trickle.variety}: {body}")
    for upload in report.uploads:
        row("upload", f"{upload.logical_name}: status {upload.status} -> {upload.path}")
    if report.web_graphics_url:
        row("web graphics", report.web_graphics_url)
    if report.remote_desktop_addr:
        row("remote desktop", report.remote_desktop_addr)
    if report.bytes_sent or report.bytes_received:
        row("network", f"{report.bytes_sent:.0f} bytes sent, {report.bytes_received:.0f} received")
    row("workdir", report.workdir)
    console.print(table)


class _Display:
    """The terminal output: rich (its import takes ~40 ms) is loaded at the first progress
    report, which comes once the app has been started, so a job's start does not wait for it
    (docs/performance.md#the-fixed-cost-around-a-short-job)."""

    def __init__(self, name: str, json_summary: bool) -> None:
        self.name = name
        self.json_summary = json_summary
        self._err: Console | None = None
        self._bar: tuple[Progress, TaskID] | None = None

    @property
    def err(self) -> Console:
        if self._err is None:
            from rich.console import Console

            self._err = Console(stderr=True)
        return self._err

    def error(self, text: str) -> None:
        from rich.text import Text

        self.err.print(Text(f"vmwrapper job: {text}", style="red"))

    def show(self, p: JobProgress) -> None:
        if self._bar is None:
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

            bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[times]}"),
                console=self.err,
                disable=self.json_summary or not self.err.is_terminal,
                transient=False,
            )
            self._bar = bar, bar.add_task(self.name, total=1.0, times="")
            bar.start()
        bar, task = self._bar
        bar.update(
            task,
            completed=p.fraction_done,
            description=f"{self.name} [{p.state}, run {p.episode}]",
            times=f"{p.elapsed:6.1f} s elapsed  {p.cpu_time:7.2f} s CPU",
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar[0].stop()


class _RichOnFirstRecord(logging.Handler):
    """rich's log handler on the display's console, made when the first record comes."""

    def __init__(self, display: _Display) -> None:
        super().__init__()
        self._display = display
        self._inner: logging.Handler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self._inner is None:
            from rich.logging import RichHandler

            self._inner = RichHandler(console=self._display.err, show_path=False)
            self._inner.setFormatter(self.formatter)
        self._inner.emit(record)


def main(args: argparse.Namespace) -> int:
    display = _Display(args.app_dir.name, args.json)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING,
            format="%(message)s",
            handlers=[_RichOnFirstRecord(display)],
        )
    try:
        request = build_request(args)
    except VmWrapperError as exc:
        display.error(str(exc))
        return EXIT_CANNOT_RUN
    try:
        report = run_job(request, on_progress=display.show)
    except (VmWrapperError, OSError) as exc:
        display.error(str(exc))
        return EXIT_CANNOT_RUN
    finally:
        display.close()
    if args.json:
        sys.stdout.write(json.dumps(report.to_json()) + "\n")
    else:
        from rich.console import Console

        _summary(report, Console())
    return exit_code(report)
