"""Shared helpers for the benchmark scripts (``bench/bench_*.py``).

Two halves:

* **pure**: statistics over repeated samples (:class:`Stats`, :func:`paired_ratio`), the
  results document (:class:`Result`, :func:`update_document`: one section per figure plus a
  summary table rebuilt from the sections), disk usage sums. Unit-tested in
  ``tests/unit/test_bench_common.py``.
* **I/O**: the guest image, app versions made by ``vmwrapper package``, ``vmwrapper job`` runs
  watched with psutil (the wrapper and QEMU processes), bare QEMU boots, the machine's load.

Each script runs standalone (``.venv/bin/python bench/bench_X.py``), alternates the variants
it compares, prints its result and rewrites its own section of ``docs/performance.md``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
PYTHON = sys.executable
VMWRAPPER = [PYTHON, "-m", "vmwrapper"]

# The order of the figures in the summary table (a section's key decides its row).
ORDER = (
    "e2e",
    "wrapper_cpu_rss",
    "checkpoint_pause",
    "trigger_exit",
    "disk_multiattach",
    "share_transport",
)

# ---------------------------------------------------------------------------------------------
# statistics (pure)


@dataclass(frozen=True)
class Stats:
    """Median and spread of repeated measurements."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def low(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def high(self) -> float:
        return max(self.values) if self.values else float("nan")

    def show(self, unit: str = "", digits: int = 2) -> str:
        """``12.3 s (11.0–14.1, n=5)``: median, then the range."""
        if not self.values:
            return "no samples"
        fmt = f"{{:.{digits}f}}"
        m, lo, hi = (fmt.format(v) for v in (self.median, self.low, self.high))
        sep = " " if unit and unit != "%" else ""
        return f"{m}{sep}{unit} ({lo}–{hi}, n={self.n})"


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> Stats:
    """Ratios a[i]/b[i] of alternated runs (pair i ran back to back, so load drifts cancel)."""
    if len(a) != len(b):
        raise ValueError(f"unpaired samples: {len(a)} vs {len(b)}")
    return Stats(tuple(x / y for x, y in zip(a, b, strict=True) if y > 0))


def alternate(variants: Sequence[str], repetitions: int) -> list[tuple[int, str]]:
    """(repetition, variant) in the order to run them: A B, B A, A B, ... (the first of each
    pair alternates too, so neither variant always runs right after the other's clean-up)."""
    order: list[tuple[int, str]] = []
    for rep in range(repetitions):
        names = list(variants) if rep % 2 == 0 else list(reversed(variants))
        order += [(rep, name) for name in names]
    return order


def longest_stall(arrivals: Sequence[float], start: float, end: float) -> float:
    """The longest gap between consecutive ``arrivals`` (sorted host times at which a guest's
    output was seen) that overlaps [start, end]: how long the guest was seen to stand still
    around that interval. 0 when fewer than two arrivals touch it."""
    longest = 0.0
    for before, after in itertools.pairwise(arrivals):
        if after >= start and before <= end:
            longest = max(longest, after - before)
    return longest


def stalls_inside(arrivals: Sequence[float], spans: Sequence[tuple[float, float]]) -> list[float]:
    """The longest gap between ``arrivals`` wholly inside each of ``spans`` (a span with
    fewer than two arrivals gives none)."""
    stalls: list[float] = []
    for start, end in spans:
        inside = [t for t in arrivals if start <= t <= end]
        gaps = [b - a for a, b in itertools.pairwise(inside)]
        if gaps:
            stalls.append(max(gaps))
    return stalls


def quiet_stalls(arrivals: Sequence[float], busy: Sequence[tuple[float, float]]) -> list[float]:
    """The longest gap inside each stretch between the ``busy`` intervals (sorted, not
    overlapping): the noise floor the same run shows where nothing was done to the guest."""
    return stalls_inside(arrivals, [(busy[i][1], busy[i + 1][0]) for i in range(len(busy) - 1)])


# ---------------------------------------------------------------------------------------------
# the results document (pure)

TABLE_BEGIN = "<!-- bench-table:begin -->"
TABLE_END = "<!-- bench-table:end -->"
TABLE_HEAD = (
    "| figure | goal | measured (median, range) | ratio | verdict | reproduce | date | load avg |\n"
    "|---|---|---|---|---|---|---|---|\n"
)
DOC_HEAD = f"""# Performance

Measured by the scripts in `bench/` (one per figure; `make bench` runs them all). Each script
runs the variants it compares **alternately in one run** (A B, B A, ...), several times, and
reports the median and the range; ratios are per back-to-back pair. Every section says the
machine and its load: these are shared 2-core hosts where other engineers' VMs run too, and
there is **no usable KVM** (`/dev/kvm` exists but is a software nested back end that does not
boot a kernel), so every guest runs under **TCG**, 10-50x slower than KVM for guest code.
Wall times therefore move ±30% between runs and more when a neighbour starts a VM (one pair
below took 3.7x); compare the ratios and the phases, not the absolute seconds.

{TABLE_BEGIN}
{TABLE_HEAD}{TABLE_END}
"""


@dataclass(frozen=True)
class Result:
    """One figure's outcome: a row of the summary table and a section of the document."""

    key: str  # one of ORDER; names the section
    title: str
    goal: str
    measured: str
    ratio: str
    met: bool | None  # None: no goal to meet (a comparison only)
    command: str
    date: str
    machine: str
    load: str
    body: str = ""  # markdown: method, the samples, causes found

    @property
    def verdict(self) -> str:
        return "—" if self.met is None else ("met" if self.met else "**MISSED**")

    def row(self) -> str:
        cells = (
            f"[{self.title}](#{self.key.replace('_', '-')})",
            self.goal,
            self.measured,
            self.ratio,
            self.verdict,
            f"`{self.command}`",
            self.date,
            self.load,
        )
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    def section(self) -> str:
        row = json.dumps({"key": self.key, "row": self.row()}, ensure_ascii=False)
        text = (
            f"<!-- bench:{self.key}:begin -->\n"
            f"<!-- bench-row: {row} -->\n"
            f'<a id="{self.key.replace("_", "-")}"></a>\n\n'
            f"## {self.title}\n\n"
            f"* goal: {self.goal}\n"
            f"* measured: {self.measured}\n"
            f"* ratio: {self.ratio}\n"
            f"* verdict: {self.verdict}\n"
            f"* reproduce: `{self.command}`\n"
            f"* date: {self.date}; machine: {self.machine}; load average: {self.load}\n"
        )
        if self.body:
            text += "\n" + self.body.strip() + "\n"
        return text + f"<!-- bench:{self.key}:end -->\n"


_SECTION = re.compile(r"<!-- bench:(\w+):begin -->\n.*?<!-- bench:\1:end -->\n", re.S)
_ROW = re.compile(r"<!-- bench-row: (\{.*\}) -->")


def _order(key: str) -> int:
    return ORDER.index(key) if key in ORDER else len(ORDER)


def update_document(doc: str, result: Result) -> str:
    """``doc`` with ``result``'s section replaced (or added, in ORDER) and the summary table
    rebuilt from every section's row. Text outside the marked blocks is kept as it is."""
    if TABLE_BEGIN not in doc or TABLE_END not in doc:
        doc = DOC_HEAD + ("\n" + doc.strip() + "\n" if doc.strip() else "")
    sections = {m.group(1): m.group(0) for m in _SECTION.finditer(doc)}
    new = result.section()
    if result.key in sections:
        doc = doc.replace(sections[result.key], new)
    else:
        later = [k for k in sections if _order(k) > _order(result.key)]
        if later:
            anchor = sections[min(later, key=_order)]
            doc = doc.replace(anchor, new + "\n" + anchor)
        else:
            doc = doc.rstrip("\n") + "\n\n" + new
    rows = []
    for match in _SECTION.finditer(doc):
        found = _ROW.search(match.group(0))
        if found:
            data = json.loads(found.group(1))
            rows.append((_order(str(data["key"])), str(data["row"])))
    table = TABLE_HEAD + "".join(row + "\n" for _, row in sorted(rows))
    start = doc.index(TABLE_BEGIN) + len(TABLE_BEGIN)
    end = doc.index(TABLE_END)
    return doc[:start] + "\n" + table + doc[end:]


def write_result(result: Result, path: Path = DOC) -> None:
    """Print the result and rewrite its section of docs/performance.md."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(update_document(old, result), encoding="utf-8")
    tmp.replace(path)
    print(f"\n{result.title}: {result.measured}; ratio {result.ratio}; {result.verdict}")
    print(f"(written to {path.relative_to(ROOT)})")


# ---------------------------------------------------------------------------------------------
# disk usage (pure over stat results) and the machine


@dataclass(frozen=True)
class DiskUse:
    apparent: int  # sum of file sizes
    allocated: int  # blocks actually used (sparse files and qcow2 clusters count as written)

    def __add__(self, other: DiskUse) -> DiskUse:
        return DiskUse(self.apparent + other.apparent, self.allocated + other.allocated)


def disk_use_of(files: Iterable[tuple[int, int]]) -> DiskUse:
    """The sum over (st_size, st_blocks) pairs; st_blocks counts 512-byte units."""
    total = DiskUse(0, 0)
    for size, blocks in files:
        total = total + DiskUse(size, blocks * 512)
    return total


def disk_use(path: Path, exclude: Callable[[Path], bool] = lambda p: False) -> DiskUse:
    """Regular files under ``path`` (symlinks not followed)."""
    found = [p for p in path.rglob("*") if not exclude(p)] if path.is_dir() else [path]
    stats = (p.lstat() for p in found if p.is_file() and not p.is_symlink())
    return disk_use_of((st.st_size, st.st_blocks) for st in stats)


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def machine() -> str:
    cpu = psutil.cpu_count() or 0
    kvm = "KVM" if os.environ.get("VMWRAPPER_ACCEL") == "kvm" else "TCG (KVM unusable here)"
    qemu = _first_line(["qemu-system-x86_64", "--version"])
    return f"{cpu} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, {kvm}, {qemu}"


def _first_line(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    return out.stdout.splitlines()[0] if out.stdout else "?"


@dataclass
class LoadWatch:
    """The 1-minute load average at the start and the end of a script."""

    start: tuple[float, float, float] = field(default_factory=load_average)

    def show(self) -> str:
        end = load_average()
        return f"{self.start[0]:.1f} at start, {end[0]:.1f} at end (1-min)"


# ---------------------------------------------------------------------------------------------
# the guest image and app versions


def guest_image() -> Path:
    """The default guest image (VDI) from the image cache, built if needed."""
    from vmwrapper.images import ensure_image

    return ensure_image()


def compile_bytecode() -> None:
    """Compile the vmwrapper package's byte code, as an installed wrapper has it (pip compiles
    at install time, PyInstaller bundles it). Without it every interpreter start of a
    development checkout compiles ~90 modules (~0.15 s) whenever PYTHONDONTWRITEBYTECODE is
    set, as it is on these hosts."""
    import compileall

    import vmwrapper

    package = Path(vmwrapper.__file__).parent
    if not compileall.compile_dir(package, quiet=1):
        raise RuntimeError(f"byte-compiling {package} failed")


def package_app(
    out: Path,
    image: Path,
    app_script: str,
    job_xml: str,
    *,
    inputs: dict[str, str] | None = None,
    outputs: Sequence[str] = (),
) -> Path:
    """An app version dir made by ``vmwrapper package`` (what a project would ship)."""
    src = out.parent / (out.name + "-src")
    src.mkdir(parents=True, exist_ok=True)
    (src / "vbox_job.xml").write_text(job_xml)
    (src / "app.sh").write_text(app_script)
    (src / "app.sh").chmod(0o755)
    argv = [
        *VMWRAPPER, "package", "--app", "bench", "--job", str(src / "vbox_job.xml"),
        "--image", str(image), "--boinc-app", str(src / "app.sh"), "--no-gzip",
        "--cmdline", "--backend qemu", "--out", str(out), "--force",
    ]  # fmt: skip
    for name, text in (inputs or {}).items():
        (src / name).write_text(text)
        argv += ["--input", f"{name}={src / name}"]
    for name in outputs:
        argv += ["--output", name]
    subprocess.run(argv, check=True, capture_output=True, timeout=300)
    return out


# ---------------------------------------------------------------------------------------------
# watching a `vmwrapper job` run


def is_wrapper(proc: psutil.Process) -> bool:
    """The `vmwrapper run` process: the launcher execs `python -m vmwrapper ARGS` (no `job`)."""
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return False
    return "vmwrapper" in cmd and "job" not in cmd and "-m" in cmd


def is_qemu(proc: psutil.Process) -> bool:
    """The VM's QEMU (it has a pidfile), not the back end's brief `qemu-system-* -device help`
    run before it: a sampler that caught that one kept a dead process and never saw the
    job's markers."""
    try:
        return proc.name().startswith("qemu-system") and "-pidfile" in proc.cmdline()
    except psutil.Error:
        return False


def find_descendant(
    root: psutil.Process, match: Callable[[psutil.Process], bool]
) -> psutil.Process | None:
    try:
        children = root.children(recursive=True)
    except psutil.Error:
        return None
    return next((c for c in children if match(c)), None)


@dataclass
class JobRun:
    """A `vmwrapper job` subprocess (its own session, always killed at the end)."""

    proc: subprocess.Popen[bytes]
    workdir: Path
    started: float  # time.monotonic() at the start
    wall_started: float  # time.time() at the start (events.jsonl stamps are wall time)

    @property
    def slot(self) -> Path:
        return self.workdir / "slots" / "0"

    def console(self) -> str:
        path = self.slot / "qemu-console.log"
        try:
            return path.read_text(errors="replace")
        except OSError:
            return ""


@contextmanager
def vmwrapper_job(
    app_dir: Path, workdir: Path, *extra: str, log: Path | None = None
) -> Iterator[JobRun]:
    """Start `vmwrapper job APP_DIR --workdir W`; on exit from the block kill what is left."""
    if workdir.exists():
        shutil.rmtree(workdir)
    out = (log or workdir.with_suffix(".log")).open("wb")
    argv = [*VMWRAPPER, "job", str(app_dir), "--workdir", str(workdir), *extra]
    wall, started = time.time(), time.monotonic()
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield JobRun(proc, workdir, started, wall)
    finally:
        out.close()
        if proc.poll() is None:
            kill_tree(proc.pid)
        proc.wait(timeout=30)


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and all its descendants (only processes this script started)."""
    with suppress(psutil.Error):
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
        for p in procs:
            with suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(procs, timeout=10)


def wait_job(run: JobRun, timeout: float) -> float:
    """Wait for the job's end; its wall time from the start of `vmwrapper job` (taken at
    the exit itself: Popen.wait with a timeout would see it up to 50 ms late)."""
    from vmwrapper.harness.task import wait_for_exit

    wait_for_exit(run.proc, timeout)
    took = time.monotonic() - run.started
    if run.proc.poll() is None:
        raise RuntimeError(f"vmwrapper job still running after {timeout} s ({run.workdir})")
    code = run.proc.wait()
    if code != 0:
        raise RuntimeError(f"vmwrapper job exited {code}; see {run.workdir.with_suffix('.log')}")
    return took


def events(slot: Path) -> list[dict[str, object]]:
    from vmwrapper.supervisor.events import read_events

    return read_events(slot)


# ---------------------------------------------------------------------------------------------
# bare QEMU: the same image and shared directory, no wrapper


def bare_qemu_argv(overlay: Path, console: Path, shared: Path, memory_mb: int = 256) -> list[str]:
    """What the wrapper's QEMU back end runs, minus the wrapper: same machine, CPU model,
    virtio-blk disk through a qcow2 overlay, 9p `shared`, pvpanic, no NIC; no QMP."""
    from vmwrapper.hypervisor.qemu.cmdline import ARCHES

    arch = ARCHES["x86_64"]
    cpu = ["-cpu", arch.cpu_tcg] if arch.cpu_tcg else []
    return [
        arch.binary, "-machine", arch.machine, "-accel", "tcg", *cpu,
        "-m", str(memory_mb), "-smp", "1", "-nodefaults", "-no-user-config",
        "-rtc", "base=utc", "-no-reboot",
        "-device", arch.pvpanic_device, "-action", "panic=exit-failure",
        "-drive", f"file={overlay},if=virtio,format=qcow2",
        "-virtfs", f"local,path={shared},mount_tag=shared,security_model=none",
        "-serial", f"file:{console}", "-nic", "none", "-display", "none",
    ]  # fmt: skip


def bare_qemu_job(
    image: Path,
    workdir: Path,
    files: dict[str, tuple[str, int]],
    timeout: float = 300.0,
    nice: int = 0,
    memory_mb: int = 256,
) -> tuple[float, str]:
    """Boot ``image`` with plain QEMU: overlay, shared dir holding ``files`` (name → text,
    mode), until the guest powers off. Returns (wall seconds, console text). ``nice``: run
    QEMU at that niceness (a client runs the wrapper, hence its QEMU, niced)."""
    if workdir.exists():
        shutil.rmtree(workdir)
    shared = workdir / "shared"
    shared.mkdir(parents=True)
    started = time.monotonic()
    for name, (text, mode) in files.items():
        (shared / name).write_text(text)
        (shared / name).chmod(mode)
    overlay = workdir / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "vdi", str(overlay)],
        check=True, timeout=60,
    )  # fmt: skip
    console = workdir / "console.log"
    argv = ["nice", "-n", str(nice), *bare_qemu_argv(overlay, console, shared, memory_mb)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"bare QEMU still running after {timeout} s ({workdir})") from None
    took = time.monotonic() - started
    text = console.read_text(errors="replace")
    if proc.returncode != 0 or "VMWRAPPER_GUEST_DONE status=0" not in text:
        panic = next((line for line in text.splitlines() if "Kernel panic" in line), "")
        tail = err.decode(errors="replace")[-500:]
        raise RuntimeError(f"bare QEMU exit {proc.returncode}: {panic}\n{tail}\n{text[-500:]}")
    return took, text


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
