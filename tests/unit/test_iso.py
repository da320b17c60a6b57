"""ISO contextualization image: built with pycdlib, read back with pycdlib and isoinfo."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vmwrapper.context.iso import (
    ContextFile,
    build_context_iso,
    collect_dir,
    read_context_iso,
    write_context_iso,
)
from vmwrapper.errors import ImageError

FILES = [
    ContextFile("context.sh", b"#!/bin/sh\necho context\n", executable=True),
    ContextFile("user-data.txt", b"BOINC_USERID=42\n"),
    ContextFile("etc/Long Config Name.conf", b"a=1\n"),
    ContextFile("etc/long config name.conf", b"a=2\n"),  # clashes in ISO 9660 upper case
]


def test_round_trip_through_pycdlib() -> None:
    image = build_context_iso(FILES)
    assert image[0x8001:0x8006] == b"CD001"  # primary volume descriptor
    back = read_context_iso(image)
    assert set(back) == {f.path for f in FILES}
    for f in FILES:
        assert back[f.path].data == f.data
        assert back[f.path].executable == f.executable


def test_mapping_input_and_volume_id() -> None:
    image = build_context_iso({"a.txt": b"x"}, volume_id="my ctx")
    assert image[0x8028 : 0x8028 + 6] == b"MY_CTX"
    assert read_context_iso(image)["a.txt"].data == b"x"


@pytest.mark.parametrize("bad", ["/abs", "../up", "a/./b", ""])
def test_bad_paths_are_refused(bad: str) -> None:
    with pytest.raises(ImageError, match="relative"):
        build_context_iso({bad: b"x"})


def test_duplicate_path_refused() -> None:
    with pytest.raises(ImageError, match="twice"):
        build_context_iso([ContextFile("a", b"1"), ContextFile("a", b"2")])


def test_garbage_is_not_an_iso() -> None:
    with pytest.raises(ImageError, match="ISO"):
        read_context_iso(b"\0" * 40000)


def test_collect_dir_and_write(tmp_path: Path) -> None:
    src = tmp_path / "ctx"
    (src / "sub").mkdir(parents=True)
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    (src / "sub" / "data.bin").write_bytes(b"\x00\x01")
    entries = collect_dir(src)
    assert [(e.path, e.executable) for e in entries] == [("run.sh", True), ("sub/data.bin", False)]
    (src / "link").symlink_to("run.sh")
    with pytest.raises(ImageError, match="symbolic"):
        collect_dir(src)
    out = tmp_path / "vm_isocontext.iso"
    write_context_iso(out, build_context_iso(entries))
    assert read_context_iso(out.read_bytes())["sub/data.bin"].data == b"\x00\x01"


@pytest.mark.skipif(shutil.which("isoinfo") is None, reason="isoinfo (genisoimage) missing")
def test_isoinfo_reads_rock_ridge_and_joliet_names(tmp_path: Path) -> None:
    out = tmp_path / "ctx.iso"
    out.write_bytes(build_context_iso(FILES))

    def isoinfo(*args: str) -> str:
        return subprocess.run(
            ["isoinfo", "-i", str(out), *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout

    rr_listing = isoinfo("-R", "-f")
    assert "/etc/Long Config Name.conf" in rr_listing
    assert "/etc/long config name.conf" in rr_listing
    assert "/context.sh" in rr_listing
    joliet_listing = isoinfo("-J", "-f")
    assert "/user-data.txt" in joliet_listing
    assert isoinfo("-R", "-x", "/context.sh") == "#!/bin/sh\necho context\n"
    assert isoinfo("-J", "-x", "/etc/long config name.conf") == "a=2\n"
    details = isoinfo("-d")
    assert "Rock Ridge signatures version 1 found" in details
    assert "Joliet with UCS level 3 found" in details
