"""What a wrapper start imports before QEMU is spawned
(docs/performance.md#the-fixed-cost-around-a-short-job).

Every module imported there is paid for by every job before its VM starts. A fresh
interpreter (imports are process-wide, so not this one) imports the wrapper's entry and
builds the QEMU back end as ``cli/run.py`` does, and the test names what must not be in it:
``asyncio`` and ``qemu.qmp`` come at the first QMP connect (after the spawn), the image
builder's readers only with ``vmwrapper image``, the other back end and the tools of other
subcommands never.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DEFERRED = (
    "asyncio",
    "qemu.qmp",
    "vmwrapper.images.builder",
    "vmwrapper.images.cache",
    "vmwrapper.images.debs",
    "vmwrapper.hypervisor.virtualbox.backend",
    "vmwrapper.harness",
    "vmwrapper.packaging",
    "rich",
    "pycdlib",
    "hypothesis",
)

START = """
import json, sys
from pathlib import Path
from vmwrapper.cli.main import main
from vmwrapper.cli.run import prepare, run_vm
from vmwrapper.boinc.app import AppClient
from vmwrapper.supervisor.loop import run_supervisor
from vmwrapper.supervisor.select import make_backend
from vmwrapper.hypervisor.base import VmConfig

slot = Path(sys.argv[1])
config = VmConfig(name="vm", description="r", slot_dir=slot, project_dir=slot)
backend = make_backend("qemu", config, accel="tcg")
backend.status()
print(json.dumps(sorted(sys.modules)))
"""


def test_a_qemu_start_imports_nothing_it_uses_only_later(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", START, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    modules = set(json.loads(done.stdout))
    assert "vmwrapper.hypervisor.qemu.backend" in modules  # the start path was walked
    early = sorted(m for m in modules if any(m == d or m.startswith(d + ".") for d in DEFERRED))
    assert not early, f"imported before QEMU's spawn: {early}"


def test_vmwrapper_job_starts_the_app_before_loading_its_display() -> None:
    """The harness (``vmwrapper job``) loads rich at the first progress report, after the
    app's start; until then it has imported what staging and starting need."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys; import vmwrapper.cli.main, vmwrapper.cli.job, "
            "vmwrapper.harness.job; print(json.dumps(sorted(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    modules = set(json.loads(done.stdout))
    assert "vmwrapper.harness.task" in modules
    assert not sorted(m for m in modules if m == "rich" or m.startswith("rich."))
