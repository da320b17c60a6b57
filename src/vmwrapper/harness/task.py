"""One run (episode) of a job's main program: the client's ``ACTIVE_TASK`` in a slot.

:meth:`ActiveTask.start` does the end of ``ACTIVE_TASK::start``
(docs/compatibility.md#how-the-client-runs-a-task): delete the temporary-exit file, create and zero
the segment, fork the main program with the client's cwd, argv, environment (``LD_LIBRARY_PATH``
prefix), stdout to /dev/null, stderr appended to ``stderr.txt`` and its priority.
:meth:`ActiveTask.poll` is one pass of the client's 1 s poll
(docs/compatibility.md#how-the-client-runs-a-task): exit check, heartbeat, trickle-down notices,
control queue with the 180 s rule, quit/abort timeouts, finish-file watch, then status, trickle-up
and graphics channels. When the process is gone it returns the
:class:`~vmwrapper.harness.control.ExitFacts`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from vmwrapper.boinc import files
from vmwrapper.boinc.messages import (
    HAVE_TRICKLE_DOWN,
    UPLOAD_FILE_STATUS,
    AppStatus,
    Channel,
    ControlMessage,
    Heartbeat,
    format_heartbeat,
    parse_app_status,
    parse_graphics_reply,
    parse_trickle_up_notice,
)
from vmwrapper.boinc.shmem import Segment
from vmwrapper.errors import ProtocolError
from vmwrapper.harness.control import (
    ABORT_TIMEOUT,
    FINISH_FILE_TIMEOUT,
    QUIT_TIMEOUT,
    ControlQueue,
    ExitFacts,
    TaskState,
)
from vmwrapper.outcome import (
    ERR_FILE_MISSING,
    EXIT_ABORTED_BY_CLIENT,
    EXIT_ABORTED_VIA_GUI,
    EXIT_DISK_LIMIT_EXCEEDED,
    EXIT_TIME_LIMIT_EXCEEDED,
)

log = logging.getLogger(__name__)

#: The client looks for the finish file this often.
FINISH_FILE_CHECK_INTERVAL = 10.0
#: An elapsed-time bound below this is replaced by the default (12 h).
MIN_TIME_BOUND = 120.0
DEFAULT_TIME_BOUND = 43200.0
#: nice values: normal jobs, and "high priority" ones (wrappers, GPU apps, < 1 CPU).
NICE_NORMAL = 19
NICE_HIGH_PRIORITY = 10


@dataclass(frozen=True)
class TaskEvent:
    """Something the client noticed, for logs, progress and the summary."""

    kind: str  # start, control, checkpoint, trickle_up, upload, graphics, kill, exit
    detail: str
    data: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class UploadTarget:
    """Where an output named in a ``boinc_ufr_`` request lives (``lookup_file_logical``)."""

    physical_name: str
    copy_file: bool


@dataclass(frozen=True)
class Limits:
    """The client's resource limits for a task (``check_rsc_limits_exceeded``,
    docs/compatibility.md#how-the-client-runs-a-task)."""

    max_elapsed: float = float("inf")  # s of run time (suspended time does not count)
    max_disk: float = float("inf")  # bytes: slot dir + output files
    disk_check_interval: float = 300.0  # max(disk_interval, 300)


def limits_for(
    rsc_fpops_bound: float, flops: float, rsc_disk_bound: float, disk_interval: float
) -> Limits:
    """The limits the client derives from the workunit (``ACTIVE_TASK::init``)."""
    max_elapsed = rsc_fpops_bound / flops if flops > 0 else float("inf")
    if max_elapsed < MIN_TIME_BOUND:
        max_elapsed = DEFAULT_TIME_BOUND
    return Limits(max_elapsed, rsc_disk_bound or float("inf"), max(disk_interval, 300.0))


@dataclass(frozen=True)
class LaunchSpec:
    """How the client starts the main program."""

    exec_path: str  # relative to the slot: ../../projects/<dir>/<main program>
    args: tuple[str, ...]
    env: Mapping[str, str]
    nice: int | None = NICE_NORMAL
    sched_idle: bool = False


def client_environment(
    base: Mapping[str, str], project_dir_name: str, extra: Mapping[str, str]
) -> dict[str, str]:
    """The child's environment: ours, with ``LD_LIBRARY_PATH`` prefixed as the client does."""
    env = dict(base)
    env.update(extra)
    libs = f"../../projects/{project_dir_name}:.:../.."
    old = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = f"{libs}:{old}" if old else libs
    return env


def _set_priority(nice: int | None, sched_idle: bool) -> Callable[[], None]:
    def apply() -> None:  # runs in the child between fork and exec
        if nice is not None:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, 0, nice)
        if sched_idle:
            with contextlib.suppress(OSError, AttributeError):
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    return apply


class ActiveTask:
    """The running main program of one episode and the client's side of its segment."""

    def __init__(
        self,
        *,
        slot_dir: Path,
        project_dir: Path,
        result_name: str,
        launch: LaunchSpec,
        uploads: Mapping[str, UploadTarget],
        uploads_dir: Path,
        clock: Callable[[], float],
        on_event: Callable[[TaskEvent], None],
        max_wss: float = 0.0,
        checkpoint_cpu_time: float = 0.0,
        shm_key: int = -1,
        limits: Limits | None = None,
        starting_elapsed: float = 0.0,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.slot_dir = slot_dir
        self.project_dir = project_dir
        self.result_name = result_name
        self.launch = launch
        self.uploads = uploads
        self.uploads_dir = uploads_dir
        self._clock = clock
        self._wallclock = wallclock
        self._emit = on_event
        self.max_wss = max_wss or float(psutil.virtual_memory().total) * 0.9
        self.state = TaskState.EXECUTING
        # the checkpoint CPU time the client already knows (from earlier episodes)
        self.status = AppStatus(checkpoint_cpu_time=checkpoint_cpu_time)
        self.fraction_done = 0.0
        self.checkpoints = 0
        #: network bytes the app reported for this episode (the client's bytes_*_episode)
        self.bytes_sent = 0.0
        self.bytes_received = 0.0
        self.web_graphics_url: str | None = None
        self.remote_desktop_addr: str | None = None
        self._segment: Segment | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._queue: ControlQueue | None = None
        self._exec_error: OSError | None = None
        self._kill_reason = ""
        self._abort_code = EXIT_ABORTED_VIA_GUI
        self._request_time = 0.0
        self._upload_status_pending = False
        self._trickle_down_pending = False
        self._last_finish_check = 0.0
        self._finish_seen_at: float | None = None
        self._other_pid: tuple[int, float | None] = (0, None)
        self._shm_key = shm_key  # -1: boinc_mmap_file; else System V (api_version < 6.0)
        self.limits = limits or Limits()
        #: run time of the task across runs (the client's elapsed_time): not while suspended
        self.elapsed = starting_elapsed
        self._last_poll: float | None = None
        self._last_disk_check: float | None = None
        self.peak_disk_usage = 0.0
        self._abort_reason = ""
        #: descendants listed at quit/abort time, killed once the task has exited
        self._descendants: list[tuple[int, float | None]] = []

    # -- start ----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.slot_dir / files.TEMPORARY_EXIT_FILE).unlink()
        if self._shm_key == -1:
            self._segment = Segment.create(self.slot_dir)
        else:
            self._segment = Segment.create_sysv(self._shm_key, self.slot_dir / files.INIT_DATA_FILE)
        segment = self._segment
        self._queue = ControlQueue(lambda text: segment.send(Channel.PROCESS_CONTROL_REQUEST, text))
        now = self._clock()
        self._last_finish_check = now
        argv = [self.launch.exec_path, *self.launch.args]
        with open(self.slot_dir / files.STDERR_FILE, "ab") as stderr:
            try:
                self._proc = subprocess.Popen(
                    argv,
                    cwd=self.slot_dir,
                    env=dict(self.launch.env),
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    preexec_fn=_set_priority(self.launch.nice, self.launch.sched_idle),
                )
            except OSError as exc:
                # the client's child would _exit(errno) after a failed execv
                self._exec_error = exc
                self._emit(TaskEvent("exit", f"cannot start {argv[0]}: {exc.strerror}"))
                return
        self._emit(TaskEvent("start", f"started {' '.join(argv)} (pid {self._proc.pid})"))

    # -- requests from the job level ------------------------------------------------------

    def suspend(self) -> None:
        if self.state is TaskState.EXECUTING and self._queue is not None:
            self._queue.suspend(self._clock())
            self.state = TaskState.SUSPENDED
            self._emit(TaskEvent("control", "suspend"))

    def resume(self) -> None:
        if self.state is TaskState.SUSPENDED and self._queue is not None:
            self._queue.resume(self._clock())
            self.state = TaskState.EXECUTING
            self._emit(TaskEvent("control", "resume"))

    def request_quit(self) -> None:
        """``request_exit``: send <quit/>, kill after 60 s."""
        if self.state in (TaskState.EXECUTING, TaskState.SUSPENDED) and self._queue is not None:
            self._queue.push(ControlMessage.QUIT, self._clock())
            self._note_descendants()
            self.state = TaskState.QUIT_PENDING
            self._request_time = self._clock()
            self._emit(TaskEvent("control", "quit"))

    def request_abort(self, code: int = EXIT_ABORTED_VIA_GUI) -> None:
        """``abort_task``: send <abort/>, kill after 60 s; the result gets ``code``."""
        if self.state is not TaskState.ABORT_PENDING and self._queue is not None:
            self._queue.push(ControlMessage.ABORT, self._clock())
            self._note_descendants()
            self.state = TaskState.ABORT_PENDING
            self._abort_code = code
            self._request_time = self._clock()
            self._emit(TaskEvent("control", "abort"))

    def abort_task(self, code: int, reason: str) -> None:
        """``ACTIVE_TASK::abort_task``: abort with ``code`` and say why."""
        if self.state is TaskState.ABORT_PENDING:
            return
        self._abort_reason = reason
        self._emit(TaskEvent("limit", reason, {"exit_status": code}))
        self.request_abort(code)

    def send_trickle_down(self, body: str) -> Path:
        """A trickle-down from the project: file in the slot, notice at the next poll."""
        path = files.write_trickle_down(self.slot_dir, body, self._wallclock())
        self._trickle_down_pending = True
        return path

    def kill(self, reason: str) -> None:
        if self._proc is not None and self._proc.poll() is None:
            if self._kill_reason:
                return  # already killed; SIGKILL takes a moment
            self._kill_reason = reason
            self._emit(TaskEvent("kill", reason))
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGKILL)

    # -- the 1 s poll ---------------------------------------------------------------------

    def poll(self) -> ExitFacts | None:
        """One pass of the client's poll; the exit facts once the process is gone."""
        if self._exec_error is not None:
            return self._facts(self._exec_error.errno or 1)
        proc, seg, queue = self._proc, self._segment, self._queue
        assert proc is not None and seg is not None and queue is not None
        now = self._clock()
        returncode = proc.poll()
        if returncode is not None:
            self._read_channels(seg)  # the client reads status and trickles once more
            return self._facts(returncode)
        seg.send(Channel.HEARTBEAT, format_heartbeat(Heartbeat(self._wss(proc.pid), self.max_wss)))
        if self._trickle_down_pending and seg.send(Channel.TRICKLE_DOWN, HAVE_TRICKLE_DOWN):
            self._trickle_down_pending = False
        if self._upload_status_pending and seg.send(Channel.TRICKLE_DOWN, UPLOAD_FILE_STATUS):
            self._upload_status_pending = False
        if queue.timed_out(now):
            self.kill("no reply to a control message for 180 s: the app seems hung")
        else:
            queue.poll()
        self._check_timeouts(now)
        self._check_limits(now)
        self._read_channels(seg)
        return None

    def _check_limits(self, now: float) -> None:
        """Elapsed-time and disk limits, for an executing task only."""
        if self._last_poll is not None and self.state is TaskState.EXECUTING:
            self.elapsed += now - self._last_poll
        self._last_poll = now
        if self.state is not TaskState.EXECUTING:
            return
        if self.elapsed > self.limits.max_elapsed:
            self.abort_task(
                EXIT_TIME_LIMIT_EXCEEDED,
                f"exceeded elapsed time limit {self.limits.max_elapsed:.2f} s",
            )
            return
        due = self._last_disk_check is None or (
            now - self._last_disk_check > self.limits.disk_check_interval
        )
        if due:
            self._last_disk_check = now
            usage = self.disk_usage()
            self.peak_disk_usage = max(self.peak_disk_usage, usage)
            if usage > self.limits.max_disk:
                self.abort_task(
                    EXIT_DISK_LIMIT_EXCEEDED,
                    f"exceeded disk limit: {usage / 1e6:.2f}MB > "
                    f"{self.limits.max_disk / 1e6:.2f}MB",
                )

    def disk_usage(self) -> float:
        """``current_disk_usage``: the slot dir (not following links) plus the outputs."""
        total = 0
        for root, _dirs, names in os.walk(self.slot_dir):
            for name in names:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, name)).st_size
        for target in self.uploads.values():
            with contextlib.suppress(OSError):
                total += (self.project_dir / target.physical_name).stat().st_size
        return float(total)

    def _check_timeouts(self, now: float) -> None:
        if self.state is TaskState.QUIT_PENDING and now - self._request_time > QUIT_TIMEOUT:
            self.kill(f"did not exit {QUIT_TIMEOUT:.0f} s after <quit/>")
        if self.state is TaskState.ABORT_PENDING and now - self._request_time > ABORT_TIMEOUT:
            self.kill(f"did not exit {ABORT_TIMEOUT:.0f} s after <abort/>")
        if now - self._last_finish_check >= FINISH_FILE_CHECK_INTERVAL:
            self._last_finish_check = now
            if (self.slot_dir / files.FINISH_FILE).exists():
                if self._finish_seen_at is None:
                    self._finish_seen_at = now
                elif now - self._finish_seen_at > FINISH_FILE_TIMEOUT:
                    self.request_abort(EXIT_ABORTED_BY_CLIENT)
                    self.kill("process still present 5 min after writing finish file")

    def _wss(self, pid: int) -> float:
        try:
            return float(psutil.Process(pid).memory_info().rss)
        except psutil.Error:
            return 0.0

    def _read_channels(self, seg: Segment) -> None:
        try:
            text = seg.receive(Channel.APP_STATUS)
            if text is not None:
                self._on_status(parse_app_status(text))
            text = seg.receive(Channel.TRICKLE_UP)
            if text is not None:
                notice = parse_trickle_up_notice(text)
                if notice.trickle_up:
                    self._take_trickle_up()
                if notice.upload_file:
                    self._handle_upload_requests()
            text = seg.receive(Channel.GRAPHICS_REPLY)
            if text is not None:
                reply = parse_graphics_reply(text)
                if reply.web_graphics_url is not None:
                    self.web_graphics_url = reply.web_graphics_url
                    self._emit(TaskEvent("graphics", f"web graphics URL {reply.web_graphics_url}"))
                if reply.remote_desktop_addr is not None:
                    self.remote_desktop_addr = reply.remote_desktop_addr
                    self._emit(TaskEvent("graphics", f"remote desktop {reply.remote_desktop_addr}"))
        except ProtocolError as exc:  # garbage from the app must not stop the client
            log.warning("unreadable message from the app: %s", exc)

    def _on_status(self, status: AppStatus) -> None:
        if status.checkpoint_cpu_time != self.status.checkpoint_cpu_time:
            # a changed checkpoint CPU time is the client's only checkpoint signal
            self.checkpoints += 1
            self._emit(
                TaskEvent(
                    "checkpoint",
                    f"checkpoint at {status.checkpoint_cpu_time:.2f} s CPU",
                    {"checkpoint_cpu_time": status.checkpoint_cpu_time},
                )
            )
        if status.fraction_done is not None:
            self.fraction_done = status.fraction_done
        # Episode totals, as the client keeps them: only growth counts (an absent field
        # reads as 0 here, and the client ignores a missing one).
        self.bytes_sent = max(self.bytes_sent, status.bytes_sent)
        self.bytes_received = max(self.bytes_received, status.bytes_received)
        if status.other_pid is None and self.status.other_pid is not None:
            status = dataclasses.replace(status, other_pid=self.status.other_pid)
        if status.other_pid is not None and status.other_pid != self._other_pid[0]:
            self._other_pid = (status.other_pid, _create_time(status.other_pid))
        self.status = status

    def _take_trickle_up(self) -> None:
        """``move_trickle_file``: trickle_up.xml -> projects/<dir>/trickle_up_<result>_<t>.xml."""
        source = self.slot_dir / files.TRICKLE_UP_FILE
        try:
            text = source.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            log.warning("the app announced a trickle-up but %s is missing", source)
            return
        stamp = int(self._wallclock())
        dest = self.project_dir / f"trickle_up_{self.result_name}_{stamp}.xml"
        n = 0
        while dest.exists():  # two in one second would overwrite each other in the client
            n += 1
            dest = self.project_dir / f"trickle_up_{self.result_name}_{stamp}_{n}.xml"
        os.replace(source, dest)
        try:
            trickle = files.parse_trickle_up(text)
        except ProtocolError as exc:
            log.warning("trickle-up without a variety: %s", exc)
            trickle = files.Trickle(variety="", body=text)
        self._emit(
            TaskEvent(
                "trickle_up",
                f"trickle-up {trickle.variety!r} ({len(trickle.body)} bytes)",
                {"variety": trickle.variety, "body": trickle.body, "path": str(dest)},
            )
        )

    def _handle_upload_requests(self) -> None:
        """``handle_upload_files``: "upload" each requested output (a copy into uploads/)."""
        for logical in files.list_upload_requests(self.slot_dir):
            (self.slot_dir / f"{files.UPLOAD_REQUEST_PREFIX}{logical}").unlink()
            target = self.uploads.get(logical)
            if target is None:
                log.warning("can't find uploadable file %s (no output has that open name)", logical)
                self._emit(TaskEvent("upload", f"unknown upload {logical!r}", {"status": None}))
                continue
            source = self.project_dir / target.physical_name
            if not source.is_file() and target.copy_file and (self.slot_dir / logical).is_file():
                # the real client only looks in the project dir; be lenient, say so
                log.warning(
                    "%s is a copy_file output: the real client cannot upload it early", logical
                )
                source = self.slot_dir / logical
            status = files.FILE_PRESENT  # what the real client writes after an upload
            dest = self.uploads_dir / target.physical_name
            if source.is_file():
                self.uploads_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, dest)
            else:
                status = ERR_FILE_MISSING
            files.write_upload_status(self.slot_dir, logical, status)
            self._upload_status_pending = True
            self._emit(
                TaskEvent(
                    "upload",
                    f"uploaded {logical} (status {status})",
                    {"logical_name": logical, "status": status, "path": str(dest)},
                )
            )

    # -- the end --------------------------------------------------------------------------

    def _facts(self, returncode: int) -> ExitFacts:
        facts = ExitFacts(
            returncode=returncode,
            state=self.state,
            temporary_exit=files.read_temporary_exit_file(self.slot_dir),
            finish=files.read_finish_file(self.slot_dir),
            kill_reason=self._kill_reason,
            abort_code=self._abort_code,
            abort_reason=self._abort_reason,
        )
        self._kill_subsidiary_processes()
        if self._segment is not None:
            self._release_segment()
        return facts

    def _note_descendants(self) -> None:
        """``get_descendants`` at quit/abort time, as the client does."""
        if self._proc is None:
            return
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self._proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    self._descendants.append((child.pid, child.create_time()))

    def _kill_subsidiary_processes(self) -> None:
        """``kill_subsidiary_processes``: other_pid (and its children), then the descendants
        listed at quit/abort time. Only the very processes seen then: reused pids are safe."""
        self._kill_other_pid()
        for pid, created in self._descendants:
            if created is not None and _create_time(pid) == created:
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).kill()

    def _release_segment(self) -> None:
        """Unmap; a System V segment is also destroyed, as the client does at task exit."""
        if self._segment is not None:
            self._segment.close()
            if self._shm_key != -1:
                Segment.destroy_sysv(self._shm_key)

    def _kill_other_pid(self) -> None:
        """The client kills ``other_pid`` (e.g. the VM) and its children when the task ends.

        Only the very process the app named: a pid reused since then is left alone.
        """
        pid, created = self._other_pid
        if not pid or created is None or _create_time(pid) != created:
            return
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            for p in [*proc.children(recursive=True), proc]:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            log.info("killed other_pid %d", pid)

    def wait_exit(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds, less if the app exits meanwhile (the next poll()
        sees the exit): the harness notices a job's end at once, not at its next poll."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            time.sleep(timeout)
            return
        wait_for_exit(proc, timeout)

    def close(self) -> None:
        """Kill a process still running (harness interrupted) and unmap the segment."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)
        if self._segment is not None:
            self._release_segment()


def wait_for_exit(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Return when ``proc`` exits or ``timeout`` passes. Where the OS gives a process file
    descriptor (Linux), it wakes at the exit itself; ``Popen.wait`` with a timeout polls,
    sleeping up to 50 ms, which every job's end would wait on average half of
    (docs/performance.md#the-fixed-cost-around-a-short-job)."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux, or an old kernel
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
        return
    try:
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


__all__: Sequence[str] = (
    "ActiveTask",
    "LaunchSpec",
    "TaskEvent",
    "UploadTarget",
    "client_environment",
)
