"""A short job end to end: `vmwrapper job` versus bare QEMU on the same image and shared dir.

Goal: the wrapper path at most 5% slower (issue 18; it was 10%). The job is examples/hello
(boot, read `in`, write `out`, power off). Variant `wrapper`: `vmwrapper job APP --keep-slot`
from its start to its exit (harness staging, the wrapper, QEMU through the back end, output
copy). Variant `bare`: the same guest image through a qcow2 overlay, the same files in a
shared dir, QEMU started by hand with the back end's machine options, until power-off, at
the same niceness as the wrapper's QEMU (the harness, like the client, runs a `<is_wrapper/>`
main program at nice 10 and QEMU inherits it; on a busy host nice decides most of a boot).
The two alternate (A B, B A, ...); the ratio is per back-to-back pair.

    .venv/bin/python bench/bench_e2e.py [--reps N]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from common import (
    ROOT,
    LoadWatch,
    Result,
    Stats,
    alternate,
    bare_qemu_job,
    compile_bytecode,
    events,
    guest_image,
    machine,
    package_app,
    paired_ratio,
    progress,
    today,
    vmwrapper_job,
    wait_job,
    write_result,
)

from vmwrapper.harness.task import NICE_HIGH_PRIORITY
from vmwrapper.spec import parse_job

GOAL_RATIO = 1.05
HELLO = ROOT / "examples" / "hello"
TIMEOUT = 300.0
RETRIES = 2  # a TCG guest on a starved host can panic at boot; such a run is redone
PHASES = (
    ("to_wrapper_start", "`vmwrapper job` start → wrapper's first event (harness staging: "
     "copies the image to the project dir and the slot; interpreter start)"),
    ("to_qemu_started", "wrapper start → QEMU started (init_data, vbox_job.xml, VDI → qcow2 "
     "conversion, overlay)"),
    ("vm_run", "QEMU started → outcome (the VM's run as the wrapper sees it)"),
    ("after_outcome", "outcome → `vmwrapper job` exited (the final status and finish file, "
     "the wrapper's exit, the harness sees it, outputs)"),
)  # fmt: skip


def wrapper_run(app: Path, work: Path) -> tuple[float, dict[str, float], str]:
    """(wall s, phases, output text) of one `vmwrapper job`."""
    with vmwrapper_job(app, work, "--keep-slot") as run:
        took = wait_job(run, TIMEOUT)
        evs = events(run.slot)
        out = (work / "outputs" / "out").read_text()
        stamps = {str(e["event"]): float(str(e["ts"])) for e in reversed(evs)}
        t0 = run.wall_started
        phases = {
            "to_wrapper_start": stamps["wrapper_start"] - t0,
            "to_qemu_started": stamps["qemu_started"] - stamps["wrapper_start"],
            "vm_run": stamps["outcome"] - stamps["qemu_started"],
            "after_outcome": t0 + took - stamps["outcome"],
        }
    return took, phases, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="uncounted runs of each variant")
    args = parser.parse_args()
    load = LoadWatch()
    compile_bytecode()  # an installed wrapper has its byte code; the harness and wrapper too
    image = guest_image()
    app_script = (HELLO / "hello_app_1.sh").read_text()
    job_xml = (HELLO / "vbox_job_1.xml").read_text()
    # the same RAM as the wrapper gives the job's VM (the guest's boot time grows with it)
    memory_mb = int(parse_job(job_xml).spec.memory_size_mb)
    text_in = (HELLO / "inputs" / "in").read_text()
    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    try:
        app = package_app(
            tmp / "app", image, app_script, job_xml,
            inputs={"in": text_in}, outputs=["out"],
        )  # fmt: skip
        times: dict[str, list[float]] = {"wrapper": [], "bare": []}
        phases: list[dict[str, float]] = []
        failures: list[str] = []
        outputs: set[str] = set()
        runs = alternate(("wrapper", "bare"), args.warmup + args.reps)
        for rep, variant in ((r - args.warmup, v) for r, v in runs):
            work = tmp / f"{variant}{rep}"
            for attempt in range(1 + RETRIES):
                try:
                    if variant == "wrapper":
                        took, ph, out = wrapper_run(app, work)
                        phases.append(ph)
                    else:
                        files = {"boinc_app": (app_script, 0o755), "in": (text_in, 0o644)}
                        took, _ = bare_qemu_job(
                            image, work, files, TIMEOUT, nice=NICE_HIGH_PRIORITY,
                            memory_mb=memory_mb,
                        )  # fmt: skip
                        out = (work / "shared" / "out").read_text()
                    break
                except RuntimeError as exc:  # a guest that failed to boot: say so, run again
                    failures.append(f"{variant}: {first_cause(str(exc))}")
                    progress(f"rep {rep} {variant} attempt {attempt} failed: {failures[-1]}")
                    if attempt == RETRIES:
                        raise
            outputs.add(out)
            progress(f"rep {rep} {variant}: {took:.2f} s" + (" (warm-up)" if rep < 0 else ""))
            shutil.rmtree(work, ignore_errors=True)
            if rep < 0:  # page cache, interpreter byte code, image conversion cache: warm
                phases.clear()
                continue
            times[variant].append(took)
        if len(outputs) != 1:
            raise RuntimeError(f"the variants wrote different outputs: {outputs}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_result(build_result(times, phases, failures, load, memory_mb))


def first_cause(text: str) -> str:
    """The telling line of a failed boot (a guest panic, else the first line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    panic = [line for line in lines if "Kernel panic" in line]
    return (panic or lines or ["?"])[0][:160]


def build_result(
    times: dict[str, list[float]],
    phases: list[dict[str, float]],
    failures: list[str],
    load: LoadWatch,
    memory_mb: int,
) -> Result:
    wrapper, bare = Stats(tuple(times["wrapper"])), Stats(tuple(times["bare"]))
    ratio = paired_ratio(times["wrapper"], times["bare"])
    phase = {k: Stats(tuple(p[k] for p in phases)) for k in phases[0]}
    extra = wrapper.median - bare.median
    outside = Stats(tuple(p["to_wrapper_start"] + p["to_qemu_started"] + p["after_outcome"]
                          for p in phases))  # fmt: skip
    estimate = 1 + outside.median / bare.low
    phase_rows = "\n".join(f"| {label} | {phase[key].show('s')} |" for key, label in PHASES)
    rows = "\n".join(
        f"| {i} | {w:.2f} | {b:.2f} | {w / b:.3f} |"
        for i, (w, b) in enumerate(zip(times["wrapper"], times["bare"], strict=True))
    )
    body = f"""
Job: `examples/hello` packaged by `vmwrapper package` ({memory_mb} MB guest in both
variants, the job's memory_size_mb; boot from the shipped VDI, agent pulls `in`, `boinc_app`
writes `out`, final push, ACPI power-off). Both variants
produce the same `out` (checked). The package's byte code is compiled first, as an
installed wrapper has it (these hosts set PYTHONDONTWRITEBYTECODE, so a checkout would
compile ~90 modules at every interpreter start). One uncounted warm-up run of each variant
first (page cache). Bare QEMU runs at nice {NICE_HIGH_PRIORITY}, like the
wrapper's QEMU under the harness (and the client).

| pair | `vmwrapper job` (s) | bare QEMU (s) | ratio |
|---|---|---|---|
{rows}

Where the wrapper path's time goes (medians, from `events.jsonl` stamps):

| phase | median (range) |
|---|---|
{phase_rows}

Boots that failed and were run again (not counted): {"; ".join(failures) or "none"}.

The paired ratio swings with the other VMs on the host (their load hits whichever variant
runs at the time). A steadier estimate uses the time the wrapper path spends **outside** the
VM's run (the three phases other than "QEMU started → outcome"): {outside.show("s")} per job,
against the quickest bare boot ({bare.low:.2f} s, the least disturbed one):
1 + {outside.median:.2f} / {bare.low:.2f} = **{estimate:.3f}**. The verdict needs both the paired
median and this estimate within the goal.

Median difference: {extra:.2f} s on a {bare.median:.1f} s job. Almost all of the job is the
guest booting under TCG (SeaBIOS, syslinux, xz decompression of the kernel); the wrapper's
own cost is the fixed start-up and shut-down around it, so the *ratio* shrinks as jobs get
longer and would grow with KVM, where the boot itself takes ~1–2 s.
"""
    return Result(
        key="e2e",
        title="Short job end to end: vmwrapper job vs bare QEMU",
        goal=f"at most {GOAL_RATIO - 1:.0%} slower (ratio ≤ {GOAL_RATIO:.2f})",
        measured=(
            f"wrapper {wrapper.show('s')}, bare {bare.show('s')}; wrapper path outside the "
            f"VM's run {outside.show('s')}"
        ),
        ratio=f"paired {ratio.show('', 3)}; fixed-cost estimate {estimate:.3f}",
        met=ratio.median <= GOAL_RATIO and estimate <= GOAL_RATIO,
        command=".venv/bin/python bench/bench_e2e.py",
        date=today(),
        machine=machine(),
        load=load.show(),
        body=body,
    )


if __name__ == "__main__":
    main()
