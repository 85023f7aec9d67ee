"""The state every worker shares, created by the master before it forks.

``stub_status`` counters and ``limit_conn``/``limit_req`` zones (:mod:`wsgate.shm`) and the
Prometheus metrics (:mod:`wsgate.observability.metrics`) live in anonymous shared memory: the
master creates it, so workers of every generation (and replacements of dead workers) read and
write the same memory.  Each worker writes its counters into a *slot* of its own; the master
frees a slot when it reaps the worker (zeroing its gauges and releasing the ``limit_conn``
slots it held, so a killed worker leaks nothing).
"""

from __future__ import annotations

import json
import os
from typing import Any

from wsgate.config.model import Config
from wsgate.observability.logs import ErrorLogger
from wsgate.observability.metrics import MetricsStore
from wsgate.server.control import Control, SharedControl
from wsgate.server.gateway import Gateway
from wsgate.server.master import SharedHooks
from wsgate.server.resolved import SharedResolved
from wsgate.shm import SharedState, ShmError

__all__ = ["MAX_SLOTS", "Shared"]

#: Workers alive at once, all generations together (old ones linger while their tunnels do).
MAX_SLOTS = 128
#: The environment variable with the shared memory an upgrade hands over.
ENV = "WSGATE_SHM"


class Shared(SharedHooks):
    """The shared memory of one wsgate instance."""

    def __init__(self, max_slots: int = MAX_SLOTS, handover: dict[str, Any] | None = None) -> None:
        """``handover``: the description the old master of an upgrade passed (the same
        memory is mapped; raises :class:`~wsgate.shm.ShmError` if it cannot be)."""
        self.max_slots = max_slots
        self.state = SharedState(max_slots, handover)
        self.metrics = MetricsStore(max_slots)
        #: ``server ... resolve`` addresses (an upgrade's new master starts with none).
        self.resolved = SharedResolved()
        #: Upstream drains and rebalancing (an upgrade's new master starts with none).
        self.control = SharedControl()

    @classmethod
    def inherited(cls, error_log: ErrorLogger, max_slots: int = MAX_SLOTS) -> Shared:
        """In a new master: the memory of ``WSGATE_SHM`` if an upgrade passed one and it can
        be mapped, else new memory (logged at ``notice``, with why)."""
        value = os.environ.pop(ENV, None)
        if value is None:
            return cls(max_slots)
        desc: dict[str, Any] = {}
        try:
            desc = json.loads(value)
            return cls(max_slots, handover=desc)
        except (ShmError, ValueError, TypeError, KeyError, OSError) as exc:
            error_log.log(
                "notice", f"shared memory not inherited ({exc}): counters and zones start empty"
            )
            for fd in SharedState.handover_fds(desc):
                try:
                    os.close(fd)
                except OSError:
                    pass
            return cls(max_slots)

    def in_worker(self) -> None:
        self.resolved.in_worker()
        self.control.in_worker()
        self.state.close_descriptors()

    def claim_slot(self, candidates: list[int]) -> int | None:
        return self.state.claim_slot(candidates)

    def handover(self) -> tuple[dict[str, str], list[int]]:
        desc, fds = self.state.handover()
        return {ENV: json.dumps(desc)}, fds

    def configure(self, config: Config) -> None:
        """Zones for ``config`` (kept by name and size; a changed key is a ConfigError)."""
        self.state.configure(config)
        self.control.configure(config)

    def attach(self, gw: Gateway, slot: int) -> None:
        self.state.attach(slot)
        gw.stub_status = self.state.stub_status
        gw.accept_share = self.state.accept_share
        gw.resolved_store = self.resolved
        gw.control = Control(gw, self.control)
        gw.limits = self.state.limits
        gw.metrics.stop_flush()
        gw.metrics = self.metrics
        self.metrics.attach(slot)
        self.metrics.start_flush(gw.loop, lambda: gw.config)

    def worker_exited(self, slot: int) -> list[str]:
        self.metrics.worker_exited(slot)
        return self.state.worker_exited(slot)
