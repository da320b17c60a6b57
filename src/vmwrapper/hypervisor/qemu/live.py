"""Live checkpoints on QEMU: the guest pauses only for the instant its disks and devices are
captured; its RAM is written while it runs (docs/qemu-backend.md#live-checkpoints).

In one stopped window (``stop`` … QEMU's own restart): each disk's top file is frozen under a
new, empty layer (``blockdev-snapshot-sync``), and a migration with QEMU's
``background-snapshot`` capability starts, writing to a file handed over with ``getfd``. QEMU
saves the devices, write-protects the RAM (userfaultfd) and lets the guest run on while it
writes the RAM, copying a page first when the guest writes to it. A restore starts QEMU over a
new layer on the frozen one with ``-incoming defer`` and feeds it the file. From the second
checkpoint of a QEMU on, the migration may start before the ``stop``, so that the guest runs
while QEMU reads its RAM (docs/qemu-backend.md#the-stopped-window).

Crash safety: the RAM goes to ``live_NAME.ram.tmp``; once QEMU reports the migration complete,
the file is synced, checked and renamed, the frozen layers are synced, and only then is the
manifest ``live_NAME.json`` written (atomically). A file a manifest names is never written
again: the merges that keep the chain short (``block-commit`` into the bottom overlay, in the
background, ``livemerge.py``) only run when no other checkpoint needs the bottom, and the
manifest is pointed at the bottom before the merged layers are deleted.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vmwrapper.boinc.files import write_atomic
from vmwrapper.errors import BackendError, CheckpointError, CheckpointRefused
from vmwrapper.hypervisor.qemu import livestate as ls
from vmwrapper.hypervisor.qemu import monitor
from vmwrapper.hypervisor.qemu.cmdline import STATE_NODE
from vmwrapper.hypervisor.qemu.livemerge import POLL, LayerMerges, sync_dir, sync_file
from vmwrapper.hypervisor.qemu.overlays import Overlays, QemuImg
from vmwrapper.hypervisor.qemu.qmp import QmpChannel

log = logging.getLogger(__name__)

#: The name QEMU knows the checkpoint's RAM file by (``getfd``), while it writes or reads it.
FD_NAME = "vmwrapper_live"
#: Bytes per second: no rate limit on writing the RAM file (QEMU's default is 128 MiB/s).
UNLIMITED = 1 << 50
#: How checkpoints are taken: "auto" (live where the host can, else savevm), "live", "savevm".
METHODS = ("auto", "live", "savevm")


class _MigrateRefused(BackendError):
    """QEMU would not start the background snapshot for this VM (not for now: at all)."""


class LiveCheckpoints:
    """The live checkpoints of one VM: its slot files, and the running QEMU's side of them."""

    def __init__(
        self,
        overlays: Overlays,
        img: QemuImg,
        channel: QmpChannel,
        *,
        method: str = "auto",
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        if method not in METHODS:
            raise BackendError(f"checkpoint method {method!r}: use one of {', '.join(METHODS)}")
        self.overlays = overlays
        self.slot = overlays.config.slot_dir
        self.img = img
        self.channel = channel
        self.method = method
        self.clock = clock
        self.sleep = sleep
        self.top_nodes: dict[str, str] = {}  # node as on the command line → its top's node now
        self._usable: bool | None = None  # probed once: None = not yet
        self._capability_set = False  # per QEMU process
        self.setup_lead = ls.SetupLead()
        self.merges = LayerMerges(self, clock, sleep)  # older layers, in the background
        self.overlays.tops = self._read_tops()

    # --- files (QEMU need not run) -------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self.slot / name

    def layered(self) -> list[tuple[str, Path]]:
        """(node, bottom) of the disks the guest sees: those get layers (a state-only node
        holds no guest data, and the VM state goes to the RAM file)."""
        return [(n, p) for n, p in self.overlays.bottom_files if n != STATE_NODE]

    def _read_tops(self) -> dict[str, Path]:
        try:
            text = self._path(ls.LAYERS_FILE).read_text(encoding="utf-8")
        except OSError:
            return {}
        tops = {n: self._path(f) for n, f in ls.parse_layers(text).items()}
        return {n: p for n, p in tops.items() if p.is_file()}

    def _write_tops(self) -> None:
        bottoms = dict(self.overlays.bottom_files)
        tops = {n: p.name for n, p in self.overlays.tops.items() if p != bottoms.get(n)}
        write_atomic(self._path(ls.LAYERS_FILE), ls.format_layers(tops))

    def manifest(self, name: str) -> ls.Manifest | None:
        """Checkpoint ``name``'s manifest if it is whole: its RAM and disk files exist."""
        try:
            text = self._path(ls.manifest_file(name)).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        found = ls.parse_manifest(text)
        if found is None or found.name != name:
            return None
        needed = [*found.disks.values(), *([found.ram] if found.ram else [])]
        return found if all(self._path(f).is_file() for f in needed) else None

    def names(self) -> tuple[str, ...]:
        """The live checkpoints in the slot, oldest first."""
        found: list[tuple[int, str]] = []
        for path in self.slot.glob("live_*.json"):
            name = ls.manifest_name(path.name)
            if name is not None and self.manifest(name) is not None:
                with contextlib.suppress(OSError):
                    found.append((path.stat().st_mtime_ns, name))
        return tuple(name for _, name in sorted(found))

    def delete(self, name: str) -> None:
        """Forget checkpoint ``name`` (manifest first: without it the RAM file is nothing),
        then merge what no checkpoint needs any more if QEMU runs."""
        found = self.manifest(name)
        self._path(ls.manifest_file(name)).unlink(missing_ok=True)
        sync_dir(self.slot)
        self._path(ls.ram_file(name)).unlink(missing_ok=True)
        if found is not None:
            log.info("live checkpoint %s deleted", name, extra={"event": "qemu_live_deleted"})
        if self.channel.alive():
            self.maintain()

    def prepare_restore(self, name: str) -> ls.Manifest:
        """QEMU not running: put a new, empty top over each of the checkpoint's frozen layers
        (they stay as they are, so the checkpoint can be restored again)."""
        found = self.manifest(name)
        if found is None:
            raise CheckpointError(f"live checkpoint {name!r} is incomplete or gone")
        number = ls.next_layer_number([p.name for p in self.slot.iterdir()])
        tops = dict(self.overlays.tops)
        for node, bottom in self.layered():
            frozen = self._path(found.disks.get(node, bottom.name))
            top = self._path(ls.layer_file(bottom.name, number))
            top.unlink(missing_ok=True)
            self.img.run("create", "-q", "-f", "qcow2", "-b", frozen.name, "-F", "qcow2", str(top))
            tops[node] = top
        self.overlays.tops = tops
        self._write_tops()
        return found

    def collect_garbage(self) -> None:
        """QEMU not running: delete what a killed wrapper or QEMU left: unfinished RAM files,
        incomplete manifests, and layers neither a top nor a checkpoint needs."""
        names = set(self.names())
        for path in self.slot.glob("live_*"):
            name = ls.manifest_name(path.name)
            if name is not None and name not in names:
                path.unlink(missing_ok=True)  # an incomplete manifest
        referenced_ram = {ls.ram_file(n) for n in names}
        for path in self.slot.glob("live_*.ram*"):
            if path.name not in referenced_ram:
                path.unlink(missing_ok=True)
        keep = {p.name for _, p in self.overlays.bottom_files}
        keep |= {p.name for p in self.overlays.tops.values()}
        for name in names:
            found = self.manifest(name)
            keep |= set(found.disks.values()) if found else set()
        keep |= self._backing_files(keep)
        for path in self.slot.glob("vm_*.*.qcow2"):
            if ls.is_layer(path.name) and path.name not in keep:
                path.unlink(missing_ok=True)

    def _backing_files(self, names: set[str]) -> set[str]:
        """Every slot file the chains under ``names`` read."""
        found: set[str] = set()
        todo = [n for n in names if ls.is_layer(n)]
        while todo:
            name = todo.pop()
            try:
                info = self.img.info(self._path(name))
            except BackendError:
                continue
            backing = info.full_backing_file or info.backing_file
            if not backing:
                continue
            path = Path(str(backing))
            if not path.is_absolute():
                path = self.slot / path
            if path.parent.resolve() == self.slot.resolve() and path.name not in found:
                found.add(path.name)
                todo.append(path.name)
        return found

    def remove_files(self) -> None:
        """Every file of the live checkpoints (the slot's clean-up)."""
        for path in self.slot.glob("live_*"):
            path.unlink(missing_ok=True)
        for path in self.slot.glob("vm_*.*.qcow2"):
            if ls.is_layer(path.name):
                path.unlink(missing_ok=True)
        self._path(ls.LAYERS_FILE).unlink(missing_ok=True)
        self.overlays.tops = {}

    # --- the running QEMU ----------------------------------------------------------------

    def launched(self) -> None:
        """A new QEMU runs: the command line named each top by its node."""
        self.top_nodes = {node: node for node, _ in self.overlays.bottom_files}
        self._capability_set = False
        self.setup_lead.forget()
        self.merges.launched()

    def top_node(self, node: str) -> str:
        return self.top_nodes.get(node, node)

    def usable(self) -> bool:
        """Whether checkpoints are live: probed once on a running QEMU, the reason for a
        fallback to savevm logged once."""
        if self.method == "savevm":
            return False
        if self._usable is None:
            reason = self._probe()
            self._usable = reason is None
            if reason is not None:
                self._fall_back(reason)
        if self._usable:
            self._set_capability()
        return bool(self._usable)

    def _probe(self) -> str | None:
        if not sys.platform.startswith("linux"):
            return f"QEMU's background snapshot needs Linux's userfaultfd (host: {sys.platform})"
        try:
            self._set_capability()
        except BackendError as exc:  # no userfaultfd write-protect in this kernel, old QEMU
            return str(exc)
        return None

    def _set_capability(self) -> None:
        if not self._capability_set:
            self.channel.execute(
                "migrate-set-capabilities",
                {"capabilities": [{"capability": "background-snapshot", "state": True}]},
            )
            # QEMU's default rate limit (128 MiB/s) makes its migration thread sleep up to
            # 100 ms at a time, and a guest's write to a page not yet saved waits for that
            # thread: unlimited, such a write waits only for one page's copy.
            self.channel.execute("migrate-set-parameters", {"max-bandwidth": UNLIMITED})
            self._capability_set = True

    def _fall_back(self, reason: str) -> None:
        self._usable = False
        if self.method == "live":
            raise CheckpointError(f"live checkpoints are not possible here: {reason}")
        log.warning(
            "Live checkpoints are not possible here (%s); taking them with savevm, which "
            "pauses the guest while its RAM is written.",
            reason,
            extra={"event": "qemu_live_unavailable", "reason": reason},
        )

    def take(self, name: str, timeout: float, *, disks_only: bool = False) -> bool:
        """Take checkpoint ``name``; False when QEMU cannot migrate this VM at all (the caller
        falls back to savevm, as it will from now on). ``disks_only``: the disks alone (a 9p
        share is mounted: no migration), a restore then boots afresh from them."""
        deadline = self.clock() + timeout
        self.merges.finish(deadline)  # its block job would refuse a new layer
        lead = None if disks_only else self.setup_lead.lead()
        if lead is not None and self._running():
            done = self._take_overlapped(name, lead, deadline)
            if done is not None:
                return done
        return self._take_stopped(name, deadline, disks_only)

    def _take_stopped(self, name: str, deadline: float, disks_only: bool) -> bool:
        """The guest stopped first, then the disks frozen and the migration started: QEMU
        sets the migration up while the guest stands still."""
        tmp = self._path(ls.ram_file(name) + ".tmp")
        was_running = self._running()
        layers = self._prepare_layers()
        if not disks_only:
            try:
                self._hand_over(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            except BackendError:
                self._drop_layers(layers)
                raise
        frozen: dict[str, str] = {}
        marks = [self.clock()]
        self.channel.execute("stop")
        try:
            if not disks_only:
                blocked = ls.migration_blocked(self.channel.execute("query-migrate"), name)
                if blocked is not None:
                    raise blocked
            marks.append(self.clock())
            frozen = self._freeze_disks(layers)
            marks.append(self.clock())
            if not disks_only:
                self._start_migration(name)
            marks.append(self.clock())
        except CheckpointRefused:
            self._abandon(tmp, was_running)
            if not frozen:
                self._drop_layers(layers)
            raise
        except _MigrateRefused as exc:  # hugepage-backed RAM, a device QEMU cannot save, ...
            self._abandon(tmp, was_running)
            self._fall_back(f"QEMU refused the background snapshot: {exc}")
            return False
        except BackendError as exc:
            self._abandon(tmp, was_running)
            if not frozen:
                self._drop_layers(layers)
            raise CheckpointError(f"live checkpoint {name!r} failed: {exc}") from exc
        finally:
            if frozen:
                self._write_tops()
        steps = [(b - a) * 1000 for a, b in itertools.pairwise(marks)]
        log.debug(
            "live checkpoint %s: stop+check %.1f ms, disk layers %.1f ms, migrate %.1f ms",
            name, *steps,
            extra={"event": "qemu_live_window", "window_ms": round(sum(steps), 1), "lead_ms": 0},
        )  # fmt: skip
        if disks_only:
            if was_running:
                self.channel.execute("cont")
        else:
            self._wait_written(name, tmp, was_running, deadline)
        self._seal(name, tmp, frozen, disks_only)
        return True

    def _take_overlapped(self, name: str, lead: float, deadline: float) -> bool | None:
        """The migration started with the guest running; ``lead`` later the guest stopped
        and the disks frozen. Sound only if QEMU had not yet saved the devices then (the
        migration still in ``setup``, asked after the freeze): QEMU saves them with the guest
        stopped since before the freeze, so RAM and disks are of one instant. Otherwise the
        migration's file is dropped and None returned: the caller takes it the stopped way."""
        tmp = self._path(ls.ram_file(name) + ".tmp")
        layers = self._prepare_layers()
        try:
            self._hand_over(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            self._start_migration(name)
        except _MigrateRefused as exc:
            self._abandon(tmp, was_running=False)
            self._drop_layers(layers)
            self._fall_back(f"QEMU refused the background snapshot: {exc}")
            return False
        except BackendError:  # CheckpointRefused too: the guest never stopped
            self._abandon(tmp, was_running=False)
            self._drop_layers(layers)
            raise
        self.sleep(lead)
        started, frozen = self.clock(), {}
        try:
            self.channel.execute("stop")
            frozen = self._freeze_disks(layers)
            status = self.channel.execute("query-migrate").get("status")
        except BackendError as exc:
            self._discard(tmp, deadline)
            raise CheckpointError(f"live checkpoint {name!r} failed: {exc}") from exc
        finally:
            if frozen:
                self._write_tops()
            else:
                self._drop_layers(layers)
        if status not in ls.BEFORE_DEVICE_SAVE:  # the devices may be older than the disks
            self._discard(tmp, deadline)
            self.setup_lead.lost()
            log.info(
                "live checkpoint %s: the guest was stopped after QEMU's setup (%s); taking it "
                "again with the guest stopped first",
                name, status, extra={"event": "qemu_live_stop_late", "status": status},
            )  # fmt: skip
            return None
        self.setup_lead.won()
        log.debug(
            "live checkpoint %s: stopped %.1f ms after the migration's start",
            name, lead * 1000,
            extra={
                "event": "qemu_live_window",
                "window_ms": round((self.clock() - started) * 1000, 1),
                "lead_ms": round(lead * 1000, 1),
            },
        )  # fmt: skip
        self._wait_written(name, tmp, True, deadline)
        self._seal(name, tmp, frozen, False)
        return True

    def _discard(self, tmp: Path, deadline: float) -> None:
        """Let a migration this checkpoint will not use run to its end (in a try here, QEMU
        7.2 stopped answering QMP after a background snapshot was cancelled while the guest
        was stopped; and a new one is refused while one runs), then drop its file and run
        the guest again."""
        with contextlib.suppress(BackendError):
            self._migration_end(deadline)
        tmp.unlink(missing_ok=True)
        with contextlib.suppress(BackendError):
            self._restore_runstate(True)

    def _running(self) -> bool:
        return bool(self.channel.execute("query-status")["status"] == "running")

    def _hand_over(self, path: Path, flags: int) -> None:
        fd = os.open(path, flags, 0o600)
        try:
            self.channel.send_fd(fd, FD_NAME)
        finally:
            os.close(fd)

    def _prepare_layers(self) -> dict[str, tuple[str, Path, str]]:
        """Before the stopped window: a new, empty layer over each disk's top, made and opened
        by QEMU as a node of its own (not yet in the disk's chain); {node: (new node, new
        file, the top it will freeze)}. Making a qcow2 takes milliseconds the guest need
        not stand still for."""
        number = ls.next_layer_number([p.name for p in self.slot.iterdir()])
        nodes = self.channel.execute("query-named-block-nodes")
        layers: dict[str, tuple[str, Path, str]] = {}
        try:
            for node, bottom in self.layered():
                old = self.overlays.tops.get(node, bottom)
                new = self._path(ls.layer_file(bottom.name, number))
                new_node = f"{node}-{number}"
                size = ls.virtual_size(nodes, self.top_node(node))
                new.unlink(missing_ok=True)
                layers[node] = (new_node, new, old.name)
                self.img.run(
                    "create", "-q", "-f", "qcow2", "-u", "-b", str(old), "-F", "qcow2",
                    str(new), str(size),
                )  # fmt: skip
                self.channel.execute(
                    "blockdev-add",
                    {
                        "driver": "qcow2",
                        "node-name": new_node,
                        "file": {"driver": "file", "filename": str(new)},
                        "backing": None,
                    },
                )
        except BackendError:
            self._drop_layers(layers)
            raise
        return layers

    def _drop_layers(self, layers: Mapping[str, tuple[str, Path, str]]) -> None:
        """Layers made for a checkpoint that did not happen (the chain never used them)."""
        for new_node, new, _old in layers.values():
            with contextlib.suppress(BackendError):
                self.channel.execute("blockdev-del", {"node-name": new_node})
            new.unlink(missing_ok=True)

    def _freeze_disks(self, layers: Mapping[str, tuple[str, Path, str]]) -> dict[str, str]:
        """In the stopped window: each disk's top becomes read-only under its new layer
        (a change of QEMU's graph, no file to make); {node: frozen file}."""
        frozen: dict[str, str] = {}
        for node, (new_node, new, old) in layers.items():
            self.channel.execute(
                "blockdev-snapshot", {"node": self.top_node(node), "overlay": new_node}
            )
            self.top_nodes[node] = new_node
            self.overlays.tops[node] = new
            frozen[node] = old
        return frozen

    def _start_migration(self, name: str) -> None:
        try:
            self.channel.execute("migrate", {"uri": f"fd:{FD_NAME}"})
        except BackendError as exc:
            refusal = monitor.snapshot_failure(str(exc), "take live checkpoint", name)
            if isinstance(refusal, CheckpointRefused):
                raise refusal from exc
            raise _MigrateRefused(str(exc)) from exc

    def _abandon(self, tmp: Path, was_running: bool) -> None:
        """The stopped window failed: the guest runs on, the half-made file goes."""
        with contextlib.suppress(BackendError):
            self.channel.execute("closefd", {"fdname": FD_NAME})
        if was_running:
            with contextlib.suppress(BackendError):
                self.channel.execute("cont")
        tmp.unlink(missing_ok=True)

    def _wait_written(self, name: str, tmp: Path, was_running: bool, deadline: float) -> None:
        """Until QEMU has written the whole RAM (the guest running meanwhile); then the
        guest is in the state it was in before (QEMU restarts it itself when its devices
        are saved; a paused guest is paused again)."""
        reply = self._migration_end(deadline)
        if reply is None:
            with contextlib.suppress(BackendError):
                self.channel.execute("migrate_cancel")
            tmp.unlink(missing_ok=True)
            self._restore_runstate(was_running)
            raise CheckpointError(f"live checkpoint {name!r}: the RAM was not written in time")
        self._restore_runstate(was_running)
        self.setup_lead.measured(reply.get("setup-time"))
        failure = ls.migration_failure(reply, name)
        if failure is not None:
            tmp.unlink(missing_ok=True)
            raise failure
        log.debug(
            "live checkpoint %s: QEMU's setup %s ms, downtime %s ms, total %s ms",
            name,
            reply.get("setup-time"),
            reply.get("downtime"),
            reply.get("total-time"),
            extra={
                "event": "qemu_live_written",
                "setup_ms": reply.get("setup-time"),
                "downtime_ms": reply.get("downtime"),
            },
        )

    def _migration_end(self, deadline: float) -> Mapping[str, Any] | None:
        """QEMU's ``query-migrate`` reply once the migration has ended; None at the deadline."""
        while self.clock() < deadline:
            reply: Mapping[str, Any] = self.channel.execute("query-migrate")
            if reply.get("status") in ("completed", "failed", "cancelled"):
                return reply
            self.sleep(POLL)
        return None

    def _restore_runstate(self, was_running: bool) -> None:
        running = self._running()
        if was_running and not running:
            self.channel.execute("cont")  # a QEMU that keeps the guest as it was (newer)
        elif not was_running and running:
            self.channel.execute("stop")  # QEMU 7.2 restarts even a paused guest

    def _seal(self, name: str, tmp: Path, frozen: Mapping[str, str], disks_only: bool) -> None:
        """Sync and check the RAM file and the frozen layers, then the manifest: only now
        does the checkpoint exist."""
        ram: str | None = None
        if not disks_only:
            with tmp.open("rb") as fh:
                head = fh.read(len(ls.STREAM_MAGIC))
                os.fsync(fh.fileno())
            if not ls.stream_looks_whole(head, tmp.stat().st_size):
                tmp.unlink(missing_ok=True)
                raise CheckpointError(f"live checkpoint {name!r}: the RAM file is not a stream")
            final = self._path(ls.ram_file(name))
            tmp.replace(final)
            ram = final.name
        for filename in frozen.values():
            sync_file(self._path(filename))
        sync_dir(self.slot)
        write_atomic(
            self._path(ls.manifest_file(name)),
            ls.format_manifest(ls.Manifest(name, ram, dict(frozen))),
        )

    def incoming(self, name: str, ram: str, timeout: float) -> None:
        """Feed a QEMU started with ``-incoming defer`` the checkpoint's RAM file; it runs
        when it has read it."""
        deadline = self.clock() + timeout
        self._hand_over(self._path(ram), os.O_RDONLY)
        self.channel.execute("migrate-incoming", {"uri": f"fd:{FD_NAME}"})
        reply = self._migration_end(deadline) or {"status": "not done in time"}
        failure = ls.migration_failure(reply, name)
        if failure is not None:
            raise failure
        self.channel.execute("cont")

    # --- merging, in the background (livemerge.py) ----------------------------------------

    @property
    def merging(self) -> bool:
        return self.merges.merging

    def maintain(self) -> None:
        """Finish a merge that has ended; start the next one a disk needs (one at a time)."""
        self.merges.maintain()
