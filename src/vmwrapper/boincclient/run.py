"""``python -m vmwrapper.boincclient APP_DIR``: run one job of an app version under the real
BOINC client, as a project admin would check an app version before publishing it.

It writes a data directory (a temporary one unless ``--dir``), starts ``boinc`` on it with GUI
RPC on loopback and a random password, follows the task with ``boinccmd --get_tasks`` (one line
per change), and when the task is over stops the client and prints the outcome the client
recorded and where the output files are. Exit status: 0 success, 1 the job failed, 2 the client
or the job could not be run (timeouts included). The client is always stopped.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from vmwrapper.boincclient.client import BoincClient
from vmwrapper.boincclient.datadir import DataDir, write_data_dir
from vmwrapper.boincclient.plan import JobRequest, Naming
from vmwrapper.boincclient.state import BoincClientError
from vmwrapper.boincclient.tasks import TaskInfo
from vmwrapper.errors import VmWrapperError

EXIT_SUCCESS, EXIT_JOB_FAILED, EXIT_NOT_RUN = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vmwrapper.boincclient",
        description="Run one job of an APP_DIR (version.xml, files, templates, inputs/) under "
        "the real BOINC client (boinc-client 7.20.5), without a project server.",
    )
    parser.add_argument("app_dir", type=Path, help="the app version directory")
    parser.add_argument("--dir", type=Path, help="data directory to create (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    parser.add_argument("--job", default="job1", help="workunit name (result: NAME_0)")
    parser.add_argument("--command-line", default="", help="the workunit's command line")
    parser.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="OPEN_NAME=FILE",
        help="use FILE for the input opened as OPEN_NAME, e.g. shared/in=data.txt",
    )
    parser.add_argument("--app-name", default="vmapp", help="the BOINC app's short name")
    parser.add_argument("--version-num", type=int, default=100, help="app version number")
    parser.add_argument("--plan-class", default="vbox64")
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter baked into a launcher main program (default: this one)",
    )
    parser.add_argument(
        "--checkpoint-period", type=float, default=60.0, help="disk_interval preference (s)"
    )
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="give up after this many seconds"
    )
    return parser


def _inputs(pairs: Sequence[str]) -> dict[str, str]:
    inputs = {}
    for pair in pairs:
        open_name, sep, path = pair.partition("=")
        if not sep or not open_name or not path:
            raise BoincClientError(f"--input {pair!r}: write OPEN_NAME=FILE, e.g. shared/in=x")
        inputs[open_name] = str(Path(path).absolute())
    return inputs


def _describe(task: TaskInfo) -> str:
    parts = [task.active_task_state.value.lower(), task.state]
    if task.fraction_done is not None:
        parts.append(f"{task.fraction_done:.1%} done")
    if task.checkpoint_cpu_time:
        parts.append(f"checkpoint at {task.checkpoint_cpu_time:.0f} s CPU")
    if task.suspended_via_gui:
        parts.append("suspended via GUI")
    return ", ".join(p for p in parts if p)


def follow(client: BoincClient, result_name: str, timeout: float) -> TaskInfo:
    """Print each change of the task until it is ready to report."""
    last = ""

    def check() -> TaskInfo | None:
        nonlocal last
        task = client.task(result_name)
        line = _describe(task)
        if line != last:
            print(f"{result_name}: {line}", flush=True)
            last = line
        return task if task.ready_to_report else None

    return client.wait_for(check, timeout=timeout, what=f"{result_name} to end")


def report(data: DataDir, result_name: str) -> int:
    record = data.results()[result_name]
    verdict = "success" if record.success else "FAILED"
    print(
        f"{result_name}: {verdict} (state {record.state.name.lower()}, exit status "
        f"{record.exit_status}, CPU {record.final_cpu_time:.1f} s, "
        f"elapsed {record.final_elapsed_time:.1f} s)"
    )
    job = data.job(result_name)
    for open_name, physical in job.outputs.items():
        path = data.project_dir / physical
        state = f"{path.stat().st_size} bytes" if path.exists() else "missing"
        print(f"  output {open_name}: {path} ({state})")
    if not record.success:
        print(record.stderr_out[-4000:])
    return EXIT_SUCCESS if record.success else EXIT_JOB_FAILED


def run(args: argparse.Namespace, data_dir: Path) -> int:
    job = JobRequest(name=args.job, command_line=args.command_line, inputs=_inputs(args.input))
    data = write_data_dir(
        data_dir,
        args.app_dir,
        [job],
        password=secrets.token_hex(16),
        naming=Naming(
            app_name=args.app_name, version_num=args.version_num, plan_class=args.plan_class
        ),
        python=args.python,
        checkpoint_period=args.checkpoint_period,
    )
    print(f"data directory: {data.path}")
    with BoincClient(data) as client:
        print(f"boinc client pid {client.pid}, GUI RPC 127.0.0.1:{client.port}", flush=True)
        follow(client, job.result_name, args.timeout)
    return report(data, job.result_name)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.dir is not None:
            return run(args, args.dir)
        with tempfile.TemporaryDirectory(prefix="vmwrapper-boinc-") as tmp:
            code = run(args, Path(tmp) / "data")
            if not args.keep:
                print("(the data directory is removed now: --keep or --dir keeps it)")
            else:
                kept = Path(tempfile.mkdtemp(prefix="vmwrapper-boinc-kept-"))
                (Path(tmp) / "data").rename(kept / "data")
                print(f"kept: {kept / 'data'}")
            return code
    except (VmWrapperError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NOT_RUN
