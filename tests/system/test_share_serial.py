"""The ``serial`` share transport with real QEMU (TCG) and the built guest image: a job end to
end through the file service, checkpoints while files flow (never refused: no 9p mounted),
a restore, and a hostile guest that talks the protocol itself (docs/shared-transport.md).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from helpers.common import wait_for
from helpers.fault_fixtures import (
    COUNTING_JOB,
    EXPECTED_OUTPUT,
    RESUMABLE_APP,
    events,
    kill_wrapper,
    no_qemu_left,
    output_text,
    package_app,
    run,
)
from helpers.qemu_fixtures import GuestWatch, counts, make_guest_slot, qemu_backend
from vmwrapper.harness.job import Progress
from vmwrapper.hypervisor.base import VmConfig, VmState
from vmwrapper.supervisor.events import CHECKPOINT_DISKS, CHECKPOINT_REFUSED

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]


@pytest.fixture
def guest_image(default_guest_image: Path) -> Path:
    return default_guest_image


def _serial(config: VmConfig) -> VmConfig:
    return replace(config, shares=tuple(replace(s, transport="serial") for s in config.shares))


# Inputs in, results out (one in a subdirectory, one binary with every byte value, a name
# with a space), a trigger file last; progress written as it goes.
JOB_APP = """#!/bin/sh
read -r line < in
echo "input: $line"
echo "bytes in: $(wc -c < blob.bin)"
mkdir -p results
i=0
while [ $i -lt 6 ]; do i=$((i+1)); echo "0.$i" > fraction_done; sleep 0.3; done
echo "result of $line" > "results/final out.txt"
cat blob.bin blob.bin > blob2.bin
echo done > trigger_done
"""


def _blob() -> bytes:
    return bytes(range(256)) * 4096 + b"\n\n\0tail"  # 1 MiB and a bit, every byte value


def test_a_job_runs_end_to_end_through_the_serial_share(tmp_path: Path, guest_image: Path) -> None:
    slot, _project, config = make_guest_slot(tmp_path, guest_image, JOB_APP, {"in": "forty-two\n"})
    shared = slot / "shared"
    (shared / "blob.bin").write_bytes(_blob())
    config = _serial(config)
    with qemu_backend(config) as vm:
        vm.start()
        assert "virtserialport" in " ".join(vm.argv) and "virtio-9p-pci" not in vm.argv
        watch = GuestWatch(vm)
        status = watch.wait_stopped(180)
        assert status.state is VmState.POWERED_OFF and status.exit_code == 0, watch.lines
    assert "input: forty-two" in watch.lines
    assert f"bytes in: {len(_blob())}" in watch.lines
    assert (shared / "results" / "final out.txt").read_text() == "result of forty-two\n"
    assert (shared / "blob2.bin").read_bytes() == _blob() * 2
    assert (shared / "fraction_done").read_text() == "0.6\n"
    assert (shared / "trigger_done").read_text() == "done\n"
    assert not list(shared.rglob(".vmwrapper-tmp.*"))


COUNTER_APP = """#!/bin/sh
read -r start < in
i=$start
while [ $i -lt 40 ]; do
    i=$((i+1)); echo "count $i"; echo $i > progress
    head -c 65536 /dev/urandom > "chunk_$((i % 4))"
    # a big result now and then: its push takes a while, a checkpoint lands in the middle
    case $i in 6|16) cp big_in .vmwrapper-tmp.big && mv .vmwrapper-tmp.big "big_$i" ;; esac
    sleep 0.25
done
echo "counted from $start to $i" > out
"""
BIG = 24 * 1024 * 1024


def _count_above(limit: int) -> Callable[[str], bool]:
    return lambda line: line.startswith("count ") and int(line[6:]) > limit


def test_checkpoints_while_files_flow_are_never_refused_and_a_restore_mid_transfer_finishes(
    tmp_path: Path, guest_image: Path
) -> None:
    slot, _project, config = make_guest_slot(tmp_path, guest_image, COUNTER_APP, {"in": "0\n"})
    config = replace(_serial(config), memory_mb=512)
    shared = slot / "shared"
    big = os.urandom(BIG)
    (shared / "big_in").write_bytes(big)
    with qemu_backend(config) as first:
        pid = first.start()
        watch = GuestWatch(first)
        # The host writes a pushed file under a temp name until its last byte: a checkpoint
        # now stops the VM in the middle of the transfer. Under 9p it would be refused.
        in_flight = shared / ".vmwrapper-tmp.big_6"
        assert wait_for(in_flight.exists, timeout=120, interval=0.005)
        first.checkpoint("ckpt_0")
        assert in_flight.exists() or (shared / "big_6").exists()
        # The agent pushes about once a second all along; each checkpoint is taken at once.
        for n in (1, 2):
            watch.wait_line(_count_above(8 + 2 * n))
            first.checkpoint(f"ckpt_{n}")
        # the interrupted transfer completes (its rename is the event; a loaded host is slow)
        assert wait_for((shared / "big_6").exists, timeout=120)
        assert (shared / "big_6").read_bytes() == big
        watch.poll()
        after = max(counts(watch.lines))
        os.kill(pid, signal.SIGKILL)
        assert watch.wait_stopped(10).state is VmState.CRASHED

        # Back to the checkpoint taken mid-transfer: the guest resumes half-way through
        # sending big_6 to a file service that never saw its start. The leftover bytes get
        # no answer and land nowhere; the agent's next window pushes the file again.
        (shared / "big_6").unlink()
        with qemu_backend(config) as second:  # a new back end: the file service starts anew
            second.start(restore="ckpt_0")
            resumed = GuestWatch(second)
            status = resumed.wait_stopped(180)
            assert status.state is VmState.POWERED_OFF and status.exit_code == 0, resumed.lines
            numbers = counts(resumed.lines)
            assert numbers[0] <= after + 1 and numbers[-1] == 40
    assert (shared / "out").read_text() == "counted from 0 to 40\n"
    assert (shared / "progress").read_text() == "40\n"
    assert (shared / "big_16").read_bytes() == big
    assert (shared / "big_6").read_bytes() == big
    assert not list(shared.glob(".vmwrapper-tmp.*"))


# A hostile app: it stops nothing and asks nobody, it talks to the port itself with the
# agent's own helpers, and prints what the host answered.
HOSTILE_APP = """#!/bin/sh
. /opt/vmwrapper/vmwrapper-lib.sh
find_serial_port || { echo "no port"; exit 1; }
hex() { printf %s "$1" | od -An -tx1 -v | tr -d ' \\n'; }
try() { # LABEL PATH SIZE
    printf 'PUT %s 1.0 %s\\n' "$3" "$(hex "$2")" >&3
    IFS= read -r -t 30 reply <&3
    echo "hostile $1: $reply"
    [ "$reply" = GO ] || return 0
    head -c "$3" /dev/zero >&3
    printf 'END %s\\n' "$(hex "$2")" >&3
    IFS= read -r -t 30 reply <&3
    echo "hostile $1 sent: $reply"
}
serial_open || { echo "no hello"; exit 1; }
try dotdot ../escaped 4
try deep a/../../escaped 4
try absolute "$HOSTILE_ABS" 4
try symlink link_out/escaped 4
try huge big.bin 999999999999999999
try over-link victim 4
printf 'GARBAGE\\n' >&3; IFS= read -r -t 30 reply <&3; echo "hostile garbage: $reply"
serial_close
ls -a /root/shared | tr '\\n' ' ' | sed 's/^/pulled: /'; echo
"""


def test_a_hostile_guest_cannot_write_or_read_outside_the_share(
    tmp_path: Path, guest_image: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret\n")
    app = HOSTILE_APP.replace('"$HOSTILE_ABS"', str(outside / "escaped"))
    slot, _project, config = make_guest_slot(tmp_path, guest_image, app, {})
    shared = slot / "shared"
    (shared / "link_out").symlink_to(outside)  # a directory symlink to outside the share
    (shared / "victim").symlink_to(outside / "secret")  # replaced as a link, never followed
    (shared / "secret_link").symlink_to(outside / "secret")  # never served
    with qemu_backend(_serial(config)) as vm:
        vm.start()
        watch = GuestWatch(vm)
        status = watch.wait_stopped(180)
        assert status.state is VmState.POWERED_OFF, watch.lines
    replies = {
        line.split(":", 1)[0].removeprefix("hostile "): line.split(": ", 1)[1]
        for line in watch.lines
        if line.startswith("hostile ")
    }
    for label in ("dotdot", "deep", "absolute", "symlink", "huge", "garbage"):
        assert replies[label].startswith("ERR "), (label, replies)
    assert replies["over-link"] == "GO" and replies["over-link sent"] == "OK"
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").read_text() == "host secret\n"
    assert not (slot / "escaped").exists() and not (tmp_path / "escaped").exists()
    assert (shared / "victim").read_bytes() == b"\0" * 4 and not (shared / "victim").is_symlink()
    pulled = next(line for line in watch.lines if line.startswith("pulled: "))
    assert "secret_link" not in pulled and "link_out" not in pulled and "boinc_app" in pulled


# An app that breaks one transfer the way lost bytes do: it announces 1 MiB, sends 4 KiB and
# no trailer, and leaves. Every later file must still reach the host (the host drops the cut
# transfer and listens for HELLO again; the agent's next windows are in step).
BROKEN_TRANSFER_APP = """#!/bin/sh
. /opt/vmwrapper/vmwrapper-lib.sh
find_serial_port || { echo "no port"; exit 1; }
n=0
until serial_open; do  # the agent may hold the port for its own window
    n=$((n + 1)); [ $n -lt 40 ] || { echo "no window"; exit 1; }; sleep 0.2
done
printf 'PUT 1048576 1.0 %s\\n' "$(printf broken.bin | od -An -tx1 -v | tr -d ' \\n')" >&3
IFS= read -r -t 30 reply <&3
echo "broken transfer: $reply"
head -c 4096 /dev/zero >&3
serial_close
echo "written after the break" > after_break
i=0
while [ $i -lt 4 ]; do i=$((i + 1)); echo "0.$i" > fraction_done; sleep 1; done
echo done > trigger_done
"""


def test_the_share_stays_in_step_after_a_transfer_cut_short(
    tmp_path: Path, guest_image: Path, caplog: pytest.LogCaptureFixture
) -> None:
    slot, _project, config = make_guest_slot(tmp_path, guest_image, BROKEN_TRANSFER_APP, {})
    shared = slot / "shared"
    with (
        caplog.at_level("WARNING", logger="vmwrapper.shared_dir.fileservice"),
        qemu_backend(_serial(config)) as vm,
    ):
        vm.start()
        watch = GuestWatch(vm)
        status = watch.wait_stopped(180)
    assert "broken transfer: GO" in watch.lines, watch.lines
    # the final push reached the host: the guest powered off with the app's status
    assert status.state is VmState.POWERED_OFF and status.exit_code == 0, watch.lines
    dropped = [r for r in caplog.records if getattr(r, "event", "") == "share_transfer_dropped"]
    assert [getattr(r, "path", "") for r in dropped] == ["broken.bin"], caplog.text
    assert (shared / "after_break").read_text() == "written after the break\n"
    assert (shared / "fraction_done").read_text() == "0.4\n"
    assert (shared / "trigger_done").read_text() == "done\n"
    assert not (shared / "broken.bin").exists()
    assert not list(shared.glob(".vmwrapper-tmp.*"))


# A big result, then a while later a small one: the big one's push is what the test breaks.
BIG_RESULT_APP = """#!/bin/sh
cp big_in .vmwrapper-tmp.big && mv .vmwrapper-tmp.big big_out
sleep 12
echo "after the big one" > after
"""


def test_the_guest_sends_a_file_again_after_its_transfer_was_dropped(
    tmp_path: Path, guest_image: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The VM stopped in the middle of a push behind the file service's back (a plain QMP
    stop, not the back end's pause): to the host the bytes stopped coming, as when they are
    lost, so it drops the transfer and listens for HELLO; the guest, resumed, gets no OK and
    sends the file again in a new window, and everything arrives whole."""
    slot, _project, config = make_guest_slot(tmp_path, guest_image, BIG_RESULT_APP, {})
    config = replace(_serial(config), memory_mb=512)
    shared = slot / "shared"
    big = os.urandom(BIG)
    (shared / "big_in").write_bytes(big)

    def dropped() -> list[str]:
        return [
            str(getattr(r, "path", ""))
            for r in caplog.records
            if getattr(r, "event", "") == "share_transfer_dropped"
        ]

    with (
        caplog.at_level("WARNING", logger="vmwrapper.shared_dir.fileservice"),
        qemu_backend(config) as vm,
    ):
        vm.start()
        watch = GuestWatch(vm)
        assert wait_for((shared / ".vmwrapper-tmp.big_out").exists, timeout=120, interval=0.005)
        vm.qmp("stop")  # the file service is not told: to it, the guest went quiet
        try:
            assert wait_for(lambda: dropped() == ["big_out"], timeout=30), caplog.text
        finally:
            vm.qmp("cont")
        status = watch.wait_stopped(180)
    assert status.state is VmState.POWERED_OFF and status.exit_code == 0, watch.lines
    assert any("out of step after ./big_out; sending it again" in x for x in watch.lines), (
        watch.lines
    )
    assert dropped() == ["big_out"]  # once: the second window was in step
    assert (shared / "big_out").read_bytes() == big
    assert (shared / "after").read_text() == "after the big one\n"
    assert not list(shared.glob(".vmwrapper-tmp.*"))


#: The fault tests' counting job, its shared directory over the serial transport.
SERIAL_COUNTING_JOB = COUNTING_JOB.replace(
    "<enable_shared_directory/>",
    "<enable_shared_directory/>\n  <vmwrapper_share_transport>serial</vmwrapper_share_transport>",
)


def test_the_wrapper_runs_a_serial_job_checkpoints_it_and_restores_it_after_kill_9(
    tmp_path: Path, guest_image: Path
) -> None:
    """vmwrapper run under the harness: progress and the completion trigger through the
    serial share; checkpoints while the guest pushes (none refused); the wrapper killed, the
    task restarted from its checkpoint, the output of an uninterrupted run."""
    app = package_app(tmp_path / "app", guest_image, RESUMABLE_APP, SERIAL_COUNTING_JOB)
    work = tmp_path / "client"
    slot = work / "slots" / "0"
    killed: list[int] = []
    fractions: list[float] = []

    def kill_after_checkpoint(progress: Progress) -> None:
        fractions.append(progress.fraction_done)
        result = slot / "shared" / "result"
        if killed or progress.checkpoint_cpu_time <= 0 or not result.exists():
            return
        if result.read_text().count("step") >= 4:
            killed.extend(kill_wrapper(slot))

    report = run(app, work, on_progress=kill_after_checkpoint)
    assert killed, "the wrapper was never killed"
    assert report.episodes == 2, report.message + report.stderr_tail
    assert report.finish_status == 0 and report.finish_message == "Counted to 10."
    assert any(0.1 <= f <= 0.9 for f in fractions)
    assert output_text(report) == EXPECTED_OUTPUT
    names = [e["event"] for e in events(slot)]
    assert names.count("checkpoint") >= 2
    # never refused, never the disks-only fallback: nothing is mounted in the guest
    assert CHECKPOINT_REFUSED not in names and CHECKPOINT_DISKS not in names, names
    starts = events(slot, "vm_started")
    assert str(starts[-1]["snapshot"]).startswith("boinc_")  # the second episode restored
    no_qemu_left(slot)
