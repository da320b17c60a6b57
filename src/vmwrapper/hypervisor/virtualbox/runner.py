"""Runs VBoxManage: exit status and output, a timeout, retries with back-off, and the trace files.

vboxwrapper's runner (docs/compatibility.md#vboxmanage-runner) ignores the exit status on Unix, has
no timeout there, and replaces the real error code with ERR_TIMEOUT after retrying
(docs/compatibility.md#vboxmanage-runner). This one:

* takes the exit status *and* the first ``(0x...)`` HRESULT of the output;
* kills a command that runs longer than its timeout (45 s by default, as on Windows);
* always retries VBOX_E_INVALID_OBJECT_STATE (a session lock held by someone else) and every
  sign of an unreachable VBoxSVC (CO_E_SERVER_EXEC_FAILURE on Windows, NS_BASE_STREAM_WOULD_BLOCK
  on Linux, RPC_E_*, ...: :func:`.failures.service_unreachable`) with doubling sleeps 1, 2, 4, 8,
  16 s, other failures 1 s apart when the step allows it, never the MultiAttach "VirtualBox 4.0"
  error;
* keeps the last attempt's original code in the raised :class:`VBoxManageError`, with its cause
  and the wrapper's reaction (:mod:`.failures`, docs/compatibility.md#virtualbox-failures);
* appends every attempt to ``vbox_trace.txt`` and ``vbox_replay.txt`` in the slot
  (docs/compatibility.md#vboxmanage-runner).

:func:`vbox_environment` sets up PATH and VBOX_USER_HOME as vboxwrapper does without
its bugs (docs/compatibility.md#start-up): PATH is only ever extended, ``$HOME`` is used, nothing
unset is dereferenced.
"""

from __future__ import annotations

import logging
import os
import platform
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from vmwrapper import hostos
from vmwrapper.errors import BackendError
from vmwrapper.hypervisor.virtualbox import failures, output
from vmwrapper.hypervisor.virtualbox.commands import Step

log = logging.getLogger(__name__)

TRACE_FILE = "vbox_trace.txt"
REPLAY_FILE = "vbox_replay.txt"
DEFAULT_TIMEOUT = 45.0
MAX_RETRIES = 5
ERR_NOT_FOUND = -161
ERR_TIMEOUT = -182

_MULTIATTACH_40 = (
    "Cannot attach medium",
    "the media type",
    "MultiAttach",
    "can only be attached to machines that were created with VirtualBox 4.0 or later",
)
_LOCK_NOTE = (
    "Another VirtualBox management application has locked the session for\n"
    "this VM. BOINC cannot properly monitor this VM\n"
    "and so this job will be aborted.\n\n"
)
_SERVICE_NOTE = (
    "Unable to communicate with VirtualBox.  VirtualBox may need to\nbe reinstalled.\n\n"
)


def signed(hresult: int) -> int:
    """An HRESULT as vboxwrapper's int (0x80bb0007 → -2135228409)."""
    return hresult - (1 << 32) if hresult >= 1 << 31 else hresult


def is_multiattach_40_error(text: str) -> bool:
    return all(part in text for part in _MULTIATTACH_40)


@dataclass(frozen=True)
class CommandResult:
    """One finished VBoxManage call (its last attempt)."""

    argv: tuple[str, ...]
    exit_code: int | None  # None: not started or killed by the timeout
    output: str
    hresult: int | None = None
    timed_out: bool = False
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    @property
    def code(self) -> int:
        """vboxwrapper's return value: 0, the signed HRESULT, ERR_TIMEOUT, ERR_NOT_FOUND or the
        exit status when VirtualBox printed no code."""
        if self.ok:
            return 0
        if self.hresult is not None:
            return signed(self.hresult)
        if self.timed_out:
            return ERR_TIMEOUT
        if self.exit_code is None:
            return ERR_NOT_FOUND
        return self.exit_code


class VBoxManageError(BackendError):
    """A VBoxManage command failed (after the runner's retries). ``hresult`` is VirtualBox's
    original code; ``cause`` and ``reaction`` say what it means for the task
    (docs/compatibility.md#virtualbox-failures). ``temporary`` is true when a later retry on this
    host can help, so the supervisor ends the task with a temporary exit, not an error."""

    def __init__(
        self,
        item: str,
        result: CommandResult,
        notes: str = "",
        operation: failures.Operation | None = None,
    ) -> None:
        self.item = item
        self.result = result
        self.hresult = result.hresult
        self.error_name = output.error_name(result.output)
        self.timed_out = result.timed_out
        self.operation = operation or failures.operation_of(result.argv[2:])
        self.cause = failures.cause_of(result.output, result.hresult, timed_out=result.timed_out)
        self.reaction = failures.reaction(self.operation, self.cause)
        text = result.output + (f"\nNotes:\n\n{notes}" if notes else "")
        what = "timed out" if result.timed_out else f"failed ({result.code})"
        super().__init__(
            f"VBoxManage {item} {what} after {result.attempts} attempt(s)",
            argv=result.argv,
            exit_code=result.exit_code,
            output=text,
            code=result.code,
        )
        self.temporary = self.reaction is failures.Reaction.TEMPORARY

    @property
    def lock_error(self) -> bool:
        return self.cause is failures.Cause.SESSION_LOCKED

    @property
    def ignorable(self) -> bool:
        """vboxwrapper goes on after this failure (a pause, a throttle, a clean-up step)."""
        return self.reaction is failures.Reaction.IGNORE


Sleep = Callable[[float], None]


class VBoxManage:
    """The VBoxManage runner of one slot. Inject ``sleep``/``wall_clock`` in tests."""

    def __init__(
        self,
        trace_dir: Path,
        *,
        executable: str = "VBoxManage",
        env: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = MAX_RETRIES,
        sleep: Sleep = time.sleep,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.trace_dir = trace_dir
        self.executable = executable
        self.env = dict(env) if env is not None else None
        self.timeout = timeout
        self.max_retries = max_retries
        self._sleep = sleep
        self._wall_clock = wall_clock

    def run(self, step: Step, *, timeout: float | None = None, trace: bool = True) -> CommandResult:
        """Run ``step`` with retries; return the result or raise :class:`VBoxManageError`."""
        result, notes = self._run_with_retries(step, timeout, trace)
        if result.ok:
            return result
        error = VBoxManageError(step.item, result, notes)
        if step.log_error:
            log.warning(
                "Error in %s for VM: %d\nCommand:\n%s\nOutput:\n%s",
                step.item,
                result.code,
                shlex.join(result.argv),
                error.output,
                extra={"event": "vbox_command_failed", "item": step.item, "code": result.code},
            )
        raise error

    def perform(self, step: Step) -> CommandResult | None:
        """A step as its table says: a fatal one is run (raising on failure), any other is
        probed and its failure shrugged off."""
        if step.fatal:
            return self.run(step)
        self.probe(step)
        return None

    def probe(
        self, step: Step, *, timeout: float | None = None, trace: bool = True
    ) -> CommandResult:
        """Run ``step`` and return the result whatever it is (no exception for failures)."""
        result, _ = self._run_with_retries(step, timeout, trace)
        return result

    def _run_with_retries(
        self, step: Step, timeout: float | None, trace: bool
    ) -> tuple[CommandResult, str]:
        notes = ""
        delay = 1.0
        attempt = 0
        while True:
            attempt += 1
            result = self._attempt(step.args, timeout if timeout is not None else self.timeout)
            result = CommandResult(
                result.argv,
                result.exit_code,
                result.output,
                result.hresult,
                result.timed_out,
                attempt,
            )
            if trace:
                self._trace(result)
            if result.ok:
                return result, notes
            lock = result.hresult == output.VBOX_E_INVALID_OBJECT_STATE
            service = failures.service_unreachable(result.hresult, result.output)
            if lock and is_multiattach_40_error(result.output):
                return result, notes
            if lock and _LOCK_NOTE not in notes:
                notes += _LOCK_NOTE
            if service and _SERVICE_NOTE not in notes:
                notes += _SERVICE_NOTE
            if not (lock or service or step.retry) or attempt > self.max_retries:
                return result, notes
            if (lock or service) and attempt > 1:
                delay *= 2
            log.debug("retrying %s in %.0f s (code %d)", step.item, delay, result.code)
            self._sleep(delay)

    def _attempt(self, args: tuple[str, ...], timeout: float) -> CommandResult:
        argv = (self.executable, "-q", *args)
        try:
            # a tree of its own (a POSIX process group, a Windows job object): a timeout kills
            # VBoxManage and anything it started that still holds the output pipe
            proc = hostos.spawn_tree(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        except (FileNotFoundError, PermissionError) as exc:
            return CommandResult(argv, None, f"{self.executable}: not found ({exc.strerror})")
        try:
            data, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            hostos.kill_tree(proc)
            try:
                data, _ = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:  # a grandchild outside the tree keeps the pipe
                proc.kill()
                data = b""
            text = _decode(data)
            return CommandResult(
                argv,
                None,
                text + f"\n(timed out after {timeout:g} s)",
                output.error_code(text),
                timed_out=True,
            )
        finally:
            hostos.release_tree(proc)
        text = _decode(data)
        code = output.error_code(text) if proc.returncode != 0 else None
        return CommandResult(argv, proc.returncode, text, code)

    def _trace(self, result: CommandResult) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self._wall_clock()))
        command = shlex.join(("VBoxManage", *result.argv[1:]))
        try:
            with open(self.trace_dir / REPLAY_FILE, "a", encoding="utf-8") as replay:
                replay.write(command + "\n")
            with open(self.trace_dir / TRACE_FILE, "a", encoding="utf-8") as trace:
                trace.write(
                    f"{stamp} ({os.getpid()}): \nCommand: {command}\nExit Code: {result.code}\n"
                    f"Output:\n{result.output}\n"
                )
        except OSError as exc:  # tracing must never break the run
            log.debug("cannot write VBoxManage trace: %s", exc)


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class VBoxEnvironment:
    executable: str  # absolute path of VBoxManage, or the bare name when not found
    env: dict[str, str]
    profile_dir: Path  # where VBoxSVC.log lives


def vbox_environment(
    environ: Mapping[str, str],
    *,
    boinc_dir: Path,
    system: str | None = None,
    is_file: Callable[[str], bool] = os.path.isfile,
    is_dir: Callable[[str], bool] = os.path.isdir,
) -> VBoxEnvironment:
    """PATH and VBOX_USER_HOME for VBoxManage's children (docs/compatibility.md#start-up).

    VBoxManage is looked up on the existing PATH first (so a test's simulator or a user's
    install wins); only if it is not there are /usr/local/bin and /usr/bin appended when they
    hold it. On Windows the registry's install directory comes first, as in vboxwrapper.
    The profile dir is VBOX_USER_HOME when set; else ``$HOME/.config/VirtualBox`` on Linux
    when ``$HOME/.config`` exists; else ``<boinc_dir>/projects/VirtualBox``.
    """
    system = system or platform.system()
    env = dict(environ)
    path = env.get("PATH", "")
    found = shutil.which("VBoxManage", path=path) if path else None
    if system == "Windows":
        # the registry's install dir first on PATH, as vboxwrapper (vmwrapper.hostos.winvbox)
        from vmwrapper.hostos.winvbox import locate_vboxmanage

        found = locate_vboxmanage(env, is_file) or found
    if found is None:
        for folder in ("/usr/local/bin", "/usr/bin"):
            candidate = os.path.join(folder, "VBoxManage")
            if is_file(candidate):
                found = candidate
                parts = [p for p in path.split(os.pathsep) if p]
                if folder not in parts:
                    env["PATH"] = os.pathsep.join([*parts, folder])
                break
    if env.get("VBOX_USER_HOME"):
        profile = Path(env["VBOX_USER_HOME"])
    else:
        home = env.get("HOME", "")
        if system == "Linux" and home and is_dir(os.path.join(home, ".config")):
            profile = Path(home) / ".config" / "VirtualBox"
        elif system == "Windows" and env.get("USERPROFILE"):
            profile = Path(env["USERPROFILE"]) / ".VirtualBox"
        else:
            profile = boinc_dir / "projects" / "VirtualBox"
        env["VBOX_USER_HOME"] = str(profile)
    return VBoxEnvironment(executable=found or "VBoxManage", env=env, profile_dir=profile)
