"""The Windows suite's fixtures (registered by tests/windows/conftest.py): the Wine toolchain,
one vmwrapper.exe per source tree (built once, cached, shared by every test and xdist worker),
and helpers for a slot and a Windows client run (docs/windows.md#how-it-is-tested).

Skipped, with the reason, where Wine is missing; CI installs it (make test runs
scripts/windows-toolchain.sh).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vmwrapper.boinc.init_data import AppInitData, format_init_data
from vmwrapper.hostos import locks
from vmwrapper.hypervisor.fake import SCRIPT_FILE, FakeScript
from vmwrapper.images.cache import cache_dir

ROOT = Path(__file__).resolve().parents[2]
TOOLCHAIN_SCRIPT = ROOT / "scripts" / "windows-toolchain.sh"
BUILD_SCRIPT = ROOT / "scripts" / "build-dist-windows.sh"
CLIENT = ROOT / "tests" / "windows" / "winclient.py"
#: What goes into the exe: a change to any of these builds a new one.
EXE_INPUTS = ("src/vmwrapper", "scripts/build-dist-windows.sh", "scripts/pyinstaller")


def windows_path(path: Path) -> str:
    """``path`` as Windows programs under Wine see it (Wine maps / to drive Z:)."""
    return "Z:" + str(path.resolve()).replace("/", "\\")


@dataclass(frozen=True)
class Toolchain:
    root: Path

    @property
    def python(self) -> Path:
        return self.root / "python" / "python.exe"

    @property
    def qemu(self) -> Path:
        """QEMU for Windows: qemu-system-x86_64.exe, qemu-img.exe, firmware in share/qemu."""
        return self.root / "qemu"

    def env(self) -> dict[str, str]:
        return {**os.environ, "WINEPREFIX": str(self.root / "prefix"), "WINEDEBUG": "-all"}

    def run(
        self, argv: list[str], timeout: float, path: Iterable[Path] = ()
    ) -> subprocess.CompletedProcess[str]:
        """A Windows program under Wine, its standard handles pipes (a file or a closed
        handle kills Windows Python at start under Wine); ``path`` goes on its PATH."""
        env = self.env()
        if path:
            env["WINEPATH"] = ";".join(windows_path(p) for p in path)
        return subprocess.run(
            ["wine", *argv],
            input="",
            capture_output=True,
            text=True,
            errors="replace",
            env=env,
            timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="session")
def wine_toolchain() -> Toolchain:
    if shutil.which("wine") is None:
        pytest.skip("Wine is not installed (scripts/windows-toolchain.sh, run by make test)")
    done = subprocess.run(
        [str(TOOLCHAIN_SCRIPT)], capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"the Windows toolchain could not be installed: {done.stderr[-500:]}")
    return Toolchain(Path(done.stdout.strip().splitlines()[-1]))


def _digest(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


#: Exes of older source trees kept in the cache (12 MB each).
KEEP_EXES = 3


def _prune(folder: Path, kind: str, keep: int) -> None:
    builds = sorted(folder.glob(f"{kind}-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in builds[keep:]:
        shutil.rmtree(old, ignore_errors=True)


@pytest.fixture(scope="session")
def windows_exe(wine_toolchain: Toolchain) -> Path:
    """dist/vmwrapper.exe of this source tree: built once (about 80 s), then from the cache."""
    return _cached_build("exe", EXE_INPUTS, BUILD_SCRIPT, "vmwrapper.exe")


#: What goes into VBoxManage.exe: the simulator and the wrapper's hostos it imports.
VBOXSIM_INPUTS = ("tests/vboxsim", "src/vmwrapper/hostos", "scripts/build-vboxsim-windows.sh")


@pytest.fixture(scope="session")
def vboxsim_exe(wine_toolchain: Toolchain) -> Path:
    """The VBoxManage simulator as ``VBoxManage.exe`` (a PyInstaller one-dir build, about
    15 s, then from the cache); its directory is what ``VBOX_MSI_INSTALL_PATH`` names."""
    return _cached_build(
        "vboxsim",
        VBOXSIM_INPUTS,
        ROOT / "scripts" / "build-vboxsim-windows.sh",
        "VBoxManage/VBoxManage.exe",
    )


def _cached_build(kind: str, inputs: Iterable[str], script: Path, product: str) -> Path:
    """``script OUT`` run once per hash of ``inputs`` into ``$VMWRAPPER_CACHE/windows/
    <kind>-<hash>`` behind a lock (xdist workers: one builds); ``OUT/product``."""
    files = [
        f
        for name in inputs
        for f in ((ROOT / name).rglob("*") if (ROOT / name).is_dir() else [ROOT / name])
        if f.is_file() and "__pycache__" not in f.parts
    ]
    out = cache_dir() / "windows" / f"{kind}-{_digest(files)}"
    path = out / product
    out.parent.mkdir(parents=True, exist_ok=True)
    with (out.parent / f".{kind}.lock").open("a") as lock:
        locks.lock(lock.fileno())
        try:
            if not path.is_file():
                build = subprocess.run(
                    [str(script), str(out)],
                    cwd=ROOT,
                    env={**os.environ, "WORK_DIR": str(out / "build")},
                    capture_output=True,
                    text=True,
                    timeout=900,
                    check=False,
                )
                assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
                shutil.rmtree(out / "build", ignore_errors=True)
                _prune(out.parent, kind, keep=KEEP_EXES)
        finally:
            locks.unlock(lock.fileno())
    return path


JOB = """<vbox_job>
  <os_name>Linux26_64</os_name>
  <memory_size_mb>256</memory_size_mb>
  <enable_shared_directory/>
  <completion_trigger_file>done</completion_trigger_file>
  <temporary_exit_trigger_file>later</temporary_exit_trigger_file>
  <trickle_trigger_file>trickle_a</trickle_trigger_file>
  <fraction_done_filename>progress</fraction_done_filename>
</vbox_job>
"""


def make_slot(root: Path, script: FakeScript, job: str = JOB) -> Path:
    """A client data directory with one slot for the fake guest: what the Windows client
    leaves there before it starts the app (init_data.xml gets its segment name and pid
    from winclient.py)."""
    slot = make_client_slot(root, job)
    (slot / "vm_image.vdi").write_bytes(b"not a real image: the fake back end never opens it")
    (slot / SCRIPT_FILE).write_text(script.to_json())
    return slot


def make_client_slot(root: Path, job: str, *, checkpoint_period: int = 60) -> Path:
    """slots/0 with ``shared/``, vbox_job.xml and init_data.xml, and the project directory."""
    slot = root / "slots" / "0"
    (slot / "shared").mkdir(parents=True)
    project = root / "projects" / "example.org"
    project.mkdir(parents=True)
    (slot / "vbox_job.xml").write_text(job)
    aid = AppInitData(
        major_version=8,
        minor_version=0,
        release=4,
        wu_name="wu",
        result_name="wu_0",
        slot=0,
        checkpoint_period=checkpoint_period,
        ncpus=1,
        project_dir=windows_path(project),
        boinc_dir=windows_path(root),
    )
    (slot / "init_data.xml").write_text(format_init_data(aid))
    return slot


def run_client(
    toolchain: Toolchain,
    program: Path,
    slot: Path,
    *,
    actions: Iterable[dict[str, Any]] = (),
    deadline: float = 90,
    wu_command_line: str = "--backend fake",
    path: Iterable[Path] = (),
) -> dict[str, Any]:
    """winclient.py under Wine runs ``program`` in ``slot`` as the Windows client; its report.
    ``path``: directories Windows programs find on their PATH (Wine's ``WINEPATH``)."""
    report = slot.parent.parent / "report.json"
    scenario = slot.parent.parent / "scenario.json"
    scenario.write_text(
        json.dumps(
            {
                "slot": windows_path(slot),
                "command": {"exec_path": windows_path(program), "wu": wu_command_line},
                "actions": list(actions),
                "deadline": deadline,
                "report": windows_path(report),
            }
        )
    )
    done = toolchain.run(
        [str(toolchain.python), windows_path(CLIENT), windows_path(scenario)],
        timeout=deadline + 60,
        path=path,
    )
    assert done.returncode == 0 and report.exists(), done.stdout[-2000:] + done.stderr[-2000:]
    result: dict[str, Any] = json.loads(report.read_text())
    return result
