"""A tiny BOINC app on our Python app side (``AppClient``), run by the real client in system tests.

Command line (the workunit's): ``--steps N --hold-at H``. One step a second while not
suspended; fraction done = step / N; a checkpoint (``probe_checkpoint.txt``, and a new
checkpoint CPU time for the client) every 2 steps; a trickle-up at step 3; at step H it waits
for the file ``probe_release`` in the project directory, so a test controls when it ends.
Then it writes ``shared/out`` ("probe output: <input> steps=<N>") and finishes with status 0.

Everything it sees from the client goes, one line each, to ``probe_events_<result>.log`` in the
project directory (the slot is emptied at the end): ``start step=S standalone=B``,
``heartbeat max_wss=N`` (the first heartbeat), ``suspended``, ``resumed``, ``quit``,
``checkpoint S``, ``trickle``, ``finish``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vmwrapper.boinc.app import AppClient, ClientStatus
from vmwrapper.boinc.files import write_atomic
from vmwrapper.outcome import Finish

CHECKPOINT = Path("probe_checkpoint.txt")
TICK = 0.2


class Probe:
    def __init__(self, client: AppClient, steps: int, hold_at: int) -> None:
        self.client = client
        self.steps = steps
        self.hold_at = hold_at
        project = Path(client.init_data.project_dir or "..")
        self.events = project / f"probe_events_{client.init_data.result_name or 'standalone'}.log"
        self.release = project / "probe_release"
        self.step = int(CHECKPOINT.read_text()) if CHECKPOINT.exists() else 0
        self.checkpoint_step = self.step
        self.suspended = False
        self.heartbeat_seen = False

    def record(self, line: str) -> None:
        with self.events.open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    def report(self) -> None:
        self.client.report_status(
            cpu_time=float(self.step),
            checkpoint_cpu_time=float(self.checkpoint_step),
            fraction_done=self.step / self.steps,
        )

    def watch(self, status: ClientStatus) -> None:
        if status.max_wss and not self.heartbeat_seen:
            self.heartbeat_seen = True
            self.record(f"heartbeat max_wss={status.max_wss:.0f}")
        if status.suspended != self.suspended:
            self.suspended = status.suspended
            self.record("suspended" if status.suspended else "resumed")

    def advance(self) -> None:
        self.step += 1
        if self.step % 2 == 0:
            write_atomic(CHECKPOINT, str(self.step).encode())
            self.checkpoint_step = self.step
            self.record(f"checkpoint {self.step}")
        if self.step == 3:
            self.client.send_trickle_up("probe", f"<step>{self.step}</step>")
            self.record("trickle")

    def run(self) -> int:
        self.record(f"start step={self.step} standalone={self.client.standalone}")
        next_step = time.monotonic() + 1.0
        while self.step < self.steps:
            status = self.client.poll()
            self.watch(status)
            if status.quit_request or status.abort_request or status.no_heartbeat:
                self.record("quit")
                return 0  # the client restarts us later; the checkpoint says where we were
            held = self.step >= self.hold_at and not self.release.exists()
            if not status.suspended and not held and time.monotonic() >= next_step:
                self.advance()
                next_step = time.monotonic() + 1.0
            self.report()
            self.client.tick()
            time.sleep(TICK)
        source = Path("shared/in").read_text(encoding="utf-8").strip()
        Path("shared/out").write_text(f"probe output: {source} steps={self.steps}\n")
        self.client.write_outcome(Finish(status=0))
        self.record("finish")
        return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--hold-at", type=int, default=4)
    args, _ = parser.parse_known_args(argv)
    with AppClient.attach(Path.cwd()) as client:
        return Probe(client, args.steps, args.hold_at).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
