"""A tiny BOINC app built on our app side (AppClient), run under the harness by the tests.

It works in steps (each burns CPU for --step-time s), reports status like a wrapper, keeps a
checkpoint file (step, CPU time) so a restart resumes, and obeys the client: suspended it only
polls, quit -> exit 0 without finish file, abort -> exit 194, dead client -> temporary exit.
Options pick what else it does, so one program covers every lifecycle path.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from vmwrapper.boinc.app import AppClient
from vmwrapper.outcome import EXIT_ABORTED_BY_CLIENT, Finish, TemporaryExit

CHECKPOINT = Path("pyapp_checkpoint.txt")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--step-time", type=float, default=0.05)
    p.add_argument("--checkpoint-every", type=int, default=2)
    p.add_argument("--trickles", type=int, default=0, help="trickle-ups sent at once at the end")
    p.add_argument("--upload", default="", help="logical name of an output to upload early")
    p.add_argument("--output", default="out", help="logical name of the output file")
    p.add_argument("--finish-status", type=int, default=0)
    p.add_argument("--finish-message", default="")
    p.add_argument("--temporary-exit-at", type=int, default=-1, help="step; once per job")
    p.add_argument("--temporary-exit-delay", type=int, default=5)
    p.add_argument("--exit-at", type=int, default=-1, help="step: exit 0 (premature), once")
    p.add_argument("--crash-code", type=int, default=0, help="exit with this code at the end")
    p.add_argument("--ignore-quit", action="store_true")
    p.add_argument("--other-pid", action="store_true", help="report a child as other_pid")
    p.add_argument("--write-bytes", type=int, default=0, help="a file this big in the slot")
    return p.parse_known_args(argv)[0]  # the client's --run_test_app adds its own


def cpu_now() -> float:
    t = os.times()
    return t.user + t.system


def burn(seconds: float) -> None:
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        x += 1


def main() -> int:
    args = parse_args(sys.argv[1:])
    client = AppClient.attach(Path.cwd())
    base_cpu = client.init_data.wu_cpu_time
    step, checkpoint_cpu = 0, base_cpu
    if CHECKPOINT.exists():
        step = int(CHECKPOINT.read_text().split()[0])
    print(f"pyapp: start at step {step}, standalone={client.standalone}", file=sys.stderr)
    other_pid = None
    if args.other_pid:  # stands in for the VM process a wrapper reports
        child = subprocess.Popen(["sleep", "600"], start_new_session=True)
        other_pid = child.pid
        print(f"pyapp: other_pid {other_pid}", file=sys.stderr)
    if args.write_bytes:
        Path("pyapp_big").write_bytes(bytes(args.write_bytes))
    suspensions, was_suspended = 0, False
    while step < args.steps:
        status = client.poll()
        if status.abort_request:
            client.close()
            return EXIT_ABORTED_BY_CLIENT
        if status.quit_request and not args.ignore_quit:
            print("pyapp: quit", file=sys.stderr)
            client.close()
            return 0
        if status.no_heartbeat:
            client.write_outcome(TemporaryExit(60, "client gone"))
            client.close()
            return 0
        if status.suspended:
            if not was_suspended:
                suspensions += 1
            was_suspended = True
            time.sleep(0.05)
            continue
        was_suspended = False
        if step == args.temporary_exit_at and not Path("pyapp_tempexit_done").exists():
            Path("pyapp_tempexit_done").write_text("1")
            client.write_outcome(TemporaryExit(args.temporary_exit_delay, "test postpones"))
            client.close()
            return 0
        if step == args.exit_at and not Path("pyapp_exit_done").exists():
            Path("pyapp_exit_done").write_text("1")
            client.close()
            return 0
        body = client.receive_trickle_down()
        if body is not None:
            print(f"pyapp: trickle-down {body!r}", file=sys.stderr)
        burn(args.step_time)
        step += 1
        cpu = base_cpu + cpu_now()
        if step % args.checkpoint_every == 0:
            # atomic: the client may SIGKILL us at any moment (quit timeout, hang)
            Path("pyapp_checkpoint.tmp").write_text(f"{step}\n")
            os.replace("pyapp_checkpoint.tmp", CHECKPOINT)
            checkpoint_cpu = cpu
        client.report_status(
            cpu_time=cpu,
            checkpoint_cpu_time=checkpoint_cpu,
            fraction_done=step / args.steps,
            other_pid=other_pid,
        )
        client.tick()
    print(f"pyapp: suspended {suspensions} times", file=sys.stderr)
    out = client.resolve(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"done {args.steps} steps\n")
    if args.upload:
        client.upload_file(args.upload)
        deadline = time.monotonic() + 20
        while client.upload_status(args.upload) is None and time.monotonic() < deadline:
            client.poll()
            client.tick()
            time.sleep(0.05)
        print(f"pyapp: upload status {client.upload_status(args.upload)}", file=sys.stderr)
    for n in range(args.trickles):
        client.send_trickle_up("pyapp", f"<n>{n}</n>\n<msg>trickle & body {n}</msg>\n")
    if args.crash_code:
        client.write_outcome(Finish(args.crash_code))
        client.close()
        return int(args.crash_code)
    client.write_outcome(Finish(args.finish_status, args.finish_message))
    client.close()
    return int(args.finish_status)


if __name__ == "__main__":
    raise SystemExit(main())
