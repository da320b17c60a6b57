"""The whole wrapper with ``--backend virtualbox``, run by the harness as the BOINC client would,
against the VBoxManage simulator.

The simulated guest (``run_shared_app``) runs the job's ``shared/boinc_app`` with the shared
folder as its cwd, so the wrapper's whole VirtualBox path is exercised: probing, creation,
start, state polling, ``Guest Log:`` forwarding, trigger files, checkpoints (snapshots),
cleanup. A real VirtualBox run of the same job needs a bootable image (see
docs/virtualbox-backend.md); these tests run only against the simulator.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from helpers.fault_fixtures import package_app
from helpers.vbox_fixtures import VBoxHost
from vmwrapper.harness.job import Action, JobOutcome, JobRequest, ScheduledAction, run_job
from vmwrapper.harness.slot import host_info
from vmwrapper.outcome import ERR_EXEC, VM_EXTENSIONS_TOKEN

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]

JOB = """<vbox_job>
  <os_name>Linux26_64</os_name>
  <memory_size_mb>512</memory_size_mb>
  <enable_shared_directory/>
  <enable_network/>
  <completion_trigger_file>done</completion_trigger_file>
  <trickle_trigger_file>trickle_a</trickle_trigger_file>
  <fraction_done_filename>progress</fraction_done_filename>
  <minimum_checkpoint_interval>2</minimum_checkpoint_interval>
</vbox_job>
"""

APP = """#!/bin/sh
i=0
while [ $i -lt 6 ]; do
  i=$((i+1))
  echo "step $i" >> result
  echo "$i" | awk '{ print $1 / 6 }' > progress
  echo "guest says $i"
  sleep 1
done
echo "<steps>$i</steps>" > trickle_a
sleep 2
printf '0\\n1\\nCounted to %s.\\n' "$i" > done
sleep 60
"""


def package(tmp: Path, job: str = JOB, app: str = APP) -> Path:
    """The app version a project would make (`vmwrapper package`) around a blank disk image:
    the simulated guest runs ``shared/boinc_app`` without booting it."""
    tmp.mkdir(parents=True, exist_ok=True)
    image = tmp / "vm_image.vdi"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vdi", str(image), "32M"], check=True)
    return package_app(tmp, image, app, job, name="counting", backend="virtualbox")


def test_wrapper_runs_a_job_on_the_virtualbox_back_end(vbox_sim: VBoxHost, tmp_path: Path) -> None:
    vbox_sim.configure(guest=[{"run_shared_app": True}])
    # settings only VirtualBox reads reach it (VirtualBoxOptions, not the neutral VmConfig)
    job = JOB.replace(
        "<enable_network/>",
        "<enable_network/>\n  <vram_size_mb>32</vram_size_mb>\n"
        "  <vm_graphics_controller_type>VMSVGA</vm_graphics_controller_type>",
    )
    app = package(tmp_path, job)
    report = run_job(
        JobRequest(
            app_dir=app,
            workdir=tmp_path / "client",
            keep_slot=True,
            checkpoint_period=1.0,
            max_restart_delay=1.0,
            max_episodes=2,
            extra_env=vbox_sim.env,
        ),
        # this test host may lack VT-x; VirtualBox 7 needs it (no --hwvirtex), so say it has it
        host=replace(host_info(), p_features="fpu vme pae vmx sse2"),
    )
    assert report.finish_status == 0, report.message + report.stderr_tail
    assert report.finish_message == "Counted to 6."
    assert report.episodes == 1
    assert [(t.variety, t.body) for t in report.trickles] == [("trickle_a", "<steps>6</steps>\n")]
    result = Path(next(o.destination for o in report.outputs)).read_text()
    assert result == "".join(f"step {i}\n" for i in range(1, 7))
    stderr = report.stderr_tail
    assert stderr.count("Guest Log: guest says 3") == 1  # not again at each later append
    # logged once per change by the supervisor, not again by the back end
    assert stderr.count("VM state change detected.") == stderr.count("new = '")
    assert stderr.count("new = 'running')") == 1
    assert "VM Completion File Detected." in stderr
    slot = Path(report.slot_dir)
    replay = (slot / "vbox_replay.txt").read_text()
    assert "VBoxManage -q createvm --name boinc_" in replay
    assert "VBoxManage -q startvm boinc_" in replay
    assert " --vram 32 --graphicscontroller VMSVGA" in replay
    assert "unregistervm" in replay  # cleaned up after the completion
    assert vbox_sim.registry()["vms"] == {}


def test_abort_reports_network_bytes_screenshot_and_logs(
    vbox_sim: VBoxHost, tmp_path: Path
) -> None:
    """With a daily transfer limit the NIC counters (debugvm statistics) reach the client; an
    abort writes vboxwrapper's screenshot block and log sections before the VM is deleted."""
    vbox_sim.configure(guest=[{"run_shared_app": True}])
    job = JOB.replace("<enable_network/>", "<enable_network/>\n  <enable_screenshots_on_error/>")
    app = package(tmp_path, job, "#!/bin/sh\necho 'guest idles'\nsleep 120\n")
    report = run_job(
        JobRequest(
            app_dir=app,
            workdir=tmp_path / "client",
            keep_slot=True,
            # after the first checkpoint, so the VM runs when the abort comes: at a fixed 6 s a
            # busy host was still creating the VM and there was no screen to capture
            checkpoint_period=2.0,
            schedule=(ScheduledAction(0.5, Action.ABORT, after_checkpoint=1),),
            max_episodes=1,
            daily_xfer_limit_mb=10.0,
            extra_env=vbox_sim.env,
        ),
        host=replace(host_info(), p_features="fpu vme pae vmx sse2"),
    )
    assert report.outcome is JobOutcome.ABORTED, report.message + report.stderr_tail
    stderr = (Path(report.slot_dir) / "stderr.txt").read_text()
    assert "Screen Shot Information (Base64 Encoded PNG):" in stderr
    assert "VM Execution Log:" in stderr and "VM Trace Log:" in stderr
    # the simulated NIC moves bytes both ways while the VM runs (more in than out)
    assert 0 < report.bytes_sent < report.bytes_received
    replay = (Path(report.slot_dir) / "vbox_replay.txt").read_text()
    assert replay.index("screenshotpng") < replay.index("unregistervm")


def test_vt_x_off_in_the_bios_ends_with_the_vm_extensions_notice(
    vbox_sim: VBoxHost, tmp_path: Path
) -> None:
    """Real VirtualBox refuses startvm at once when VT-x is off (two lines on Windows); the task
    ends with vboxwrapper's VM-extensions contract (ERR_EXEC and its notice), not a postponement
    until the deadline (docs/compatibility.md#virtualbox-failures)."""
    vbox_sim.configure(guest=[{"run_shared_app": True}])
    vbox_sim.inject(start_error=["VERR_NEM_NOT_AVAILABLE", "VERR_VMX_MSR_ALL_VMX_DISABLED"])
    app = package(tmp_path)
    report = run_job(
        JobRequest(
            app_dir=app,
            workdir=tmp_path / "client",
            max_restart_delay=1.0,
            max_episodes=2,
            extra_env=vbox_sim.env,
        ),
        host=replace(host_info(), p_features="fpu vme pae vmx sse2"),
    )
    assert report.finish_status == ERR_EXEC, report.stderr_tail
    assert VM_EXTENSIONS_TOKEN in report.finish_message
    assert "BIOS" in report.finish_message
    assert report.temporary_exits == ()
    assert vbox_sim.registry()["vms"] == {}  # cleaned up
