"""`vmwrapper image` argument handling (no building)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from vmwrapper.cli import image
from vmwrapper.errors import ImageError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    image.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    ("argv", "fmt"),
    [
        ((), "vdi"),
        (("-o", "guest.qcow2"), "qcow2"),
        (("-o", "guest.img"), "raw"),
        (("-o", "vm_image_1.vdi"), "vdi"),
        (("-o", "guest.bin"), "vdi"),  # unknown suffix: the default
        (("--format", "qcow2"), "qcow2"),
        (("--format", "qcow2", "-o", "guest.bin"), "qcow2"),
    ],
)
def test_build_format(argv: tuple[str, ...], fmt: str) -> None:
    assert image._build_format(parse("build", *argv)) == fmt


def test_build_format_contradiction_is_an_error() -> None:
    with pytest.raises(ImageError, match="make them agree"):
        image._build_format(parse("build", "--format", "vdi", "-o", "guest.qcow2"))


def test_build_collects_repeated_add_and_deb() -> None:
    args = parse("build", "--add", "a:/x", "--add", "b:/y", "--deb", "p.deb")
    assert args.add == ["a:/x", "b:/y"]
    assert args.deb == [Path("p.deb")]


def test_bad_add_is_reported_with_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert image.main(parse("build", "--add", "no-separator")) == 1
    assert "SRC:DEST" in capsys.readouterr().err


def test_an_action_is_required() -> None:
    with pytest.raises(SystemExit):
        parse()
