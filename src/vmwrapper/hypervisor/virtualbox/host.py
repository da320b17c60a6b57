"""Probing the installed VirtualBox once per run: its version and option syntax, and whether the
host is ready for it (vboxwrapper's ``is_system_ready`` and its known-bad releases)."""

from __future__ import annotations

import logging
import os
import platform

from vmwrapper.errors import HostNotReady
from vmwrapper.hypervisor.virtualbox import capabilities as capability_rules
from vmwrapper.hypervisor.virtualbox import output
from vmwrapper.hypervisor.virtualbox.capabilities import Capabilities
from vmwrapper.hypervisor.virtualbox.commands import Step
from vmwrapper.hypervisor.virtualbox.runner import VBoxManage

log = logging.getLogger(__name__)


class HostProbe:
    """What the installed VirtualBox is and can do, asked once and remembered."""

    def __init__(self, runner: VBoxManage) -> None:
        self.runner = runner
        self._caps: Capabilities | None = None
        self._ready = False

    @property
    def capabilities(self) -> Capabilities:
        """VirtualBox's version and syntax, probed once (``--version``, ``help modifyvm``,
        ``list systemproperties``)."""
        if self._caps is None:
            version = self.runner.run(Step(("--version",), "version", retry=False))
            text = version.output.replace("\r", "").strip()
            if output.parse_version(text) is None:
                log.warning("VirtualBox version not recognised: %r; assuming a current one", text)
            help_text = self.runner.probe(
                Step(("help", "modifyvm"), "help modifyvm", retry=False, log_error=False)
            ).output
            props = self.runner.probe(
                Step(("list", "systemproperties"), "systemproperties", retry=False, log_error=False)
            ).output
            additions = output.guest_additions_iso(props)
            self._caps = capability_rules.capabilities(
                text,
                help_text,
                guest_additions_iso=additions if additions and os.path.isfile(additions) else "",
                macos=platform.system() == "Darwin",
            )
            log.info("Detected: %s", self._caps.display_version)
        return self._caps

    def ensure_ready(self) -> None:
        """check_host() and the known-bad releases, once per run."""
        if not self._ready:
            self.check_host()
            self._refuse_known_bad_version()
            self._ready = True

    def _refuse_known_bad_version(self) -> None:
        """vboxwrapper's known-bad releases end the task with a temporary exit and a notice
        asking the volunteer to upgrade (docs/compatibility.md#virtualbox-failures)."""
        caps = self.capabilities
        if output.is_known_bad(caps.version):
            raise HostNotReady(
                f"Incompatible version of VirtualBox detected ({caps.version_text}); please "
                "upgrade: this release crashes or corrupts VMs while taking or restoring "
                "snapshots"
            )

    def check_host(self) -> None:
        """vboxwrapper's ``is_system_ready``: ``list hostinfo`` must work and show no driver
        warnings. Raises HostNotReady (a temporary condition, unlike vboxwrapper's exit 1)."""
        result = self.runner.probe(Step(("list", "hostinfo"), "list hostinfo", retry=False))
        info = output.parse_hostinfo(result.output)
        if not result.ok or not info.ready:
            problems = "; ".join(info.problems) or result.output.strip()[-300:]
            raise HostNotReady(
                f"VirtualBox is not ready on this host: {problems}; fix: install or repair "
                "VirtualBox (kernel modules loaded, matching VBoxManage)",
                argv=result.argv,
                exit_code=result.exit_code,
                output=result.output,
            )
