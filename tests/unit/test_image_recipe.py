"""Image recipes: --add parsing, validation and the cache key."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from vmwrapper.errors import ImageError
from vmwrapper.images import recipe as recipe_mod
from vmwrapper.images.recipe import (
    BuildInputs,
    ExtraFile,
    ImageRecipe,
    cache_key,
    syslinux_config,
    tree_digest,
)

INPUTS = BuildInputs(
    kernel="linux-image-6.1.0-56-amd64=6.1.192-2 sha256:aa",
    busybox="busybox-static=1:1.35.0 sha256:bb",
    guest_files={"init": "11", "vmwrapper-boot": "22"},
    boot_files={"mbr.bin": "33"},
)


def test_parse_add() -> None:
    extra = ExtraFile.parse("build/my prog:/usr/local/bin/prog/")
    assert extra == ExtraFile(Path("build/my prog"), "/usr/local/bin/prog")


def test_parse_add_keeps_colons_in_the_source() -> None:
    assert ExtraFile.parse("C:/tmp/x:/opt/x").src == Path("C:/tmp/x")


@pytest.mark.parametrize("text", ["noseparator", "src:relative/dest", ":/dest", "src:/"])
def test_parse_add_refuses_bad_forms(text: str) -> None:
    with pytest.raises(ImageError, match="--add"):
        ExtraFile.parse(text)


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ImageError, match="vmdk"):
        ImageRecipe(fmt="vmdk")  # type: ignore[arg-type]


def test_key_is_stable_and_short() -> None:
    assert cache_key(ImageRecipe(), INPUTS) == cache_key(ImageRecipe(), INPUTS)
    assert len(cache_key(ImageRecipe(), INPUTS)) == 20


@pytest.mark.parametrize(
    "change",
    [
        lambda r, i: (replace(r, fmt="qcow2"), i),
        lambda r, i: (replace(r, cmdline=r.cmdline + " debug"), i),
        lambda r, i: (replace(r, boot_modules=(*r.boot_modules, "floppy")), i),
        lambda r, i: (r, replace(i, kernel="linux-image-6.1.0-57-amd64=6.1.193-1 sha256:cc")),
        lambda r, i: (r, replace(i, busybox="host:/bin/busybox sha256:dd")),
        lambda r, i: (r, replace(i, guest_files={**i.guest_files, "init": "12"})),
        lambda r, i: (r, replace(i, guest_files={**i.guest_files, "read_floppy.sh": "44"})),
        lambda r, i: (r, replace(i, extra_files={"a:/a": "55"})),
        lambda r, i: (r, replace(i, debs={"libfoo.deb": "66"})),
        lambda r, i: (r, replace(i, boot_files={"mbr.bin": "34"})),
    ],
)
def test_every_input_changes_the_key(change) -> None:  # type: ignore[no-untyped-def]
    base = cache_key(ImageRecipe(), INPUTS)
    assert cache_key(*change(ImageRecipe(), INPUTS)) != base


def test_builder_version_changes_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    base = cache_key(ImageRecipe(), INPUTS)
    monkeypatch.setattr(recipe_mod, "BUILDER_VERSION", "999")
    assert cache_key(ImageRecipe(), INPUTS) != base


def test_order_of_added_files_matters_but_not_of_guest_files() -> None:
    one = replace(INPUTS, extra_files={"a:/x": "1", "b:/x": "2"})
    two = replace(INPUTS, extra_files={"b:/x": "2", "a:/x": "1"})
    assert cache_key(ImageRecipe(), one) != cache_key(ImageRecipe(), two)
    shuffled = replace(INPUTS, guest_files=dict(reversed(list(INPUTS.guest_files.items()))))
    assert cache_key(ImageRecipe(), shuffled) == cache_key(ImageRecipe(), INPUTS)


def test_tree_digest_depends_on_names_and_contents() -> None:
    assert tree_digest({"a": "644:1"}) != tree_digest({"b": "644:1"})
    assert tree_digest({"a": "644:1"}) != tree_digest({"a": "755:1"})
    assert tree_digest({"a": "1", "b": "2"}) == tree_digest({"b": "2", "a": "1"})


def test_syslinux_config_boots_at_once_with_all_initrds() -> None:
    text = syslinux_config("console=ttyS0 quiet", ("initrd.gz", "extra.gz"))
    lines = [line.strip() for line in text.splitlines()]
    assert "TIMEOUT 0" in lines and "PROMPT 0" in lines
    assert "INITRD /initrd.gz,/extra.gz" in lines
    assert "APPEND console=ttyS0 quiet" in lines
    with pytest.raises(ValueError):
        syslinux_config("quiet", ())


def test_default_cmdline_puts_the_console_on_the_serial_port_last() -> None:
    consoles = [a for a in ImageRecipe().cmdline.split() if a.startswith("console=")]
    assert consoles[-1].startswith("console=ttyS0")  # the last console= is /dev/console
