"""Start the real BOINC client on a data directory and drive it with ``boinccmd`` (I/O).

:class:`BoincClient` is a context manager in the manner of QEMU's ``QEMUMachine``: it starts
``boinc --dir D --gui_rpc_port P`` (GUI RPC on loopback; the password is in
``D/gui_rpc_auth.cfg``, which boinccmd run in ``D`` reads), talks to it only through
``boinccmd``, bounds every wait, and on leaving always stops the client: ``boinccmd --quit``
first, then SIGTERM, then SIGKILL, and finally kills whatever the client had started (apps,
VMs) that outlived it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import IO, TypeVar

import psutil

from vmwrapper.boincclient.datadir import DataDir
from vmwrapper.boincclient.state import BoincClientError
from vmwrapper.boincclient.tasks import TaskInfo, parse_get_tasks
from vmwrapper.hostports import free_port

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Environment variables the real client would not pass to the app
#: (docs/compatibility.md#app-version-directory).
_STRIPPED_ENV = ("VMWRAPPER_PYTHON",)
#: How long boinccmd may take for one RPC.
RPC_TIMEOUT = 30.0
#: How long the client may take to open its GUI RPC port.
START_TIMEOUT = 60.0
#: How long ``--quit`` may take: the client asks each app to quit and waits for it.
QUIT_TIMEOUT = 120.0


@dataclass(frozen=True)
class StopReport:
    """How the client ended."""

    exit_code: int | None  # None: it had to be killed and its status was not seen
    graceful: bool  # it left on `boinccmd --quit`
    leftovers: tuple[str, ...]  # processes it started that outlived it (killed by us)


class BoincClient:
    """One ``boinc`` process on one data directory."""

    def __init__(
        self,
        data: DataDir,
        *,
        port: int | None = None,
        boinc: str = "boinc",
        boinccmd: str = "boinccmd",
        extra_args: Iterable[str] = (),
        poll_interval: float = 1.0,
    ) -> None:
        self.data = data
        self.port = port or free_port()
        self.boinc = boinc
        self.boinccmd = boinccmd
        self.extra_args = tuple(extra_args)
        self.poll_interval = poll_interval
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._descendants: dict[int, psutil.Process] = {}

    # -- the process ----------------------------------------------------------------------

    @property
    def argv(self) -> list[str]:
        return [
            self.boinc,
            "--dir",
            str(self.data.path),
            "--gui_rpc_port",
            str(self.port),
            *self.extra_args,
        ]

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, *, timeout: float = START_TIMEOUT) -> None:
        """Start the client and wait until its GUI RPC answers."""
        if self.running():
            raise BoincClientError("the BOINC client is already running")
        env = {k: v for k, v in os.environ.items() if k not in _STRIPPED_ENV}
        self._log = open(self.data.client_log, "ab")  # noqa: SIM115 - closed in _reap
        log.info("starting %s", " ".join(self.argv), extra={"event": "boinc_client_start"})
        try:
            self._proc = subprocess.Popen(
                self.argv,
                cwd=self.data.path,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the caller is not the client's
            )
        except OSError as exc:
            self._log.close()
            self._log = None
            raise BoincClientError(
                f"cannot start {self.boinc}: {exc} (fix: install boinc-client, "
                "scripts/install-deps.sh)"
            ) from exc
        try:
            self.wait_for(self._rpc_ready, timeout=timeout, what="the client's GUI RPC")
        except BaseException:
            self.stop()
            raise

    def _rpc_ready(self) -> bool:
        return self._boinccmd("--get_cc_status", check=False).returncode == 0

    # -- GUI RPC through boinccmd ---------------------------------------------------------

    def _boinccmd(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # no --passwd: boinccmd reads gui_rpc_auth.cfg from its working directory, so the
        # password never shows in a process list
        argv = [self.boinccmd, "--host", f"127.0.0.1:{self.port}", *args]
        try:
            done = subprocess.run(
                argv,
                cwd=self.data.path,
                capture_output=True,
                text=True,
                timeout=RPC_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BoincClientError(
                f"boinccmd {' '.join(args)}: no answer in {exc.timeout} s"
            ) from exc
        # boinccmd exits 0 on some RPC errors; its error text goes to stderr/stdout
        failed = done.returncode != 0 or "Operation failed" in done.stdout + done.stderr
        if check and failed:
            raise BoincClientError(
                f"boinccmd {' '.join(args)} failed (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-500:]}"
            )
        return done

    def rpc(self, *args: str) -> str:
        """Run one boinccmd command against this client and return its output."""
        return self._boinccmd(*args).stdout

    def tasks(self) -> tuple[TaskInfo, ...]:
        return parse_get_tasks(self.rpc("--get_tasks"))

    def task(self, name: str) -> TaskInfo:
        for info in self.tasks():
            if info.name == name:
                return info
        raise BoincClientError(f"the client has no task {name!r}")

    def task_op(self, name: str, op: str) -> None:
        """``boinccmd --task URL NAME suspend|resume|abort``."""
        self.rpc("--task", self.data.master_url, name, op)

    def suspend(self, name: str) -> None:
        self.task_op(name, "suspend")

    def resume(self, name: str) -> None:
        self.task_op(name, "resume")

    def set_checkpoint_period(self, seconds: float) -> None:
        """Change the ``disk_interval`` preference: jobs started from now on get it in
        init_data.xml (``boinccmd --read_global_prefs_override``)."""
        self.data.write_preferences(seconds)
        self.rpc("--read_global_prefs_override")

    def messages(self, seqno: int = 0) -> str:
        """The client's event log after ``seqno`` (what `--get_messages` prints)."""
        return self.rpc("--get_messages", str(seqno))

    # -- waiting --------------------------------------------------------------------------

    def wait_for(self, check: Callable[[], T | None], *, timeout: float, what: str) -> T:
        """Poll ``check`` every ``poll_interval`` until it returns something truthy.

        Raises BoincClientError with the client log's tail if the client dies or the time is up.
        """
        deadline = time.monotonic() + timeout
        while True:
            if not self.running():
                raise BoincClientError(
                    f"the BOINC client exited while waiting for {what}\n{self.log_tail()}"
                )
            self._note_descendants()
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise BoincClientError(
                    f"timed out after {timeout:.0f} s waiting for {what}\n{self.log_tail()}"
                )
            time.sleep(self.poll_interval)

    def wait_task(
        self, name: str, predicate: Callable[[TaskInfo], bool], *, timeout: float, what: str
    ) -> TaskInfo:
        """Wait until ``predicate`` holds for task ``name`` in ``--get_tasks``."""

        def check() -> TaskInfo | None:
            info = self.task(name)
            return info if predicate(info) else None

        return self.wait_for(check, timeout=timeout, what=f"task {name}: {what}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.data.client_log.read_bytes().decode("utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _note_descendants(self) -> None:
        """Remember every process the client started, to clean up what outlives it."""
        if self._proc is None:
            return
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self._proc.pid).children(recursive=True):
                self._descendants.setdefault(child.pid, child)

    # -- stopping -------------------------------------------------------------------------

    def quit(self, *, timeout: float = QUIT_TIMEOUT) -> StopReport:
        """Shut the client down as a user would (``boinccmd --quit``); it quits its apps first.

        Escalates to SIGTERM and SIGKILL if it is still there after ``timeout``.
        """
        proc = self._proc
        if proc is None:
            return StopReport(exit_code=None, graceful=True, leftovers=())
        self._note_descendants()
        graceful = False
        if proc.poll() is None:
            with contextlib.suppress(BoincClientError):
                self._boinccmd("--quit", check=False)
            try:
                proc.wait(timeout=timeout)
                graceful = True
            except subprocess.TimeoutExpired:
                log.warning("the BOINC client did not quit in %.0f s; terminating", timeout)
                if not self._signal(signal.SIGTERM, 15.0):
                    self._signal(signal.SIGKILL, 15.0)
        return self._reap(graceful)

    def kill(self) -> None:
        """SIGKILL the client only, as a crash would; its apps are left to notice by themselves.

        :meth:`stop` afterwards still cleans up whatever did not.
        """
        if self._proc is not None and self._proc.poll() is None:
            self._note_descendants()
            self._signal(signal.SIGKILL, 15.0)

    def _signal(self, sig: signal.Signals, wait: float) -> bool:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(sig)
        try:
            self._proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            return False
        return True

    def _reap(self, graceful: bool) -> StopReport:
        proc = self._proc
        code = proc.poll() if proc is not None else None
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        leftovers = self._kill_leftovers()
        return StopReport(exit_code=code, graceful=graceful, leftovers=leftovers)

    def _kill_leftovers(self) -> tuple[str, ...]:
        alive: list[psutil.Process] = []
        names: list[str] = []
        for process in self._descendants.values():
            with contextlib.suppress(psutil.Error):
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    names.append(f"{process.pid} {' '.join(process.cmdline())[:200]}")
                    process.terminate()
                    alive.append(process)
        self._descendants.clear()
        if not alive:
            return ()
        log.warning("killing processes the BOINC client left behind: %s", names)
        _, still = psutil.wait_procs(alive, timeout=10)
        for process in still:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(still, timeout=10)
        return tuple(names)

    def stop(self) -> StopReport:
        """Idempotent: quit if running, and always clean up."""
        return self.quit()

    def __enter__(self) -> BoincClient:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
