"""The client's data directory for one job: project dir, slot dir, staged files, init_data.

What ``ACTIVE_TASK::start`` and ``setup_file`` do before the fork
(docs/compatibility.md#how-the-client-runs-a-task): app-version files and inputs live in
``projects/<dir>/`` under their physical names; the slot gets, for each logical (open) name, a copy
(``copy_file``) or a link file ``<soft_link>../../projects/<dir>/<physical></soft_link>``;
``shared/...`` names land in ``slots/N/shared/``. The layout is checked against a slot made by the
real 7.20.5 client.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import re
import shutil
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from vmwrapper.boinc import files
from vmwrapper.boinc.init_data import AppInitData, GlobalPrefs, HostInfo
from vmwrapper.errors import HarnessError

log = logging.getLogger(__name__)

#: The made-up project the harness runs jobs for.
PROJECT_URL = "http://localhost/vmwrapper_harness/"
CLIENT_VERSION = (7, 20, 5)
#: ``boinc_mkdir`` makes slot sub-directories with this mode.
SLOT_SUBDIR_MODE = 0o771
SHM_KEY_MMAP = -1
#: Speed the harness reports for the host and assumes for the app version (the client's
#: ``avp->flops``); with ``rsc_fpops_bound`` it gives the elapsed-time limit.
FLOPS = 1e9


def escape_project_url(url: str) -> str:
    """The project dir name for a master URL (``escape_project_url``, ``lib/url.cpp``)."""
    without_scheme = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://", "", url)
    escaped = re.sub(r"[^A-Za-z0-9._-]", "_", without_scheme)
    return escaped[:-1] if escaped.endswith("_") else escaped


@dataclass(frozen=True)
class StagedFile:
    """A file of the job: its physical name in the project dir and its name in the slot."""

    physical_name: str
    open_name: str
    copy_file: bool


@dataclass(frozen=True)
class DataDir:
    """The client's data dir (``boinc_dir``) and the project dir inside it."""

    root: Path
    project_url: str = PROJECT_URL

    @property
    def project_dir(self) -> Path:
        return self.root / "projects" / escape_project_url(self.project_url)

    @property
    def slots_dir(self) -> Path:
        return self.root / "slots"

    def make(self) -> None:
        self.project_dir.mkdir(parents=True, exist_ok=True)
        self.slots_dir.mkdir(parents=True, exist_ok=True)

    def free_slot(self) -> tuple[int, Path]:
        """The lowest-numbered slot that is missing or empty."""
        n = 0
        while True:
            slot = self.slots_dir / str(n)
            if not slot.exists() or not any(slot.iterdir()):
                slot.mkdir(parents=True, exist_ok=True)
                return n, slot
            n += 1

    def link_target(self, physical_name: str) -> str:
        """A project file as the slot sees it: ``../../projects/<dir>/<physical>``."""
        return f"../../projects/{self.project_dir.name}/{physical_name}"


def stage_project_file(
    data_dir: DataDir, source: Path, physical_name: str, executable: bool
) -> Path:
    """Put a downloaded file into the project dir (the client's download step)."""
    if not source.is_file():
        raise HarnessError(f"file to stage is missing: {source}")
    dest = data_dir.project_dir / physical_name
    shutil.copyfile(source, dest)
    mode = 0o755 if executable or os.access(source, os.X_OK) else 0o644
    dest.chmod(mode)
    return dest


def setup_slot_file(data_dir: DataDir, slot_dir: Path, staged: StagedFile) -> None:
    """``ACTIVE_TASK::setup_file``: copy or link file, sub-dirs made, existing ones kept."""
    path = slot_dir / staged.open_name
    if path.exists() or path.is_symlink():
        return
    _make_parents(slot_dir, path.parent)
    if staged.copy_file:
        source = data_dir.project_dir / staged.physical_name
        shutil.copyfile(source, path)
        shutil.copymode(source, path)
    else:
        files.write_soft_link(path, data_dir.link_target(staged.physical_name))


def setup_output_link(data_dir: DataDir, slot_dir: Path, staged: StagedFile) -> None:
    """A non-copied output gets a link file to where the app must write it; a copied one
    gets nothing (the app writes the plain file in the slot)."""
    if staged.copy_file:
        _make_parents(slot_dir, (slot_dir / staged.open_name).parent)
        return
    setup_slot_file(data_dir, slot_dir, staged)


def _make_parents(slot_dir: Path, directory: Path) -> None:
    missing = []
    while directory != slot_dir and not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        d.mkdir()
        d.chmod(SLOT_SUBDIR_MODE)


def clean_slot(slot_dir: Path) -> None:
    """Empty the slot when the job is over for good (the client keeps the directory)."""
    for entry in slot_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


def make_main_executable(path: Path) -> None:
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


# ---------------------------------------------------------------------------------------------
# init_data.xml


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() not in info:
                info[key.strip()] = value.strip()
    return info


def host_info() -> HostInfo:
    """This host as the client describes it (the parts apps and vboxwrapper read)."""
    cpu = _cpuinfo()
    disk = shutil.disk_usage("/")
    memory = psutil.virtual_memory()
    hostname = socket.gethostname()
    return HostInfo(
        domain_name=hostname,
        ip_addr="127.0.0.1",
        host_cpid=hashlib.md5(hostname.encode()).hexdigest(),
        p_ncpus=os.cpu_count() or 1,
        p_vendor=cpu.get("vendor_id", ""),
        p_model=cpu.get("model name", ""),
        p_features=cpu.get("flags", ""),
        p_fpops=FLOPS,
        p_iops=FLOPS,
        p_membw=1e9,
        p_calculated=time.time(),
        m_nbytes=float(memory.total),
        m_swap=float(psutil.swap_memory().total),
        d_total=float(disk.total),
        d_free=float(disk.free),
        os_name="Linux",
        os_version=platform.release(),
    )


@dataclass(frozen=True)
class TaskIdentity:
    """Names and numbers the client writes into init_data.xml for this job."""

    app_name: str
    wu_name: str
    result_name: str
    app_version: int = 100
    ncpus: float = 1.0
    checkpoint_period: float = 60.0
    rsc_fpops_est: float = 1e10
    rsc_fpops_bound: float = 1e15
    rsc_memory_bound: float = 6e8
    rsc_disk_bound: float = 1e9
    app_files: tuple[str, ...] = ()
    daily_xfer_limit_mb: float = 0.0  # the volunteer's network preference (0 = none)


def build_init_data(
    identity: TaskIdentity,
    data_dir: DataDir,
    slot: int,
    *,
    wu_cpu_time: float,
    starting_elapsed_time: float,
    host: HostInfo,
    client_pid: int | None = None,
    shm_key: int = SHM_KEY_MMAP,
    now: float | None = None,
) -> AppInitData:
    """``ACTIVE_TASK::init_app_init_data`` for our one project and job."""
    return AppInitData(
        major_version=CLIENT_VERSION[0],
        minor_version=CLIENT_VERSION[1],
        release=CLIENT_VERSION[2],
        app_version=identity.app_version,
        app_name=identity.app_name,
        project_dir=str(data_dir.project_dir.resolve()),
        boinc_dir=str(data_dir.root.resolve()),
        authenticator="vmwrapper_harness",
        wu_name=identity.wu_name,
        result_name=identity.result_name,
        shm_key=shm_key,
        slot=slot,
        client_pid=os.getpid() if client_pid is None else client_pid,
        wu_cpu_time=wu_cpu_time,
        starting_elapsed_time=starting_elapsed_time,
        resource_share_fraction=1.0,
        checkpoint_period=identity.checkpoint_period,
        fraction_done_start=0.0,
        fraction_done_end=1.0,
        ncpus=identity.ncpus,
        rsc_fpops_est=identity.rsc_fpops_est,
        rsc_fpops_bound=identity.rsc_fpops_bound,
        rsc_memory_bound=identity.rsc_memory_bound,
        rsc_disk_bound=identity.rsc_disk_bound,
        computation_deadline=(time.time() if now is None else now) + 7 * 86400,
        host_info=host,
        global_prefs=GlobalPrefs(
            disk_interval=identity.checkpoint_period,
            daily_xfer_limit_mb=identity.daily_xfer_limit_mb,
        ),
        app_files=identity.app_files,
    )
