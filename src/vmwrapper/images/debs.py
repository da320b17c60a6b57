"""Debian packages for the guest: find, download (``apt-get download``) and unpack
(``dpkg-deb -x``) them. Nothing is ever installed on the host."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmwrapper.errors import ImageError
from vmwrapper.hostos import locks
from vmwrapper.images.tools import run

log = logging.getLogger(__name__)

KERNEL_METAPACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"


@dataclass(frozen=True)
class PackageId:
    name: str
    version: str
    sha256: str

    def __str__(self) -> str:
        return f"{self.name}={self.version} sha256:{self.sha256}"


def parse_depends(apt_cache_depends: str, prefix: str) -> str | None:
    """The first ``Depends:`` target starting with ``prefix`` in `apt-cache depends` output."""
    for line in apt_cache_depends.splitlines():
        match = re.match(r"\s*\|?Depends:\s*(\S+)", line)
        if match and match.group(1).startswith(prefix):
            return match.group(1)
    return None


def parse_show(apt_cache_show: str) -> PackageId:
    """Name, version and SHA256 from the first record of `apt-cache show` output."""
    fields: dict[str, str] = {}
    for line in apt_cache_show.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, sep, value = line.partition(":")
        if sep and not line.startswith(" "):
            fields.setdefault(key, value.strip())
    try:
        return PackageId(fields["Package"], fields["Version"], fields["SHA256"])
    except KeyError as exc:
        raise ImageError(f"apt-cache show gave no {exc.args[0]} field") from exc


def deb_filename_prefix(name: str, version: str) -> str:
    """apt-get download names files NAME_VERSION_ARCH.deb, with ':' escaped as %3a."""
    return f"{name}_{version.replace(':', '%3a')}_"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """An exclusive flock, so parallel test sessions build or download one at a time."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as fh:
        locks.lock(fh.fileno())
        try:
            yield
        finally:
            locks.unlock(fh.fileno())


APT_LISTS = Path("/var/lib/apt/lists")


def apt_lists_state(lists: Path = APT_LISTS) -> str:
    """Changes whenever `apt-get update` changes apt's package lists."""
    try:
        stamps = sorted(
            f"{entry.name}:{entry.stat().st_mtime_ns}:{entry.stat().st_size}"
            for entry in lists.iterdir()
            if entry.is_file()
        )
    except OSError:
        return ""
    return hashlib.sha256("\n".join(stamps).encode()).hexdigest()


class DebStore:
    """A directory of downloaded .deb files (``<cache>/debs``).

    apt-cache takes seconds per query on a loaded host, so its answers are remembered in
    ``apt-answers.json`` until apt's lists change (then they are asked again).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._memo_path = directory / "apt-answers.json"

    def _apt_cache(self, *args: str) -> str:
        state = apt_lists_state()
        key = " ".join(args)
        memo: dict[str, Any] = {}
        if state:
            try:
                memo = json.loads(self._memo_path.read_text())
            except (OSError, ValueError):
                memo = {}
            if memo.get("state") == state and key in memo.get("answers", {}):
                return str(memo["answers"][key])
        out = run(["apt-cache", *args], timeout=120)
        if state:
            answers = memo.get("answers", {}) if memo.get("state") == state else {}
            answers[key] = out
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self._memo_path.with_name(f".{self._memo_path.name}.{os.getpid()}")
            tmp.write_text(json.dumps({"state": state, "answers": answers}))
            os.replace(tmp, self._memo_path)
        return out

    def kernel_package(self, explicit: str = "") -> str:
        """The kernel package to use: ``explicit``, else what linux-image-amd64 depends on,
        else (offline) the newest one already downloaded."""
        if explicit:
            return explicit
        try:
            out = self._apt_cache("depends", KERNEL_METAPACKAGE)
        except ImageError as exc:
            out = ""
            log.warning("apt-cache depends %s failed: %s", KERNEL_METAPACKAGE, exc)
        name = parse_depends(out, "linux-image-")
        if name:
            return name
        cached = sorted(self.directory.glob("linux-image-*-amd64_*.deb"))
        if cached:
            return cached[-1].name.split("_", 1)[0]
        raise ImageError(
            f"cannot find the kernel package: apt-cache knows no {KERNEL_METAPACKAGE} and no "
            f"kernel .deb is in {self.directory}; run `apt-get update`, or pass a package name"
        )

    def identify(self, name: str) -> PackageId:
        """The package apt would download (from its lists), else a cached download."""
        try:
            return parse_show(self._apt_cache("show", "--no-all-versions", name))
        except ImageError as exc:
            cached = sorted(self.directory.glob(f"{name}_*.deb"))
            if not cached:
                raise ImageError(
                    f"Debian package {name} is unknown to apt and not in {self.directory}: "
                    "run `apt-get update` (the builder takes packages from Debian only)"
                ) from exc
            version = cached[-1].name.split("_")[1].replace("%3a", ":")
            return PackageId(name, version, sha256_file(cached[-1]))

    def fetch(self, package: PackageId) -> Path:
        """The .deb for ``package``: a verified cached copy, or downloaded with apt-get."""
        self.directory.mkdir(parents=True, exist_ok=True)
        prefix = deb_filename_prefix(package.name, package.version)
        with locked(self.directory / ".lock"):
            for candidate in self.directory.glob(f"{prefix}*.deb"):
                if sha256_file(candidate) == package.sha256:
                    return candidate
                candidate.unlink()  # a partial or stale download
            log.info("downloading %s", package, extra={"event": "image_apt_download"})
            run(
                ["apt-get", "download", "-q", f"{package.name}={package.version}"],
                cwd=self.directory,
                timeout=900,
            )
            for candidate in self.directory.glob(f"{prefix}*.deb"):
                if sha256_file(candidate) == package.sha256:
                    return candidate
        raise ImageError(
            f"apt-get download {package.name} gave no file with sha256 {package.sha256}"
        )


def unpack(deb: Path, dest: Path) -> None:
    """``dpkg-deb -x``: the package's files under ``dest``, no scripts run, nothing installed."""
    dest.mkdir(parents=True, exist_ok=True)
    run(["dpkg-deb", "-x", str(deb), str(dest)], timeout=600)
