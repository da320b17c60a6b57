"""Boot the built guest image with plain QEMU (TCG) and check the guest contract
(docs/guest-image.md#what-the-guest-does): the app reads `in` and writes `out` through the 9p share,
its output reaches the console, the guest powers off after `VMWRAPPER_GUEST_DONE`; a missing share
is a `VMWRAPPER_GUEST_ERROR` and a non-zero QEMU exit; snapshots succeed while the sync-window agent
runs (retrying the refusals), and a restored snapshot finishes the job."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from qemu.qmp.legacy import QEMUMonitorProtocol

from helpers.common import wait_for
from helpers.image_fixtures import (
    GuestRun,
    boot_guest,
    guest_image,
    make_overlay,
    qemu_argv,
    running_guest,
)
from vmwrapper.images import ExtraFile, ImageRecipe, convert
from vmwrapper.images.recipe import DEFAULT_CMDLINE

pytestmark = pytest.mark.system

UPPERCASE_APP = """#!/bin/sh
echo "hello-app: reading in"
tr a-z A-Z < in > out
echo "hello-app: wrote $(wc -c < out) bytes"
exit 3
"""


def make_shared(root: Path, app: str, inputs: dict[str, str]) -> Path:
    shared = root / "shared"
    shared.mkdir(parents=True)
    (shared / "boinc_app").write_text(app)
    (shared / "boinc_app").chmod(0o755)
    for name, text in inputs.items():
        (shared / name).write_text(text)
    return shared


def floppyio_image(path: Path, text: bytes) -> Path:
    """vboxwrapper's floppyio layout: host->guest text at 0, flag 0x01 at offset 28670."""
    data = bytearray(28672)
    data[: len(text)] = text
    data[28670] = 1
    path.write_bytes(bytes(data))
    return path


def test_app_reads_in_writes_out_and_guest_powers_off(
    default_guest_image: Path,
    tmp_path: Path,
) -> None:
    app = UPPERCASE_APP.replace(
        "exit 3",
        # the same boot checks the floppy and the on-demand `project` share
        "cp /root/floppy_data from_floppy\n"
        "vmwrapper-with-share project cat /root/project/table > from_project\n"
        "exit 3",
    )
    shared = make_shared(tmp_path, app, {"in": "forty-two\n"})
    project = tmp_path / "project"
    project.mkdir()
    (project / "table").write_text("project data\n")
    floppy = floppyio_image(tmp_path / "floppy.img", b"<app_init_data>42</app_init_data>\n")
    extra = [
        "-virtfs", f"local,path={project},mount_tag=project,security_model=none,readonly=on",
        "-drive", f"file={floppy},if=floppy,format=raw,readonly=on",
    ]  # fmt: skip
    run = boot_guest(default_guest_image, tmp_path / "vm", shared=shared, extra=extra)
    assert run.returncode == 0, run.console
    assert (shared / "out").read_text() == "FORTY-TWO\n"
    assert (shared / "from_floppy").read_text() == "<app_init_data>42</app_init_data>\n"
    assert (shared / "from_project").read_text() == "project data\n"
    assert "hello-app: reading in" in run.lines  # the app's stdout is on the serial console
    assert "hello-app: wrote 10 bytes" in run.lines
    assert run.done_status == 3  # boinc_app's exit status
    assert run.errors == []
    assert not [p for p in shared.iterdir() if p.name.startswith(".vmwrapper-tmp")]


def test_missing_share_is_an_error_marker_and_a_failed_qemu(
    default_guest_image: Path,
    tmp_path: Path,
) -> None:
    run: GuestRun = boot_guest(default_guest_image, tmp_path / "vm", shared=None)
    assert run.returncode != 0  # pvpanic + -action panic=exit-failure
    assert run.errors and "shared" in run.errors[0]
    assert run.done_status is None


COUNTER_APP = """#!/bin/sh
# Counts to 40, one step every 0.25 s, each step in /root/shared/progress; then `out`.
i=0
while [ $i -lt 40 ]; do
    i=$((i + 1))
    echo $i > progress
    sleep 0.25
done
echo "counted to $i" > out
"""


def _free_qmp_path(tmp_path: Path) -> Path:
    path = tmp_path / "qmp.sock"
    path.unlink(missing_ok=True)
    return path


def _connect(sock: Path) -> QEMUMonitorProtocol:
    assert wait_for(sock.exists, 30)
    qmp = QEMUMonitorProtocol(str(sock))
    for _ in range(50):
        try:
            qmp.connect()
            return qmp
        except OSError:
            time.sleep(0.1)
    raise AssertionError("QMP did not answer")


def _savevm(qmp: QEMUMonitorProtocol, tag: str) -> str:
    """HMP savevm through QMP; '' on success, else QEMU's error text."""
    reply = qmp.cmd_raw("human-monitor-command", {"command-line": f"savevm {tag}"})
    assert "error" not in reply, reply
    return str(reply.get("return", "")).strip()


def test_snapshot_while_the_agent_runs_and_restore_finishes_the_job(
    default_guest_image: Path,
    tmp_path: Path,
) -> None:
    shared = make_shared(tmp_path, COUNTER_APP, {})
    vm = tmp_path / "vm"
    vm.mkdir()
    # QEMU's vdi driver blocks migration, hence every snapshot, even as a read-only backing
    # file: snapshot over a qcow2 copy (the QEMU back end converts the same way).
    base = vm / "base.qcow2"
    convert(default_guest_image, base, "qcow2")
    overlay = make_overlay(base, vm / "overlay.qcow2")
    console = vm / "console.log"
    sock = _free_qmp_path(vm)
    argv = qemu_argv(overlay, console, shared=shared,
                     extra=["-qmp", f"unix:{sock},server=on,wait=off"])  # fmt: skip

    refusals: list[str] = []
    snapshot_progress = None
    with running_guest(argv) as proc:
        qmp = _connect(sock)
        try:
            # Wait until the app runs and the agent has pushed progress at least twice.
            assert wait_for(lambda: (shared / "progress").exists(), 120), console.read_text()
            assert wait_for(lambda: int((shared / "progress").read_text() or 0) >= 5, 60)
            for attempt in range(40):  # a refusal means a sync window was open: retry soon
                error = _savevm(qmp, "mid")
                if not error:
                    break
                refusals.append(error)
                time.sleep(0.05 * (attempt + 1))
            else:
                pytest.fail(f"every snapshot was refused: {refusals[-3:]}")
            snapshot_progress = int((shared / "progress").read_text())
            assert "VMWRAPPER_GUEST_DONE" not in console.read_text()  # taken mid-job
        finally:
            qmp.close()
        os.kill(proc.pid, signal.SIGKILL)  # the host dies; the snapshot is all that is left
        proc.wait(timeout=30)
    for text in refusals:  # the only acceptable refusal is the 9p mount (a sync window)
        assert "mounted" in text or "Migration is disabled" in text, text
    assert not (shared / "out").exists()
    assert snapshot_progress is not None and snapshot_progress < 40

    # Restart from the snapshot: no new boot, the counter goes on, the job finishes.
    console2 = vm / "console2.log"
    argv2 = qemu_argv(overlay, console2, shared=shared, extra=["-loadvm", "mid"])
    with running_guest(argv2) as proc:
        assert proc.wait(timeout=240) == 0, console2.read_text()
    text = console2.read_text()
    assert "VMWRAPPER_GUEST_DONE status=0" in text
    assert "VMWRAPPER_GUEST: booted" not in text  # resumed, not rebooted
    assert (shared / "out").read_text() == "counted to 40\n"
    assert (shared / "progress").read_text() == "40\n"


def test_added_files_and_debs_are_in_the_image(tmp_path: Path) -> None:
    # A tiny Debian package built here (dpkg-deb --build), and a file added with --add.
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        "Package: vmwrapper-test-tool\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: test <t@example.org>\nDescription: test package\n"
    )
    tool = pkg / "usr" / "local" / "bin" / "hello-tool"
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\necho hello from the deb\n")
    tool.chmod(0o755)
    deb = tmp_path / "vmwrapper-test-tool_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(pkg), str(deb)],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    data = tmp_path / "data.txt"
    data.write_text("added with --add\n")
    # vmwrapper.vboxlog: the markers go to I/O port 0x504 as under VirtualBox (captured here
    # by QEMU's isa-debugcon, as VirtualBox's VMMDev would put them in VBox.log).
    recipe = ImageRecipe(
        extra_files=(ExtraFile.parse(f"{data}:/opt/app/data.txt"),),
        debs=(deb,),
        fmt="qcow2",
        cmdline=f"{DEFAULT_CMDLINE} vmwrapper.vboxlog",
    )
    image = guest_image(recipe)
    assert image.suffix == ".qcow2"
    # The same boot also mounts a CD-ROM (ISO contextualization) with the image's helper.
    iso_dir = tmp_path / "iso"
    iso_dir.mkdir()
    (iso_dir / "context.txt").write_text("from the iso\n")
    iso = tmp_path / "context.iso"
    subprocess.run(["genisoimage", "-quiet", "-R", "-J", "-o", str(iso), str(iso_dir)],
                   check=True, timeout=60)  # fmt: skip
    app = (
        "#!/bin/sh\nhello-tool > out\ncat /opt/app/data.txt >> out\n"
        "vmwrapper-mount-cdrom && cat /root/cdrom/context.txt >> out\n"
    )
    shared = make_shared(tmp_path, app, {})
    port_log = tmp_path / "port-0x504.log"
    devices = [
        "-drive", f"file={iso},if=none,id=cd0,format=raw,readonly=on",
        "-device", "ide-cd,drive=cd0,bus=ide.1,unit=0",
        "-chardev", f"file,id=vboxlog,path={port_log}",
        "-device", "isa-debugcon,iobase=0x504,chardev=vboxlog",
    ]  # fmt: skip
    run = boot_guest(image, tmp_path / "vm", shared=shared, extra=devices)
    assert run.returncode == 0, run.console
    assert (shared / "out").read_text() == ("hello from the deb\nadded with --add\nfrom the iso\n")
    assert port_log.read_text() == "VMWRAPPER_GUEST_DONE status=0\n"


def test_power_button_powers_the_guest_off_at_once(
    default_guest_image: Path,
    tmp_path: Path,
) -> None:
    # The wrapper's graceful power-off is an ACPI power button press (QMP system_powerdown).
    # The same boot has an e1000 NIC (vm_network_driver 82540EM, VirtualBox's default) on
    # QEMU's user-mode network: the guest loads its driver and takes a DHCP lease.
    shared = make_shared(tmp_path, "#!/bin/sh\necho app-started\nsleep 600\n", {})
    vm = tmp_path / "vm"
    vm.mkdir()
    overlay = make_overlay(default_guest_image, vm / "overlay.qcow2")
    console = vm / "console.log"
    sock = _free_qmp_path(vm)
    extra = [
        "-qmp", f"unix:{sock},server=on,wait=off",
        "-netdev", "user,id=n0", "-device", "e1000,netdev=n0",
    ]  # fmt: skip
    argv = qemu_argv(overlay, console, shared=shared, extra=extra)
    with running_guest(argv) as proc:
        qmp = _connect(sock)
        try:
            assert wait_for(lambda: "app-started" in console.read_text(), 180), console.read_text()
            qmp.cmd_raw("system_powerdown")
        finally:
            qmp.close()
        assert proc.wait(timeout=60) == 0  # not a QMP quit or a kill: the guest powered off
    text = console.read_text()
    assert "VMWRAPPER_GUEST: power button pressed: powering off" in text
    assert "VMWRAPPER_GUEST: network: eth0 10.0.2.15/24" in text
    assert "VMWRAPPER_GUEST_DONE" not in text  # the app did not finish
