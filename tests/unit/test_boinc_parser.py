"""Our job-file reader against BOINC's own: Debian's libboinc ``XML_PARSER``, called the way
vboxwrapper's job parser calls it (tests/helpers/boinc_job_reader.cpp, built here).

Generated job files cover every element in every form the issue lists (empty, blank,
self-closed, nested in unknown elements, commented, CDATA, entities, numbers with signs, hex,
octal, exponents, underscores and junk, byte-order marks, text after the root). For each one:

* :func:`vmwrapper.spec.boincxml.read_job` takes exactly the values BOINC takes;
* :func:`vmwrapper.spec.parse_job` (what ``vmwrapper run`` uses) ends with the same values,
  or refuses the file, or names the element whose value it changed in a warning or a note.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmwrapper.errors import SpecError
from vmwrapper.spec import JobSpec, parse_job
from vmwrapper.spec.boincxml import JOB_ELEMENTS, PORT_FORWARD_ELEMENTS, read_job

READER_SOURCE = Path(__file__).parent.parent / "helpers" / "boinc_job_reader.cpp"
BOINC_HEADERS = Path("/usr/include/boinc")
LIBS = (
    "-lboinc_api",
    "-lboinc",
    "-lpthread",
)  # Debian's shared libboinc (the static one lacks -fPIC)


class BoincReader:
    """The C++ reader as a long-lived process: one path in, one JSON line out."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        self.workdir = workdir
        self.count = 0
        self.proc = subprocess.Popen(
            [str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def read(self, data: bytes) -> dict[str, Any]:
        self.count += 1
        path = self.workdir / f"job{self.count}.xml"
        path.write_bytes(data)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        path.unlink()
        assert line, "the BOINC reader died"
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def boinc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BoincReader]:
    compiler = shutil.which("g++")
    if compiler is None or not (BOINC_HEADERS / "parse.h").exists():
        pytest.skip("needs g++ and libboinc-app-dev (scripts/install-deps.sh installs both)")
    workdir = tmp_path_factory.mktemp("boinc_reader")
    binary = workdir / "boinc_job_reader"
    build = subprocess.run(
        [compiler, "-O1", f"-I{BOINC_HEADERS}", str(READER_SOURCE), "-o", str(binary), *LIBS],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    reader = BoincReader(binary, workdir)
    yield reader
    reader.close()


# -- what BOINC printed, in our terms ------------------------------------------------------


def _boinc_value(name: str, printed: Any) -> Any:
    """A value as the C++ reader printed it → as our reader holds it."""
    kind = JOB_ELEMENTS.get(name)
    if isinstance(printed, list):
        return [bytes.fromhex(v) for v in printed]
    if kind == "string":
        return bytes.fromhex(printed)
    if kind == "double":
        return float(printed)
    return printed


def _same(ours: Any, theirs: Any) -> bool:
    if isinstance(ours, float) and isinstance(theirs, float):
        return (math.isnan(ours) and math.isnan(theirs)) or ours == theirs
    return bool(ours == theirs)


# -- generated job files -------------------------------------------------------------------

_NUMBER_CORES = st.one_of(
    st.integers(-70000, 70000).map(str),
    st.integers(0, 2**70).map(lambda n: f"0x{n:x}"),
    st.integers(0, 4096).map(lambda n: f"0{n:o}"),
    st.sampled_from(
        [
            "0",
            "00",
            "080",
            "09",
            "1_024",
            "0x",
            "0x1p4",
            "0x.8",
            "1e3",
            "1.5e-3",
            "1e400",
            "1e-310",
            "4e-320",
            ".5",
            "5.",
            ".",
            "-",
            "+",
            "inf",
            "-Infinity",
            "nan",
            "NaN(7)",
            "1,2",
            "12abc",
            "true",
            "yes",
            "2147483648",
            "4294967376",
            "9223372036854775808",
            "-9223372036854775809",
            "0X1A",
            "+0x10",
            "-0",
            "1e",
            "0e-999",
            "١٢",
        ]
    ),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
NUMBERS = st.tuples(
    st.sampled_from(["", " ", "\n\t", "\v", "\xa0"]),
    _NUMBER_CORES,
    st.sampled_from(["", " ", "\r\n"]),
).map("".join)

_STRING_PIECES = st.sampled_from(
    [
        " ",
        "\t",
        "x y",
        *["a", "Linux26_64", "results/progress", "&", "&amp;", "&lt;", "&gt;", "&quot;", "&apos;"],
        *[
            "&#65;",
            "&#xA;",
            "&#xD;",
            "&#x41;",
            "&#300;",
            "&#0;",
            "&#;",
            "&#12a;",
            "&#",
            "&#4294967361;",
            "&nbsp;",
        ],
        "é",
        "☃",
        ">",
        "]]",
        "'",
        '"',
        "/",
        "..",
    ]
)
STRINGS = st.lists(_STRING_PIECES, max_size=5).map("".join)


def _element(name: str, kind: str) -> st.SearchStrategy[str]:
    text = NUMBERS if kind in ("double", "int", "bool") else STRINGS
    return st.one_of(
        st.just(f"<{name}/>"),
        st.just(f"<{name} />"),
        st.just(f'<{name} a="1"/>'),
        st.just(f"<{name}></{name}>"),
        st.just(f"<{name}> \n </{name}>"),
        text.map(lambda t: f"<{name}>{t}</{name}>"),
        text.map(lambda t: f"<{name}><!-- c -->{t}</{name}>"),
        text.map(lambda t: f"<{name}>{t}<!-- c --></{name}>"),
        text.map(lambda t: f"<{name}><![CDATA[{t}]]></{name}>"),
        text.map(lambda t: f"<{name}>{t}</{name}x>"),
        text.map(lambda t: f"<{name}>{t}"),
        st.just(f"<{name}><b/></{name}>"),
    )


ELEMENT = st.sampled_from(sorted(JOB_ELEMENTS.items())).flatmap(lambda nk: _element(*nk))
PORT_CHILD = st.sampled_from(sorted(PORT_FORWARD_ELEMENTS.items())).flatmap(
    lambda nk: _element(*nk)
)
PORT_FORWARD = st.lists(
    st.one_of(PORT_CHILD, st.sampled_from(["host_port", "<x/>", "text", "<!-- c -->"])),
    max_size=5,
).map(lambda children: "<port_forward>" + "".join(children) + "</port_forward>")
OTHER = st.sampled_from(
    [
        *[
            "<!--_a_comment_-->",
            "<!---->",
            "text",
            "<group>",
            "</group>",
            "<group/>",
            "<enable_gbac/>",
        ],
        *["</os_name>", "<![CDATA[x]]>", "<?pi?>", "</port_forward>", "<port_forward/>"],
        "<vm_graphics_controller_type>VMSVGA</vm_graphics_controller_type>",
        "\n  ",
    ]
)
BODY = st.lists(st.one_of(ELEMENT, ELEMENT, PORT_FORWARD, OTHER), max_size=12).map("".join)
JOB_FILES = st.tuples(
    st.sampled_from(["", "", "\ufeff", '<?xml version="1.0"?>\n', "<!-- head -->", " \n"]),
    st.sampled_from(["<vbox_job>", "<vbox_job>", '<vbox_job version="1">', "<job>"]),
    BODY,
    st.sampled_from(["</vbox_job>", "</vbox_job>\n", "</vbox_job>trailing", "", "</vbox_job><x"]),
).map(lambda parts: "".join(parts).encode("utf-8"))


def _assert_reads_like_boinc(boinc: BoincReader, data: bytes) -> None:
    theirs = boinc.read(data)
    ours = read_job(data)
    assert ours.started == theirs["started"]
    assert ours.ended == theirs["ended"]
    assert sorted(ours.values) == sorted(theirs["values"])
    for name, printed in theirs["values"].items():
        assert _same(ours.values[name], _boinc_value(name, printed)), name
    expected_forwards = [
        {k: v for k, v in pf.items() if v or k in ours_pf}
        for pf, ours_pf in zip(theirs["port_forwards"], ours.port_forwards, strict=False)
    ]
    assert len(ours.port_forwards) == len(theirs["port_forwards"])
    for mine, pf in zip(ours.port_forwards, expected_forwards, strict=True):
        defaults = {"host_port": 0, "guest_port": 0, "nports": 0, "is_remote": False}
        assert {**defaults, **mine} == {**defaults, **pf}


def _assert_run_agrees_or_reports(data: bytes) -> None:
    """What ``run`` uses: the same value, a refusal, or the element named in a warning/note."""
    boinc_job = read_job(data)
    try:
        parsed = parse_job(data, "job.xml")
    except SpecError as exc:
        assert exc.problems
        return
    said = "\n".join(parsed.warnings + parsed.notes)
    for name, raw in boinc_job.values.items():
        value = getattr(parsed.spec, name)
        if isinstance(raw, list):
            same = [v.encode("utf-8", "surrogateescape") for v in value] == raw
        elif isinstance(raw, bytes):
            same = value.encode("utf-8", "surrogateescape") == raw
        else:
            same = _same(value, raw)
        assert same or f"<{name}>" in said, name
    for name in set(JobSpec.__dataclass_fields__) - set(boinc_job.values):
        if name in JOB_ELEMENTS and name != "pf_host_port":
            default = getattr(JobSpec(), name)
            assert getattr(parsed.spec, name) == default or f"<{name}>" in said, name


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(JOB_FILES)
def test_generated_job_files_read_as_boinc_reads_them(boinc: BoincReader, data: bytes) -> None:
    _assert_reads_like_boinc(boinc, data)
    _assert_run_agrees_or_reports(data)


@pytest.mark.parametrize(
    "text",
    [
        "<vbox_job><group><enable_network/></group></vbox_job>",
        "<vbox_job><enable_network></enable_network><boot_iso> </boot_iso></vbox_job>",
        "<vbox_job><minimum_checkpoint_interval/></vbox_job>",
        "<vbox_job><memory_size_mb>1_024</memory_size_mb></vbox_job>",
        "<vbox_job><os_name>a & b</os_name></vbox_job> trailing text",
        "<vbox_job><memory_size_mb>0x400</memory_size_mb><pf_guest_port>080</pf_guest_port>"
        "<pf_host_port>010</pf_host_port></vbox_job>",
        "\ufeff<vbox_job><enable_network/></vbox_job>",
        "<vbox_job><os_name>x</os_name>\0<enable_network/></vbox_job>",
        "<vbox_job><port_forward>is_remote/<host_port>1</host_port></port_forward></vbox_job>",
        "<vbox_job><vram_size_mb>nan</vram_size_mb><job_duration>inf</job_duration></vbox_job>",
        "<vbox_job><os_name>" + "x" * 5000 + "</os_name><enable_network/></vbox_job>",
        "<vbox_job>" + "t" * 5000 + "<enable_network/></vbox_job>",
        "<vbox_job><memory_size_mb>" + "1" * 300 + "</memory_size_mb></vbox_job>",
    ],
)
def test_the_issues_cases_read_as_boinc_reads_them(boinc: BoincReader, text: str) -> None:
    data = text.encode("utf-8")
    _assert_reads_like_boinc(boinc, data)
    _assert_run_agrees_or_reports(data)


REAL_JOBS = sorted(
    p
    for p in (Path(__file__).parent.parent / "data" / "real-jobs").rglob("*.xml")
    if "version" not in p.name
)


@pytest.mark.parametrize("job", REAL_JOBS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_job_files_read_as_boinc_reads_them(boinc: BoincReader, job: Path) -> None:
    data = job.read_bytes()
    _assert_reads_like_boinc(boinc, data)
    _assert_run_agrees_or_reports(data)
    assert read_job(data).ended
