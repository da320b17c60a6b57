"""vmwrapper.hostos's Windows I/O, run as Windows Python under Wine (tests/windows/winchecks.py):
named file mappings between two processes, the lock file opened unshared, process liveness
without ``os.kill``, byte-range advisory locks, and VBoxManage.exe found through the registry
(docs/windows.md#how-it-is-tested)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers.wine_fixtures import ROOT, Toolchain, windows_path

CHECKS = ROOT / "tests" / "windows" / "winchecks.py"
VBOX_KEY = r"HKLM\SOFTWARE\Oracle\VirtualBox"


def check(toolchain: Toolchain, name: str, *args: str) -> dict[str, Any]:
    done = toolchain.run([str(toolchain.python), windows_path(CHECKS), name, *args], timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_process_liveness_without_os_kill(wine_toolchain: Toolchain) -> None:
    facts = check(wine_toolchain, "processes")
    assert facts["self_alive"] is True and facts["exited_alive"] is False
    assert facts["killed_exit_code"] == 1  # hostos.kill_process: TerminateProcess(1)
    assert facts["nofollow"] == 0  # Windows has no O_NOFOLLOW


def test_lock_file_excludes_a_second_app_and_is_deleted(
    wine_toolchain: Toolchain, tmp_path: Path
) -> None:
    facts = check(wine_toolchain, "lockfile", windows_path(tmp_path))
    assert facts["other"].startswith("busy ") and "second copy of the app" in facts["other"]
    assert facts["held_seen"] is True
    assert facts["exists_after_release"] is False


def test_named_segment_between_client_and_app(wine_toolchain: Toolchain) -> None:
    facts = check(wine_toolchain, "segment")
    assert facts["numbers"] == [0, 1]  # free names in a fresh client: the first two
    assert facts["taken_again"] is False  # a name in use is never shared by two tasks
    assert facts["app_read"] == "<heartbeat/>"
    assert facts["client_read"] == "<fraction_done>0.5</fraction_done>"
    assert facts["missing"] == "None"  # no mapping: the app runs standalone


def test_advisory_locks_between_processes(wine_toolchain: Toolchain, tmp_path: Path) -> None:
    facts = check(wine_toolchain, "advisory_locks", windows_path(tmp_path / "lock"))
    assert facts == {"mine": True, "other_while_held": "False", "other_after": "True"}


def test_vboxmanage_from_the_registry_install_dir(
    wine_toolchain: Toolchain, tmp_path: Path
) -> None:
    install = tmp_path / "Oracle VirtualBox"
    install.mkdir()
    (install / "VBoxManage.exe").write_bytes(b"")
    win_dir = windows_path(install) + "\\"
    added = wine_toolchain.run(
        ["reg", "add", VBOX_KEY, "/v", "InstallDir", "/t", "REG_SZ", "/d", win_dir, "/f"], 60
    )
    assert added.returncode == 0, added.stdout + added.stderr
    try:
        facts = check(wine_toolchain, "vboxmanage", windows_path(tmp_path))
    finally:
        wine_toolchain.run(["reg", "delete", VBOX_KEY, "/f"], 60)
    assert facts["executable"] == win_dir + "VBoxManage.exe"
    assert facts["path"].startswith(windows_path(install) + ";")  # first on PATH


def test_vboxmanage_timeout_ends_the_command_and_its_children(
    wine_toolchain: Toolchain, tmp_path: Path
) -> None:
    """The runner's tree (hostos.spawn_tree: a job object here, no os.killpg): a timed-out
    command and the child that holds its output pipe both end, and the runner returns within
    its timeout plus a moment, not after the pipe's 5 s grace."""
    facts = check(wine_toolchain, "vbox_runner_tree", windows_path(tmp_path))
    assert facts["normal"] == [0, "ok"], facts  # a call that ends by itself: its output
    assert facts["timed_out"] is True, facts
    assert facts["output"].startswith("child "), facts
    assert facts["took"] < 15 + 4, facts
    assert facts["child_alive"] is False, facts
