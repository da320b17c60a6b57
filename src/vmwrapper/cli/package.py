"""`vmwrapper package`: write a BOINC app version directory for a VM app
(docs/compatibility.md#app-version-directory).

From the wrapper executable, ``vbox_job.xml``, the VM image and the app run in the VM, write
``version.xml`` (file entries with their attributes), copy the files under versioned physical
names, and write the workunit input and result output templates with ``shared/`` names and
``copy_file``. Then lint the result. The default output directory is BOINC's apps/ tree layout,
``<app>/<version>/<platform>__<plan_class>``, ready for ``bin/update_versions``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from vmwrapper import __version__
from vmwrapper.context.iso import build_context_iso, collect_dir, write_context_iso
from vmwrapper.errors import InputError, SpecError
from vmwrapper.packaging.templates import (
    InputFile,
    InputTemplate,
    OutputFile,
    OutputTemplate,
    WorkunitBounds,
    format_input_template,
    format_output_template,
)
from vmwrapper.packaging.version import (
    APP_LOGICAL_NAME,
    DEFAULT_API_VERSION,
    DEFAULT_PLATFORM,
    ImageMode,
    PackageRequest,
    PlanClass,
    Purpose,
    SourceFile,
    default_app_dir,
    format_version_xml,
    plan_app_version,
    with_job_backends,
)
from vmwrapper.spec import JobSpec, parse_job

NAME = "package"
HELP = "write a BOINC app version (version.xml, files, templates) for a VM app"

MIB = 1024 * 1024
#: Where the development launcher lives in a source checkout
#: (docs/compatibility.md#app-version-directory).
_LAUNCHER = Path(__file__).resolve().parents[3] / "examples" / "common" / "vmwrapper-launcher"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app", required=True, help="the BOINC app's short name, e.g. hello")
    parser.add_argument("--version", default="1.00", help="app version number (default 1.00)")
    parser.add_argument(
        "--plan-class",
        choices=[p.value for p in PlanClass],
        default=PlanClass.VBOX64.value,
        help="vbox64 (64-bit guest, VT-x needed), vbox64_mt (several cores), vbox32",
    )
    parser.add_argument(
        "--purpose",
        choices=[p.value for p in Purpose],
        default=Purpose.SINGLE.value,
        help="single: boinc_app is in the app version; multi: it comes with each workunit",
    )
    parser.add_argument("--job", required=True, type=Path, help="the vbox_job.xml to ship")
    parser.add_argument(
        "--image", type=Path, help="the VM image (.vdi; .iso with enable_isocontextualization)"
    )
    parser.add_argument(
        "--iso-context",
        type=Path,
        metavar="DIR",
        help="build vm_isocontext.iso from the files in DIR (instead of --image)",
    )
    parser.add_argument("--boinc-app", type=Path, help="the program run in the VM")
    parser.add_argument(
        "--wrapper",
        type=Path,
        help="the main program: the vmwrapper executable from `make dist` "
        "(default: this executable when standalone, else the development launcher)",
    )
    parser.add_argument("--cache-disk", type=Path, help="vm_cache.vdi (enable_cache_disk)")
    parser.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="PATH[:LOGICAL]",
        help="another app-version file; logical name default shared/<basename> (repeatable)",
    )
    parser.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME[=FILE]",
        help="a workunit input opened as shared/NAME; FILE becomes inputs/NAME (repeatable)",
    )
    parser.add_argument(
        "--output",
        action="append",
        default=[],
        metavar="NAME",
        help="a result output the app writes as shared/NAME (repeatable)",
    )
    parser.add_argument(
        "--max-output-bytes", type=float, default=1e8, help="upload limit per output file"
    )
    parser.add_argument("--cmdline", default="", help="app-version command line for the wrapper")
    parser.add_argument(
        "--backends",
        default="",
        metavar="LIST",
        help="the back ends the image runs on, in preference order (e.g. 'qemu' or "
        "'virtualbox,qemu'): written to the shipped vbox_job.xml as <vmwrapper_backends>; "
        "without it (and without one in --job) the app version is VirtualBox's",
    )
    parser.add_argument("--platform", default=DEFAULT_PLATFORM, help="BOINC platform name")
    parser.add_argument("--api-version", default=DEFAULT_API_VERSION)
    parser.add_argument("--no-gzip", action="store_true", help="do not mark the image <gzip/>")
    parser.add_argument(
        "--out",
        type=Path,
        help="the app version directory (default: APP/VERSION/PLATFORM__PLAN_CLASS)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing --out dir")


def _default_wrapper() -> Path | None:
    if getattr(sys, "frozen", False):
        return Path(sys.executable)
    return _LAUNCHER if _LAUNCHER.is_file() else None


def _need_file(path: Path | None, what: str) -> Path:
    if path is None or not path.is_file():
        raise InputError(f"{what}: {path} is not a file (fix: give an existing file)")
    return path


def _read_job(path: Path) -> JobSpec:
    parsed = parse_job(_need_file(path, "--job").read_bytes(), str(path))
    for warning in parsed.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return parsed.spec


def _extra_files(specs: list[str]) -> tuple[SourceFile, ...]:
    out = []
    for item in specs:
        path, sep, logical = item.partition(":")
        source = _need_file(Path(path), "--file")
        executable = os.access(source, os.X_OK)
        out.append(SourceFile(str(source), logical if sep else "", executable))
    return tuple(out)


def _inputs(items: list[str]) -> list[tuple[str, Path | None]]:
    found = []
    for item in items:
        name, sep, path = item.partition("=")
        if not name or "/" in name:
            raise InputError(f"--input {item!r}: NAME must be a plain file name, e.g. in.dat")
        found.append((name, _need_file(Path(path), "--input") if sep else None))
    return found


def _copy(source: Path, target: Path, executable: bool) -> None:
    shutil.copyfile(source, target)
    # Execute bits on every script and program: the client keeps them (vm-apps docs).
    target.chmod(0o755 if executable else 0o644)


def main(args: argparse.Namespace) -> int:
    try:
        return _package(args)
    except (InputError, SpecError) as exc:
        print(f"vmwrapper package: {exc}", file=sys.stderr)
        return 2


def _output_file(name: str, spec: JobSpec, max_nbytes: float) -> OutputFile:
    """An output the guest writes to shared/NAME; an intermediate upload of the job is opened
    under its own name without <copy_file/>, the way the client uploads it while the task runs
    (docs/compatibility.md#intermediate-uploads)."""
    if name in spec.intermediate_upload_file:
        return OutputFile(name, max_nbytes, copy_file=False)
    return OutputFile(f"shared/{name}", max_nbytes)


def _package(args: argparse.Namespace) -> int:
    if args.backends:
        return _package_with_backends(args)
    spec = _read_job(args.job)
    plan_class = PlanClass(args.plan_class)
    purpose = Purpose(args.purpose)
    out_dir: Path = args.out or Path(
        default_app_dir(args.app, args.version, plan_class, args.platform)
    )
    if out_dir.exists() and any(out_dir.iterdir()):
        if not args.force:
            raise InputError(f"{out_dir} exists and is not empty (fix: --force, or another --out)")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _write_app_version(args, spec, plan_class, purpose, out_dir)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)  # no half-written app version left behind
        raise


def _package_with_backends(args: argparse.Namespace) -> int:
    """Ship a copy of --job with ``<vmwrapper_backends>`` set; the copy is checked like any
    job file (docs/compatibility.md#back-end-selection)."""
    import tempfile

    backends = args.backends.replace(",", " ").split()
    text = _need_file(args.job, "--job").read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="vmwrapper-package-") as tmp:
        job = Path(tmp) / "vbox_job.xml"
        job.write_text(with_job_backends(text, backends), encoding="utf-8")
        return _package(argparse.Namespace(**{**vars(args), "job": job, "backends": ""}))


def _write_app_version(
    args: argparse.Namespace,
    spec: JobSpec,
    plan_class: PlanClass,
    purpose: Purpose,
    out_dir: Path,
) -> int:
    if spec.enable_isocontextualization:
        mode = ImageMode.ISO
    elif spec.multiattach_vdi_file:
        mode = ImageMode.MULTIATTACH
    else:
        mode = ImageMode.COPY
    if args.iso_context is not None:
        if mode is not ImageMode.ISO:
            raise InputError(
                "--iso-context needs <enable_isocontextualization>1</enable_isocontextualization>"
                " in vbox_job.xml (fix: add it, or give --image)"
            )
        iso_path = out_dir / ".build" / "vm_isocontext.iso"  # -> APP_vm_isocontext_VERSION.iso
        iso_path.parent.mkdir()
        write_context_iso(iso_path, build_context_iso(collect_dir(args.iso_context)))
        image = iso_path
    else:
        image = _need_file(args.image, "--image")
    wrapper = args.wrapper or _default_wrapper()
    if wrapper is None:
        raise InputError("no main program found (fix: give --wrapper, e.g. dist/vmwrapper)")
    _need_file(wrapper, "--wrapper")

    boinc_app = str(_need_file(args.boinc_app, "--boinc-app")) if args.boinc_app else ""
    request = PackageRequest(
        app_name=args.app,
        version=args.version,
        plan_class=plan_class,
        purpose=purpose,
        wrapper=str(wrapper),
        job=str(args.job),
        image=str(image),
        image_mode=mode,
        multiattach_name=spec.multiattach_vdi_file,
        boinc_app=boinc_app if purpose is Purpose.SINGLE else "",
        cache_disk=str(_need_file(args.cache_disk, "--cache-disk")) if args.cache_disk else "",
        extra=_extra_files(args.file),
        gzip_image=not args.no_gzip,
        api_version=args.api_version,
        cmdline=args.cmdline,
        wrapper_version=__version__,
        platform=args.platform,
    )
    plan = plan_app_version(request)
    for placement in plan.placements:
        _copy(Path(placement.source), out_dir / placement.physical_name, placement.executable)
    (out_dir / "version.xml").write_text(format_version_xml(plan.version))
    _write_templates(args, out_dir, spec, purpose, boinc_app, image.stat().st_size)
    if args.iso_context is not None:
        shutil.rmtree(image.parent)

    print(f"wrote app version {args.app} {args.version} ({plan_class.value}) in {out_dir}")
    from vmwrapper.cli.lint import lint_and_report  # the same checks `vmwrapper lint` runs

    return lint_and_report(out_dir, None, None, as_json=False)


def _write_templates(
    args: argparse.Namespace,
    out_dir: Path,
    spec: JobSpec,
    purpose: Purpose,
    boinc_app: str,
    image_size: int,
) -> None:
    inputs = _inputs(args.input)
    inputs_dir = out_dir / "inputs"
    files: list[InputFile] = []
    if purpose is Purpose.MULTI and boinc_app:
        # The program rides with every workunit; sticky + no_delete: downloaded once per host.
        files.append(InputFile(APP_LOGICAL_NAME, sticky=True, no_delete=True, executable=True))
        inputs_dir.mkdir(exist_ok=True)
        _copy(Path(boinc_app), inputs_dir / "boinc_app", executable=True)
    for name, source in inputs:
        files.append(InputFile(f"shared/{name}"))
        if source is not None:
            inputs_dir.mkdir(exist_ok=True)
            _copy(source, inputs_dir / name, os.access(source, os.X_OK))
    templates = out_dir / "templates"
    templates.mkdir(exist_ok=True)
    memory_mb = max(spec.memory_size_mb, 512.0)
    # A multiattach parent is not copied into the slot; only the differencing disk grows there.
    image_bytes = 0 if spec.multiattach_vdi_file else image_size
    bounds = WorkunitBounds(
        rsc_memory_bound=(memory_mb + 256) * MIB,
        # The slot holds a copy of the image plus what the VM writes to it.
        rsc_disk_bound=float(image_bytes * 3 + 512 * MIB),
    )
    # Every workunit needs an input template, even one without input files (bounds).
    text = format_input_template(InputTemplate(tuple(files), bounds=bounds))
    (templates / "input_template.xml").write_text(text)
    if args.output:
        outputs = tuple(_output_file(n, spec, args.max_output_bytes) for n in args.output)
        (templates / "output_template.xml").write_text(
            format_output_template(OutputTemplate(outputs))
        )
