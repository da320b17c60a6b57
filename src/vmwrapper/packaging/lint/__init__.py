"""``vmwrapper lint``: check a VM app version against the VM-apps rules (pure).

Input is :class:`AppDirFacts`, what the CLI gathered from APP_DIR (file modes, the first bytes
of each file, the XML files' text); output is a tuple of :class:`Finding` values, each with a
stable code, a severity, the file, what is wrong and the fix. Codes never change meaning:
``VMW0xx`` are packaging rules and pitfalls of the VM-apps documentation, ``VMW1xx`` are
security warnings. ``docs/tutorial.md`` lists them all.

The rules live in :mod:`.files` (the app version's files) and :mod:`.jobrules` (the job); the
vocabulary (findings, codes, facts) in :mod:`.findings`.
"""

from __future__ import annotations

from vmwrapper.errors import InputError
from vmwrapper.packaging.lint.files import (
    check_boinc_app,
    check_files,
    check_image,
    check_structure,
)
from vmwrapper.packaging.lint.findings import (
    CODES,
    VERSION_XML,
    AppDirFacts,
    Ctx,
    FileFacts,
    Finding,
    Out,
    Severity,
)
from vmwrapper.packaging.lint.jobrules import (
    check_bounds,
    check_intermediate_uploads,
    check_job_files,
    check_job_values,
    check_security,
    read_job,
)
from vmwrapper.packaging.templates import (
    InputTemplate,
    OutputTemplate,
    parse_input_template,
    parse_output_template,
)
from vmwrapper.packaging.version import AppVersion, parse_version_xml

__all__ = (
    "CODES",
    "AppDirFacts",
    "FileFacts",
    "Finding",
    "Severity",
    "has_errors",
    "lint_app_dir",
)


def lint_app_dir(facts: AppDirFacts) -> tuple[Finding, ...]:
    """Every finding for the app version in ``facts``, errors first, in code order."""
    out = Out()
    version = _read_version(facts, out)
    if version is None:
        return tuple(out.findings)
    ctx = Ctx(facts, out, version)
    ctx.wu, ctx.result = _read_templates(facts, out)
    check_structure(ctx)
    check_files(ctx)
    ctx.job = read_job(ctx)
    spec = ctx.job.spec
    check_image(ctx, spec)
    check_boinc_app(ctx)
    check_job_files(ctx, spec)
    if spec is not None:
        check_intermediate_uploads(ctx, spec)
        check_job_values(ctx, spec)
        check_security(ctx, spec)
    check_bounds(ctx, spec)
    order = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
    return tuple(sorted(out.findings, key=lambda f: (order[f.severity], f.code)))


def has_errors(findings: tuple[Finding, ...]) -> bool:
    return any(f.severity is Severity.ERROR for f in findings)


def _read_version(facts: AppDirFacts, out: Out) -> AppVersion | None:
    text = facts.texts.get(VERSION_XML)
    if text is None:
        out(
            "VMW001",
            VERSION_XML,
            "APP_DIR has no version.xml",
            "run `vmwrapper package` or write version.xml (see docs/tutorial.md)",
        )
        return None
    try:
        return parse_version_xml(text, VERSION_XML)
    except InputError as exc:
        out("VMW001", VERSION_XML, str(exc), "correct version.xml")
        return None


def _read_templates(
    facts: AppDirFacts, out: Out
) -> tuple[InputTemplate | None, OutputTemplate | None]:
    wu: InputTemplate | None = None
    result: OutputTemplate | None = None
    if facts.wu_template:
        try:
            wu = parse_input_template(facts.texts[facts.wu_template], facts.wu_template)
        except (InputError, KeyError) as exc:
            out("VMW033", facts.wu_template, str(exc), "correct the input template")
    if facts.result_template:
        try:
            result = parse_output_template(
                facts.texts[facts.result_template], facts.result_template
            )
        except (InputError, KeyError) as exc:
            out("VMW033", facts.result_template, str(exc), "correct the output template")
    return wu, result
