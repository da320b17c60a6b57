"""Which back end runs a job (docs/compatibility.md#back-end-selection), end to end: the whole
wrapper under the harness, on a host with QEMU and (simulated) VirtualBox both installed.

* an existing-style VirtualBox app version (vboxsf shared folder, no QEMU opt-in, no
  ``--backend``) runs on VirtualBox, although QEMU is there too;
* an app version with the QEMU opt-in (``<vmwrapper_backends>qemu``) runs on QEMU, although
  VirtualBox is there too (one real TCG boot);
* a job no back end of the host can run ends with a temporary exit whose notice names what is
  missing;
* ``vmwrapper doctor APP_DIR`` says which back end this host gives the app version, and why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from helpers.fault_fixtures import package_app
from helpers.vbox_fixtures import VBoxHost
from vmwrapper.harness.job import JobOutcome, JobReport, JobRequest, run_job
from vmwrapper.harness.slot import host_info
from vmwrapper.hypervisor.qemu.accel import AccelSetting, choose_accel
from vmwrapper.hypervisor.qemu.cmdline import Accel
from vmwrapper.outcome import ERR_EXEC, VM_EXTENSIONS_TOKEN
from vmwrapper.supervisor.events import read_events

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]

# As VirtualBox projects write it: a shared directory (vboxsf in their guests), no choice of
# back end; vboxwrapper would run it on VirtualBox.
VBOX_JOB = """<vbox_job>
  <os_name>Linux26_64</os_name>
  <memory_size_mb>512</memory_size_mb>
  <enable_shared_directory/>
  <completion_trigger_file>done</completion_trigger_file>
</vbox_job>
"""
QEMU_JOB = VBOX_JOB.replace(
    "<enable_shared_directory/>",
    "<enable_shared_directory/>\n  <vmwrapper_backends>qemu</vmwrapper_backends>"
    "\n  <vmwrapper_software_emulation/>",
)
APP = """#!/bin/sh
echo "ran" > result
printf '0\\n0\\nall done\\n' > done
sleep 60
"""
# the simulated VirtualBox 7 needs VT-x; say the host has it (this test host may not)
VTX_HOST = replace(host_info(), p_features="fpu vme pae vmx sse2")


def blank_image(tmp: Path) -> Path:
    image = tmp / "vm_image.vdi"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vdi", str(image), "32M"], check=True)
    return image


def run_app(
    app: Path, work: Path, env: dict[str, str], *, episodes: int = 2, vtx: bool = False
) -> JobReport:
    """The app run by the harness as the client would; VMWRAPPER_BACKEND never set."""
    request = JobRequest(
        app_dir=app,
        workdir=work / "client",
        keep_slot=True,
        max_restart_delay=1.0,
        max_episodes=episodes,
        extra_env={**env, "VMWRAPPER_BACKEND": ""},
    )
    return run_job(request, host=VTX_HOST) if vtx else run_job(request)


def backend_used(report: JobReport) -> list[str]:
    events = read_events(Path(report.slot_dir))
    return [str(e["backend"]) for e in events if e.get("event") == "wrapper_start"]


def need_qemu() -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("needs QEMU installed (the point is a host with both back ends)")


def test_existing_virtualbox_app_version_runs_on_virtualbox_with_qemu_installed(
    vbox_sim: VBoxHost, tmp_path: Path
) -> None:
    need_qemu()
    vbox_sim.configure(guest=[{"run_shared_app": True}])
    app = package_app(tmp_path, blank_image(tmp_path), APP, VBOX_JOB, name="legacy", backend="")
    report = run_app(app, tmp_path, vbox_sim.env, vtx=True)
    assert report.finish_status == 0, report.message + report.stderr_tail
    assert report.finish_message == "all done"
    assert backend_used(report) == ["virtualbox"]
    assert (Path(report.slot_dir) / "vbox_trace.txt").is_file()


def test_qemu_opt_in_runs_on_qemu_with_virtualbox_installed(
    vbox_sim: VBoxHost,
    tmp_path: Path,
    default_guest_image: Path,
) -> None:
    need_qemu()
    app = package_app(tmp_path, default_guest_image, APP, QEMU_JOB, name="opted", backend="")
    report = run_app(app, tmp_path, vbox_sim.env)
    assert report.finish_status == 0, report.message + report.stderr_tail
    assert backend_used(report) == ["qemu"]
    assert not (Path(report.slot_dir) / "vbox_trace.txt").exists()
    assert vbox_sim.registry()["vms"] == {}  # VirtualBox was never asked


def test_a_job_no_back_end_here_can_run_is_a_temporary_exit_with_a_notice(
    tmp_path: Path,
) -> None:
    """No VBoxManage on PATH (nor in /usr/bin here), no QEMU opt-in: nothing can run it."""
    if shutil.which("VBoxManage") or Path("/usr/bin/VBoxManage").exists():
        pytest.skip("this host has VirtualBox")
    app = package_app(tmp_path, blank_image(tmp_path), APP, VBOX_JOB, name="nowhere", backend="")
    report = run_app(app, tmp_path, {}, episodes=1)
    assert report.finish_status is None
    assert report.outcome is JobOutcome.POSTPONED
    assert report.message.startswith("postponed for 86400 seconds: ")
    assert "cannot run on this computer" in report.message
    assert "no VirtualBox (VBoxManage)" in report.message


def test_doctor_says_which_back_end_an_app_version_gets(vbox_sim: VBoxHost, tmp_path: Path) -> None:
    need_qemu()
    legacy = package_app(tmp_path / "a", blank_image(tmp_path), APP, VBOX_JOB, backend="")
    opted = package_app(tmp_path / "b", blank_image(tmp_path), APP, QEMU_JOB, backend="")
    answers = {}
    for name, app in (("legacy", legacy), ("opted", opted)):
        done = subprocess.run(
            [sys.executable, "-m", "vmwrapper", "doctor", "--no-boot-probe", "--json", str(app)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **vbox_sim.env, "VMWRAPPER_BACKEND": ""},
        )
        assert done.returncode == 0, done.stderr
        answers[name] = json.loads(done.stdout)["app_version"]
    assert answers["legacy"]["backend"] == "virtualbox"
    assert "does not ask for QEMU" in answers["legacy"]["reason"]
    assert answers["opted"]["backend"] == "qemu"
    assert "<vmwrapper_backends> lists qemu" in answers["opted"]["reason"]


def test_64_bit_guest_without_kvm_gets_the_vm_extensions_contract(tmp_path: Path) -> None:
    """QEMU without usable KVM and no <vmwrapper_software_emulation/>: the task ends as
    vboxwrapper's does on a host without VT-x (ERR_EXEC, the notice with
    ERR_CPU_VM_EXTENSIONS_DISABLED), instead of a 64-bit guest crawling under TCG."""
    need_qemu()
    if choose_accel(AccelSetting.AUTO, "x86_64", "qemu-system-x86_64").accel is Accel.KVM:
        pytest.skip("this host has a usable KVM: nothing to refuse")
    job = QEMU_JOB.replace("\n  <vmwrapper_software_emulation/>", "")
    assert "software_emulation" not in job
    app = package_app(tmp_path, blank_image(tmp_path), APP, job, name="fast", backend="")
    report = run_app(app, tmp_path, {"VMWRAPPER_ACCEL": ""})
    assert report.finish_status == ERR_EXEC, report.message + report.stderr_tail
    assert VM_EXTENSIONS_TOKEN in report.finish_message
    assert report.temporary_exits == ()
    assert "64-bit guest" in report.stderr_tail
