"""The VBoxManage simulator's guest app on Linux
(docs/windows.md#the-vboxmanage-simulator-on-windows): a ``boinc_app`` whose first line names
python runs with Python (as every guest app does on Windows), and it stops with a paused VM and
runs again when the VM resumes (stopped once per pause, as Windows' counted suspensions need).
On Windows, tests/windows/test_vbox_windows.py pauses and resumes one through the wrapper.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from helpers.common import wait_for
from helpers.vbox_fixtures import VBoxHost

pytestmark = pytest.mark.system

APP = """#!/usr/bin/env python3
import time
while True:
    print("tick", flush=True)
    time.sleep(0.2)
"""


def ok(host: VBoxHost, *args: str) -> None:
    result = host.vboxmanage(*args)
    assert result.returncode == 0, result.stderr


def test_a_python_guest_app_stops_with_a_paused_vm_and_runs_again(
    vbox_sim: VBoxHost, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "boinc_app").write_text(APP)
    vbox_sim.configure(guest=[{"run_shared_app": True}])
    ok(vbox_sim, "createvm", "--name", "vm1", "--basefolder", str(tmp_path), "--register")
    ok(vbox_sim, "sharedfolder", "add", "vm1", "--name", "shared", "--hostpath", str(shared))
    ok(vbox_sim, "startvm", "vm1", "--type", "headless")
    vm = psutil.Process(int(vbox_sim.registry()["vms"].popitem()[1]["pid"]))
    assert wait_for(vm.children, timeout=10), "the guest app did not start"
    (app,) = vm.children()
    assert "python" in Path(app.cmdline()[0]).name, app.cmdline()  # not /bin/sh
    log = tmp_path / "vm1" / "Logs" / "VBox.log"
    assert wait_for(lambda: "Guest Log: tick" in log.read_text(), timeout=10)

    ok(vbox_sim, "controlvm", "vm1", "pause")
    assert wait_for(lambda: app.status() == psutil.STATUS_STOPPED, timeout=10), app.status()
    ok(vbox_sim, "controlvm", "vm1", "resume")
    assert wait_for(lambda: app.status() != psutil.STATUS_STOPPED, timeout=10)
    ticks = log.read_text().count("Guest Log: tick")
    assert wait_for(lambda: log.read_text().count("Guest Log: tick") > ticks, timeout=10)

    ok(vbox_sim, "controlvm", "vm1", "poweroff")
    assert wait_for(lambda: not app.is_running() or app.status() == psutil.STATUS_ZOMBIE, 10)
