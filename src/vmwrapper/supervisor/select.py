"""Which back end runs a job (:func:`choose_backend`, pure), and building it by name
(``make_backend("qemu" | "virtualbox" | "fake", config, **opts)``).

The rule (docs/compatibility.md#back-end-selection): ``--backend`` on the app version's command
line, else ``VMWRAPPER_BACKEND`` (an operator's or a test's override), else the first back end
of vbox_job.xml's ``<vmwrapper_backends>`` that is installed here; without that element the
job is VirtualBox's, as under vboxwrapper. A job that can run nowhere on this host gets no back
end and a reason naming what is missing (the wrapper then ends with a temporary exit).

Back ends are imported lazily, so a host without VirtualBox never imports its module, and a
missing back end is one clear error instead of an ImportError deep in the wrapper.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from vmwrapper.errors import CommandLineError
from vmwrapper.hypervisor.base import Backend, VmConfig

#: name -> (module, factory attribute)
BACKENDS: Final[dict[str, tuple[str, str]]] = {
    "qemu": ("vmwrapper.hypervisor.qemu.backend", "QemuBackend"),
    "virtualbox": ("vmwrapper.hypervisor.virtualbox.backend", "VirtualBoxBackend"),
    "fake": ("vmwrapper.hypervisor.fake", "from_slot"),
}


#: What a job without ``<vmwrapper_backends>`` runs on: VirtualBox, as with vboxwrapper.
DEFAULT_JOB_BACKENDS: Final = ("virtualbox",)
#: What each back end needs on the host, for the reason a job cannot run.
NEEDS: Final[dict[str, str]] = {
    "virtualbox": "VirtualBox (VBoxManage)",
    "qemu": "QEMU (qemu-system-x86_64)",
    "fake": "nothing",
}


@dataclass(frozen=True)
class BackendChoice:
    """The back end for a job on this host ("" when none can run it), and why."""

    name: str
    reason: str

    @property
    def found(self) -> bool:
        return bool(self.name)


def choose_backend(
    *,
    command_line: str = "",
    environment: str = "",
    job_backends: Sequence[str] = (),
    installed: frozenset[str],
) -> BackendChoice:
    """Apply the selection rule; ``installed`` names the back ends this host has."""
    for name, source in (
        (command_line, f"--backend {command_line} on the app version's command line"),
        (environment, f"VMWRAPPER_BACKEND={environment}"),
    ):
        if name:
            if name in installed or name == "fake":
                return BackendChoice(name, source)
            return BackendChoice(
                "", f"{source} asks for {NEEDS.get(name, name)}, which this host does not have"
            )
    wanted = tuple(job_backends) or DEFAULT_JOB_BACKENDS
    source = (
        f"vbox_job.xml's <vmwrapper_backends> lists {', '.join(wanted)}"
        if job_backends
        else "the app version does not ask for QEMU (no <vmwrapper_backends> in vbox_job.xml), "
        "so it runs on VirtualBox as under vboxwrapper"
    )
    for name in wanted:
        if name in installed:
            skipped = [NEEDS[w] for w in wanted[: wanted.index(name)]]
            missing = f"; {', '.join(skipped)} not installed" if skipped else ""
            return BackendChoice(name, f"{source}{missing}")
    needs = " or ".join(NEEDS.get(w, w) for w in wanted)
    return BackendChoice("", f"{source}, and this host has no {needs}: install it")


def make_backend(name: str, config: VmConfig, **opts: Any) -> Backend:
    """The back end ``name`` for ``config``; ``opts`` go to its constructor (e.g. accel=)."""
    try:
        module_name, attr = BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise CommandLineError(
            f"unknown back end {name!r} (fix: --backend one of {known})"
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise CommandLineError(f"back end {name!r} is not available here: {exc}") from exc
    backend: Backend = getattr(module, attr)(config, **opts)
    return backend
