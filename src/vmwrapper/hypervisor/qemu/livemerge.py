"""The background merges that keep a live checkpoint's disk chain short
(docs/qemu-backend.md#live-checkpoints): one ``block-commit`` at a time folds older layers
into the bottom overlay while the guest runs, only when no other checkpoint needs the bottom;
the manifest is pointed at the bottom before the merged layers are deleted.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmwrapper.boinc.files import write_atomic
from vmwrapper.errors import BackendError
from vmwrapper.hypervisor.qemu import livestate as ls

if TYPE_CHECKING:
    from vmwrapper.hypervisor.qemu.live import LiveCheckpoints

log = logging.getLogger(__name__)

#: Seconds between two ``query-migrate`` / ``query-jobs`` while waiting.
POLL = 0.02


@dataclass(frozen=True)
class _MergeJob:
    node: str
    plan: ls.Merge
    job_id: str


class LayerMerges:
    """The merges of one VM's live checkpoint layers, on the running QEMU of ``live``."""

    def __init__(
        self, live: LiveCheckpoints, clock: Callable[[], float], sleep: Callable[[float], None]
    ) -> None:
        self.live = live
        self.channel = live.channel
        self.clock = clock
        self.sleep = sleep
        self._merge: _MergeJob | None = None
        self._merge_broken = False

    def launched(self) -> None:
        """A new QEMU runs: no merge of the last one goes on."""
        self._merge = None

    @property
    def merging(self) -> bool:
        return self._merge is not None

    def maintain(self) -> None:
        """Finish a merge that has ended; start the next one a disk needs (one at a time)."""
        if self._merge is not None:
            self._poll_merge()
        if self._merge is not None or self._merge_broken:
            return
        try:
            nodes = self.channel.execute("query-named-block-nodes")
            for node, bottom in self.live.layered():
                if self._start_merge(node, bottom, nodes):
                    return
        except BackendError as exc:
            self._merge_failed(exc)

    def _start_merge(self, node: str, bottom: Path, nodes: Any) -> bool:
        live = self.live
        chain_paths = ls.chain_from_node(nodes, live.top_node(node))
        names = [Path(p).name for p in chain_paths]
        if bottom.name not in names:
            return False
        chain_paths = chain_paths[: names.index(bottom.name) + 1]  # the job's image is below
        if not all(Path(p).parent.resolve() == live.slot.resolve() for p in chain_paths):
            return False
        chain = [Path(p).name for p in chain_paths]
        referenced = {
            filename: name
            for name in live.names()
            if (found := live.manifest(name)) is not None
            for n, filename in found.disks.items()
            if n == node
        }
        plan = ls.plan_merge(chain, referenced)
        if plan is None:
            return False
        top = ls.node_for_file(nodes, chain_paths[chain.index(plan.top)])
        base = ls.node_for_file(nodes, chain_paths[-1])
        if top is None or base is None:
            return False
        job_id = f"vmwrapper-merge-{node}"
        self.channel.execute(
            "block-commit",
            {
                "job-id": job_id,
                "device": live.top_node(node),
                "top-node": top,
                "base-node": base,
                "auto-dismiss": False,
            },
        )
        self._merge = _MergeJob(node, plan, job_id)
        log.debug("merging %s into %s", ", ".join(plan.drop), plan.base)
        return True

    def _poll_merge(self) -> None:
        job = self._merge
        assert job is not None
        try:
            jobs = self.channel.execute("query-jobs")
            mine = [j for j in jobs if j.get("id") == job.job_id]
            if mine and mine[0].get("status") != "concluded":
                return  # still copying
            if mine:
                self.channel.execute("job-dismiss", {"id": job.job_id})
                if mine[0].get("error"):
                    raise BackendError(str(mine[0]["error"]))
        except BackendError as exc:
            self._merge = None
            self._merge_failed(exc)
            return
        self._merge = None
        self._merged(job)

    def _merged(self, job: _MergeJob) -> None:
        """The layers are in the bottom: point the checkpoint at it, then drop them."""
        plan = job.plan
        slot = self.live.slot
        sync_file(slot / plan.base)
        sync_file(self.live.overlays.tops.get(job.node, slot / plan.base))
        if plan.owner is not None:
            found = self.live.manifest(plan.owner)
            if found is not None:
                write_atomic(
                    slot / ls.manifest_file(plan.owner),
                    ls.format_manifest(found.with_disk(job.node, plan.base)),
                )
        for filename in plan.drop:
            (slot / filename).unlink(missing_ok=True)
        log.info(
            "merged %s into %s", ", ".join(plan.drop), plan.base,
            extra={"event": "qemu_live_merged", "layers": list(plan.drop)},
        )  # fmt: skip

    def finish(self, deadline: float) -> None:
        """Wait for a merge under way to end, until ``deadline`` at most."""
        while self._merge is not None and self.clock() < deadline:
            self._poll_merge()
            if self._merge is not None:
                self.sleep(POLL)

    def _merge_failed(self, exc: BackendError) -> None:
        """A failed merge leaves a longer chain, not a wrong one: logged, not retried this run."""
        self._merge_broken = True
        log.warning(
            "Merging older disk layers failed (%s); the chain stays longer until the next start.",
            exc,
            extra={"event": "qemu_live_merge_failed"},
        )


def sync_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sync_dir(path: Path) -> None:
    sync_file(path)
