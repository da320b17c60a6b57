"""vbox_job.xml read exactly as BOINC's ``XML_PARSER`` and vboxwrapper's job parser read it (pure).

BOINC does not use an XML library: it scans the file byte by byte into "tags" and "text" and
vboxwrapper asks, for each tag, "is this element X, and is a value of X's type next?". This
module follows those rules as docs/compatibility.md#job-file describes them, so a job file
means to ``vmwrapper run`` what it means to vboxwrapper, including files that are not XML at
all. It also records every place where the file says something BOINC reads in a surprising
way (an ignored element, text where a tag belongs, a tag inside an unknown element, ...), so
``vmwrapper spec`` can tell the admin. :mod:`tests.unit.test_boinc_parser` proves the reading
against BOINC's own library.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from vmwrapper.cnum import c_int_cast, strtod_whole, strtol_whole
from vmwrapper.spec.model import VRAM_MAX_MB, VRAM_MIN_MB

#: BOINC's buffer sizes: a tag (TAG_BUF_LEN), a number's text, a string's text.
TAG_BUF_LEN = 4096
NUMBER_BUF_LEN = 256
STRING_BUF_LEN = 262144
_WHITESPACE = b" \t\n\v\f\r"  # isascii(c) && isspace(c) in the C locale

#: How vboxwrapper reads each element, in the order it tries them.
BOOL, DOUBLE, INT, STRING = "bool", "double", "int", "string"
JOB_ELEMENTS: dict[str, str] = {
    "vm_disk_controller_type": STRING,
    "vm_disk_controller_model": STRING,
    "os_name": STRING,
    "vram_size_mb": DOUBLE,
    "memory_size_mb": DOUBLE,
    "job_duration": DOUBLE,
    "minimum_checkpoint_interval": DOUBLE,
    "minimum_heartbeat_interval": DOUBLE,
    "fraction_done_filename": STRING,
    "heartbeat_filename": STRING,
    "completion_trigger_file": STRING,
    "temporary_exit_trigger_file": STRING,
    "multiattach_vdi_file": STRING,
    "enable_cern_dataformat": BOOL,
    "vm_network_driver": STRING,
    "enable_network": BOOL,
    "network_bridged_mode": BOOL,
    "enable_nat_dns_host_resolver": BOOL,
    "enable_shared_directory": BOOL,
    "enable_scratch_directory": BOOL,
    "share_slot_dir": BOOL,
    "share_project_dir": BOOL,
    "enable_floppyio": BOOL,
    "enable_cache_disk": BOOL,
    "enable_isocontextualization": BOOL,
    "enable_remotedesktop": BOOL,
    "enable_screenshots_on_error": BOOL,
    "enable_graphics_support": BOOL,
    "enable_vm_savestate_usage": BOOL,
    "disable_automatic_checkpoints": BOOL,
    "boot_iso": BOOL,
    "pf_guest_port": INT,
    "pf_host_port": INT,
    "copy_to_shared": STRING,
    "copy_cmdline_to_shared": BOOL,
    "trickle_trigger_file": STRING,
    "intermediate_upload_file": STRING,
}
#: Elements vboxwrapper appends to a list instead of overwriting.
REPEATED = frozenset({"copy_to_shared", "trickle_trigger_file", "intermediate_upload_file"})
#: Elements vmwrapper reads that vboxwrapper does not (it skips them as unknown).
EXTENSIONS: dict[str, str] = {
    "vm_graphics_controller_type": STRING,
    "vmwrapper_backends": STRING,  # docs/compatibility.md#back-end-selection
    "vmwrapper_software_emulation": BOOL,  # docs/compatibility.md#software-emulation
    "vmwrapper_share_transport": STRING,  # docs/shared-transport.md
}
PORT_FORWARD_ELEMENTS: dict[str, str] = {
    "is_remote": BOOL,
    "host_port": INT,
    "guest_port": INT,
    "nports": INT,
}


class Token(enum.Enum):
    EOF = "eof"  # end of file, a NUL byte, or a buffer overflow: BOINC stops there
    TAG = "tag"
    DATA = "data"
    CDATA = "cdata"


class _Scanner:
    """The byte stream and BOINC's tokenizer (``XML_PARSER::get_aux`` and friends)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def getc(self) -> int:
        """The next byte, or -1 at the end; a NUL byte also reads as the end."""
        if self.pos >= len(self.data):
            return -1
        c = self.data[self.pos]
        self.pos += 1
        return c if c else -1

    def rest(self) -> bytes:
        return self.data[self.pos :]

    def token(self, size: int) -> tuple[Token, bytes]:
        """The next tag or text, white space stripped, comments skipped; ``size`` is the
        caller's buffer (text or tag longer than it ends the scan like the end of file)."""
        while True:
            c = self.getc()
            while c != -1 and c in _WHITESPACE:
                c = self.getc()
            if c == -1:
                return Token.EOF, b""
            if c == ord("<"):
                kind, buf = self._tag(size)
                if kind is None:
                    continue  # a comment
            else:
                kind, buf = self._text(c, size)
            if kind is Token.EOF:
                return kind, b""
            return kind, buf.strip(_WHITESPACE)

    def _text(self, first: int, size: int) -> tuple[Token, bytes]:
        out = bytearray([first])
        room = size - 1
        while True:
            c = self.getc()
            if c == -1:
                return Token.EOF, b""
            if c == ord("<"):
                self.pos -= 1
                return Token.DATA, bytes(out)
            room -= 1
            if room <= 0:
                return Token.EOF, b""  # XML_PARSE_OVERFLOW
            out.append(c)

    def _tag(self, size: int) -> tuple[Token | None, bytes]:
        """After ``<``: the tag up to ``>``. Its name is what comes before the first white
        space, plus every ``/`` anywhere in it; attributes are dropped."""
        out = bytearray()
        room = size
        found_space = False
        i = 0
        while True:
            c = self.getc()
            if c == -1:
                return Token.EOF, b""
            if c == ord(">"):
                return Token.TAG, bytes(out)
            if c in _WHITESPACE:
                found_space = True
            elif c == ord("/") or not found_space:
                room -= 1
                if room <= 0:
                    return Token.EOF, b""
                out.append(c)
            if i == 2 and out[:3] == b"!--":
                return self._comment()
            if i == 7 and out[:8] == b"![CDATA[":
                return self._cdata(room)
            i += 1

    def _comment(self) -> tuple[Token | None, bytes]:
        window = b""
        while True:
            c = self.getc()
            if c == -1:
                return Token.EOF, b""
            window = (window + bytes([c]))[-3:]
            if window == b"-->":
                return None, b""

    def _cdata(self, room: int) -> tuple[Token | None, bytes]:
        out = bytearray()
        room -= 1
        while True:
            c = self.getc()
            if c == -1:
                return Token.EOF, b""
            if room:
                out.append(c)
                room -= 1
            if c == ord(">"):
                end = out.find(b"]]>")
                if end >= 0:
                    return Token.CDATA, bytes(out[:end])


def xml_unescape(raw: bytes) -> bytes:
    """BOINC's ``xml_unescape``: the five named entities, ``&#xD;``/``&#xA;`` and decimal
    ``&#N;`` below 256 (as one byte); anything else, a bare ``&`` included, stays as it is.
    A NUL produced here ends the string (it is a C string)."""
    out = bytearray()
    i = 0
    named: tuple[tuple[bytes, bytes], ...] = (
        (b"&lt;", b"<"),
        (b"&gt;", b">"),
        (b"&quot;", b'"'),
        (b"&apos;", b"'"),
        (b"&amp;", b"&"),
        (b"&#xD;", b"\r"),
        (b"&#xd;", b"\r"),
        (b"&#xA;", b"\n"),
        (b"&#xa;", b"\n"),
    )
    while i < len(raw):
        if raw[i] != ord("&"):
            out.append(raw[i])
            i += 1
            continue
        for entity, char in named:
            if raw.startswith(entity, i):
                out += char
                i += len(entity)
                break
        else:
            if raw.startswith(b"&#", i):
                i = _numeric_entity(raw, i + 2, out)
            else:
                out.append(raw[i])
                i += 1
    return bytes(out).split(b"\0")[0]


def _numeric_entity(raw: bytes, i: int, out: bytearray) -> int:
    """``&#`` seen, ``i`` just after it: append what BOINC writes, return where it goes on."""
    semicolon = raw.find(b";", i)
    digits = b""
    j = i
    while j < len(raw) and raw[j : j + 1].isdigit():
        j += 1
    digits = raw[i:j]
    if semicolon < 0 or semicolon == i or j != semicolon:
        out += b"&#"
        return i
    # atoi: strtol saturates at LONG_MAX, then the cast to int keeps the low 32 bits.
    code = c_int_cast(min(int(digits), 2**63 - 1))
    if code < 256:
        out.append(code & 0xFF)
        return semicolon + 1
    out += b"&#"
    return i


@dataclass(frozen=True)
class Finding:
    """Something in the file that BOINC reads in a way the author may not expect."""

    element: str  # "" for the file as a whole; "port_forward/x" inside a port_forward
    what: str  # what BOINC does, in words


@dataclass
class BoincJob:
    """What vboxwrapper ends up with: the values it took, and what it made of the rest."""

    values: dict[str, object] = field(default_factory=dict)
    extensions: dict[str, object] = field(default_factory=dict)  # vmwrapper's own elements
    notes: list[str] = field(default_factory=list)
    #: one per <port_forward>: its children's values (defaults applied by the caller)
    port_forwards: list[dict[str, object]] = field(default_factory=list)
    started: bool = False  # parse_start found <vbox_job>
    ended: bool = False  # </vbox_job> was reached: vboxwrapper's parse returned 0
    findings: list[Finding] = field(default_factory=list)
    #: elements whose value BOINC read from a form that is not plain: (element, raw text)
    odd_forms: list[tuple[str, str]] = field(default_factory=list)
    start_failure: str = ""


class _Reader:
    """XML_PARSER's ``get_tag`` and ``parse_*`` calls, with the current tag."""

    def __init__(self, data: bytes) -> None:
        self.scan = _Scanner(data)
        self.tag = b""
        self.is_tag = False

    def get_tag(self) -> bool:
        """Read the next token into ``tag``; False at the end of the file."""
        kind, buf = self.scan.token(TAG_BUF_LEN)
        if kind is Token.EOF:
            return False
        self.tag = buf[: TAG_BUF_LEN - 10]
        self.is_tag = kind is Token.TAG
        return True

    def _next(self, size: int) -> tuple[Token, bytes]:
        kind, buf = self.scan.token(size)
        if kind is not Token.EOF:
            self.is_tag = kind is Token.TAG
        return kind, buf

    def _end_follows(self, name: bytes) -> bool:
        kind, buf = self._next(TAG_BUF_LEN)
        return kind is Token.TAG and buf == b"/" + name

    def read(self, name: str, kind: str) -> tuple[bool, object, str]:
        """``parse_<kind>(name, x)`` for the current tag: (taken, value, why not / form).
        Not taken with an empty reason: the tag is not this element (nothing consumed)."""
        bname = name.encode()
        if kind == BOOL and self.tag == bname + b"/":
            return True, True, ""
        if kind == STRING and self.tag == bname + b"/":
            return True, b"", ""
        if self.tag != bname:
            return False, None, ""
        if kind == STRING:
            return self._string(bname)
        return self._number(bname, kind)

    def _string(self, name: bytes) -> tuple[bool, object, str]:
        kind, buf = self._next(STRING_BUF_LEN)
        if kind is Token.EOF:
            return False, None, "the file ends inside it"
        if kind is Token.TAG:
            if buf == b"/" + name:
                return True, b"", ""
            return False, None, f"a tag <{_show(buf)}> where its text belongs"
        if not self._end_follows(name):
            return False, None, "its text is not followed by its end tag"
        return True, (buf if kind is Token.CDATA else xml_unescape(buf)), ""

    def _number(self, name: bytes, kind: str) -> tuple[bool, object, str]:
        token, buf = self._next(NUMBER_BUF_LEN)
        if token is Token.EOF:
            return False, None, "the file ends inside it (or its text is too long)"
        if token is Token.TAG:
            if kind != BOOL and buf == b"/" + name:
                return True, (0.0 if kind == DOUBLE else 0), "empty, read as 0"
            return False, None, ("empty" if buf == b"/" + name else f"a tag <{_show(buf)}> inside")
        text = buf.decode("latin-1")
        value: object
        if kind == DOUBLE:
            read = strtod_whole(text)
            if read is None or read[1]:
                why = "out of range for a C double" if read else "not a number as strtod reads it"
                return False, None, f"{text!r} is {why}"
            value = read[0]
        else:
            got = strtol_whole(text)
            if got is None or (got[1] and kind == INT):
                why = (
                    "out of range for a C long" if got else "not a whole number as strtol reads it"
                )
                return False, None, f"{text!r} is {why}"
            value = (got[0] != 0) if kind == BOOL else c_int_cast(got[0])
        if not self._end_follows(name):
            return False, None, "its value is not followed by its end tag"
        form = "" if _plain(text, kind) else f"written {text!r}, read as {_format(value)}"
        return True, value, form


def _plain(text: str, kind: str) -> bool:
    if kind == BOOL:
        return text in ("0", "1")
    if kind == INT:
        return text == "0" or (text.lstrip("-").isdigit() and not text.lstrip("-").startswith("0"))
    stripped = text.lstrip("-")
    return stripped.replace(".", "", 1).isdigit() and (
        not stripped.startswith("0") or stripped == "0" or stripped.startswith("0.")
    )


def _format(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _show(tag: bytes) -> str:
    return tag.decode("utf-8", "replace")


def read_job(data: bytes) -> BoincJob:
    """vbox_job.xml as vboxwrapper's job parser reads it (docs/compatibility.md#job-file)."""
    job = BoincJob()
    reader = _Reader(data)
    job.start_failure = _parse_start(reader)
    if job.start_failure:
        return job
    job.started = True
    unknown_open: list[bytes] = []  # unknown elements we are inside, as BOINC walks into them
    while reader.get_tag():
        if not reader.is_tag:
            if not unknown_open:  # an unknown element's text was reported with the element
                text = _show(reader.tag)
                job.findings.append(Finding("", f"text {text!r} between elements: ignored"))
            continue
        if reader.tag == b"/vbox_job":
            job.ended = True
            if reader.scan.rest().strip(_WHITESPACE):
                job.findings.append(Finding("", "content after </vbox_job>: ignored"))
            return job
        if reader.tag == b"port_forward":
            job.port_forwards.append(_read_port_forward(reader, job))
            continue
        name = _element(reader.tag)
        if name in JOB_ELEMENTS:
            _take(reader, job, name, unknown_open)
        elif name in EXTENSIONS:
            _extension(reader, job, name)
        else:
            _walk_unknown(reader.tag, job, unknown_open)
    return job


def _parse_start(reader: _Reader) -> str:
    """``parse_start("vbox_job")``: the first tag (after an optional ``<?xml ...?>``)."""
    kind, tag = reader._next(TAG_BUF_LEN)
    if kind is Token.TAG and b"?xml" in tag:
        kind, tag = reader._next(TAG_BUF_LEN)
    if kind is Token.TAG and tag == b"vbox_job":
        return ""
    if kind is Token.EOF:
        return "the file has no <vbox_job> element"
    if kind is Token.TAG and tag == b"vbox_job/":
        return "an empty <vbox_job/>: BOINC's parser needs <vbox_job>...</vbox_job>"
    if tag.startswith(b"\xef\xbb\xbf"):
        return "the file starts with a UTF-8 byte-order mark, which BOINC's parser cannot read"
    shown = f"<{_show(tag)}>" if kind is Token.TAG else f"text {_show(tag[:40])!r}"
    return f"the file must start with <vbox_job> (after an optional <?xml ...?>), not {shown}"


def _element(tag: bytes) -> str:
    name = tag[:-1] if tag.endswith(b"/") else tag
    return name.decode("utf-8", "replace")


def _take(reader: _Reader, job: BoincJob, name: str, unknown_open: list[bytes]) -> None:
    taken, value, why = reader.read(name, JOB_ELEMENTS[name])
    if not taken and not why:
        why = f"BOINC takes no value from <{name}/> for a number"
    if unknown_open:
        where = "/".join(_show(t) for t in unknown_open)
        job.findings.append(Finding(name, f"inside <{where}>: BOINC reads it all the same"))
    if not taken:
        job.findings.append(Finding(name, f"not read ({why or 'no value'}): it keeps its default"))
        return
    if why:
        job.odd_forms.append((name, why))
    if name == "vram_size_mb" and isinstance(value, float):
        value = _clamp_vram(value, job)
    if name in REPEATED:
        job.values.setdefault(name, [])
        job.values[name].append(value)  # type: ignore[attr-defined]
    else:
        if name in job.values:
            job.findings.append(Finding(name, "appears more than once: the last one counts"))
        job.values[name] = value


def _clamp_vram(value: float, job: BoincJob) -> float:
    """vboxwrapper keeps a vram_size_mb it reads within 16..128 (NaN slips through)."""
    clamped = min(max(value, VRAM_MIN_MB), VRAM_MAX_MB) if value == value else value
    if clamped != value:
        job.notes.append(
            f"vram_size_mb {value:g} clamped to {clamped:g} "
            f"(allowed {VRAM_MIN_MB:g}..{VRAM_MAX_MB:g})"
        )
    return clamped


def _extension(reader: _Reader, job: BoincJob, name: str) -> None:
    """An element vmwrapper reads (by BOINC's rules) that vboxwrapper skips."""
    taken, value, why = reader.read(name, EXTENSIONS[name])
    if taken:
        job.extensions[name] = value
    job.findings.append(
        Finding(
            name,
            "vboxwrapper does not read this element (vmwrapper does)"
            + ("" if taken else f"; not read ({why})"),
        )
    )


def _walk_unknown(tag: bytes, job: BoincJob, unknown_open: list[bytes]) -> None:
    """vboxwrapper logs an unknown tag and goes on with the next one, so it walks *into*
    unknown elements: their known children are read as if they were at the top."""
    if tag.startswith(b"/"):
        if unknown_open and unknown_open[-1] == tag[1:]:
            unknown_open.pop()
        elif _element(tag[1:]) not in JOB_ELEMENTS:
            job.findings.append(Finding(_element(tag[1:]), "an end tag with no start: ignored"))
        return
    job.findings.append(Finding(_element(tag), "unknown element: BOINC skips the tag itself"))
    if not tag.endswith(b"/") and not tag.startswith((b"?", b"!")):
        unknown_open.append(tag)


def _read_port_forward(reader: _Reader, job: BoincJob) -> dict[str, object]:
    """``VBOX_PORT_FORWARD::parse``: children until ``</port_forward>`` (tags or not)."""
    values: dict[str, object] = {}
    while reader.get_tag():
        if reader.tag == b"/port_forward":
            return values
        for name, kind in PORT_FORWARD_ELEMENTS.items():
            taken, value, why = reader.read(name, kind)
            if taken:
                values[name] = value
                if why:
                    job.odd_forms.append((f"port_forward/{name}", why))
                break
            if why:
                job.findings.append(Finding(f"port_forward/{name}", f"not read ({why})"))
                break
        else:
            what = "tag" if reader.is_tag else "text"
            job.findings.append(
                Finding("port_forward", f"unexpected {what} {_show(reader.tag)!r}: ignored")
            )
    return values
