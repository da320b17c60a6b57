"""The guest's sync-window agent (src/vmwrapper/guest/vmwrapper-lib.sh), run on the host by
busybox sh with busybox's own applets (as in the guest), the 9p mount replaced by a plain
directory. Fast; proves the file-level rules the VM tests cannot time exactly: only new or
changed regular files are pushed, never symlinks or temp names, oldest first, through a temp
name; the final push is authoritative after a restore."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

LIB = Path(__file__).resolve().parents[2] / "src" / "vmwrapper" / "guest" / "vmwrapper-lib.sh"
BUSYBOX = shutil.which("busybox") or "/bin/busybox"


@pytest.fixture(scope="module")
def applets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PATH directory of busybox applet links: the guest's userland on the host."""
    bindir = tmp_path_factory.mktemp("busybox-bin")
    listing = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True)
    for applet in listing.stdout.split():
        (bindir / applet).symlink_to(BUSYBOX)
    return bindir


class Agent:
    def __init__(self, root: Path, applets: Path) -> None:
        self.root = root
        self.applets = applets
        self.work = root / "work"  # the guest's /root/shared
        self.host = root / "host"  # the host's shared dir (the 9p export)
        for d in (self.work, self.host, root / "state"):
            d.mkdir()

    def sh(self, script: str) -> str:
        prelude = f"""
. {LIB}
WORK={self.work}; HOSTMNT={self.host}; STATE={self.root / "state"}
share_mount() {{ mkdir -p "$2"; }}  # the host dir stands in for the 9p mount
umount() {{ echo window-closed >> {self.root / "windows.log"}; }}
"""
        proc = subprocess.run(
            [BUSYBOX, "sh", "-c", prelude + script],
            env={"PATH": str(self.applets), "TZ": "UTC"},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr + proc.stdout
        return proc.stdout

    def windows(self) -> int:
        log = self.root / "windows.log"
        return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture
def agent(tmp_path: Path, applets: Path) -> Agent:
    return Agent(tmp_path, applets)


def test_pull_copies_the_host_share_in(agent: Agent) -> None:
    (agent.host / "in").write_text("input\n")
    (agent.host / "sub").mkdir()
    (agent.host / "sub" / "data").write_text("x")
    out = agent.sh("share_pull")
    assert "pulled 3 files" in out or "pulled 2 files" in out
    assert (agent.work / "in").read_text() == "input\n"
    assert (agent.work / "sub" / "data").read_text() == "x"


def test_push_sends_only_new_or_changed_regular_files(agent: Agent) -> None:
    (agent.host / "in").write_text("input\n")
    agent.sh("share_pull")
    (agent.work / "out").write_text("result\n")
    (agent.work / "sub").mkdir()
    (agent.work / "sub" / "deep").write_text("deep\n")
    (agent.work / "link").symlink_to("/etc/passwd")
    (agent.work / ".vmwrapper-tmp.partial").write_text("half")
    agent.sh("share_push_changed")
    assert (agent.host / "out").read_text() == "result\n"
    assert (agent.host / "sub" / "deep").read_text() == "deep\n"
    assert not (agent.host / "link").exists() and not (agent.host / "link").is_symlink()
    assert sorted(p.name for p in agent.host.iterdir()) == ["in", "out", "sub"]
    windows = agent.windows()
    agent.sh("share_push_changed")  # nothing changed: no window at all
    assert agent.windows() == windows


def test_a_same_size_rewrite_is_pushed_again(agent: Agent) -> None:
    agent.sh("share_pull")
    (agent.work / "progress").write_text("1\n")
    agent.sh("share_push_changed")
    (agent.work / "progress").write_text("2\n")  # same size, same second
    agent.sh("share_push_changed")
    assert (agent.host / "progress").read_text() == "2\n"


def test_a_pushed_file_keeps_the_guests_modification_time(agent: Agent) -> None:
    # the wrapper tells an echo (one version pushed again) from a new write of the same text
    # by this time (docs/compatibility.md#runtime)
    agent.sh("share_pull")
    trickle = agent.work / "trickle_a"
    trickle.write_text("<ping/>\n")
    os.utime(trickle, ns=(1_800_000_000_123_456_789,) * 2)
    agent.sh("share_push_changed")
    assert (agent.host / "trickle_a").stat().st_mtime_ns == 1_800_000_000_123_456_789
    (agent.host / "trickle_a").unlink()  # the wrapper consumed it
    agent.sh("share_final_push")  # the echo: same text, same time
    assert (agent.host / "trickle_a").stat().st_mtime_ns == 1_800_000_000_123_456_789


def test_files_go_out_oldest_first(agent: Agent) -> None:
    agent.sh("share_pull")
    for name in ("zz_result", "aa_trigger"):  # the trigger is written last
        (agent.work / name).write_text(name)
        time.sleep(0.05)  # a later clock tick (within one tick, tmpfs inode order decides)
    order = agent.sh('share_list > "$STATE/now"; share_changed "$STATE/pulled" "$STATE/now"')
    assert order.split() == ["./zz_result", "./aa_trigger"]


def test_final_push_restores_the_hosts_copy_after_a_snapshot_restore(agent: Agent) -> None:
    (agent.host / "in").write_text("input\n")
    agent.sh("share_pull")
    (agent.work / "out").write_text("from this run\n")
    agent.sh("share_push_changed")
    # A killed run that had gone further wrote a newer out to the host; the restored guest
    # already pushed its out before the snapshot, so only the final push can set it right.
    (agent.host / "out").write_text("from a run that was thrown away\n")
    (agent.host / "in").write_text("the host changed the input meanwhile\n")
    agent.sh("share_final_push")
    assert (agent.host / "out").read_text() == "from this run\n"
    # `in` is unchanged in the guest: not pushed back over the host's newer copy
    assert (agent.host / "in").read_text() == "the host changed the input meanwhile\n"
    assert not [p for p in agent.host.iterdir() if p.name.startswith(".vmwrapper-tmp")]


def test_agent_loop_pushes_about_once_a_second_and_stops_promptly(agent: Agent) -> None:
    script = """
share_pull
share_agent_start
echo 1 > "$WORK/progress"
sleep 2.5
echo 2 > "$WORK/progress"
t0=$(date +%s)
share_agent_stop
share_final_push
echo "stop-took=$(( $(date +%s) - t0 ))"
"""
    out = agent.sh(script)
    assert (agent.host / "progress").read_text() == "2\n"
    assert "stop-took=0" in out or "stop-took=1" in out
    assert agent.windows() >= 2  # one window for the first value, one at the end
    assert os.listdir(agent.root / "state")  # the agent kept its lists there


def _run_share_mount(
    tmp_path: Path, applets: Path, refusals: int, tries: int
) -> subprocess.CompletedProcess[str]:
    """share_mount with a `mount` stand-in that refuses REFUSALS times (as QEMU does while it
    saves a snapshot), then succeeds. A shell function: busybox sh runs applets before PATH."""
    count = tmp_path / "attempts"
    script = f"""
. {LIB}
MOUNT_TRIES={tries}
mount() {{
    n=$(cat {count} 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > {count}
    [ "$n" -gt {refusals} ] || {{ echo "mount: Device or resource busy" >&2; return 1; }}
}}
share_mount shared {tmp_path / "mnt"}
"""
    return subprocess.run(
        [BUSYBOX, "sh", "-c", script],
        env={"PATH": str(applets)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_share_mount_waits_out_a_snapshot(tmp_path: Path, applets: Path) -> None:
    proc = _run_share_mount(tmp_path, applets, refusals=3, tries=10)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "attempts").read_text().strip() == "4"


def test_share_mount_gives_up_with_the_error(tmp_path: Path, applets: Path) -> None:
    proc = _run_share_mount(tmp_path, applets, refusals=100, tries=3)
    assert proc.returncode != 0
    assert "Device or resource busy" in proc.stderr
    assert (tmp_path / "attempts").read_text().strip() == "4"  # 3 quiet tries + the last, loud


def test_with_the_whole_slot_shared_the_hosts_own_files_stay_out(agent: Agent) -> None:
    # share_slot_dir: the host export is the slot, with the wrapper's exclusion list
    from vmwrapper.shared_dir.watch import EXCLUDE_FILE, write_slot_exclusions

    write_slot_exclusions(agent.host)
    private = [
        "vm_image.vdi",
        "vm_disk.qcow2",
        "qemu-console.log",
        "stderr.txt",
        "vbox_checkpoint.xml",
        "events.jsonl",
        "boinc_mmap_file",
        "vm_console.txt",
    ]
    for name in private:
        (agent.host / name).write_text("host only\n")
    (agent.host / "in").write_text("input\n")
    (agent.host / "boinc_app").write_text("#!/bin/sh\n")
    (agent.host / "init_data.xml").write_text("<app_init_data/>\n")
    agent.sh("share_pull")
    assert sorted(p.name for p in agent.work.iterdir()) == ["boinc_app", "in", "init_data.xml"]
    # a guest file named like one of the host's is not pushed over it
    (agent.work / "stderr.txt").write_text("from the guest\n")
    (agent.work / "out").write_text("result\n")
    agent.sh("share_final_push")
    assert (agent.host / "stderr.txt").read_text() == "host only\n"
    assert (agent.host / "out").read_text() == "result\n"
    assert (agent.host / EXCLUDE_FILE).exists()
