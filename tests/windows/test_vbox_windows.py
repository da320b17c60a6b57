"""A VirtualBox job end to end on Windows, under Wine (docs/windows.md#how-it-is-tested):
``vmwrapper.exe`` started as BOINC's Windows client starts an app (tests/windows/winclient.py),
its VirtualBox back end finding ``VBoxManage.exe`` through ``VBOX_MSI_INSTALL_PATH`` as on a
Windows host. That ``VBoxManage.exe`` is the VBoxManage simulator (tests/vboxsim) frozen for
Windows (``vboxsim_exe``): its VM is a Windows process that runs the job's ``boinc_app`` (Python
source) in the shared folder, so the wrapper's whole VirtualBox path runs as Windows code:
every VBoxManage call in a job object, the VM created in the slot, ``VBox.log`` followed,
trigger files and progress read from the shared folder, checkpoints as snapshots, a quit, a
restore, the VM powered off and unregistered.

What this cannot prove (real VirtualBox: VBoxSVC, VBoxHeadless, Guest Additions) is in
docs/windows.md#what-wine-cannot-prove.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest

from helpers.fault_fixtures import events, expected_output, this_run
from helpers.wine_fixtures import Toolchain, make_client_slot, run_client, windows_path
from vmwrapper.boinc import files
from vmwrapper.boinc.init_data import format_init_data, parse_init_data

pytestmark = pytest.mark.system

JOB = """<vbox_job>
  <os_name>Linux26_64</os_name>
  <memory_size_mb>256</memory_size_mb>
  <enable_shared_directory/>
  <completion_trigger_file>done</completion_trigger_file>
  <fraction_done_filename>progress</fraction_done_filename>
  <minimum_checkpoint_interval>2</minimum_checkpoint_interval>
</vbox_job>
"""


def counting_app(steps: int) -> str:
    """The guest's job as Python source (the simulated guest on Windows runs ``boinc_app``
    with Python; there is no /bin/sh): counts on after the lines already in ``result``, so a
    rerun after a quit ends with the output of an uninterrupted run; then the completion
    trigger, and it idles until the wrapper powers the VM off."""
    return f"""#!/usr/bin/env python3
import os, time
done = 0
if os.path.exists("result"):
    with open("result") as f:
        done = sum(1 for line in f if line.startswith("step "))
for i in range(done + 1, {steps} + 1):
    with open("result", "a") as f:
        f.write(f"step {{i}}\\n")
    with open("progress.tmp", "w") as f:
        f.write(str(i / {steps}))
    os.replace("progress.tmp", "progress")
    print(f"guest says {{i}}", flush=True)
    time.sleep(1)
with open("done.tmp", "w") as f:
    f.write("0\\n1\\nCounted to {steps}.\\n")
os.replace("done.tmp", "done")
time.sleep(120)
"""


def vbox_slot(root: Path, steps: int, checkpoint_period: int) -> Path:
    slot = make_client_slot(root, JOB, checkpoint_period=checkpoint_period)
    # VirtualBox 7 refuses a 64-bit guest without VT-x; the client reports the host's CPU
    init = slot / "init_data.xml"
    aid = parse_init_data(init.read_text())
    host = dataclasses.replace(aid.host_info, p_features="fpu vme pae vmx sse2")
    init.write_text(format_init_data(dataclasses.replace(aid, host_info=host)))
    # the simulator checks the image exists, never boots it
    image = slot / "vm_image.vdi"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vdi", str(image), "32M"], check=True)
    (slot / "shared" / "boinc_app").write_text(counting_app(steps))
    return slot


@pytest.fixture(name="windows_vbox")
def windows_vbox_fixture(
    vboxsim_exe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """VirtualBox "installed" for Wine's programs: the simulator's directory in
    ``VBOX_MSI_INSTALL_PATH`` (as its installer sets it), its state in a fresh directory, a
    guest that runs the shared folder's ``boinc_app``. The state directory is returned."""
    state = tmp_path / "vboxsim-state"
    state.mkdir()
    (state / "config.json").write_text(json.dumps({"guest": [{"run_shared_app": True}]}))
    # Toolchain.env() passes the environment on to Wine, which hands it to Windows programs
    monkeypatch.setenv("VBOX_MSI_INSTALL_PATH", windows_path(vboxsim_exe.parent) + "\\")
    monkeypatch.setenv("VBOXSIM_STATE", windows_path(state))
    monkeypatch.setenv("VBOX_USER_HOME", windows_path(tmp_path / "vbox-profile"))
    return state


def test_a_virtualbox_job_checkpoints_quits_and_resumes_under_windows(
    wine_toolchain: Toolchain, windows_exe: Path, windows_vbox: Path, tmp_path: Path
) -> None:
    """The job runs to its end in two episodes: VirtualBox's checkpoint is a snapshot
    (``snapshot take``); the client's quit after one powers the VM off, and the next run
    restores the last snapshot before ``startvm``; the guest counts on, and the completion
    trigger ends the task with status 0 and the output of an uninterrupted run. (One test, not
    two: each Windows run of the wrapper costs seconds of Wine time.)"""
    # the quit waits for a checkpoint (seconds of VBoxManage calls under Wine): it must still
    # come well before the count's end
    steps = 20
    slot = vbox_slot(tmp_path, steps, checkpoint_period=3)
    first = run_client(
        wine_toolchain,
        windows_exe,
        slot,
        actions=[{"when": {"fraction": 0.1, "checkpointed": True}, "do": "quit"}],
        deadline=120,
        wu_command_line="--backend virtualbox",
    )
    stderr = (slot / "stderr.txt").read_text(errors="replace")
    assert not first["timed_out"], first["client_output"] + stderr[-3000:]
    assert [c["do"] for c in first["controls_sent"]] == ["quit"], stderr[-3000:]
    assert first["exit_code"] == 0 and files.read_finish_file(slot) is None, stderr[-3000:]
    taken = [str(e["snapshot"]) for e in events(slot, "checkpoint")]
    assert taken and all(name.startswith("boinc_") for name in taken), stderr[-3000:]
    counted_before_quit = (slot / "shared" / "result").read_text().count("step")
    assert 0 < counted_before_quit < steps

    second = run_client(
        wine_toolchain,
        windows_exe,
        slot,
        # a pause on the way: the guest app is suspended with the VM (NtSuspendProcess, which
        # counts: one too many and it would never run again) and must count on after it
        actions=[
            {"when": {"after": 8}, "do": "suspend"},
            {"when": {"suspended_for": 2}, "do": "resume"},
        ],
        deadline=120,
        wu_command_line="--backend virtualbox",
    )
    stderr = (slot / "stderr.txt").read_text(errors="replace")
    assert second["exit_code"] == 0, second["client_output"] + stderr[-3000:]
    assert [c["do"] for c in second["controls_sent"]] == ["suspend", "resume"]
    states = [str(e["new"]) for e in this_run(slot, "vm_state")]
    assert "running" in states[states.index("paused") :], states  # paused, then running again
    finish = files.read_finish_file(slot)
    assert finish is not None and finish.status == 0, stderr[-3000:]
    # the second run restored the last checkpoint's snapshot, it did not start afresh
    assert events(slot, "vm_started")[-1]["snapshot"] == taken[-1], stderr[-3000:]
    assert finish.message.strip() == f"Counted to {steps}."
    assert (slot / "shared" / "result").read_text() == expected_output(steps)
    assert "VM Completion File Detected." in stderr
    # the guest's output came through VBox.log, as Guest Additions' log lines do: each line
    # once (the first episode's log is not read again by the second)
    assert stderr.count("Guest Log: guest says 1\n") == 1, stderr[-3000:]
    assert f"Guest Log: guest says {steps}\n" in stderr
    # the VM was created in the slot and unregistered at the end
    assert json.loads((windows_vbox / "registry.json").read_text())["vms"] == {}
