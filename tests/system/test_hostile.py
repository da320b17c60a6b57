"""A hostile guest: a real VM whose boinc_app attacks the host through the shared directory.

The app (root in the guest) mounts the 9p share itself, outside the agent's sync windows, and
plants on the host side:

* symlinks to host files outside the slot named like the output (``result``), the trickle,
  temporary-exit, progress and intermediate-upload files, and a directory symlink ``up`` → ``/``;
* an 8 MiB trickle trigger file and a completion file of junk with a 200 kB message;
* 2000 small files, names containing ``..``, and writes through ``..`` and through the
  planted symlinks (resolved by the guest kernel, so they land in the guest).

The job must end with a clear result and show that nothing outside the slot was read
(the secret never appears in outputs, uploads, trickles, the finish message, stderr or the
events), written (the host files outside are unchanged; no new files next to the slot) or
uploaded, that reads were bounded (the trickle is at most 64 KiB, the wrapper's memory stays
small), and that the wrapper leaves no symlink in ``shared/`` for the client to collect.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from pathlib import Path

import psutil
import pytest

from helpers.common import GUEST_MEMORY_MB
from helpers.fault_fixtures import (
    events,
    no_qemu_left,
    package_app,
    run,
    wrapper_procs,
)
from vmwrapper.shared_dir.triggers import MAX_TRIGGER_BYTES

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]

HOSTILE_JOB = f"""<vbox_job>
  <os_name>Linux26_64</os_name>
  <vmwrapper_backends>qemu</vmwrapper_backends>
  <vmwrapper_software_emulation/>
  <memory_size_mb>{GUEST_MEMORY_MB}</memory_size_mb>
  <enable_shared_directory/>
  <completion_trigger_file>done</completion_trigger_file>
  <temporary_exit_trigger_file>later</temporary_exit_trigger_file>
  <trickle_trigger_file>trickle_a</trickle_trigger_file>
  <trickle_trigger_file>big_trickle</trickle_trigger_file>
  <intermediate_upload_file>partial</intermediate_upload_file>
  <fraction_done_filename>progress</fraction_done_filename>
  <minimum_checkpoint_interval>600</minimum_checkpoint_interval>
</vbox_job>
"""

HOSTILE_APP = """#!/bin/sh
. /opt/vmwrapper/vmwrapper-lib.sh
H=/run/hostile
# the virtio-9p channel takes one mount at a time: wait for the agent's window to close
n=0
until share_mount shared $H 2>/dev/null; do
  n=$((n+1)); [ $n -gt 100 ] && exit 1; sleep 0.1
done
echo "HOSTILE: mounted the host share"
# symlinks named like the output and every file the wrapper reads or uploads
for name in result trickle_a partial progress; do ln -s "@SECRET@" "$H/$name"; done
ln -s "@LATER@" "$H/later"
ln -s / "$H/up"
ln -s ../../../../../../../../.. "$H/dotdot"
# names with ..
echo x > "$H/..hidden"; echo x > "$H/a..b"; echo x > "$H/...";
mkdir -p "$H/sub/.."; echo x > "$H/sub/../escaped_via_dotdot"
# writes through .. and through the planted symlinks: the guest kernel resolves them
echo pwned > "$H/../pwned_parent" 2>/dev/null
echo pwned > "$H/up/tmp/pwned_root" 2>/dev/null
echo pwned > "$H/dotdot/tmp/pwned_dotdot" 2>/dev/null
cat "$H/result" 2>/dev/null | head -c 80; echo " <- what the guest reads through result"
# thousands of files
mkdir -p "$H/many"
i=0; while [ $i -lt 2000 ]; do : > "$H/many/f$i"; i=$((i+1)); done
# a huge trickle trigger (8 MiB, 128 times what the wrapper reads)
dd if=/dev/zero bs=1M count=8 2>/dev/null | tr '\\000' 'A' > "$H/big_trickle"
umount $H
echo "HOSTILE: planted"
sleep 6
# a malformed completion file: junk after the code, binary junk, a 200 kB message
{
  echo "0junk"; printf '\\001\\002\\377junk\\n'
  head -c 200000 /dev/zero | tr '\\000' 'M'
} > done
sleep 600
"""


def walk(top: Path) -> list[Path]:
    """Every path under ``top``, never following a symlink (``up`` points at ``/``)."""
    found = []
    for root, dirs, names in os.walk(top, followlinks=False):
        found += [Path(root, n) for n in (*dirs, *names)]
    return found


def test_a_hostile_guest_cannot_reach_outside_the_slot(
    default_guest_image: Path,
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = f"SECRET-{secrets.token_hex(16)}"
    secret_file = outside / "secret.txt"
    secret_file.write_text(secret + "\n")
    later_file = outside / "later.txt"  # a temporary-exit request, if the wrapper followed
    later_file.write_text(f"1\n0\n{secret}\n")
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (secret_file, later_file)}
    app_script = HOSTILE_APP.replace("@SECRET@", str(secret_file)).replace(
        "@LATER@", str(later_file)
    )
    app = package_app(tmp_path / "pkg", default_guest_image, app_script, HOSTILE_JOB,
                      outputs=("result", "partial"))  # fmt: skip
    work = tmp_path / "client"
    slot = work / "slots" / "0"
    peak_rss: list[int] = [0]
    stop = threading.Event()

    def watch_memory() -> None:
        while not stop.wait(0.1):
            for proc in wrapper_procs(slot):
                with contextlib.suppress(psutil.Error):
                    peak_rss[0] = max(peak_rss[0], proc.memory_info().rss)

    watcher = threading.Thread(target=watch_memory, daemon=True)
    watcher.start()
    try:
        report = run(app, work, max_episodes=2)
    finally:
        stop.set()
        watcher.join(timeout=5)
    guest_lines = [str(e.get("message")) for e in events(slot, "guest_log")]
    assert any("HOSTILE: planted" in line for line in guest_lines), guest_lines[-20:]

    # The job ended through the (malformed) completion file, in one run: the symlinked
    # temporary-exit request pointing outside was never read.
    assert report.episodes == 1 and not report.temporary_exits, report.message
    assert report.finish_status == 0  # "0junk": the code is read as atoi would

    # Nothing outside was read: the secret is nowhere the wrapper or the client put anything.
    texts = [report.message, report.finish_message, report.stderr_tail]
    texts += [t.body for t in report.trickles]
    texts += [str(e) for e in events(slot)]
    for out in report.outputs:
        texts.append(Path(out.destination).read_text(errors="replace"))
    uploads = work / "uploads"
    for path in uploads.rglob("*") if uploads.exists() else []:
        if path.is_file():
            texts.append(path.read_text(errors="replace"))
    for text in texts:
        assert secret not in text

    # Reads were bounded: the 8 MiB trickle arrived cut to 64 KiB (or not at all) and the
    # wrapper never held it in memory.
    assert all(len(t.body) <= MAX_TRIGGER_BYTES + 1024 for t in report.trickles)
    assert peak_rss[0] < 120 * 1024 * 1024, peak_rss[0]

    # Nothing outside was written: the host files are unchanged, nothing new next to the
    # slot or in /tmp (the guest's writes through .. and symlinks stayed in the guest).
    for path, (mtime, data) in before.items():
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == data
    assert sorted(p.name for p in outside.iterdir()) == ["later.txt", "secret.txt"]
    assert not [p for p in walk(tmp_path) if p.name.startswith("pwned")]
    assert not [p for p in Path("/tmp").iterdir() if p.name.startswith("pwned")]
    assert not (slot / "escaped_via_dotdot").exists()

    # Nothing outside can be collected or uploaded later: no symlink is left in shared/, so
    # the outputs the guest replaced by symlinks are missing (a clear -163), not host files.
    shared = slot / "shared"
    assert not [p for p in walk(shared) if p.is_symlink()]
    assert report.finish_status == 0 and report.exit_status != 0, report.message
    assert "absent" in report.message, report.message
    assert len(list((shared / "many").iterdir())) == 2000  # the guest's plain files stay
    no_qemu_left(slot)
