"""The app side of the BOINC protocol, as the wrapper uses it: :class:`AppClient`
(docs/compatibility.md#client-protocol).

It does what the BOINC API's timer thread does for a wrapper (``direct_process_action`` off:
requests become flags the caller polls, docs/compatibility.md#api-timers), minus the threads: the
caller calls :meth:`AppClient.poll` and :meth:`AppClient.tick` about once a second (more often is
fine) and acts on the returned :class:`ClientStatus`.

Differences from the C++ API, on purpose:

* Trickle-ups are a queue. The API overwrites ``trickle_up.xml`` when a second trickle comes
  before the client picked up the first; we write the next one only after the client took the
  file (it is gone) and read the channel notice.
* Both spellings of network suspension in a heartbeat count (the 7.20.5 API misses the
  client's ``<network_suspended/>``).
* The mmap segment (``<shm_key>-1``) and System V shared memory (any other key: app versions
  without api_version >= 6.0, and the client's ``--run_test_app``) are both spoken.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

from vmwrapper import hostos
from vmwrapper.boinc import files
from vmwrapper.boinc.init_data import AppInitData, parse_init_data
from vmwrapper.boinc.messages import (
    AppStatus,
    Channel,
    ControlMessage,
    TrickleUpNotice,
    decode_control,
    encode_text,
    format_remote_desktop_addr,
    format_trickle_up_notice,
    format_web_graphics_url,
    format_wrapper_status,
    parse_heartbeat,
)
from vmwrapper.boinc.shmem import Segment
from vmwrapper.errors import InitDataError, ProtocolError
from vmwrapper.outcome import Finish, Outcome, PlainExit, TemporaryExit

log = logging.getLogger(__name__)

#: The API probes ``client_pid`` this often (``client_dead``).
PID_PROBE_INTERVAL = 10.0
#: Without a client pid, this long without ``<heartbeat/>`` means the client is gone.
HEARTBEAT_GIVEUP = 30.0
#: ``boinc_lockfile`` busy: the API waits this long, retries once, then gives up.
LOCK_WAIT = 35.0
#: At most this long spent handing queued trickles to the client at the end.
TRICKLE_FLUSH_LIMIT = 15.0
#: The client's ``<shm_key>`` for the mmap segment.
SHM_KEY_MMAP = -1


@dataclass(frozen=True)
class ClientStatus:
    """What the client asked, as of the last poll."""

    suspended: bool = False
    quit_request: bool = False
    abort_request: bool = False
    no_heartbeat: bool = False  # client dead (pid probe every 10 s; else 30 s heartbeat gap)
    reread_init_data: bool = False  # <reread_app_info/> seen (cleared by ack_reread())
    network_suspended: bool = False
    max_wss: float = 0.0


def pid_alive(pid: int) -> bool:
    """``kill(pid, 0)`` as the API uses it: only ESRCH means gone (on Windows: the process
    handle, vmwrapper.hostos)."""
    return hostos.pid_alive(pid)


class AppClient:
    """The wrapper's end of the client/app protocol in one slot directory."""

    def __init__(
        self,
        slot_dir: Path,
        init_data: AppInitData,
        segment: Segment | None,
        lockfile: files.Lockfile | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        probe: Callable[[int], bool] = pid_alive,
    ) -> None:
        self.slot_dir = slot_dir
        self.init_data = init_data
        self._segment = segment
        self._lockfile = lockfile
        self._clock = clock
        self._sleep = sleep
        self._probe = probe
        now = clock()
        self._status = ClientStatus()
        self._last_heartbeat = now
        self._last_probe = now
        self._trickles: collections.deque[files.Trickle] = collections.deque()
        self._trickle_in_flight = False
        self._notice = TrickleUpNotice()
        self._graphics: collections.deque[str] = collections.deque()
        self._last_report = AppStatus(fraction_done=0.0)
        if segment is not None and (slot_dir / files.TRICKLE_UP_FILE).exists():
            # an earlier episode wrote it and died before the client took it: announce it
            self._trickle_in_flight = True
            self._notice = TrickleUpNotice(trickle_up=True)

    # -- attaching ------------------------------------------------------------------------

    @classmethod
    def attach(
        cls,
        slot_dir: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        probe: Callable[[int], bool] = pid_alive,
        lock_wait: float = LOCK_WAIT,
    ) -> AppClient:
        """Read ``init_data.xml``, lock ``boinc_lockfile``, map ``boinc_mmap_file``.

        Without a readable init_data.xml or a segment the client runs standalone (every
        protocol call a no-op), as the API does. A lock held by another process is waited
        for once (``lock_wait``), then :class:`~vmwrapper.boinc.files.LockfileBusy` is raised
        (the API then exits temporarily for 600 s).
        """
        slot_dir = Path(slot_dir)
        lockfile = files.Lockfile(slot_dir)
        try:
            lockfile.acquire()
        except files.LockfileBusy:
            log.warning("%s is locked; waiting %.0f s", lockfile.path, lock_wait)
            sleep(lock_wait)
            lockfile.acquire()
        init_data, segment = AppInitData(), None
        try:
            init_data = _read_init_data(slot_dir)
        except (OSError, InitDataError) as exc:
            log.info("standalone mode: %s", exc, extra={"event": "boinc_standalone"})
        else:
            if init_data.comm_obj_name:
                # the Windows client: a named file mapping
                # (docs/compatibility.md#shared-memory-on-windows)
                segment = Segment.attach_named(init_data.comm_obj_name)
            elif init_data.shm_key != SHM_KEY_MMAP:
                # an app version without api_version >= 6.0: System V shared memory
                segment = Segment.attach_sysv(init_data.shm_key, slot_dir / files.INIT_DATA_FILE)
            else:
                segment = Segment.attach(slot_dir)
            if segment is None:
                log.info(
                    "standalone mode: no shared memory segment (shm_key %d) for %s",
                    init_data.shm_key,
                    slot_dir,
                    extra={"event": "boinc_standalone"},
                )
        return cls(slot_dir, init_data, segment, lockfile, clock=clock, sleep=sleep, probe=probe)

    @property
    def standalone(self) -> bool:
        """True when no client talks to us: no segment, every protocol call does nothing."""
        return self._segment is None

    # -- reading the client ---------------------------------------------------------------

    def poll(self) -> ClientStatus:
        """Read the control, heartbeat and trickle-down channels; check the client is alive.

        Call at least once a second, suspended or not: a ``<resume/>`` left unread blocks the
        client's queue and after 180 s it kills us.
        """
        seg = self._segment
        if seg is None:
            return self._status
        now = self._clock()
        status = self._status
        text = _receive(seg, Channel.HEARTBEAT)
        if text is not None:
            beat = parse_heartbeat(text)
            if beat.beat:
                self._last_heartbeat = now
            status = replace(status, max_wss=beat.max_wss, network_suspended=beat.network_suspended)
        # notices of trickle-downs and upload statuses: the files themselves are what
        # receive_trickle_down() and upload_status() read, so the notice only empties the channel
        _receive(seg, Channel.TRICKLE_DOWN)
        text = _receive(seg, Channel.PROCESS_CONTROL_REQUEST)
        if text is not None:
            status = self._apply_control(status, decode_control(text))
        if not status.no_heartbeat and self._client_dead(now):
            status = replace(status, no_heartbeat=True)
        self._status = status
        return status

    def _apply_control(
        self, status: ClientStatus, messages: frozenset[ControlMessage]
    ) -> ClientStatus:
        for message in messages:
            log.info("client sent %s", message.value, extra={"event": "boinc_control"})
        if ControlMessage.SUSPEND in messages:
            status = replace(status, suspended=True)
        if ControlMessage.RESUME in messages:
            status = replace(status, suspended=False)
        if ControlMessage.QUIT in messages:
            status = replace(status, quit_request=True)
        if ControlMessage.ABORT in messages:
            status = replace(status, abort_request=True)
        if ControlMessage.REREAD_APP_INFO in messages:
            status = replace(status, reread_init_data=True)
        return status

    def _client_dead(self, now: float) -> bool:
        pid = self.init_data.client_pid
        if pid:
            if now - self._last_probe < PID_PROBE_INTERVAL:
                return False
            self._last_probe = now
            alive = self._probe(pid)
            if not alive:
                log.warning("BOINC client (pid %d) no longer exists", pid)
            return not alive
        if now - self._last_heartbeat > HEARTBEAT_GIVEUP:
            log.warning("no heartbeat from the client for %.0f s", now - self._last_heartbeat)
            return True
        return False

    def ack_reread(self) -> AppInitData:
        """Re-read ``init_data.xml`` (the client rewrote it) and clear the reread flag."""
        with contextlib.suppress(OSError, InitDataError):
            self.init_data = _read_init_data(self.slot_dir)
        self._status = replace(self._status, reread_init_data=False)
        return self.init_data

    # -- reporting ------------------------------------------------------------------------

    def report_status(
        self,
        *,
        cpu_time: float,
        checkpoint_cpu_time: float,
        fraction_done: float,
        other_pid: int | None = None,
        bytes_sent: float = 0,
        bytes_received: float = 0,
    ) -> None:
        """Send the wrapper's status message; skipped while suspended and when the channel
        still holds the previous one (the client reads it once a second)."""
        self._last_report = AppStatus(
            current_cpu_time=cpu_time,
            checkpoint_cpu_time=checkpoint_cpu_time,
            fraction_done=fraction_done,
            other_pid=other_pid,
            bytes_sent=bytes_sent,
            bytes_received=bytes_received,
        )
        if self._segment is None or self._status.suspended:
            return
        self._segment.send(Channel.APP_STATUS, format_wrapper_status(self._last_report))

    def send_trickle_up(self, variety: str, text: str) -> None:
        """Queue a trickle-up message; each one reaches the client, in order."""
        trickle = files.Trickle(variety=variety, body=text)
        files.format_trickle_up(trickle)  # refuse a bad variety now, not at send time
        if self._segment is None:
            log.info("standalone: trickle-up %r not sent", variety)
            return
        self._trickles.append(trickle)
        self.tick()

    @property
    def pending_trickles(self) -> int:
        """Trickles not yet taken by the client (queued or written but not picked up)."""
        return len(self._trickles) + (1 if self._trickle_in_flight else 0)

    def upload_file(self, logical_name: str) -> None:
        """Ask the client to upload an output file now (``boinc_ufr_<logical>``)."""
        if self._segment is None:
            log.info("standalone: upload of %r not requested", logical_name)
            return
        files.write_upload_request(self.slot_dir, logical_name)
        self._notice = replace(self._notice, upload_file=True)
        self.tick()

    def upload_status(self, logical_name: str) -> int | None:
        """The client's ``boinc_ufs_<logical>`` status (>= 0 done, < 0 failed), or None."""
        return files.read_upload_status(self.slot_dir, logical_name)

    def receive_trickle_down(self) -> str | None:
        """The next trickle-down message's body (the file is deleted), or None."""
        if self._segment is None:
            return None
        path = files.find_trickle_down(self.slot_dir)
        if path is None:
            return None
        body = path.read_bytes().decode("utf-8", errors="replace")
        path.unlink()
        return body

    def web_graphics_url(self, url: str) -> None:
        """Tell the client the VM's web interface (sent once, when the channel is free)."""
        self._queue_graphics(format_web_graphics_url(url))

    def remote_desktop_addr(self, addr: str) -> None:
        """Tell the client the VM's remote desktop address (sent once)."""
        self._queue_graphics(format_remote_desktop_addr(addr))

    def _queue_graphics(self, text: str) -> None:
        encode_text(text)  # too long for a channel: refuse now, not in a later tick()
        if self._segment is not None:
            self._graphics.append(text)
            self.tick()

    def resolve(self, logical_name: str) -> Path:
        """The file behind a logical name (follows the client's ``<soft_link>`` files)."""
        return files.resolve_filename(self.slot_dir, logical_name)

    def tick(self) -> None:
        """Hand the next queued trickle to the client and send pending notices."""
        seg = self._segment
        if seg is None:
            return
        if self._trickle_in_flight and self._trickle_taken(seg):
            self._trickle_in_flight = False
        if not self._trickle_in_flight and self._trickles:
            files.write_trickle_up(self.slot_dir, self._trickles.popleft())
            self._trickle_in_flight = True
            self._notice = replace(self._notice, trickle_up=True)
        if self._notice and seg.send(Channel.TRICKLE_UP, format_trickle_up_notice(self._notice)):
            self._notice = TrickleUpNotice()
        if self._graphics and seg.send(Channel.GRAPHICS_REPLY, self._graphics[0]):
            self._graphics.popleft()

    def _trickle_taken(self, seg: Segment) -> bool:
        """The client moved trickle_up.xml away and read our notice."""
        return (
            not self._notice.trickle_up
            and not seg.has_message(Channel.TRICKLE_UP)
            and not (self.slot_dir / files.TRICKLE_UP_FILE).exists()
        )

    # -- ending ---------------------------------------------------------------------------

    def write_outcome(self, outcome: Outcome) -> None:
        """Leave the files the client reads after we exit; the caller then exits.

        Finish: the final status (fraction done 1), queued trickles handed over, then
        ``boinc_finish_called``. Temporary exit: ``boinc_temporary_exit``. Plain exit: none.
        """
        if isinstance(outcome, Finish):
            self._send_final_status()
        self._flush_trickles()
        if isinstance(outcome, Finish):
            files.write_finish_file(self.slot_dir, outcome)
        elif isinstance(outcome, TemporaryExit):
            files.write_temporary_exit_file(self.slot_dir, outcome)
        else:
            assert isinstance(outcome, PlainExit)

    def _send_final_status(self) -> None:
        """The final status replaces an unread one at once, without waiting for the client's
        next 1 s read: the client reads the channel once more after the app exits
        (docs/compatibility.md#the-last-status-message)."""
        seg = self._segment
        if seg is None:
            return
        seg.send_overwrite(
            Channel.APP_STATUS,
            format_wrapper_status(replace(self._last_report, fraction_done=1.0)),
        )

    def _flush_trickles(self) -> None:
        if self._segment is None or self._status.no_heartbeat:
            return  # nobody would take them
        deadline = self._clock() + TRICKLE_FLUSH_LIMIT
        self.tick()
        # the client reads the trickle channel once more after we exit, so the last one is
        # safe once written and announced; the ones before it must be taken while we live
        while (self._trickles or self._notice) and self._clock() < deadline:
            self._sleep(0.1)
            self.poll()
            self.tick()
        if self._trickles:
            log.warning("%d trickle-up message(s) not taken by the client", len(self._trickles))

    def close(self) -> None:
        """Unmap the segment and release ``boinc_lockfile``."""
        if self._segment is not None:
            self._segment.close()
            self._segment = None
        if self._lockfile is not None:
            self._lockfile.release()

    def __enter__(self) -> AppClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _receive(seg: Segment, channel: Channel) -> str | None:
    """A message from the client; garbage (not UTF-8) is logged and dropped, not fatal."""
    try:
        return seg.receive(channel)
    except ProtocolError as exc:
        log.warning("unreadable message on %s: %s", channel.name.lower(), exc)
        return None


def _read_init_data(slot_dir: Path) -> AppInitData:
    return parse_init_data((slot_dir / files.INIT_DATA_FILE).read_bytes())
