"""Fixtures for the VirtualBox back end: the VBoxManage simulator on PATH, or real VirtualBox.

The fixtures are named ``vbox_host`` and ``vbox_sim``; ``tests/conftest.py`` registers them,
so a test names them and imports only :class:`VBoxHost` for its annotations.

* ``vbox_sim`` — always the simulator (a ``VBoxManage`` launcher for ``tests/vboxsim`` first on
  PATH, its state in a fresh directory named by ``VBOXSIM_STATE``); faults and guest scripts
  can be set. (``tests/vboxsim/VBoxManage`` itself works too, via ``env python3``.)
* ``vbox_host`` — parametrized ``sim`` and ``real``: ``real`` runs only when a real
  ``VBoxManage`` is on PATH and ``VMWRAPPER_REAL_VBOX=1``; otherwise it is skipped with the
  reason. Tests written against ``vbox_host`` therefore run against both.

On teardown every VM process the simulator started is killed (kill -9 by PID).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SIM_DIR = Path(__file__).resolve().parents[1] / "vboxsim"
SIM_EXECUTABLE = SIM_DIR / "VBoxManage"


def real_vbox_skip_reason() -> str | None:
    """Why the real-VirtualBox variant cannot run here (None when it can)."""
    if os.environ.get("VMWRAPPER_REAL_VBOX") != "1":
        return "real VirtualBox tests need VMWRAPPER_REAL_VBOX=1 (and VBoxManage on PATH)"
    found = shutil.which("VBoxManage")
    if found is None:
        return "VMWRAPPER_REAL_VBOX=1 but no VBoxManage on PATH"
    if "vboxsim" in Path(found).read_text(errors="replace")[:2000]:
        return "the VBoxManage on PATH is the simulator"
    return None


@dataclass
class VBoxHost:
    """Where VBoxManage commands go in a test: the simulator or real VirtualBox."""

    real: bool
    state_dir: Path | None = None  # the simulator's state (None for real VirtualBox)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def simulated(self) -> bool:
        return not self.real

    def vboxmanage(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["VBoxManage", "-q", *args],
            capture_output=True,
            text=True,
            env={**os.environ, **self.env},
            timeout=timeout,
            check=False,
        )

    def _sim_file(self, name: str) -> Path:
        if self.state_dir is None:
            pytest.skip("needs the simulator (faults and guest scripts are simulator-only)")
        return self.state_dir / name

    def configure(self, **settings: Any) -> None:
        """Simulator config.json (version, extpack, bridged_interfaces, guest, ...)."""
        path = self._sim_file("config.json")
        current = json.loads(path.read_text()) if path.exists() else {}
        current.update(settings)
        path.write_text(json.dumps(current))

    def inject(self, **faults: Any) -> None:
        """Simulator faults.json (lock_contention, hang, service_down, start_error, ...)."""
        path = self._sim_file("faults.json")
        current = json.loads(path.read_text()) if path.exists() else {}
        current.update(faults)
        path.write_text(json.dumps(current))

    def faults(self) -> dict[str, Any]:
        path = self._sim_file("faults.json")
        return json.loads(path.read_text()) if path.exists() else {}

    def registry(self) -> dict[str, Any]:
        path = self._sim_file("registry.json")
        return json.loads(path.read_text()) if path.exists() else {"vms": {}, "media": {}}

    def kill_all(self) -> None:
        if self.state_dir is None:
            return
        for vm in self.registry().get("vms", {}).values():
            pid = vm.get("pid")
            if pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(pid), signal.SIGKILL)


def sim_bin_dir(where: Path) -> Path:
    """A directory holding a ``VBoxManage`` that runs the simulator with this very interpreter
    (no ``env python3`` lookup, no pyenv shim, no site-packages: each call starts fast)."""
    bin_dir = where / "vboxsim-bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    launcher = bin_dir / "VBoxManage"
    launcher.write_text(
        f"#!{sys.executable} -S\n"
        "import sys\n"
        "sys.dont_write_bytecode = False\n"
        f"sys.path.insert(0, {str(SIM_DIR)!r})\n"
        "from vboxsim_impl import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    launcher.chmod(0o755)
    return bin_dir


def _sim_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> VBoxHost:
    state = tmp_path / "vboxsim-state"
    state.mkdir()
    path = f"{sim_bin_dir(tmp_path)}{os.pathsep}{os.environ.get('PATH', '')}"
    monkeypatch.setenv("PATH", path)
    monkeypatch.setenv("VBOXSIM_STATE", str(state))
    monkeypatch.setenv("VBOX_USER_HOME", str(tmp_path / "vbox-profile"))
    return VBoxHost(real=False, state_dir=state, env={"PATH": path, "VBOXSIM_STATE": str(state)})


@pytest.fixture(name="vbox_sim")
def vbox_sim_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[VBoxHost]:
    host = _sim_host(tmp_path, monkeypatch)
    try:
        yield host
    finally:
        host.kill_all()


@pytest.fixture(name="vbox_host", params=["sim", "real"])
def vbox_host_fixture(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[VBoxHost]:
    if request.param == "real":
        reason = real_vbox_skip_reason()
        if reason is not None:
            print(f"skipping real VirtualBox: {reason}")
            pytest.skip(reason)
        yield VBoxHost(real=True)
        return
    host = _sim_host(tmp_path, monkeypatch)
    try:
        yield host
    finally:
        host.kill_all()
