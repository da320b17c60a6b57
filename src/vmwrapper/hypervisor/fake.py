"""FakeBackend: a scripted in-memory VM for lifecycle tests (like httpx's MockTransport).

The "guest" is a :class:`FakeScript`: steps at guest seconds (time the VM spent running,
carried across snapshots) that write, append or remove shared-dir files, print console lines,
power off or crash. Guest time advances with the injected ``clock`` only while the VM runs, so
a test that drives the supervisor with a fake clock is exact and fast, and a restored snapshot
replays exactly the steps after it — a restarted job continues where its checkpoint was.

Failures are scripted too: ``fail={"start": "transient"}`` makes ``start`` raise, and
``refuse_checkpoints=N`` refuses the first N snapshots (as QEMU does while a 9p share is
mounted). With ``state_file`` the VM (existence, snapshots, guest time, calls) survives the
wrapper process, so the real wrapper can run under the harness with ``--backend fake``: the
script is read from ``<slot>/fake_vm_script.json`` and the state kept in ``<slot>/fake_vm.json``.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vmwrapper.errors import (
    BackendError,
    CheckpointError,
    CheckpointRefused,
    HostNotReady,
    VmStartError,
)
from vmwrapper.hypervisor.base import (
    SCREENSHOT_FILE,
    Diagnosis,
    NetUsage,
    VmConfig,
    VmState,
    VmStatus,
)

SCRIPT_FILE = "fake_vm_script.json"
#: The guest clock at guest second 0 (files the fake guest writes get times from it).
GUEST_EPOCH_NS = 1_800_000_000 * 10**9
#: What screenshot() writes: a PNG signature and a fixed body, enough for the error report.
FAKE_PNG = b"\x89PNG\r\n\x1a\nfake screen of the fake VM"
STATE_FILE = "fake_vm.json"


@dataclass(frozen=True)
class GuestStep:
    at: float  # guest seconds
    action: str  # write | append | remove | echo | log | poweroff | crash
    name: str = ""  # shared-dir file for write/append/remove
    text: str = ""  # content, console line, or crash detail


@dataclass(frozen=True)
class FakeScript:
    steps: tuple[GuestStep, ...] = ()
    boot_seconds: float = 0.0  # STARTING for this long after start (math.inf: never online)
    cpu_fraction: float = 1.0  # CPU seconds per guest second
    fail: Mapping[str, str] = field(default_factory=dict)  # method -> transient|host|job|checkpoint
    refuse_checkpoints: int = 0
    diagnoses: tuple[str, ...] = ()  # Diagnosis values diagnose() reports
    exit_code: int | None = None  # reported with CRASHED
    net_rate: tuple[float, float] = (0.0, 0.0)  # NIC bytes (sent, received) per guest second
    #: methods that block (real time, up to 30 s) until cancel(), as a long conversion does
    hang: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, text: str) -> FakeScript:
        data = json.loads(text)
        steps = tuple(GuestStep(**s) for s in data.pop("steps", ()))
        boot = data.pop("boot_seconds", 0.0)
        diagnoses = tuple(data.pop("diagnoses", ()))
        sent, received = data.pop("net_rate", (0.0, 0.0))
        return cls(
            hang=tuple(data.pop("hang", ())),
            steps=steps,
            boot_seconds=math.inf if boot is None else float(boot),
            diagnoses=diagnoses,
            net_rate=(float(sent), float(received)),
            **data,
        )

    def to_json(self) -> str:
        data = asdict(self)
        data["boot_seconds"] = None if math.isinf(self.boot_seconds) else self.boot_seconds
        data["fail"] = dict(self.fail)
        return json.dumps(data)


_ERRORS: dict[str, Callable[[str], BackendError]] = {
    "transient": lambda m: VmStartError(m),
    "host": lambda m: HostNotReady(m),
    "job": lambda m: BackendError(m, code=-148),
    "checkpoint": lambda m: CheckpointError(m),
    "refused": lambda m: CheckpointRefused(m),
}


class FakeBackend:
    name = "fake"

    def __init__(
        self,
        config: VmConfig,
        script: FakeScript | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        state_file: Path | None = None,
    ) -> None:
        self.config = config
        self.script = script or FakeScript()
        self.clock = clock
        self.state_file = state_file
        self.state = VmState.ABSENT
        self.guest_time = 0.0  # guest seconds run so far (restored with snapshots)
        self.snapshots: dict[str, float] = {}
        self.calls: list[str] = []
        self.cpu_cap = 100
        self.bandwidth = 0.0
        self.network = True
        self.nice: int | None = None
        self.detail = ""
        self._run_guest_start = 0.0  # guest_time when this run's VM process started
        self._started_at = 0.0
        self._last = 0.0
        self._console: list[str] = []
        self._cancel = threading.Event()
        self._refused = 0
        self._cpu = 0.0
        self._run = 0  # start() calls: the pid
        if state_file is not None and state_file.exists():
            self._load(json.loads(state_file.read_text()))

    # -- persistence (cross-process mode) -----------------------------------------------------
    def _load(self, data: dict[str, Any]) -> None:
        exists = data.get("exists", False)
        self.state = VmState.POWERED_OFF if exists else VmState.ABSENT  # a new process: VM stopped
        self.guest_time = data.get("guest_time", 0.0)
        self.snapshots = dict(data.get("snapshots", {}))
        self.calls = list(data.get("calls", []))
        self._refused = data.get("refused", 0)
        self._run = data.get("run", 0)

    def _save(self) -> None:
        if self.state_file is None:
            return
        data = {
            "exists": self.state is not VmState.ABSENT,
            "state": self.state.value,
            "guest_time": self.guest_time,
            "snapshots": self.snapshots,
            "calls": self.calls,
            "refused": self._refused,
            "run": self._run,
            "cpu_cap": self.cpu_cap,
            "bandwidth": self.bandwidth,
            "network": self.network,
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.state_file)

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name.split(":")[0] in self.script.hang:
            cancelled = self._cancel.wait(30.0)
            self._cancel.clear()
            if cancelled:
                raise BackendError(f"fake {name} cancelled")
        kind = self.script.fail.get(name.split(":")[0])
        if kind:
            self._save()
            raise _ERRORS[kind](f"fake {name} failed ({kind})")

    # -- the guest ----------------------------------------------------------------------------
    def _shared(self) -> Path:
        for share in self.config.shares:
            if share.name == "shared":
                return share.host_path
        return self.config.slot_dir

    def _advance(self) -> None:
        now = self.clock()
        if self.state is VmState.STARTING and now - self._started_at >= self.script.boot_seconds:
            self.state = VmState.RUNNING
            self._last = self._started_at + self.script.boot_seconds
        if self.state is not VmState.RUNNING:
            self._last = now
            return
        before, self.guest_time = self.guest_time, self.guest_time + max(now - self._last, 0.0)
        self._cpu += (self.guest_time - before) * self.script.cpu_fraction
        self._last = now
        fired = False
        for s in self.script.steps:
            if before < s.at <= self.guest_time or (s.at == 0 and before == 0 < self.guest_time):
                self._do(s)
                fired = True
                if self.state is not VmState.RUNNING:
                    break
        if fired:
            self._save()

    def _do(self, s: GuestStep) -> None:
        path = self._shared() / s.name if s.name else None
        if s.action == "write" and path is not None:
            self._push(path, s.text, s.at)
        elif s.action == "echo" and path is not None:
            # the sync agent pushes the file's last version again, with its time
            last = max(
                (
                    w
                    for w in self.script.steps
                    if w.action == "write" and w.name == s.name and w.at <= s.at
                ),
                key=lambda w: w.at,
            )
            self._push(path, last.text, last.at)
        elif s.action == "append" and path is not None:
            with path.open("a") as fh:
                fh.write(s.text)
        elif s.action == "remove" and path is not None:
            path.unlink(missing_ok=True)
        elif s.action == "log":
            self._console.append(s.text)
        elif s.action == "poweroff":
            self.state = VmState.POWERED_OFF
        elif s.action == "crash":
            self.state, self.detail = VmState.CRASHED, s.text

    @staticmethod
    def _push(path: Path, text: str, at: float) -> None:
        """The file as the guest wrote it at guest second ``at`` (its time included, as the
        QEMU sync agent and a live VirtualBox shared folder both keep it)."""
        tmp = path.with_name(f".{path.name}.fake")
        tmp.write_text(text)
        stamp = GUEST_EPOCH_NS + int(at * 1e9)
        os.utime(tmp, ns=(stamp, stamp))
        os.replace(tmp, path)

    # -- Backend ------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.state is not VmState.ABSENT

    def cancel(self) -> None:
        self.calls.append("cancel")
        self._cancel.set()

    def create(self) -> None:
        self._call("create")
        if self.state is VmState.ABSENT:
            self.state = VmState.POWERED_OFF
        self._save()

    def start(self, restore: str | None = None) -> int:
        self._call(f"start:{restore or ''}")
        if restore:
            if restore not in self.snapshots:
                raise CheckpointError(f"no snapshot {restore}")
            self.guest_time = self.snapshots[restore]
        elif not self.snapshots:
            self.guest_time = 0.0
        else:
            self.guest_time = 0.0  # a fresh boot: the guest starts over
        self.state, self.detail = VmState.STARTING, ""
        self._run_guest_start = self.guest_time
        self.nice = None
        self._started_at = self._last = self.clock()
        self._cpu = 0.0
        self._run += 1
        self._save()
        return 100000 + self._run

    def status(self) -> VmStatus:
        self._advance()
        if self.script.fail.get("status"):
            raise BackendError("fake status query failed")
        code = self.script.exit_code if self.state is VmState.CRASHED else None
        return VmStatus(self.state, self.detail, code)

    def pause(self) -> None:
        self._advance()
        self._call("pause")
        if self.state is VmState.RUNNING:
            self.state = VmState.PAUSED
        self._save()

    def resume(self) -> None:
        self._call("resume")
        if self.state is VmState.PAUSED:
            self.state = VmState.RUNNING
            self._last = self.clock()
        self._save()

    def checkpoint(self, name: str) -> None:
        self._advance()
        if self._refused < self.script.refuse_checkpoints:
            self._refused += 1
            self.calls.append(f"checkpoint-refused:{name}")
            self._save()
            raise CheckpointRefused("fake: snapshot refused, share mounted")
        self._call(f"checkpoint:{name}")
        self.snapshots[name] = self.guest_time
        self._save()

    def checkpoint_disks(self, name: str) -> None:
        """The disks alone: a restore boots afresh (guest time 0), the shared files stay."""
        self._advance()
        self._call(f"checkpoint_disks:{name}")
        self.snapshots[name] = 0.0
        self._save()

    def checkpoints(self) -> tuple[str, ...]:
        return tuple(self.snapshots)

    def delete_checkpoint(self, name: str) -> None:
        self._call(f"delete_checkpoint:{name}")
        self.snapshots.pop(name, None)
        self._save()

    def save_state(self) -> None:
        self._call("save_state")
        self.state = VmState.SAVED
        self._save()

    def poweroff(self, timeout: float = 30.0) -> None:
        self._advance()
        self.calls.append("poweroff")
        if self.state is not VmState.ABSENT:
            self.state = VmState.POWERED_OFF
        self._save()

    def cleanup(self) -> None:
        self.calls.append("cleanup")
        self.state, self.snapshots = VmState.ABSENT, {}
        self._save()

    def pid(self) -> int | None:
        return 100000 + self._run if self.state.online else None

    def cpu_time(self) -> float:
        self._advance()
        return self._cpu

    def set_cpu_cap(self, percent: int) -> None:
        self._call(f"set_cpu_cap:{percent}")
        self.cpu_cap = percent
        self._save()

    def set_network(self, connected: bool) -> None:
        self._call(f"set_network:{int(connected)}")
        self.network = connected
        self._save()

    def set_bandwidth(self, bytes_per_sec: float) -> None:
        self._call(f"set_bandwidth:{bytes_per_sec:g}")
        self.bandwidth = bytes_per_sec
        self._save()

    def set_priority(self, nice: int) -> None:
        if not self.state.online or nice == self.nice:
            return
        self.calls.append(f"set_priority:{nice}")
        self.nice = nice
        self._save()

    def net_usage(self) -> NetUsage | None:
        self._advance()
        if not self.config.network.enabled or not self.state.online:
            return None
        seconds = max(self.guest_time - self._run_guest_start, 0.0)
        sent, received = self.script.net_rate
        return NetUsage(int(sent * seconds), int(received * seconds))

    def screenshot(self) -> Path | None:
        if not self.state.online:
            return None
        self.calls.append("screenshot")
        path = self.config.slot_dir / SCREENSHOT_FILE
        path.write_bytes(FAKE_PNG)
        return path

    def hypervisor_logs(self, limit: int = 8192) -> dict[str, str]:
        text = "".join(f"fake call: {call}\n" for call in self.calls)
        return {"Fake Hypervisor Log": text[-limit:]}

    def guest_log(self) -> list[str]:
        self._advance()
        lines, self._console = self._console, []
        return lines

    def diagnose(self) -> tuple[Diagnosis, ...]:
        return tuple(Diagnosis(d) for d in self.script.diagnoses)


def from_slot(config: VmConfig, **opts: Any) -> FakeBackend:
    """The cross-process fake: script from ``<slot>/fake_vm_script.json``, state beside it."""
    path = config.slot_dir / SCRIPT_FILE
    script = FakeScript.from_json(path.read_text()) if path.exists() else FakeScript()
    return FakeBackend(config, script, state_file=config.slot_dir / STATE_FILE, **opts)


class CoreOnlyBackend:
    """The lifecycle core and nothing else (after httpx's minimal transport): a scripted
    :class:`FakeBackend` behind only the :class:`~vmwrapper.hypervisor.base.Backend` methods,
    so tests prove the supervisor runs a job without checkpoints, reports, limits or
    accounting."""

    name = "fake-core"

    def __init__(self, vm: FakeBackend) -> None:
        self._vm = vm

    def exists(self) -> bool:
        return self._vm.exists()

    def create(self) -> None:
        self._vm.create()

    def start(self, restore: str | None = None) -> int:
        return self._vm.start(restore)

    def status(self) -> VmStatus:
        return self._vm.status()

    def pause(self) -> None:
        self._vm.pause()

    def resume(self) -> None:
        self._vm.resume()

    def poweroff(self, timeout: float = 30.0) -> None:
        self._vm.poweroff(timeout)

    def cleanup(self) -> None:
        self._vm.cleanup()

    def pid(self) -> int | None:
        return self._vm.pid()
