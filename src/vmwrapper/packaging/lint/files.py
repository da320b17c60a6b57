"""Lint rules for the app version's files: version.xml's structure, permissions, the VM image
(VDI, multiattach parent, ISO and cache disk) and boinc_app (pure)."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

from vmwrapper.packaging.lint.findings import INPUTS_DIR, VDI_DIFF, VERSION_XML, Ctx
from vmwrapper.packaging.templates import InputFile
from vmwrapper.packaging.version import (
    APP_LOGICAL_NAME,
    CACHE_DISK_LOGICAL_NAME,
    IMAGE_LOGICAL_NAME,
    ISO_LOGICAL_NAME,
    AppVersion,
    VersionFile,
    has_version_number,
    version_problems,
)
from vmwrapper.spec import JobSpec


def check_structure(ctx: Ctx) -> None:
    v, out = ctx.version, ctx.out
    for p in version_problems(v, VERSION_XML):
        out("VMW029", VERSION_XML, p.message, p.fix)
    mains = v.main_programs
    if len(mains) != 1:
        names = ", ".join(f.physical_name for f in mains) or "none"
        out(
            "VMW003",
            VERSION_XML,
            f"{len(mains)} files are marked <main_program/> ({names})",
            "mark exactly one file, the vmwrapper executable, with <main_program/>",
        )
    if not v.dont_throttle:
        out(
            "VMW019",
            VERSION_XML,
            "<dont_throttle/> is missing: the client would stop and start the wrapper to "
            "throttle CPU, while the VM keeps running",
            "add <dont_throttle/> to <version>",
        )
    if not v.api_version:
        out(
            "VMW027",
            VERSION_XML,
            "<api_version> is missing: the client then talks to the wrapper over System V "
            "shared memory instead of the mmap'd file",
            "add <api_version>7.20.5</api_version>",
        )
    if not v.is_wrapper:
        out(
            "VMW028",
            VERSION_XML,
            "<is_wrapper/> is missing: the client then counts the wrapper as the app",
            "add <is_wrapper/>",
        )


def check_files(ctx: Ctx) -> None:
    for f in ctx.version.files:
        if not f.physical_name:
            continue
        facts = ctx.facts.files.get(f.physical_name)
        if facts is None or not facts.exists:
            ctx.out(
                "VMW002",
                f.physical_name,
                "listed in version.xml but not in APP_DIR",
                f"copy {f.physical_name} into APP_DIR or remove its <file> entry",
            )
            continue
        if f.main_program and not facts.executable:
            ctx.out(
                "VMW004",
                f.physical_name,
                "the main program has no execute permission; the client cannot start it",
                f"chmod +x {f.physical_name}",
            )
        elif not f.main_program and facts.looks_executable and not facts.executable:
            ctx.out(
                "VMW005",
                f.physical_name,
                "a script or executable without execute permission (all must have it)",
                f"chmod +x {f.physical_name}",
            )
        if facts.world_writable:
            ctx.out(
                "VMW106",
                f.physical_name,
                "world-writable: anyone on the build host can change what volunteers run",
                f"chmod o-w {f.physical_name}",
            )
        if (f.main_program or f.open_name != f.physical_name) and not has_version_number(
            f.physical_name
        ):
            ctx.out(
                "VMW037",
                f.physical_name,
                "the physical name has no version number; BOINC file names must never change "
                "content, so the next version would clash",
                "put the app version in the physical name (vmwrapper package does)",
            )
    for path, facts in sorted(ctx.facts.files.items()):
        if path.startswith(f"{INPUTS_DIR}/") and facts.looks_executable and not facts.executable:
            ctx.out("VMW005", path, "a script without execute permission", f"chmod +x {path}")


def image_entries(v: AppVersion) -> Iterator[VersionFile]:
    for f in v.files:
        name = f.open_name
        if name == IMAGE_LOGICAL_NAME or (name.startswith("vm_image_") and name.endswith(".vdi")):
            yield f


def check_image(ctx: Ctx, spec: JobSpec | None) -> None:
    v, out = ctx.version, ctx.out
    if spec is not None and spec.enable_isocontextualization:
        iso = v.by_logical(ISO_LOGICAL_NAME)
        if iso is None:
            out(
                "VMW023",
                VERSION_XML,
                "<enable_isocontextualization> is set but no file has logical name "
                "vm_isocontext.iso",
                "add the ISO with <logical_name>vm_isocontext.iso</logical_name><copy_file/>",
            )
        elif not iso.copy_file:
            out(
                "VMW009",
                iso.physical_name,
                "vm_isocontext.iso lacks <copy_file/>",
                "add <copy_file/> to its <file>",
            )
        if spec.enable_cache_disk:
            cache = v.by_logical(CACHE_DISK_LOGICAL_NAME)
            if cache is None or not cache.copy_file:
                out(
                    "VMW024",
                    VERSION_XML,
                    "<enable_cache_disk> is set but there is no vm_cache.vdi with <copy_file/>",
                    "add the cache VDI with <logical_name>vm_cache.vdi</logical_name><copy_file/>",
                )
        return
    if spec is not None and spec.multiattach_vdi_file:
        _check_multiattach(ctx, spec.multiattach_vdi_file)
        return
    images = list(image_entries(v))
    if not images:
        if ctx.job.in_workunit:
            return
        out(
            "VMW008",
            VERSION_XML,
            "no file has logical name vm_image.vdi",
            "add the VDI with <logical_name>vm_image.vdi</logical_name><copy_file/><gzip/>, "
            "or use <multiattach_vdi_file> in vbox_job.xml",
        )
        return
    for image in images:
        if not image.copy_file:
            out(
                "VMW009",
                image.physical_name,
                f"{image.open_name} lacks <copy_file/>: the hypervisor would open the client's "
                "link file instead of the image",
                "add <copy_file/> (or switch to multiattach to avoid the copy)",
            )
        if not image.gzip:
            out(
                "VMW010",
                image.physical_name,
                "no <gzip/>: 7.0+ clients would download the image uncompressed",
                "add <gzip/> to the image's <file>",
            )
        if not has_version_number(image.physical_name):
            out(
                "VMW014",
                image.physical_name,
                "the image's physical name has no version number",
                "rename it, e.g. myapp_vm_image_1.00.vdi",
            )
        _check_vdi_header(ctx, image.physical_name)


def _check_multiattach(ctx: Ctx, parent_name: str) -> None:
    out = ctx.out
    parent = ctx.version.by_physical(parent_name)
    wu_files = ctx.wu.files if ctx.wu is not None else ()
    wu_parent = [f for f in wu_files if is_multiattach_input(f, ctx.job.spec)]
    if parent is None and wu_parent and all(f.sticky for f in wu_parent):
        return  # shipped as a sticky workunit file (one image per batch)
    if parent is None and wu_parent:
        out(
            "VMW013",
            ctx.facts.wu_template,
            f"the multiattach parent {parent_name} comes with the workunit but is not "
            "<sticky/>: the client deletes it when the task ends, under the VMs using it",
            "add <sticky/> and <no_delete/> to its <file_info>",
        )
        return
    if parent is None:
        out(
            "VMW011",
            VERSION_XML,
            f"<multiattach_vdi_file> is {parent_name} but the app version has no file "
            "with that physical name",
            f"add <file><physical_name>{parent_name}</physical_name><sticky/></file>",
        )
        return
    if parent.copy_file:
        out(
            "VMW012",
            parent_name,
            "the multiattach parent has <copy_file/>: every task would copy the whole image "
            "into its slot, which multiattach exists to avoid",
            "remove <copy_file/> from its <file>",
        )
    if not parent.sticky:
        out(
            "VMW013",
            parent_name,
            "the multiattach parent is not <sticky/>; the VM-apps documentation asks for it "
            "so the image stays in the project directory whatever the client cleans up",
            "add <sticky/> to its <file>",
        )
    if parent.logical_name == IMAGE_LOGICAL_NAME:
        out(
            "VMW015",
            parent_name,
            "the multiattach parent should not have logical name vm_image.vdi",
            "remove its <logical_name>",
        )
    if not has_version_number(parent_name):
        out(
            "VMW014",
            parent_name,
            "the multiattach parent's name has no version number; an updated image would "
            "clash with the registered parent on volunteers' hosts",
            "rename it like myimage_2.vdi (in version.xml and <multiattach_vdi_file>)",
        )
    _check_vdi_header(ctx, parent_name)


def _check_vdi_header(ctx: Ctx, physical_name: str) -> None:
    facts = ctx.facts.files.get(physical_name)
    if facts is None or not facts.exists or len(facts.head) < 68:
        return
    # A VDI starts with a text banner and has the signature 0xbeda107f at offset 64.
    if facts.head[64:68] != b"\x7f\x10\xda\xbe":
        ctx.out(
            "VMW034",
            physical_name,
            "not a VirtualBox VDI image (no VDI signature); VirtualBox hosts cannot use it",
            f"convert it: qemu-img convert -O vdi IMAGE {physical_name}",
        )
        return
    # Header v1.x: the image type (1 normal, 2 fixed, 3 undo, 4 differencing) at offset 76.
    if len(facts.head) >= 80 and int.from_bytes(facts.head[76:80], "little") == VDI_DIFF:
        ctx.out(
            "VMW040",
            physical_name,
            "a differencing VDI (a snapshot or multiattach child): it needs its parent, which "
            "volunteers do not have",
            "ship the merged image: VBoxManage clonemedium CHILD merged.vdi "
            "(or qemu-img convert -O vdi CHILD merged.vdi)",
        )


def check_boinc_app(ctx: Ctx) -> None:
    entry = ctx.version.by_logical(APP_LOGICAL_NAME)
    wu_files = ctx.wu.files if ctx.wu is not None else ()
    wu_entry = next((f for f in wu_files if f.open_name == APP_LOGICAL_NAME), None)
    slot_shared = ctx.job.spec is not None and ctx.job.spec.share_slot_dir
    if entry is None:
        bare = ctx.version.by_logical("boinc_app")
        if bare is not None and slot_shared:
            # <share_slot_dir/>: the VM sees the whole slot (BOINC's samples/worker), but
            # it cannot follow the client's link files
            if not bare.copy_file:
                ctx.out(
                    "VMW018",
                    bare.physical_name,
                    "boinc_app lacks <copy_file/>: the client would put a link file in the "
                    "slot, which the VM cannot follow",
                    "add <copy_file/>",
                )
            return
        if bare is not None:
            ctx.out(
                "VMW017",
                bare.physical_name,
                "logical name boinc_app: the VM only sees files under shared/",
                "use <logical_name>shared/boinc_app</logical_name><copy_file/>",
            )
            return
    if entry is None and wu_entry is None:
        uses_worker = ctx.job.spec is not None and (
            ctx.job.spec.share_slot_dir or ctx.job.spec.enable_isocontextualization
        )
        if uses_worker:
            return  # the image runs its own program (samples/worker style); nothing to ship
        where = " or the workunit template" if ctx.wu is not None else ""
        fix = (
            "add your app with <logical_name>shared/boinc_app</logical_name><copy_file/> "
            "(single-purpose) or as a workunit input opened as shared/boinc_app "
            "(multi-purpose; pass --wu TEMPLATE to check it)"
        )
        ctx.out("VMW016", VERSION_XML, f"no shared/boinc_app in the app version{where}", fix)
        return
    if wu_entry is not None and entry is None and not wu_entry.sticky:
        ctx.out(
            "VMW036",
            ctx.facts.wu_template,
            "shared/boinc_app comes with each workunit but is not <sticky/>; every task "
            "downloads it again",
            "add <sticky/> and <no_delete/> to its <file_info>",
        )
    if wu_entry is not None and entry is None and not wu_entry.executable:
        ctx.out(
            "VMW039",
            ctx.facts.wu_template,
            "shared/boinc_app comes with each workunit but its <file_info> lacks "
            "<executable/>; the client then does not set its execute bit",
            "add <executable/> to its <file_info>",
        )


def is_multiattach_input(wf: InputFile, spec: JobSpec | None) -> bool:
    """A workunit input that is the job's multiattach disk (the right way to ship one image
    per batch): the wrapper opens it in the project directory, so it is neither copied nor
    under shared/. VMW013 says if it is not sticky."""
    return (
        spec is not None
        and bool(spec.multiattach_vdi_file)
        and posixpath.basename(wf.open_name) == posixpath.basename(spec.multiattach_vdi_file)
    )
