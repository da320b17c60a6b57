"""A Windows BOINC client stand-in for one task, run by Windows Python under Wine (or on Windows):
it does what the Windows client does for an app (docs/compatibility.md#windows-hosts)
and writes down what it saw, for tests/windows/test_protocol.py to check on the Linux side.

    python.exe winclient.py SCENARIO.json

SCENARIO: ``slot`` (the slot directory, with init_data.xml to complete), ``command`` (the main
program's path, the workunit's command line, the client's arguments), ``actions`` (a list of
``{"when": ..., "do": ...}``), ``deadline`` (s), ``report`` (where to write the JSON report).
``when`` is ``{"after": seconds since start}`` or ``{"fraction": f}`` (a status reported at
least f done) or ``{"suspended_for": seconds}`` or ``{"checkpointed": true}`` (a status with
a checkpoint's CPU time) or ``{"event": name}`` (the wrapper wrote that event into the slot's
events.jsonl, e.g. ``vm_started``), or several of them, all to be met; ``do`` is suspend,
resume, quit, abort, or ``kill`` (TerminateProcess with the client's abort code 194).

The client side, as BOINC's Windows client does it: take the first free file mapping
``shm_boinc_N``, zero it, write ``<comm_obj_name>boinc_N`` and our pid into init_data.xml,
``CreateProcess`` with the command line built as the client builds it, in the slot directory,
with a new process group, no window, below-normal priority; a heartbeat every second; control
messages into the process-control channel; statuses and trickle notices read every poll;
``TerminateProcess`` to kill. Standard handles are pipes (Windows Python under Wine dies at
start with a file or a closed handle; the real client gives none, which Windows handles).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

# The embeddable Python ignores PYTHONPATH (its ._pth file sets sys.path): import the package
# from this checkout's src/.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from vmwrapper.boinc.init_data import format_init_data, parse_init_data
from vmwrapper.boinc.messages import (
    Channel,
    ControlMessage,
    Heartbeat,
    format_heartbeat,
    parse_app_status,
    parse_trickle_up_notice,
)
from vmwrapper.boinc.shmem import Segment
from vmwrapper.hostos import winnames, winproc
from vmwrapper.supervisor.events import read_events

POLL = 0.25  # s: faster than the client's 1 s, so tests wait less; heartbeats stay at 1 s
CONTROL = {
    "suspend": ControlMessage.SUSPEND,
    "resume": ControlMessage.RESUME,
    "quit": ControlMessage.QUIT,
    "abort": ControlMessage.ABORT,
}


def take_segment() -> tuple[int, Segment]:
    for number in range(winnames.MAX_SEGMENTS):
        segment = Segment.create_named(number)
        if segment is not None:
            return number, segment
    raise SystemExit("no free shared-memory name (ERR_SHMGET)")


def _drain(stream: Any, sink: list[bytes]) -> None:
    for chunk in iter(lambda: stream.read(4096), b""):
        sink.append(chunk)


def _wrapper_after_exit(slot: Path, wait: float = 10.0) -> tuple[int | None, bool]:
    """The pid the wrapper's stderr lines carry (a one-file exe runs as two processes: that
    is the Python child, not the pid we started), and whether it still runs ``wait`` s after
    the started process ended (it must not: the client's kill has to reach it)."""
    try:
        first = (slot / "stderr.txt").read_text(errors="replace").splitlines()[0]
        pid = int(first.split("(", 1)[1].split(")", 1)[0])
    except (OSError, IndexError, ValueError):
        return None, False
    deadline = time.monotonic() + wait
    while winproc.process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return pid, winproc.process_alive(pid)


def _logged(slot: Path, event: str) -> bool:
    try:
        return any(record.get("event") == event for record in read_events(slot))
    except (OSError, ValueError):
        return False  # being written: the next poll reads it whole


def main(scenario_path: str) -> int:
    sc = json.loads(Path(scenario_path).read_text())
    slot = Path(sc["slot"])
    number, segment = take_segment()
    init_path = slot / "init_data.xml"
    aid = parse_init_data(init_path.read_bytes())
    aid = dataclasses.replace(
        aid, comm_obj_name=winnames.comm_obj_name(number), client_pid=os.getpid()
    )
    init_path.write_text(format_init_data(aid))
    cmd = sc["command"]
    cmdline = winnames.client_command_line(cmd["exec_path"], cmd.get("wu", ""), cmd.get("args", ""))
    flags = (
        winnames.CREATE_NEW_PROCESS_GROUP
        | winnames.CREATE_NO_WINDOW
        | winnames.priority_class(high_priority=True)  # a wrapper runs "high" (below normal)
    )
    proc = subprocess.Popen(
        cmdline,
        cwd=slot,
        creationflags=flags,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out: list[bytes] = []
    for stream in (proc.stdout, proc.stderr):
        threading.Thread(target=_drain, args=(stream, out), daemon=True).start()
    report: dict[str, Any] = {
        "comm_obj_name": aid.comm_obj_name,
        "mapping": winnames.client_mapping_name(number),
        "pid": proc.pid,
        "statuses": [],
        "controls_sent": [],
        "trickle_notices": [],
        "trickle_files": [],
        "exit_code": None,
        "killed": False,
        "timed_out": False,
    }
    actions = list(sc.get("actions", []))
    start = time.monotonic()
    last_beat = 0.0
    suspended_at: float | None = None
    fraction = 0.0
    checkpointed = False
    while True:
        now = time.monotonic()
        if proc.poll() is not None:
            break
        if now - start > sc.get("deadline", 120):
            report["timed_out"] = True
            winproc.terminate(proc.pid, winnames.KILL_EXIT_CODE_ABORT)
            proc.wait()
            break
        if now - last_beat >= 1.0 and not segment.has_message(Channel.HEARTBEAT):
            segment.send(Channel.HEARTBEAT, format_heartbeat(Heartbeat(wss=1e6, max_wss=2e9)))
            last_beat = now
        text = segment.receive(Channel.APP_STATUS)
        if text is not None:
            status = parse_app_status(text)
            fraction = status.fraction_done or fraction
            checkpointed = checkpointed or (status.checkpoint_cpu_time or 0) > 0
            report["statuses"].append(
                {
                    "t": round(now - start, 2),
                    "text": text,
                    "fraction": status.fraction_done,
                    "cpu": status.current_cpu_time,
                    "checkpoint_cpu": status.checkpoint_cpu_time,
                }
            )
        text = segment.receive(Channel.TRICKLE_UP)
        if text is not None:
            notice = parse_trickle_up_notice(text)
            report["trickle_notices"].append(text)
            trickle = slot / "trickle_up.xml"
            if notice.trickle_up and trickle.exists():
                # the client moves the file away (to the project's trickle_up_*.xml)
                report["trickle_files"].append(trickle.read_text())
                trickle.unlink()
        if actions:
            when = actions[0]["when"]
            met = {
                "after": now - start >= when.get("after", 0),
                "fraction": fraction >= when.get("fraction", 0),
                "checkpointed": checkpointed,
                "suspended_for": suspended_at is not None
                and now - suspended_at >= when.get("suspended_for", 0),
            }
            due = all(met[key] if key != "event" else _logged(slot, when[key]) for key in when)
            if due:
                what = actions.pop(0)["do"]
                report["controls_sent"].append({"t": round(now - start, 2), "do": what})
                if what == "kill":
                    report["killed"] = True
                    winproc.terminate(proc.pid, winnames.KILL_EXIT_CODE_ABORT)
                else:
                    # the queue rule: send only into an empty channel; retry next poll
                    if not segment.send(Channel.PROCESS_CONTROL_REQUEST, CONTROL[what].value):
                        actions.insert(0, {"when": {"after": 0}, "do": what})
                        report["controls_sent"].pop()
                    suspended_at = now if what == "suspend" else None
        time.sleep(POLL)
    report["exit_code"] = proc.wait()
    report["alive_after_exit"] = winproc.process_alive(proc.pid)
    report["wrapper_pid"], report["wrapper_alive_after"] = _wrapper_after_exit(slot)
    report["client_output"] = b"".join(out).decode(errors="replace")[-4000:]
    segment.close()
    Path(sc["report"]).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
