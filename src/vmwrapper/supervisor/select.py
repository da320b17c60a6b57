"""Choose the back end by name: ``make_backend("qemu" | "virtualbox" | "fake", config, **opts)``.

Back ends are imported lazily, so a host without VirtualBox never imports its module, and a
missing back end is one clear error instead of an ImportError deep in the wrapper.
"""

from __future__ import annotations

import importlib
from typing import Any, Final

from vmwrapper.errors import CommandLineError
from vmwrapper.hypervisor.base import Backend, VmConfig

#: name -> (module, factory attribute)
BACKENDS: Final[dict[str, tuple[str, str]]] = {
    "qemu": ("vmwrapper.hypervisor.qemu.backend", "QemuBackend"),
    "virtualbox": ("vmwrapper.hypervisor.virtualbox.backend", "VirtualBoxBackend"),
    "fake": ("vmwrapper.hypervisor.fake", "from_slot"),
}


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
