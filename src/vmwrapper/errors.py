"""The exception tree of boinc-vmwrapper.

Every error we raise is a :class:`VmWrapperError`; anything else escaping is a bug::

    VmWrapperError
     ├── InputError                 bad input from a file a person or a program wrote
     │    ├── SpecError             vbox_job.xml: every problem at once, each with element + fix
     │    ├── InitDataError         init_data.xml
     │    └── CommandLineError      the wrapper's argv (BOINC exit 206)
     ├── ProtocolError              the BOINC client/app protocol (segment, messages, files)
     ├── BackendError               a hypervisor operation failed (argv, exit code, output tail)
     │    ├── HostNotReady          the host cannot run VMs now (no VT-x, foreign hypervisor, ...)
     │    ├── VmStartError          the VM did not start or come online
     │    ├── CheckpointRefused     a snapshot was refused for now; retry shortly (QEMU + 9p)
     │    └── CheckpointError       a snapshot failed for good
     ├── ImageError                 building, converting or inspecting a disk image
     └── HarnessError               the local client stand-in could not run the job

Errors carry their context as attributes and chain their cause (``raise ... from exc``), as
``qemu.qmp``'s errors do, so a log line can say what was run and what it answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class VmWrapperError(Exception):
    """Base of every error boinc-vmwrapper raises on purpose."""


class InputError(VmWrapperError):
    """A file or argument from outside is unusable; the message says what to fix."""


@dataclass(frozen=True)
class Problem:
    """One finding in an input file: where, what, and how to fix it."""

    file: str
    element: str
    message: str
    fix: str = ""
    severity: str = "error"  # "error" or "warning"

    def __str__(self) -> str:
        where = f"{self.file}: <{self.element}>" if self.element else self.file
        text = f"{where}: {self.severity}: {self.message}"
        return f"{text} (fix: {self.fix})" if self.fix else text


class SpecError(InputError):
    """vbox_job.xml cannot be used. ``problems`` lists every error found, not just the first.

    ``malformed`` is true when the file is not a readable ``<vbox_job>`` at all (vboxwrapper's
    ERR_XML_PARSE); otherwise it parsed but holds values or combinations that cannot work
    (vboxwrapper's EXIT_INIT_FAILURE for illegal combinations).
    """

    def __init__(self, path: str, problems: Sequence[Problem], *, malformed: bool = False) -> None:
        self.path = path
        self.problems = tuple(problems)
        self.malformed = malformed
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{path}: {len(self.problems)} problem(s):\n{lines}")


class InitDataError(InputError):
    """init_data.xml cannot be parsed."""


class CommandLineError(InputError):
    """The wrapper's command line is not vboxwrapper's (BOINC exit code 206)."""


class ProtocolError(VmWrapperError):
    """The BOINC client/app protocol could not be spoken (segment, message or API file)."""


class BackendError(VmWrapperError):
    """A hypervisor command failed. Carries the argv, the exit code and the output's tail.

    ``temporary`` is true when the back end knows a retry later on this host can help (a
    session lock held by another program, the hypervisor's service not answering): the task
    then ends with a temporary exit even though the error carries a result code.
    """

    temporary: bool = False

    def __init__(
        self,
        message: str,
        *,
        argv: Sequence[str] = (),
        exit_code: int | None = None,
        output: str = "",
        code: int | None = None,
    ) -> None:
        self.argv = tuple(argv)
        self.exit_code = exit_code
        self.output = output
        #: A BOINC-style error number to finish with when this error is final (e.g. -148).
        self.code = code
        detail = message
        if self.argv:
            detail += f"\n  command: {' '.join(self.argv)}"
        if exit_code is not None:
            detail += f"\n  exit code: {exit_code}"
        if output:
            detail += f"\n  output (tail): {output[-2000:]}"
        super().__init__(detail)


class HostNotReady(BackendError):
    """The host cannot run the VM (no hardware virtualization, foreign hypervisor, no memory)."""


class VmStartError(BackendError):
    """The VM did not start, or did not come online in time."""


class CheckpointRefused(BackendError):
    """The hypervisor refused a snapshot for now (e.g. a 9p share is mounted); retry shortly."""


class CheckpointError(BackendError):
    """A snapshot could not be taken, verified or restored."""


class ImageError(VmWrapperError):
    """A guest disk image could not be built, converted or inspected."""


class HarnessError(VmWrapperError):
    """The local client stand-in could not run the job."""
