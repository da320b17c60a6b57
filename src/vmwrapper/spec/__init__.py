"""vbox_job.xml: the job model and its parser (pure)."""

from dataclasses import asdict
from typing import Any

from vmwrapper.spec.model import JobSpec, ParsedJob, PortForward
from vmwrapper.spec.parse import ELEMENTS, parse_job

__all__ = ["ELEMENTS", "JobSpec", "ParsedJob", "PortForward", "parse_job", "spec_as_dict"]


def spec_as_dict(spec: JobSpec) -> dict[str, Any]:
    """The job as JSON-ready data: element names as keys, lists for repeatable elements,
    ``port_forward`` as a list of objects."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()}
