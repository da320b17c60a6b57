"""The ISO contextualization image (``vm_isocontext.iso``), built and read with pycdlib.

With ``enable_isocontextualization`` vboxwrapper attaches ``vm_isocontext.iso`` as the VM's
DVD instead of a VDI (docs/compatibility.md#creating-the-vm). A project builds that ISO once per app
version (CernVM style: a context file for the guest's boot scripts) and ships it in the app version.

Names: the ISO carries three name sets so every guest sees the real names: ISO 9660 level 3
(upper-case 8.3-ish, what a bare driver shows), Joliet (Windows) and Rock Ridge 1.09 (Linux
``isofs`` shows these, with case, long names and the execute bit). Images are built in memory;
:func:`write_context_iso` is the one writer.
"""

from __future__ import annotations

import io
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pycdlib

from vmwrapper.errors import ImageError

#: The logical name vboxwrapper looks for in the slot.
ISO_LOGICAL_NAME = "vm_isocontext.iso"
DEFAULT_VOLUME_ID = "CONTEXT"

_ISO_CHARS = re.compile(r"[^A-Z0-9_]")


@dataclass(frozen=True)
class ContextFile:
    """One file to put on the ISO: its path inside the image, its bytes, executable or not."""

    path: str  # relative, "/"-separated, e.g. "context.sh" or "etc/app.conf"
    data: bytes
    executable: bool = False


def _iso_component(name: str, used: set[str], is_dir: bool) -> str:
    """An ISO 9660 level-3 name for ``name``, unique within its directory."""
    stem, dot, ext = name.upper().rpartition(".") if "." in name else (name.upper(), "", "")
    stem = _ISO_CHARS.sub("_", stem)[:30] or "_"
    ext = _ISO_CHARS.sub("_", ext)[:3] if dot and not is_dir else ""
    candidate = f"{stem}.{ext}" if ext else stem
    n = 1
    while candidate in used:
        suffix = f"_{n}"
        base = stem[: 30 - len(suffix)] + suffix
        candidate = f"{base}.{ext}" if ext else base
        n += 1
    used.add(candidate)
    return candidate


def _check_path(path: str) -> PurePosixPath:
    pure = PurePosixPath(path)
    if path.startswith("/") or any(p in ("", ".", "..") for p in path.split("/")):
        raise ImageError(
            f"ISO context file path {path!r} must be relative with no '.' or '..' parts "
            "(fix: name it like 'context.sh' or 'etc/app.conf')"
        )
    return pure


def build_context_iso(
    files: Mapping[str, bytes] | list[ContextFile], volume_id: str = DEFAULT_VOLUME_ID
) -> bytes:
    """The ISO image bytes holding ``files`` (path -> bytes, or ContextFile values)."""
    entries = [ContextFile(p, d) for p, d in files.items()] if isinstance(files, Mapping) else files
    iso = pycdlib.PyCdlib()
    iso.new(
        interchange_level=3,
        joliet=3,
        rock_ridge="1.09",
        vol_ident=_ISO_CHARS.sub("_", volume_id.upper())[:32],
    )
    names: dict[str, set[str]] = {"/": set()}  # ISO dir path -> used ISO names in it
    dir_map: dict[PurePosixPath, str] = {PurePosixPath("."): "/"}
    seen: set[PurePosixPath] = set()
    for entry in entries:
        pure = _check_path(entry.path)
        if pure in seen:
            raise ImageError(f"ISO context file {entry.path!r} is given twice")
        seen.add(pure)
        parent_iso = _ensure_dirs(iso, pure.parent, dir_map, names)
        iso_name = _iso_component(pure.name, names[parent_iso], is_dir=False)
        iso_path = f"{parent_iso.rstrip('/')}/{iso_name};1"
        mode = 0o100555 if entry.executable else 0o100444
        iso.add_fp(
            io.BytesIO(entry.data),
            len(entry.data),
            iso_path,
            rr_name=pure.name,
            joliet_path="/" + str(pure),
            file_mode=mode,
        )
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def _ensure_dirs(
    iso: pycdlib.PyCdlib,
    rel: PurePosixPath,
    dir_map: dict[PurePosixPath, str],
    names: dict[str, set[str]],
) -> str:
    if rel in dir_map:
        return dir_map[rel]
    parent_iso = _ensure_dirs(iso, rel.parent, dir_map, names)
    iso_name = _iso_component(rel.name, names[parent_iso], is_dir=True)
    iso_path = f"{parent_iso.rstrip('/')}/{iso_name}"
    iso.add_directory(iso_path, rr_name=rel.name, joliet_path="/" + str(rel))
    dir_map[rel] = iso_path
    names[iso_path] = set()
    return iso_path


def read_context_iso(data: bytes) -> dict[str, ContextFile]:
    """Every file on the ISO by its Rock Ridge path (what a Linux guest sees)."""
    iso = pycdlib.PyCdlib()
    try:
        iso.open_fp(io.BytesIO(data))
    except pycdlib.pycdlibexception.PyCdlibException as exc:
        raise ImageError(f"not a readable ISO 9660 image: {exc}") from exc
    found: dict[str, ContextFile] = {}
    try:
        for dirpath, _dirs, filenames in iso.walk(rr_path="/"):
            for name in filenames:
                rr_path = f"{dirpath.rstrip('/')}/{name}"
                buf = io.BytesIO()
                iso.get_file_from_iso_fp(buf, rr_path=rr_path)
                record = iso.get_record(rr_path=rr_path)
                rock_ridge = getattr(record, "rock_ridge", None)
                mode: int = rock_ridge.get_file_mode() if rock_ridge is not None else 0o444
                rel = rr_path.lstrip("/")
                found[rel] = ContextFile(rel, buf.getvalue(), bool(mode & stat.S_IXUSR))
    finally:
        iso.close()
    return found


def collect_dir(root: Path) -> list[ContextFile]:
    """The regular files under ``root`` as ContextFile values (symlinks are refused)."""
    entries: list[ContextFile] = []
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            raise ImageError(f"{path}: symbolic links cannot go on the context ISO (copy the file)")
        if path.is_file():
            rel = path.relative_to(root).as_posix()
            executable = bool(path.stat().st_mode & stat.S_IXUSR)
            entries.append(ContextFile(rel, path.read_bytes(), executable))
    return entries


def write_context_iso(path: Path, image: bytes) -> None:
    """Write the ISO whole (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(image)
    os.replace(tmp, path)
