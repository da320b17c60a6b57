"""What the supervisor tells the client each tick: CPU time, fraction done, network bytes, the
graphics status file, and the periodic "Status Report:" lines in stderr."""

from __future__ import annotations

import logging

from vmwrapper.errors import VmWrapperError
from vmwrapper.hypervisor.base import Accounting, NetUsage
from vmwrapper.shared_dir.triggers import GraphicsStatus
from vmwrapper.shared_dir.watch import write_graphics_status
from vmwrapper.supervisor import events
from vmwrapper.supervisor.runtime import Context

log = logging.getLogger(__name__)


class Status:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def cpu_time(self) -> float:
        ctx = self.ctx
        run_cpu = 0.0
        if isinstance(ctx.backend, Accounting):
            try:
                run_cpu = ctx.backend.cpu_time()
            except VmWrapperError:
                run_cpu = 0.0
        return ctx.rt.cpu.read(run_cpu)

    def fraction_done(self) -> float:
        job, rt = self.ctx.job, self.ctx.rt
        if job.job_duration > 0:
            rt.fraction = min(rt.elapsed / job.job_duration, 1.0)
        elif job.fraction_done_filename:
            value = self.ctx.shared.fraction_done(job.fraction_done_filename)
            if value is not None:
                rt.fraction = value
        return rt.fraction

    def counting_net(self) -> bool:
        """The volunteer set a daily transfer limit, the VM has a network and the back end
        counts its bytes (docs/compatibility.md#network)."""
        ctx = self.ctx
        return (
            ctx.job.enable_network
            and ctx.client.init_data.global_prefs.daily_xfer_limit_mb > 0
            and isinstance(ctx.backend, Accounting)
        )

    def poll_net(self) -> None:
        rt, backend = self.ctx.rt, self.ctx.backend
        rt.net_polled_elapsed = rt.elapsed
        if not self.counting_net() or not isinstance(backend, Accounting):
            return
        try:
            usage = backend.net_usage()
        except VmWrapperError as exc:
            log.debug("network usage not read: %s", exc)
            return
        if usage is None:
            return
        net = rt.net
        if usage.sent > net.sent or usage.received > net.received:
            rt.net = NetUsage(max(net.sent, usage.sent), max(net.received, usage.received))
            log.info(
                "Network usage: %d bytes sent, %d bytes received.",
                rt.net.sent,
                rt.net.received,
                extra={"event": events.NET_USAGE, "sent": rt.net.sent, "received": rt.net.received},
            )

    def last_net_report(self) -> None:
        """The job ends: count the last bytes and tell the client, which reads the last status
        message when the wrapper has exited."""
        if not self.counting_net() or not self.ctx.rt.vm_state.online:
            return
        before = self.ctx.rt.net
        self.poll_net()
        if self.ctx.rt.net != before:
            self.report()

    def send(self, cpu: float, fraction: float, other_pid: int | None) -> None:
        rt = self.ctx.rt
        self.ctx.client.report_status(
            cpu_time=cpu,
            checkpoint_cpu_time=rt.checkpoint_cpu,
            fraction_done=fraction,
            other_pid=other_pid,
            # episode totals in every message: the client counts what grew since the last one
            # it read, and drops a message it has not read yet
            bytes_sent=rt.net.sent,
            bytes_received=rt.net.received,
        )

    def report_held(self) -> None:
        """A status message while a long call runs: nothing is asked of the back end."""
        self.send(self.ctx.rt.cpu.total, self.ctx.rt.fraction, None)

    def report(self, other_pid: int | None = None) -> None:
        ctx, rt = self.ctx, self.ctx.rt
        cpu = self.cpu_time()
        fraction = self.fraction_done()
        self.send(cpu, fraction, other_pid if other_pid is not None else self.pid())
        if ctx.job.enable_graphics_support:
            self._graphics_status(cpu, fraction)
        if ctx.timers.status_report_due(rt.elapsed, rt.last_status_report):
            rt.last_status_report = rt.elapsed
            log.info(
                "Status Report: Job Duration: '%f'",
                ctx.job.job_duration,
                extra={"event": events.STATUS_REPORT},
            )
            log.info("Status Report: Elapsed Time: '%f'", rt.elapsed)
            log.info("Status Report: CPU Time: '%f'", cpu)
            if self.counting_net():
                log.info("Status Report: Network Bytes Sent (Total): '%f'", float(rt.net.sent))
                log.info(
                    "Status Report: Network Bytes Received (Total): '%f'", float(rt.net.received)
                )

    def _graphics_status(self, cpu: float, fraction: float) -> None:
        ctx, cs = self.ctx, self.ctx.rt.client
        status = GraphicsStatus(
            updated_time=ctx.wallclock(),
            cpu_time=cpu,
            elapsed_time=ctx.rt.elapsed,
            fraction_done=fraction,
            no_heartbeat=cs.no_heartbeat,
            suspended=cs.suspended,
            quit_request=cs.quit_request,
            abort_request=cs.abort_request,
            network_suspended=cs.network_suspended,
        )
        try:
            write_graphics_status(ctx.settings.slot_dir, status)
        except OSError as exc:
            log.warning("Could not write graphics_status.xml: %s", exc)

    def pid(self) -> int | None:
        try:
            return self.ctx.backend.pid()
        except VmWrapperError:
            return None
