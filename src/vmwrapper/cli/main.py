"""The `vmwrapper` command: argparse root; one thin module per subcommand.

Started by a BOINC client as the app version's main program, the wrapper gets vboxwrapper's
options (`--nthreads 2 ...`) and no subcommand: anything that is not a subcommand name runs
`vmwrapper run` with all the arguments, so the same executable is a drop-in for vboxwrapper.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from vmwrapper import __version__

#: Subcommand modules under vmwrapper.cli, in the order `--help` lists them. Each module has
#: ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``main(args) -> int``.
SUBCOMMANDS = ("run", "job", "spec", "image", "package", "lint", "doctor", "gc")


def _load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"vmwrapper.cli.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"vmwrapper.cli.{name}":  # not written yet; any other import error is a bug
            return None
        raise


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with ``only`` just that subcommand's: a command imports only
    its own module (the harness and image tools are heavy; ``vmwrapper job`` starts faster)."""
    parser = argparse.ArgumentParser(
        prog="vmwrapper",
        description="Run BOINC jobs inside virtual machines (QEMU or VirtualBox), "
        "a drop-in replacement for BOINC's vboxwrapper.",
    )
    parser.add_argument("--version", action="version", version=f"vmwrapper {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS if only is None else (only,):
        module = _load(name)
        if module is None:
            continue
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(handler=module.main)
    return parser


def _never_fail_on_encoding() -> None:
    """A job file may hold bytes that are not UTF-8 (kept as surrogates) or a terminal may be
    ASCII-only: print them escaped rather than end with a UnicodeEncodeError traceback."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    _never_fail_on_encoding()
    args_in = list(sys.argv[1:] if argv is None else argv)
    if (
        args_in
        and args_in[0] not in SUBCOMMANDS
        and args_in[0] not in ("-h", "--help", "--version")
    ):
        args_in = ["run", *args_in]  # started by a BOINC client: vboxwrapper's command line
    elif not args_in:
        args_in = ["run"]
    if args_in[0] == "run":  # vboxwrapper's command line is scanned as the original does
        from vmwrapper.cli.run import run_argv

        return run_argv(args_in[1:])
    parser = build_parser(args_in[0] if args_in[0] in SUBCOMMANDS else None)
    args = parser.parse_args(args_in)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)
