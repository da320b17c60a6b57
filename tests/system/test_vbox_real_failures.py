"""VirtualBox's real failures through the back end and the VBoxManage simulator.

The simulator replays every real error text of tests/data/vbox/real/errors/ (its ``output``
fault), so each one goes through the real runner (retries, trace) and reaches the class the
docs' table gives it (docs/compatibility.md#virtualbox-failures). The simulator's own error
format is checked against the real outputs' shape.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_vbox_backend import fast_backend, make_config, vminfo

from helpers.vbox_fixtures import VBoxHost
from helpers.vbox_real import CONTEXT_RE, DETAILS_RE, ERRORS, EXPECTED
from vmwrapper.errors import HostNotReady
from vmwrapper.hypervisor.base import VmState
from vmwrapper.hypervisor.virtualbox import failures, output
from vmwrapper.hypervisor.virtualbox.commands import Step
from vmwrapper.hypervisor.virtualbox.failures import Reaction
from vmwrapper.hypervisor.virtualbox.runner import VBoxManage, VBoxManageError
from vmwrapper.supervisor import backoff

pytestmark = pytest.mark.system

COMMAND_OF = {
    failures.Operation.START: ("startvm", "boinc_x", "--type", "headless"),
    failures.Operation.CREATE: ("modifyvm", "boinc_x", "--memory", "256"),
    failures.Operation.QUERY: ("showvminfo", "boinc_x", "--machinereadable"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_simulator_replays_each_real_error(vbox_sim: VBoxHost, tmp_path: Path, name: str) -> None:
    operation, cause, reaction, _ = EXPECTED[name]
    text = (ERRORS / name).read_text(encoding="utf-8")
    args = COMMAND_OF[operation]
    vbox_sim.inject(output={"commands": [args[0]], "text": text, "exit": 1, "times": 10})
    sleeps: list[float] = []
    runner = VBoxManage(tmp_path, sleep=sleeps.append)
    with pytest.raises(VBoxManageError) as info:
        runner.run(Step(args, args[0], retry=False))
    error = info.value
    assert error.result.output == text
    assert (error.cause, error.reaction) == (cause, reaction)
    retried = cause in (failures.Cause.SESSION_LOCKED, failures.Cause.SERVICE_UNREACHABLE)
    assert error.result.attempts == (6 if retried else 1)
    expected_class = {
        Reaction.TEMPORARY: backoff.ErrorClass.TRANSIENT,
        Reaction.FINAL: backoff.ErrorClass.JOB_BUG,
        Reaction.HOST: backoff.ErrorClass.JOB_BUG,  # the back end turns it into HostNotReady
    }[reaction]
    assert backoff.classify(error).error_class is expected_class


def test_simulator_errors_have_virtualboxs_shape(vbox_sim: VBoxHost, tmp_path: Path) -> None:
    """A lock error, a missing VM and a refused start, as the simulator prints them."""
    config = make_config(tmp_path, remote_desktop=None)
    backend = fast_backend(config)
    backend.create()
    vbox_sim.inject(lock_contention={"commands": ["modifyvm"], "times": 1})
    lock = vbox_sim.vboxmanage("modifyvm", config.name, "--memory", "300")
    missing = vbox_sim.vboxmanage("showvminfo", "no_such_vm", "--machinereadable")
    vbox_sim.inject(start_error=["VERR_NEM_NOT_AVAILABLE", "VERR_VMX_MSR_ALL_VMX_DISABLED"])
    start = vbox_sim.vboxmanage("startvm", config.name, "--type", "headless")
    for result in (lock, missing, start):
        assert result.returncode == 1
        text = result.stdout + result.stderr
        details = [ln for ln in text.splitlines() if ": error: Details:" in ln]
        assert details and all(DETAILS_RE.match(ln) for ln in details), text
        assert all(CONTEXT_RE.match(ln) for ln in text.splitlines() if ": error: Context:" in ln)
    assert "callee" not in start.stdout + start.stderr  # a powering-up console has none
    start_lines = (start.stdout + start.stderr).splitlines()
    assert "(VERR_NEM_NOT_AVAILABLE)" in start_lines[0]
    assert "(VERR_VMX_MSR_ALL_VMX_DISABLED)" in start_lines[1]
    real = (ERRORS / "startvm_nem_vmx_disabled_windows.txt").read_text().splitlines()
    assert len(start_lines) == len(real)
    vbox_sim.inject(start_error="")
    backend.cleanup()


def test_linux_service_down_on_the_first_call_is_temporary(
    vbox_sim: VBoxHost, tmp_path: Path
) -> None:
    """showvminfo in exists() is the wrapper's first VirtualBox call; on Linux an unreachable
    VBoxSVC prints NS_BASE_STREAM_WOULD_BLOCK. Retried, then a temporary exit, not an error."""
    config = make_config(tmp_path, remote_desktop=None)
    backend = fast_backend(config)
    vbox_sim.inject(service_down={"times": 50, "host": "linux"})
    with pytest.raises(VBoxManageError) as info:
        backend.exists()
    assert info.value.cause is failures.Cause.SERVICE_UNREACHABLE
    assert info.value.result.attempts == 6
    assert backoff.classify(info.value).error_class is backoff.ErrorClass.TRANSIENT
    assert "NS_BASE_STREAM_WOULD_BLOCK (0x80470007)" in info.value.output
    vbox_sim.inject(service_down={"times": 0})
    assert backend.exists() is False


def test_a_lock_held_through_creation_is_temporary(vbox_sim: VBoxHost, tmp_path: Path) -> None:
    config = make_config(tmp_path, remote_desktop=None)
    backend = fast_backend(config)
    vbox_sim.inject(lock_contention={"commands": ["modifyvm"], "times": 50})
    with pytest.raises(VBoxManageError) as info:
        backend.create()
    assert info.value.lock_error and info.value.temporary
    assert backoff.classify(info.value).error_class is backoff.ErrorClass.TRANSIENT
    assert not backend.exists()  # the half-built VM was removed
    vbox_sim.inject(lock_contention={"times": 0})


def test_pause_resume_and_throttles_go_on_after_a_not_ready_error(
    vbox_sim: VBoxHost, tmp_path: Path
) -> None:
    config = make_config(tmp_path, remote_desktop=None)
    backend = fast_backend(config)
    backend.create()
    backend.start()
    not_ready = (ERRORS / "not_ready_showvminfo.txt").read_text()
    calls = (
        backend.pause,
        backend.resume,
        lambda: backend.set_cpu_cap(50),
        lambda: backend.set_bandwidth(1000.0),
    )
    for call in calls:  # every attempt of each command fails with "The object is not ready"
        vbox_sim.inject(
            output={"commands": ["controlvm", "bandwidthctl"], "text": not_ready, "times": 6}
        )
        call()
    assert vbox_sim.faults()["output"]["times"] == 0
    assert vminfo(vbox_sim, config.name)["VMState"] == "running"  # nothing happened, no raise
    backend.cleanup()


@pytest.mark.parametrize("version", ["4.2.6", "4.2.18", "4.3.0"])
def test_a_known_bad_virtualbox_is_refused_before_anything_is_made(
    vbox_sim: VBoxHost, tmp_path: Path, version: str
) -> None:
    vbox_sim.configure(version=version)
    backend = fast_backend(make_config(tmp_path, remote_desktop=None))
    with pytest.raises(HostNotReady, match="Incompatible version of VirtualBox") as info:
        backend.create()
    assert backoff.classify(info.value).error_class is backoff.ErrorClass.HOST_PROBLEM
    assert vbox_sim.registry()["vms"] == {}


#: a ``name=value`` line of ``showvminfo --machinereadable`` as real VirtualBox writes it
_MR_LINE = re.compile(r'^(?:"[^"]+"|[A-Za-z0-9_][A-Za-z0-9_\-().\[\]/ ]*)=(?P<value>.*)$')


def _quoting(text: str) -> dict[str, bool]:
    """name → is its value quoted, for every name=value line."""
    found: dict[str, bool] = {}
    for line in text.splitlines():
        match = _MR_LINE.match(line)
        if match:
            name = line[: match.start("value") - 1].strip('"')
            found[name] = match.group("value").startswith('"')
    return found


@pytest.mark.parametrize("version", ["7.0.14", "6.1.50"])
def test_simulator_showvminfo_has_the_real_format(
    vbox_sim: VBoxHost, tmp_path: Path, version: str
) -> None:
    """Every line the simulator prints has the real grammar; every name it shares with a real
    output is quoted (or not) as there; 7.0's stray ``Encryption:`` line is there for 7.0."""
    vbox_sim.configure(version=version)
    config = make_config(tmp_path, remote_desktop=None)
    backend = fast_backend(config)
    backend.create()
    result = vbox_sim.vboxmanage("showvminfo", config.name, "--machinereadable")
    sim = result.stdout
    real = {
        path.name: (path.read_text(encoding="utf-8"))
        for path in (ERRORS.parent / "showvminfo").glob("*.txt")
    }
    for line in sim.splitlines():
        assert _MR_LINE.match(line) or line == "Encryption:     disabled", line
    sim_quoting = _quoting(sim)
    shared = 0
    for name, text in real.items():
        for key, quoted in _quoting(text).items():
            if key in sim_quoting:
                shared += 1
                assert sim_quoting[key] == quoted, (name, key)
    assert shared > 30
    assert ("Encryption:     disabled" in sim.splitlines()) == version.startswith("7.0")
    info = output.parse_vminfo(sim)
    assert (info.name, info.state_name) == (config.name, "poweroff")
    backend.cleanup()


def test_startvm_that_exits_1_after_starting_is_a_start(vbox_sim: VBoxHost, tmp_path: Path) -> None:
    """VirtualBox 5.0.10's startvm exits 1 although the VM started: its output counts."""
    config = make_config(tmp_path, remote_desktop=None)
    backend = fast_backend(config)
    backend.create()
    vbox_sim.inject(lying_exit={"commands": ["startvm"], "times": 1})
    pid = backend.start()
    assert pid > 0 and vminfo(vbox_sim, config.name)["VMState"] == "running"
    assert vbox_sim.faults()["lying_exit"]["times"] == 0
    backend.cleanup()


def test_failed_status_queries_read_the_state_from_vbox_log(
    vbox_sim: VBoxHost, tmp_path: Path
) -> None:
    """showvminfo "not ready" (after the runner's tries) while the VM runs: the state comes
    from this run's VBox.log, as newer vboxwrapper reads it, not an error and no crash."""
    config = make_config(tmp_path, remote_desktop=None)
    backend = fast_backend(config)
    backend.create()
    backend.start()
    not_ready = (ERRORS / "not_ready_showvminfo.txt").read_text()
    vbox_sim.inject(output={"commands": ["showvminfo"], "text": not_ready, "times": 3})
    for _ in range(3):
        status = backend.status()
        assert status.state is VmState.RUNNING
        assert status.detail == "running (from VBox.log)"
    assert backend.status().detail == "running"  # showvminfo answers again
    # a cause that is no passing condition still raises (the supervisor counts it)
    other = (ERRORS / "hostonly_ns_error_failure.txt").read_text()
    vbox_sim.inject(output={"commands": ["showvminfo"], "text": other, "times": 1})
    with pytest.raises(VBoxManageError):
        backend.status()
    backend.cleanup()


def test_simulator_version_output_has_the_real_shape(vbox_sim: VBoxHost, tmp_path: Path) -> None:
    """A distribution build with the kernel module missing: the warning comes first, worded as
    the real one, on every command; the version is still read, and the host is not ready."""
    vbox_sim.configure(version="6.1.38_Ubuntu", kernel_module_missing=True)
    printed = vbox_sim.vboxmanage("--version").stdout
    real = (ERRORS.parent / "version" / "6.0.12_after_module_warning.txt").read_text()
    assert printed.splitlines()[0] == real.splitlines()[0]
    assert len(printed.splitlines()) == len(real.splitlines())
    assert printed.splitlines()[-1] == "6.1.38_Ubuntur161095"
    assert output.parse_version(printed) == (6, 1, 38)
    listing = vbox_sim.vboxmanage("list", "hostinfo").stdout
    assert not output.parse_hostinfo(listing).ready
    backend = fast_backend(make_config(tmp_path, remote_desktop=None))
    assert backend.capabilities.version == (6, 1, 38)
    with pytest.raises(HostNotReady, match="kernel module"):
        backend.create()
    vbox_sim.configure(kernel_module_missing=False)
