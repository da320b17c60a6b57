"""Workunit input and result output templates for a VM app (pure: model, write, read).

A VM app's job files must have logical (open) names under ``shared/`` and the ``copy_file``
attribute: the client then copies inputs into ``slots/N/shared/`` before the wrapper starts and
copies outputs back out of it afterwards (vm-apps documentation, "Creating jobs for VM apps").
In the multi-purpose form the app run in the VM (``shared/boinc_app``) is the first input of
every workunit, ``sticky`` and ``no_delete`` so a host downloads it once, and ``executable``
so the client gives it the execute bit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from xml.etree.ElementTree import Element

from vmwrapper.errors import InputError
from vmwrapper.packaging.version import parse_root, xml_flag, xml_number, xml_text

SHARED_PREFIX = "shared/"


@dataclass(frozen=True)
class InputFile:
    """One workunit input: the name the app opens, and whether hosts keep it."""

    open_name: str  # e.g. "shared/in"
    copy_file: bool = True
    sticky: bool = False
    no_delete: bool = False
    executable: bool = False  # the client sets the execute bit after download
    optional: bool = False  # the job may run without it


@dataclass(frozen=True)
class WorkunitBounds:
    """The ``rsc_*`` bounds of a workunit; VM apps need room for the image copy and the VM."""

    rsc_fpops_est: float = 1e12
    rsc_fpops_bound: float = 1e14
    rsc_memory_bound: float = 0.0  # bytes; 0 = leave it out
    rsc_disk_bound: float = 0.0  # bytes; 0 = leave it out
    delay_bound: float = 7 * 86400.0

    def or_defaults(self, defaults: WorkunitBounds) -> WorkunitBounds:
        """These bounds, with ``defaults``'s where a template leaves one out (0 = not set)."""
        return replace(self, **{n: getattr(self, n) or getattr(defaults, n) for n in RSC_FIELDS})


#: The workunit's resource bounds, as named in templates, WorkunitBounds and client_state.
RSC_FIELDS = ("rsc_fpops_est", "rsc_fpops_bound", "rsc_memory_bound", "rsc_disk_bound")
#: A template that sets no bounds, as read (every ``rsc_*`` 0 = not set).
UNSET_BOUNDS = WorkunitBounds(0.0, 0.0, 0.0, 0.0, 0.0)
#: What the client runs a workunit with when it has no bounds (the scheduler's ``WORKUNIT``
#: defaults); the harness fills unset bounds from these.
CLIENT_DEFAULT_BOUNDS = WorkunitBounds(
    rsc_fpops_est=1e10, rsc_fpops_bound=1e15, rsc_memory_bound=6e8, rsc_disk_bound=1e9
)


@dataclass(frozen=True)
class InputTemplate:
    files: tuple[InputFile, ...]
    command_line: str = ""
    bounds: WorkunitBounds = WorkunitBounds()


#: An APP_DIR without an input template: a workunit with no files and no bounds.
NO_INPUT_TEMPLATE = InputTemplate((), bounds=UNSET_BOUNDS)


@dataclass(frozen=True)
class OutputFile:
    """One result output: the name the app writes, and the upload size limit."""

    open_name: str  # e.g. "shared/out"
    max_nbytes: float = 1e8  # 0 would make every upload fail (the client's default)
    copy_file: bool = True
    optional: bool = False

    def or_default_limit(self, max_nbytes: float) -> OutputFile:
        """This output, with ``max_nbytes`` as its limit if the template gives none (0)."""
        return self if self.max_nbytes else replace(self, max_nbytes=max_nbytes)


@dataclass(frozen=True)
class OutputTemplate:
    files: tuple[OutputFile, ...]


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _num(value: float) -> str:
    return f"{value:.6g}" if value != int(value) or abs(value) >= 1e15 else str(int(value))


def _file_ref(which: str, f: InputFile | OutputFile) -> list[str]:
    """A template's ``<file_ref>``: which file (number or OUTFILE name), its open name, flags."""
    lines = [
        "        <file_ref>",
        f"            {which}",
        f"            <open_name>{_escape(f.open_name)}</open_name>",
    ]
    if f.copy_file:
        lines.append("            <copy_file/>")
    if f.optional:
        lines.append("            <optional/>")
    lines.append("        </file_ref>")
    return lines


def format_input_template(t: InputTemplate) -> str:
    lines = ["<input_template>"]
    for n, f in enumerate(t.files):
        lines += ["    <file_info>", f"        <number>{n}</number>"]
        if f.sticky:
            lines.append("        <sticky/>")
        if f.no_delete:
            lines.append("        <no_delete/>")
        if f.executable:
            lines.append("        <executable/>")
        lines.append("    </file_info>")
    lines.append("    <workunit>")
    for n, f in enumerate(t.files):
        lines += _file_ref(f"<file_number>{n}</file_number>", f)
    if t.command_line:
        lines.append(f"        <command_line>{_escape(t.command_line)}</command_line>")
    b = t.bounds
    for name in RSC_FIELDS:
        value = getattr(b, name)
        if value:
            lines.append(f"        <{name}>{_num(value)}</{name}>")
    lines.append(f"        <delay_bound>{_num(b.delay_bound)}</delay_bound>")
    lines += ["    </workunit>", "</input_template>"]
    return "\n".join(lines) + "\n"


def format_output_template(t: OutputTemplate) -> str:
    lines = ["<output_template>"]
    for n, f in enumerate(t.files):
        lines += [
            "    <file_info>",
            f"        <name><OUTFILE_{n}/></name>",
            "        <generated_locally/>",
            "        <upload_when_present/>",
            f"        <max_nbytes>{_num(f.max_nbytes)}</max_nbytes>",
            "        <url><UPLOAD_URL/></url>",
            "    </file_info>",
        ]
    lines.append("    <result>")
    for n, f in enumerate(t.files):
        lines += _file_ref(f"<file_name><OUTFILE_{n}/></file_name>", f)
    lines += ["    </result>", "</output_template>"]
    return "\n".join(lines) + "\n"


# --- reading (for lint, boincclient and the harness) ------------------------------------------


def _int(text: str | None, default: int) -> int:
    try:
        return int((text or "").strip())
    except ValueError:
        return default


def _outfile_key(elem: Element | None, default: str) -> str:
    """``<name><OUTFILE_0/></name>`` -> "OUTFILE_0"; a literal name stays itself."""
    if elem is None:
        return default
    child = next(iter(elem), None)
    return child.tag if child is not None else (elem.text or "").strip() or default


def parse_input_template(text: str | bytes, path: str = "input_template.xml") -> InputTemplate:
    """Read an input template; flags by BOINC's rule, absent numbers 0 (= not set)."""
    root = parse_root(text, path, "input_template")
    infos: dict[int, Element] = {}
    for n, file_info in enumerate(root.findall("file_info")):
        infos[_int(file_info.findtext("number"), n)] = file_info
    wu: Element | None = root.find("workunit")
    if wu is None:
        raise InputError(f"{path}: no <workunit> element (fix: add one with the file_refs)")
    files = []
    for n, ref in enumerate(wu.findall("file_ref")):
        info = infos.get(_int(ref.findtext("file_number"), n))
        files.append(
            InputFile(
                open_name=xml_text(ref, "open_name"),
                copy_file=xml_flag(ref, "copy_file"),
                sticky=xml_flag(info, "sticky"),
                no_delete=xml_flag(info, "no_delete"),
                executable=xml_flag(info, "executable"),
                optional=xml_flag(ref, "optional"),
            )
        )
    bounds = WorkunitBounds(
        **{name: xml_number(wu, name, 0.0, path) for name in (*RSC_FIELDS, "delay_bound")}
    )
    return InputTemplate(tuple(files), xml_text(wu, "command_line"), bounds)


def parse_output_template(text: str | bytes, path: str = "output_template.xml") -> OutputTemplate:
    """Read an output template; ``max_nbytes`` 0 where a file_info gives none."""
    root = parse_root(text, path, "output_template")
    infos = {
        _outfile_key(info.find("name"), str(n)): info
        for n, info in enumerate(root.findall("file_info"))
    }
    result = root.find("result")
    if result is None:
        raise InputError(f"{path}: no <result> element (fix: add one with the file_refs)")
    files = []
    for n, ref in enumerate(result.findall("file_ref")):
        info = infos.get(_outfile_key(ref.find("file_name"), str(n)))
        files.append(
            OutputFile(
                open_name=xml_text(ref, "open_name"),
                max_nbytes=xml_number(info, "max_nbytes", 0.0, path),
                copy_file=xml_flag(ref, "copy_file"),
                optional=xml_flag(ref, "optional"),
            )
        )
    return OutputTemplate(tuple(files))
