"""Lint rules for the job: vbox_job.xml's values, the job files under shared/, intermediate
uploads, security warnings and the workunit's bounds (pure)."""

from __future__ import annotations

from vmwrapper.errors import SpecError
from vmwrapper.packaging.lint.files import image_entries, is_multiattach_input
from vmwrapper.packaging.lint.findings import INPUTS_DIR, MIB, SLOT_FILES, VERSION_XML, Ctx, Job
from vmwrapper.packaging.ostypes import OsTypeVerdict, check_os_type, suggest_os_type
from vmwrapper.packaging.templates import SHARED_PREFIX
from vmwrapper.packaging.version import JOB_LOGICAL_NAME, PlanClass
from vmwrapper.spec import JobSpec, parse_job
from vmwrapper.spec.model import MIN_MEMORY_SIZE_MB


def read_job(ctx: Ctx) -> Job:
    entry = ctx.version.by_logical(JOB_LOGICAL_NAME)
    in_workunit = False
    if entry is not None:
        path = entry.physical_name
    else:
        in_wu = ctx.wu is not None and any(f.open_name == JOB_LOGICAL_NAME for f in ctx.wu.files)
        if not in_wu:
            ctx.out(
                "VMW006",
                VERSION_XML,
                "no file has logical name vbox_job.xml (in the app version or the workunit)",
                "add <file><physical_name>APP_vbox_job_VERSION.xml</physical_name>"
                "<logical_name>vbox_job.xml</logical_name></file>",
            )
            return Job(None, "")
        path, in_workunit = f"{INPUTS_DIR}/{JOB_LOGICAL_NAME}", True
    text = ctx.facts.texts.get(path)
    if text is None:
        return Job(None, path, in_workunit)  # missing file: reported as VMW002 already
    try:
        parsed = parse_job(text, path)
    except SpecError as exc:
        for p in exc.problems:
            element = f"<{p.element}>: " if p.element else ""
            ctx.out("VMW007", path, f"{element}{p.message}", p.fix or "correct vbox_job.xml")
        return Job(None, path, in_workunit)
    for warning in parsed.warnings:
        ctx.out("VMW035", path, warning, "correct or remove the element")
    return Job(parsed.spec, path, in_workunit)


def check_job_files(ctx: Ctx, spec: JobSpec | None) -> None:
    """Files under shared/ need copy_file; workunit and result files need shared/ names."""
    shared_files = [f for f in ctx.version.files if f.open_name.startswith(SHARED_PREFIX)]
    for f in shared_files:
        if not f.copy_file:
            ctx.out(
                "VMW018",
                f.physical_name,
                f"{f.open_name} lacks <copy_file/>: the client would put a link file in the "
                "slot, which the VM cannot follow",
                "add <copy_file/>",
            )
    job_files = 0
    if ctx.wu is not None:
        for wf in ctx.wu.files:
            if wf.open_name == JOB_LOGICAL_NAME or is_multiattach_input(wf, spec):
                continue
            job_files += 1
            _check_job_file(ctx, ctx.facts.wu_template, wf.open_name, wf.copy_file, "input")
    uploads = spec.intermediate_upload_file if spec is not None else ()
    if ctx.result is not None:
        for of in ctx.result.files:
            job_files += 1
            if of.open_name in uploads:
                _check_upload_output(ctx, of.open_name, of.copy_file)
            else:
                _check_job_file(
                    ctx, ctx.facts.result_template, of.open_name, of.copy_file, "output"
                )
            if of.max_nbytes <= 0:
                ctx.out(
                    "VMW030",
                    ctx.facts.result_template,
                    f"output {of.open_name} has no <max_nbytes>; the client then rejects any "
                    "upload (limit 0)",
                    "add <max_nbytes>100000000</max_nbytes> to its <file_info>",
                )
    if spec is not None and not spec.shared_dir and (job_files or shared_files):
        ctx.out(
            "VMW025",
            ctx.job.file,
            "the job has input or output files but no shared directory",
            "add <enable_shared_directory/> to vbox_job.xml",
        )


def check_intermediate_uploads(ctx: Ctx, spec: JobSpec) -> None:
    """Each intermediate_upload_file needs a result output opened under its name (the client
    uploads the output whose open name the wrapper asks for; docs/compatibility.md#runtime)."""
    outputs = {of.open_name for of in ctx.result.files} if ctx.result is not None else set()
    for name in spec.intermediate_upload_file:
        if name not in outputs:
            ctx.out(
                "VMW042",
                ctx.facts.result_template or ctx.job.file,
                f"<intermediate_upload_file> {name} has no output in the result template: "
                "the client finds no file to upload and the request is lost",
                f"add <file_ref><file_name><OUTFILE_n/></file_name><open_name>{name}"
                "</open_name></file_ref> (no <copy_file/>) with a <file_info> that has "
                "<upload_when_present/> and <url><UPLOAD_URL/></url>",
            )


def _check_upload_output(ctx: Ctx, name: str, copy_file: bool) -> None:
    if copy_file:
        ctx.out(
            "VMW043",
            ctx.facts.result_template,
            f"output {name} is an intermediate upload but has <copy_file/>: the client then "
            "makes no link in the slot, and uploads an empty or missing file",
            "remove <copy_file/> from its <file_ref> (the wrapper fills the file itself)",
        )


def _check_job_file(ctx: Ctx, file: str, name: str, copy_file: bool, kind: str) -> None:
    slot_shared = ctx.job.spec is not None and ctx.job.spec.share_slot_dir
    if not name.startswith(SHARED_PREFIX) and not slot_shared:
        ctx.out(
            "VMW017",
            file,
            f"{kind} file opened as {name!r}: VM app job files must have names under shared/",
            f"use <open_name>shared/{name.rsplit('/', 1)[-1] or 'file'}</open_name>",
        )
    if not copy_file:
        ctx.out(
            "VMW018",
            file,
            f"{kind} file {name} lacks <copy_file/>; the client would not copy it "
            f"{'into' if kind == 'input' else 'out of'} slots/N/shared/",
            "add <copy_file/> to its <file_ref>",
        )


def check_job_values(ctx: Ctx, spec: JobSpec) -> None:
    file, out = ctx.job.file, ctx.out
    if not spec.os_name:
        out(
            "VMW020",
            file,
            "<os_name> is missing; VirtualBox needs a guest OS type",
            "add <os_name>Linux26_64</os_name> (or the type of your guest)",
        )
    else:
        verdict = check_os_type(spec.os_name)
        if verdict is OsTypeVerdict.UNKNOWN:
            out(
                "VMW020",
                file,
                f"<os_name> {spec.os_name!r} is not a VirtualBox OS type; createvm would fail",
                f"use one of `VBoxManage list ostypes`, e.g. {suggest_os_type(spec.os_name)}",
            )
        elif verdict is OsTypeVerdict.NEWER_ONLY:
            out(
                "VMW038",
                file,
                f"<os_name> {spec.os_name!r} is known only to recent VirtualBox versions",
                "use a long-standing type such as Linux26_64 or Debian_64",
            )
    if spec.memory_size_mb <= 0:
        out(
            "VMW022",
            file,
            "<memory_size_mb> is missing or 0",
            "add <memory_size_mb>512</memory_size_mb> (or what the app needs)",
        )
    elif spec.memory_size_mb < MIN_MEMORY_SIZE_MB:
        out(
            "VMW021",
            file,
            f"<memory_size_mb> {spec.memory_size_mb:g} is below 512: the wrapper raises it to "
            "512 MB, so the host needs more memory than you planned",
            "set <memory_size_mb>512</memory_size_mb> or more",
        )
    if ctx.wu is not None:  # only with the workunit's files known can a name be missing
        known = {f.open_name for f in ctx.version.files}
        known |= {f.open_name for f in ctx.wu.files} | SLOT_FILES
        for name in (n for n in spec.copy_to_shared if n not in known):
            out(
                "VMW041",
                file,
                f"<copy_to_shared> {name}: no such file in the slot (not init_data.xml, not a "
                "logical name of the app version or the workunit); the copy does nothing",
                "name a file the slot has, e.g. init_data.xml, or add that file",
            )
    plan = ctx.facts.plan_class
    if plan is PlanClass.VBOX32 and spec.requires_hw_acceleration:
        out(
            "VMW026",
            file,
            f"os_name {spec.os_name} is a 64-bit guest, but plan class vbox32 sends the job "
            "to hosts without VT-x/AMD-V, where a 64-bit guest cannot start",
            "use plan class vbox64 (or a 32-bit guest OS type)",
        )
    if plan is not None and spec.backends and "virtualbox" not in spec.backends:
        out(
            "VMW044",
            file,
            f"<vmwrapper_backends> {' '.join(spec.backends)} leaves VirtualBox out, but the "
            f"scheduler sends plan class {plan.value} only to hosts that report VirtualBox; "
            "hosts with QEMU alone never get it, hosts with VirtualBox alone cannot run it",
            "add virtualbox to <vmwrapper_backends> if the image runs there, or publish it "
            "under a plan class of plan_class_spec.xml without <virtualbox/> "
            "(docs/compatibility.md#back-end-selection)",
        )


def check_security(ctx: Ctx, spec: JobSpec) -> None:
    file, out = ctx.job.file, ctx.out
    for fw in spec.port_forward:
        if fw.is_remote:
            out(
                "VMW101",
                file,
                f"<port_forward> host port {fw.host_port} has <is_remote>: other computers on "
                "the volunteer's network can reach the VM",
                "remove <is_remote> so the port listens on 127.0.0.1 only",
            )
    if spec.enable_network and spec.network_bridged_mode:
        out(
            "VMW102",
            file,
            "<network_bridged_mode>: the VM sits on the volunteer's LAN with its own address, "
            "past the host's firewall",
            "use NAT (remove <network_bridged_mode/>)",
        )
    if spec.share_project_dir:
        out(
            "VMW103",
            file,
            "<share_project_dir>: the VM can read and write every file of the project on the "
            "host, other tasks' included",
            "share only the slot (<enable_shared_directory/>) and pass files as inputs",
        )
    if spec.enable_remotedesktop:
        out(
            "VMW104",
            file,
            "<enable_remotedesktop>: the VM console is served on all interfaces without "
            "authentication",
            "remove it for production; use it only while debugging",
        )
    if spec.enable_network:
        out(
            "VMW105",
            file,
            "<enable_network/>: the VM can reach the internet through the host",
            "fine if the app needs it; otherwise remove it",
        )
    if spec.share_slot_dir:
        out(
            "VMW107",
            file,
            "<share_slot_dir>: the VM sees the whole slot, init_data.xml with the "
            "authenticator included",
            "use <enable_shared_directory/> and copy only what the VM needs",
        )


def check_bounds(ctx: Ctx, spec: JobSpec | None) -> None:
    if ctx.wu is None:
        return
    bounds = ctx.wu.bounds
    if spec is not None and bounds.rsc_memory_bound and spec.memory_size_mb > 0:
        vm_bytes = max(spec.memory_size_mb, MIN_MEMORY_SIZE_MB) * MIB
        if bounds.rsc_memory_bound < vm_bytes:
            ctx.out(
                "VMW031",
                ctx.facts.wu_template,
                f"<rsc_memory_bound> {bounds.rsc_memory_bound:.0f} bytes is below the VM's "
                f"{vm_bytes:.0f}: the client would schedule more tasks than fit in memory",
                f"set <rsc_memory_bound>{vm_bytes + 256 * MIB:.0f}</rsc_memory_bound>",
            )
    image = next(image_entries(ctx.version), None)
    if image is not None and image.copy_file and bounds.rsc_disk_bound:
        facts = ctx.facts.files.get(image.physical_name)
        if facts is not None and facts.exists and bounds.rsc_disk_bound < facts.size * 2:
            ctx.out(
                "VMW032",
                ctx.facts.wu_template,
                f"<rsc_disk_bound> {bounds.rsc_disk_bound:.0f} bytes is less than twice the "
                f"image ({facts.size} bytes): the slot copy and the VM's writes will not fit",
                f"set <rsc_disk_bound> to at least {facts.size * 3}",
            )
