"""Run the real supervisor in-process against FakeBackend, a real AppClient and a real segment.

The client side is the protocol's own: :class:`ClientSide` creates ``boinc_mmap_file`` as the
BOINC client does, sends control messages, reads status messages and takes trickle-up files.
Time is a :class:`FakeClock`: the loop's ``sleep`` advances it and runs the client's scheduled
actions, so hours of job time take milliseconds and every test is exact.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from helpers.common import FakeClock, make_slot, vm_config
from vmwrapper.boinc import files
from vmwrapper.boinc.app import AppClient
from vmwrapper.boinc.init_data import AppInitData, GlobalPrefs, format_init_data
from vmwrapper.boinc.messages import Channel
from vmwrapper.boinc.shmem import Segment
from vmwrapper.hypervisor.base import Backend
from vmwrapper.hypervisor.fake import CoreOnlyBackend, FakeBackend, FakeScript
from vmwrapper.outcome import Outcome
from vmwrapper.spec.model import JobSpec
from vmwrapper.supervisor import events
from vmwrapper.supervisor.loop import Settings, Supervisor
from vmwrapper.supervisor.runtime import Context
from vmwrapper.supervisor.timers import Timers


@dataclass
class ClientSide:
    """The BOINC client's half of the slot: segment, control messages, status, trickles."""

    slot: Path
    clock: FakeClock
    segment: Segment
    #: (seconds after start, control message or a callable run on the client side)
    schedule: list[tuple[float, str | Callable[[ClientSide], None]]] = field(default_factory=list)
    heartbeat: str = ""  # sent every poll when set (e.g. "<heartbeat/><network_suspended/>")
    statuses: list[str] = field(default_factory=list)
    trickles: list[files.Trickle] = field(default_factory=list)
    start: float = 0.0

    def send(self, message: str) -> None:
        self.segment.send(Channel.PROCESS_CONTROL_REQUEST, message)

    def poll(self) -> None:
        """What the client does every second."""
        due = [item for item in self.schedule if self.clock.now - self.start >= item[0]]
        for item in due:
            what = item[1]
            if not isinstance(what, str):
                what(self)
                self.schedule.remove(item)
            elif self.segment.send(Channel.PROCESS_CONTROL_REQUEST, what):
                self.schedule.remove(item)
                break  # one message per poll, as the client's queue does
        if self.heartbeat:
            self.segment.send(Channel.HEARTBEAT, self.heartbeat)
        status = self.segment.receive(Channel.APP_STATUS)
        if status is not None:
            self.statuses.append(status)
        if self.segment.receive(Channel.TRICKLE_UP) is not None:
            path = self.slot / files.TRICKLE_UP_FILE
            if path.exists():
                self.trickles.append(files.parse_trickle_up(path.read_text()))
                path.unlink()


@dataclass
class Run:
    outcome: Outcome
    backend: FakeBackend
    client: ClientSide
    slot: Path

    @property
    def events(self) -> list[dict[str, Any]]:
        return events.read_events(self.slot)

    def codes(self) -> list[str]:
        return [e["event"] for e in self.events]

    def shared(self, name: str) -> Path:
        return self.slot / "shared" / name


def write_init_data(
    slot: Path, *, prefs: GlobalPrefs | None = None, checkpoint_period: float = 60.0, **more: Any
) -> None:
    project = slot.parent.parent / "projects" / "example.org"
    aid = AppInitData(
        project_dir=str(project),
        boinc_dir=str(slot.parent.parent),
        result_name="job_1_0",
        slot=0,
        shm_key=-1,
        client_pid=more.pop("client_pid", os.getpid()),
        checkpoint_period=checkpoint_period,
        global_prefs=prefs or GlobalPrefs(),
        **more,
    )
    (slot / "init_data.xml").write_text(format_init_data(aid))


def run_job(
    tmp: Path,
    job: JobSpec,
    script: FakeScript | None = None,
    *,
    control: list[tuple[float, str | Callable[[ClientSide], None]]] | None = None,
    settings: dict[str, Any] | None = None,
    clock: FakeClock | None = None,
    backend: FakeBackend | None = None,
    max_seconds: float = 100_000.0,
    prefs: GlobalPrefs | None = None,
    before_tick: Callable[[FakeClock, FakeBackend], None] | None = None,
    heartbeat: str = "",
    init_data: dict[str, Any] | None = None,
    core_only: bool = False,
) -> Run:
    """One wrapper episode in ``tmp``'s slot; returns its outcome (and leaves the slot)."""
    clock = clock or FakeClock()
    slot, _ = make_slot(tmp, with_blank_disk=False)
    write_init_data(slot, prefs=prefs, **(init_data or {}))
    if job.enable_shared_directory:
        (slot / "shared").mkdir(exist_ok=True)
    state_file = slot / "fake_vm.json"
    fake = backend or FakeBackend(
        vm_config(slot, job=job), script, clock=clock, state_file=state_file
    )
    segment = Segment.create(slot)
    side = ClientSide(slot, clock, segment, list(control or []), heartbeat, start=clock.now)
    clock.on_sleep = [side.poll]
    if before_tick is not None:
        clock.on_sleep.append(lambda: before_tick(clock, fake))
    limit = clock.now + max_seconds

    def guard() -> None:
        if clock.now > limit:
            raise AssertionError("the supervisor did not finish in time")

    clock.on_sleep.append(guard)
    uninstall = events.install(slot, stream=open(os.devnull, "w"))  # noqa: SIM115
    client = AppClient.attach(slot, clock=clock, sleep=clock.sleep)
    try:
        # trigger_poll 0: one sleep a tick, so the client side polls once a second as the
        # client does (tests of the between-tick watch turn it on); `settings` names Settings
        # fields and Timers fields alike
        given = dict(settings or {})
        timer_names = {f.name for f in fields(Timers)}
        timers = {k: given.pop(k) for k in list(given) if k in timer_names}
        base = Settings(
            job=job,
            slot_dir=slot,
            seed=1,
            argv=("vmwrapper", "--nthreads", "1"),
            timers=Timers(**{"trigger_poll": 0.0, **timers}),
        )
        # core_only: the supervisor sees the lifecycle core alone; the test still reads the fake
        served: Backend = CoreOnlyBackend(fake) if core_only else fake
        ctx = Context(served, client, replace(base, **given), clock=clock, sleep=clock.sleep)
        sup = Supervisor(ctx)
        outcome = sup.run()
        client.write_outcome(outcome)
        side.poll()
    finally:
        client.close()
        segment.close()
        uninstall()
    return Run(outcome, fake, side, slot)


# -- the real wrapper process under the real harness ------------------------------------------

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "examples" / "common" / "vmwrapper-launcher"

VM_OUTPUT_TEMPLATE = """<output_template>
<file_info>
    <name><OUTFILE_0/></name>
    <generated_locally/>
    <upload_when_present/>
    <max_nbytes>100000</max_nbytes>
    <url><UPLOAD_URL/></url>
</file_info>
<result>
    <file_ref>
        <file_name><OUTFILE_0/></file_name>
        <open_name>shared/result</open_name>
        <copy_file/>
    </file_ref>
</result>
</output_template>
"""


def make_vm_app_dir(
    root: Path,
    job_xml: str,
    script: FakeScript | None = None,
    *,
    cmdline: str = "--backend fake",
    with_output: bool = True,
) -> Path:
    """An APP_DIR (docs/compatibility.md#app-version-directory) whose main program is the vmwrapper
    launcher, with the fake guest's script staged into the slot (``fake_vm_script.json``)."""
    from vmwrapper.hypervisor.fake import SCRIPT_FILE

    app = root / "vmapp"
    (app / "templates").mkdir(parents=True)
    launcher = app / "vmwrapper_1.sh"
    launcher.write_bytes(LAUNCHER.read_bytes())
    launcher.chmod(0o755)
    (app / "vbox_job_1.xml").write_text(job_xml)
    (app / "fake_vm_script_1.json").write_text((script or FakeScript()).to_json())
    (app / "vm_image_1.vdi").write_bytes(b"not a real image: the fake back end never opens it")
    (app / "version.xml").write_text(
        "<version>\n"
        "  <file><physical_name>vmwrapper_1.sh</physical_name><main_program/></file>\n"
        "  <file><physical_name>vbox_job_1.xml</physical_name>"
        "<logical_name>vbox_job.xml</logical_name></file>\n"
        "  <file><physical_name>vm_image_1.vdi</physical_name>"
        "<logical_name>vm_image.vdi</logical_name><copy_file/></file>\n"
        f"  <file><physical_name>fake_vm_script_1.json</physical_name>"
        f"<logical_name>{SCRIPT_FILE}</logical_name><copy_file/></file>\n"
        "  <is_wrapper/>\n"
        "  <api_version>7.20.5</api_version>\n"
        f"  <cmdline>{cmdline}</cmdline>\n"
        "</version>\n"
    )
    if with_output:
        (app / "templates" / "output_template.xml").write_text(VM_OUTPUT_TEMPLATE)
    return app
