"""`make dist`: the standalone wrapper executable, built once, run with no Python around it.

The executable is built with scripts/build-dist.sh (PyInstaller, one file) into a temp dir,
then: it starts in an empty environment; `doctor` reports this host; it packages and lints an
app version with itself as the main program; and the harness (the BOINC client stand-in) runs
that app version on a real QEMU guest with a PATH that holds QEMU but no Python. The guest's
boinc_app also runs the guest-side floppy reader on a floppyio image made by the host.

The last test boots the guest image with the floppyio image on the board's floppy controller
(plain QEMU, no wrapper), reads it through /dev/fd0 with the guest reader, and checks the
guest's vboxmonitor on QEMU's debug console at VirtualBox's log port.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vmwrapper.boinc.init_data import AppInitData
from vmwrapper.context.floppy import build_floppy, cern_payload, write_floppy
from vmwrapper.doctor import cpu_flags, virt_flag
from vmwrapper.harness.job import JobRequest, run_job
from vmwrapper.images import ensure_image

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "scripts" / "build-dist.sh"

JOB = """<vbox_job>
  <os_name>Linux26_64</os_name>
  <vmwrapper_backends>qemu</vmwrapper_backends>
  <vmwrapper_software_emulation/>
  <memory_size_mb>512</memory_size_mb>
  <enable_shared_directory/>
</vbox_job>
"""

APP = """#!/bin/sh
# runs in the guest, in /root/shared
echo "hello from the guest" > out
/opt/vmwrapper/read_floppy.sh --env floppy.img >> out
echo "reader status $?" >> out
"""


@pytest.fixture(scope="module")
def exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dist/vmwrapper, built once for this module (about a minute)."""
    pytest.importorskip("PyInstaller")
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "WORK_DIR": str(out / "build")}
    subprocess.run(
        [str(BUILD_SCRIPT), str(out)],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=900,
        capture_output=True,
    )
    path = out / "vmwrapper"
    assert path.is_file() and os.access(path, os.X_OK)
    return path


def _run(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=300, env=env, cwd=cwd, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_runs_in_an_empty_environment_without_python(exe: Path, tmp_path: Path) -> None:
    hostile = {"PATH": str(tmp_path), "PYTHONHOME": "/nonexistent", "PYTHONPATH": "/nonexistent"}
    assert _run([str(exe), "--version"], env=hostile).strip() == "vmwrapper 0.1.0"
    help_text = _run([str(exe), "--help"], env=hostile)
    for command in ("run", "package", "lint", "doctor"):
        assert command in help_text
    if shutil.which("ldd"):
        libs = _run(["ldd", str(exe)])
        assert "libpython" not in libs  # the interpreter is inside the executable


def test_doctor_reports_this_host(exe: Path) -> None:
    doc = json.loads(_run([str(exe), "doctor", "--json", "--no-boot-probe"]))
    assert doc["backend"] == "qemu"
    has_flag = bool(virt_flag(cpu_flags(Path("/proc/cpuinfo").read_text())))
    if not has_flag:  # lab.md: KVM here is a software nested one: never trusted
        assert doc["accel"] == "tcg"
    names = {c["name"] for c in doc["checks"]}
    assert {"cpu virtualization", "kvm", "qemu", "qemu-img", "memory", "disk"} <= names


def test_standalone_wrapper_runs_a_job_under_the_harness(exe: Path, tmp_path: Path) -> None:
    image = ensure_image()
    src = tmp_path / "src"
    src.mkdir()
    (src / "job.xml").write_text(JOB)
    (src / "app.sh").write_text(APP)
    (src / "app.sh").chmod(0o755)
    aid = AppInitData(user_name="Ada", authenticator="abc_123", userid=42, hostid=7)
    write_floppy(src / "floppy.img", build_floppy(cern_payload(aid)))
    app_dir = tmp_path / "hello" / "x86_64-pc-linux-gnu__vbox64"

    # The executable packages an app version with itself as the main program ...
    _run(
        [
            str(exe),
            "package",
            "--app",
            "hello",
            "--version",
            "2",
            "--job",
            str(src / "job.xml"),
            "--image",
            str(image),
            "--boinc-app",
            str(src / "app.sh"),
            "--wrapper",
            str(exe),
            "--input",
            f"floppy.img={src / 'floppy.img'}",
            "--output",
            "out",
            "--out",
            str(app_dir),
        ]
    )
    assert "0 error(s)" in _run([str(exe), "lint", str(app_dir)])

    # ... which the client stand-in runs with QEMU on PATH and no Python anywhere near it.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("qemu-system-x86_64", "qemu-img"):
        found = shutil.which(tool)
        assert found, f"{tool} missing (scripts/install-deps.sh installs it)"
        (bin_dir / tool).symlink_to(found)
    request = JobRequest(
        app_dir=app_dir,
        workdir=tmp_path / "client",
        extra_env={
            "PATH": str(bin_dir),
            "VMWRAPPER_PYTHON": "/nonexistent/python3",
            "PYTHONPATH": "/nonexistent",
        },
    )
    report = run_job(request)
    assert report.success, report.stderr_tail
    assert "vmwrapper 0.1.0" in report.stderr_tail  # the standalone wrapper wrote stderr.txt
    assert "Guest Log: VMWRAPPER_GUEST_DONE status=0" in report.stderr_tail
    out = Path(next(o.destination for o in report.outputs if o.logical_name == "shared/out"))
    assert out.read_text() == (
        "hello from the guest\n"
        "BOINC_USERNAME='Ada'\n"
        "BOINC_AUTHENTICATOR='abc_123'\n"
        "BOINC_USERID='42'\n"
        "BOINC_HOSTID='7'\n"
        "BOINC_USER_TOTAL_CREDIT='0'\n"
        "BOINC_HOST_TOTAL_CREDIT='0'\n"
        "reader status 0\n"
    )


FLOPPY_APP = r"""#!/bin/sh
/opt/vmwrapper/read_floppy.sh --env /dev/fd0 > out 2>&1
echo "reader status $?" >> out
printf 'first line
second: $HOME %% \ end
' |
    VMWRAPPER_LOG_PORT=1284 /opt/vmwrapper/vboxmonitor.sh > monitor_stdout
"""


def test_guest_tools_floppy_device_and_log_port(tmp_path: Path) -> None:
    """read_floppy.sh on /dev/fd0, and vboxmonitor.sh writing VirtualBox's log port 0x504
    (here QEMU's isa-debugcon on that port, which records what the guest writes there)."""
    image = ensure_image()
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "boinc_app").write_text(FLOPPY_APP)
    (shared / "boinc_app").chmod(0o755)
    aid = AppInitData(user_name="Ada", userid=42, hostid=7, host_total_credit=12.25)
    floppy = tmp_path / "vm_floppy_0.img"
    write_floppy(floppy, build_floppy(cern_payload(aid)))
    disk = tmp_path / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "vdi", str(disk)],
        check=True,
        timeout=60,
    )
    argv = [
        "qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", "256",
        "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
        "-serial", f"file:{tmp_path / 'console.log'}",
        "-device", "pvpanic", "-action", "panic=exit-failure",
        "-drive", f"file={disk},if=virtio,format=qcow2",
        "-fsdev", f"local,id=fs0,path={shared},security_model=none",
        "-device", "virtio-9p-pci,fsdev=fs0,mount_tag=shared",
        # the board's own controller (a second isa-fdc gets no CMOS drive type: no /dev/fd0)
        "-blockdev",
        f"driver=raw,node-name=fd0,read-only=on,file.driver=file,file.filename={floppy}",
        "-device", "floppy,drive=fd0,unit=0",
        "-chardev", f"file,id=dbg,path={tmp_path / 'port0x504.log'}",
        "-device", "isa-debugcon,iobase=0x504,chardev=dbg",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, timeout=300, check=False)
    console = (tmp_path / "console.log").read_text(errors="replace")
    assert done.returncode == 0, console[-3000:]
    assert "VMWRAPPER_GUEST_DONE status=0" in console
    assert (shared / "out").read_text() == (
        "BOINC_USERNAME='Ada'\n"
        "BOINC_AUTHENTICATOR=''\n"
        "BOINC_USERID='42'\n"
        "BOINC_HOSTID='7'\n"
        "BOINC_USER_TOTAL_CREDIT='0'\n"
        "BOINC_HOST_TOTAL_CREDIT='12.25'\n"
        "reader status 0\n"
    )
    monitor = "first line\nsecond: $HOME % \\ end\n"
    assert (shared / "monitor_stdout").read_text() == monitor
    assert (tmp_path / "port0x504.log").read_text() == monitor
