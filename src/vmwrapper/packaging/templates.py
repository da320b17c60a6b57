"""Workunit input and result output templates for a VM app (pure: model, write, read).

A VM app's job files must have logical (open) names under ``shared/`` and the ``copy_file``
attribute: the client then copies inputs into ``slots/N/shared/`` before the wrapper starts and
copies outputs back out of it afterwards (vm-apps documentation, "Creating jobs for VM apps").
In the multi-purpose form the app run in the VM (``shared/boinc_app``) is the first input of
every workunit, ``sticky`` and ``no_delete`` so a host downloads it once, and ``executable``
so the client gives it the execute bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET

from vmwrapper.errors import InputError

SHARED_PREFIX = "shared/"


@dataclass(frozen=True)
class InputFile:
    """One workunit input: the name the app opens, and whether hosts keep it."""

    open_name: str  # e.g. "shared/in"
    copy_file: bool = True
    sticky: bool = False
    no_delete: bool = False
    executable: bool = False  # the client sets the execute bit after download


@dataclass(frozen=True)
class WorkunitBounds:
    """The ``rsc_*`` bounds of a workunit; VM apps need room for the image copy and the VM."""

    rsc_fpops_est: float = 1e12
    rsc_fpops_bound: float = 1e14
    rsc_memory_bound: float = 0.0  # bytes; 0 = leave it out
    rsc_disk_bound: float = 0.0  # bytes; 0 = leave it out
    delay_bound: float = 7 * 86400.0


@dataclass(frozen=True)
class InputTemplate:
    files: tuple[InputFile, ...]
    command_line: str = ""
    bounds: WorkunitBounds = WorkunitBounds()


@dataclass(frozen=True)
class OutputFile:
    """One result output: the name the app writes, and the upload size limit."""

    open_name: str  # e.g. "shared/out"
    max_nbytes: float = 1e8  # 0 would make every upload fail (the client's default)
    copy_file: bool = True
    optional: bool = False


@dataclass(frozen=True)
class OutputTemplate:
    files: tuple[OutputFile, ...]


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _num(value: float) -> str:
    return f"{value:.6g}" if value != int(value) or abs(value) >= 1e15 else str(int(value))


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
        lines += [
            "        <file_ref>",
            f"            <file_number>{n}</file_number>",
            f"            <open_name>{_escape(f.open_name)}</open_name>",
        ]
        if f.copy_file:
            lines.append("            <copy_file/>")
        lines.append("        </file_ref>")
    if t.command_line:
        lines.append(f"        <command_line>{_escape(t.command_line)}</command_line>")
    b = t.bounds
    for name in ("rsc_fpops_est", "rsc_fpops_bound", "rsc_memory_bound", "rsc_disk_bound"):
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
        lines += [
            "        <file_ref>",
            f"            <file_name><OUTFILE_{n}/></file_name>",
            f"            <open_name>{_escape(f.open_name)}</open_name>",
        ]
        if f.copy_file:
            lines.append("            <copy_file/>")
        if f.optional:
            lines.append("            <optional/>")
        lines.append("        </file_ref>")
    lines += ["    </result>", "</output_template>"]
    return "\n".join(lines) + "\n"


# --- reading (for lint and the harness) --------------------------------------------------------


def _root(text: str | bytes, path: str, tag: str) -> Element:
    try:
        root: Element = SafeET.fromstring(text)
    except SafeET.ParseError as exc:
        raise InputError(f"{path}: not well-formed XML: {exc} (fix: correct the XML)") from exc
    except Exception as exc:  # defusedxml refuses entities and DTDs
        raise InputError(f"{path}: refused: {exc} (fix: remove DTDs and entities)") from exc
    if root.tag != tag:
        raise InputError(f"{path}: the root element is <{root.tag}>, expected <{tag}>")
    return root


def _present(elem: Element, name: str) -> bool:
    return elem.find(name) is not None


def _float(elem: Element, name: str) -> float:
    child = elem.find(name)
    if child is None or not (child.text or "").strip():
        return 0.0
    try:
        return float((child.text or "").strip())
    except ValueError:
        return 0.0


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
    root = _root(text, path, "input_template")
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
                open_name=(ref.findtext("open_name") or "").strip(),
                copy_file=_present(ref, "copy_file"),
                sticky=info is not None and _present(info, "sticky"),
                no_delete=info is not None and _present(info, "no_delete"),
                executable=info is not None and _present(info, "executable"),
            )
        )
    bounds = WorkunitBounds(
        rsc_fpops_est=_float(wu, "rsc_fpops_est"),
        rsc_fpops_bound=_float(wu, "rsc_fpops_bound"),
        rsc_memory_bound=_float(wu, "rsc_memory_bound"),
        rsc_disk_bound=_float(wu, "rsc_disk_bound"),
        delay_bound=_float(wu, "delay_bound"),
    )
    return InputTemplate(tuple(files), (wu.findtext("command_line") or "").strip(), bounds)


def parse_output_template(text: str | bytes, path: str = "output_template.xml") -> OutputTemplate:
    root = _root(text, path, "output_template")
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
                open_name=(ref.findtext("open_name") or "").strip(),
                max_nbytes=_float(info, "max_nbytes") if info is not None else 0.0,
                copy_file=_present(ref, "copy_file"),
                optional=_present(ref, "optional"),
            )
        )
    return OutputTemplate(tuple(files))
