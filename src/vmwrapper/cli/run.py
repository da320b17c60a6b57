"""`vmwrapper run`: the wrapper proper, as a BOINC client starts it in a slot directory.

The command line is vboxwrapper's (see ``vmwrapper.runconfig``), so argparse is not used: the
arguments are scanned exactly like the original's. This module reads the inputs (init_data.xml,
vbox_job.xml through its soft link), computes the run configuration, and hands over to the
supervisor. The wrapper ends in exactly one place: ``conclude(outcome)``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmwrapper import WRAPPER_RELEASE, __version__, hostos
from vmwrapper.boinc.files import LockfileBusy
from vmwrapper.boinc.init_data import FILE_NAME as INIT_DATA_FILE
from vmwrapper.boinc.init_data import AppInitData, parse_init_data
from vmwrapper.errors import CommandLineError, InitDataError, SpecError
from vmwrapper.outcome import (
    ERR_EXEC,
    ERR_FOPEN,
    ERR_XML_PARSE,
    EXIT_INIT_FAILURE,
    MAX_TEMPORARY_EXIT_DELAY,
    Finish,
    Outcome,
    TemporaryExit,
)
from vmwrapper.runconfig import (
    GUEST_LOG_LIMIT,
    RunConfig,
    WrapperArgs,
    build_run_config,
    parse_wrapper_args,
)
from vmwrapper.spec import ParsedJob, parse_job

if TYPE_CHECKING:
    from vmwrapper.spec import JobSpec
    from vmwrapper.supervisor.checkpoint import CheckpointRecord

log = logging.getLogger(__name__)

#: The BOINC API's answer to a slot locked by another process (boinc_init: 600 s).
LOCK_BUSY_DELAY = 600
LOCK_BUSY_REASON = "Waiting to acquire slot directory lock: another process holds boinc_lockfile"

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
        # vboxwrapper: unreadable XML is ERR_XML_PARSE, illegal combinations EXIT_INIT_FAILURE
        return Finish(ERR_XML_PARSE if exc.malformed else EXIT_INIT_FAILURE, str(exc))
    try:
        run = build_run_config(
            args,
            job.spec,
            aid,
            standalone=standalone,
            backend_from_env=os.environ.get("VMWRAPPER_BACKEND", ""),
            installed=installed_backends(),
        )
    except CommandLineError as exc:
        return Finish(EXIT_INIT_FAILURE, str(exc))
    return Prepared(slot_dir, args, aid, standalone, job, run)


def installed_backends() -> frozenset[str]:
    from vmwrapper.doctor import installed_backends as probe

    return probe()


def no_backend(reason: str) -> TemporaryExit:
    """A job no back end of this host can run: a temporary exit of a day with a notice naming
    what is missing (never a hang; docs/compatibility.md#back-end-selection)."""
    log.error("No back end can run this job here: %s", reason)
    return TemporaryExit(
        MAX_TEMPORARY_EXIT_DELAY, f"This VM job cannot run on this computer: {reason}.", notice=True
    )


def describe(prepared: Prepared) -> str:
    """The run configuration as the lines `--dry-run` prints."""
    run = prepared.run
    lines = [
        f"slot directory:  {prepared.slot_dir}",
        f"standalone:      {'yes' if run.standalone else 'no'}",
        f"result name:     {run.result_name or '(none)'}",
        f"VM name:         {run.vm_name}",
        f"back end:        {run.backend or 'none'} ({run.backend_reason})",
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
    from vmwrapper.supervisor import events

    hostos.redirect_stderr(slot_dir)
    limit = prepared.args.guest_log_limit if isinstance(prepared, Prepared) else GUEST_LOG_LIMIT
    uninstall = events.install(slot_dir, guest_log_limit=limit)
    try:
        if not isinstance(prepared, Prepared):
            print(getattr(prepared, "message", ""), file=sys.stderr)
            return conclude(prepared, slot_dir)
        if not prepared.run.backend:
            return conclude(no_backend(prepared.run.backend_reason), slot_dir)
        return run_vm(prepared, argv)
    finally:
        uninstall()


# --- the VM part (supervisor) --------------------------------------------------------------


def _wrapper_ports(spec: JobSpec, record: CheckpointRecord) -> tuple[int, int]:
    """The web API and console host ports: those of the record (stable across restarts),
    else picked now (vboxwrapper's boinc_get_port), never one of the job's fixed forwards."""
    from vmwrapper.hostports import free_port

    taken = {host for forward in spec.port_forward for host, _, _ in forward.rules() if host}
    webapi = record.webapi_port
    if not webapi and spec.enable_network and spec.pf_guest_port:
        webapi = spec.pf_host_port or free_port(avoid=taken)
    taken.add(webapi)
    remote = record.remote_desktop_port
    if not remote and spec.enable_remotedesktop:
        remote = free_port(avoid=taken)
    return webapi, remote


def _floppy_writer(prepared: Prepared, path: Path) -> Callable[[], None]:
    """Contextualization: init_data.xml (or the CERN lines) on the floppyio image."""
    from vmwrapper.context import floppy

    def write() -> None:
        spec = prepared.job.spec
        if spec.enable_cern_dataformat:
            payload = floppy.cern_payload(prepared.init_data)
        else:
            init_xml = prepared.slot_dir / INIT_DATA_FILE
            payload = floppy.plain_payload(init_xml.read_bytes() if init_xml.exists() else b"")
        image = floppy.build_floppy(payload)
        for note in image.notes:
            log.warning("%s", note)
        floppy.write_floppy(path, image)

    return write


def _console_credential(slot_dir: Path, run: RunConfig, port: int) -> str:
    """The task's console password, kept in ``vm_console.txt`` for the volunteer: the same
    across restarts (a VirtualBox VM keeps its hash), mode 0640 (the client's account and
    group: who may read gui_rpc_auth.cfg), never in stderr.txt (docs/compatibility.md#runtime).
    """
    import secrets

    from vmwrapper.runconfig import (
        CONSOLE_FILE,
        console_password_bytes,
        format_console_file,
        parse_console_password,
    )

    path = slot_dir / CONSOLE_FILE
    try:
        password = parse_console_password(path.read_text(encoding="utf-8"))
    except OSError:
        password = None
    password = password or secrets.token_urlsafe(console_password_bytes(run.backend))
    text = format_console_file(run.backend, port, password, run.result_name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | hostos.NOFOLLOW, 0o640)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o640)  # an older file may have had a wider mode
            fh.write(text)
    except OSError as exc:
        log.warning("Could not write %s: %s (the console is unusable)", CONSOLE_FILE, exc)
    else:
        log.info("Remote console: 127.0.0.1:%d; how to log in: %s in the slot", port, path.name)
    return password


def run_vm(prepared: Prepared, argv: Sequence[str]) -> int:
    """Attach to the client, build the back end and run the supervisor to its outcome."""
    from vmwrapper.boinc.app import AppClient
    from vmwrapper.runconfig import (
        RuntimePorts,
        build_vm_config,
        detected_lines,
        virtualbox_options,
    )
    from vmwrapper.supervisor import checkpoint
    from vmwrapper.supervisor.loop import Settings, run_supervisor
    from vmwrapper.supervisor.select import make_backend

    spec, run, slot_dir = prepared.job.spec, prepared.run, prepared.slot_dir
    try:
        client = AppClient.attach(slot_dir)
    except LockfileBusy:
        # what the BOINC API does when another process holds the slot: try again later
        return conclude(TemporaryExit(LOCK_BUSY_DELAY, LOCK_BUSY_REASON), slot_dir)
    try:
        webapi, remote = _wrapper_ports(spec, checkpoint.read_record(slot_dir))
        password = _console_credential(slot_dir, run, remote) if remote else ""
        ports = RuntimePorts(webapi, remote, password)
        aid = client.init_data
        project_dir = (
            slot_dir / "project"
            if prepared.standalone or not aid.project_dir
            else Path(aid.project_dir)
        )
        vm_config = build_vm_config(run, spec, aid, slot_dir, project_dir, ports)
        settings = Settings(
            job=spec,
            slot_dir=slot_dir,
            argv=(sys.argv[0], *argv),
            trickle_period=run.trickle_period,
            register_only=run.register_only,
            sporadic=run.sporadic,
            webapi_port=webapi,
            remote_desktop_port=remote,
            contextualize=(
                _floppy_writer(prepared, vm_config.floppy_image)
                if vm_config.floppy_image is not None
                else None
            ),
        )
        log.info(
            "vmwrapper %s (vboxwrapper release %d compatible), back end %s",
            __version__,
            WRAPPER_RELEASE,
            run.backend,
            extra={"event": "wrapper_start", "backend": run.backend},
        )
        log.info("Back end: %s (%s)", run.backend, run.backend_reason)
        for line in detected_lines(aid, anonymous_platform=(project_dir / "app_info.xml").exists()):
            log.info("%s", line)
        try:
            # the settings only VirtualBox reads go to it alone
            opts = {"options": virtualbox_options(spec)} if run.backend == "virtualbox" else {}
            backend = make_backend(run.backend, vm_config, **opts)
        except CommandLineError as exc:
            return conclude(Finish(EXIT_INIT_FAILURE, str(exc)), slot_dir, client)
        try:
            outcome = run_supervisor(backend, client, settings)
        except Exception as exc:  # a bug in the wrapper: say so, and stop the VM
            log.exception("internal error: %s", exc)
            with contextlib.suppress(Exception):
                backend.poweroff(0.0)
            outcome = Finish(ERR_EXEC, f"vmwrapper internal error: {type(exc).__name__}: {exc}")
        return conclude(outcome, slot_dir, client)
    finally:
        client.close()


def conclude(outcome: Outcome, slot_dir: Path | None = None, client: Any = None) -> int:
    """The one place the wrapper ends: BOINC files for the outcome, then the exit status.

    Without an attached client (the outcome came before attaching), attach just to report; if
    another process holds the slot's lock, write the file alone, as there is no one to tell.
    """
    from vmwrapper.boinc import files
    from vmwrapper.boinc.app import AppClient
    from vmwrapper.outcome import exit_status

    try:
        if client is not None:
            client.write_outcome(outcome)
        elif slot_dir is not None:
            try:
                with AppClient.attach(slot_dir, lock_wait=0) as own:
                    own.write_outcome(outcome)
            except LockfileBusy:
                if isinstance(outcome, TemporaryExit):
                    files.write_temporary_exit_file(slot_dir, outcome)
                elif isinstance(outcome, Finish):
                    files.write_finish_file(slot_dir, outcome)
    except OSError as exc:
        # E.g. the slot's disk is full. Exit with the outcome's status anyway: for a temporary
        # exit that is 0 without the file, which the client takes as a premature exit and
        # restarts, where a traceback's exit code 1 would fail the task for good.
        log.error(
            "Could not write the %s file: %s; exiting with status %d without it.",
            type(outcome).__name__,
            exc,
            exit_status(outcome),
        )
    return exit_status(outcome)


def main(args: argparse.Namespace) -> int:
    return run_argv(list(args.options))
