"""``vmwrapper gc`` and VirtualBox, against the VBoxManage simulator: a ``boinc_*`` VM whose
settings live in a slot without a task is unregistered with its files; one in a slot that
holds a task, and VMs that are not ours, stay. gc finds VBoxManage as the wrapper does
(``vbox_environment``: the same PATH and VBOX_USER_HOME)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.vbox_fixtures import VBoxHost
from vmwrapper.cli import gc

pytestmark = pytest.mark.system


def _vm_in_slot(host: VBoxHost, data: Path, n: int, name: str, *, task: bool) -> Path:
    slot = data / "slots" / str(n)
    slot.mkdir(parents=True)
    if task:
        (slot / "init_data.xml").write_text("<app_init_data/>")
    made = host.vboxmanage("createvm", "--name", name, "--basefolder", str(slot), "--register")
    assert made.returncode == 0, made.stdout + made.stderr
    return slot


def _vms(host: VBoxHost) -> str:
    return host.vboxmanage("list", "vms").stdout


def test_gc_unregisters_the_vm_of_a_taskless_slot_only(vbox_sim: VBoxHost, tmp_path: Path) -> None:
    data = tmp_path / "boinc"
    _vm_in_slot(vbox_sim, data, 0, "boinc_left_behind", task=False)
    _vm_in_slot(vbox_sim, data, 1, "boinc_postponed", task=True)
    _vm_in_slot(vbox_sim, data, 2, "someone_elses", task=False)

    actions = gc.plan(data, tmp_dir=tmp_path / "tmp")
    assert [(a.kind, a.target) for a in actions] == [
        (gc.Kind.UNREGISTER_VM, "boinc_left_behind")
    ], actions
    assert gc.perform(actions, data) == 0
    listed = _vms(vbox_sim)
    assert "boinc_left_behind" not in listed
    assert '"boinc_postponed"' in listed and '"someone_elses"' in listed
