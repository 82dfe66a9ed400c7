"""Graceful shutdown: a SIGTERM drains the service instead of dropping requests.

What a worker does on SIGTERM (what load balancers and orchestrators expect):
1. **Drain.** Readiness answers 503 at once, so a load balancer stops sending new
   traffic; requests are still served as usual, for `serve.drain_seconds` (even
   with no connection open: a load balancer may open one per request).
2. **Close.** The worker stops accepting connections. Every connection still
   open ends after the answer to its next request (`Connection: close`), so no
   client sends a request on a connection the server is closing; idle ones close
   when their keep-alive runs out. In-flight requests get up to
   `serve.drain_seconds` more; then what is left is closed.
A second SIGTERM changes nothing; SIGINT (Ctrl-C) skips the drain (in-flight
requests still finish), and a second SIGINT stops at once. With several
workers, the parent stops listening and passes the SIGTERM to every worker,
which drains as above.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from typing import List, Optional

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from modelsphere.serving.protocol import ConnectionLimits, ServiceState

log = logging.getLogger(__name__)

DRAIN_STATE_KEY = "drain"  # where the app's lifespan state holds its DrainSignal
POLL_SECONDS = 0.05  # how often the close phase looks at the port and connections
PROBE_SECONDS = 1.0  # a connection attempt to our own port, on loopback
LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}
SUPERVISE_SECONDS = 0.5  # how often the parent of several workers checks them
# a worker gets the drain and the close phase, then this long, before SIGKILL
KILL_MARGIN_SECONDS = 5.0


class DrainSignal:
    """Set when the worker begins to drain; the readiness routes read it."""

    def __init__(self) -> None:
        self.draining = False

    def begin(self) -> None:
        self.draining = True


@dataclass
class ShutdownPolicy:
    drain_seconds: float
    limits: ConnectionLimits


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the drain and close phases above."""

    def __init__(self, config: uvicorn.Config, policy: ShutdownPolicy):
        super().__init__(config)
        self.server_state = ServiceState(policy.limits)
        self.policy = policy
        self.drain_deadline: Optional[float] = None

    def handle_exit(self, sig: int, frame) -> None:
        if sig == signal.SIGTERM and not self.should_exit:
            if self.drain_deadline is not None:
                return  # draining already (a TERM to the group, then the parent's)
            if self.policy.drain_seconds > 0:
                self._captured_signals.append(sig)
                self.drain_deadline = time.monotonic() + self.policy.drain_seconds
                drain = getattr(self, "lifespan", None)
                drain = drain.state.get(DRAIN_STATE_KEY) if drain else None
                if drain is not None:
                    drain.begin()
                log.info(
                    "SIGTERM: draining (readiness 503) for up to %gs",
                    self.policy.drain_seconds,
                )
                return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        # The whole drain, even with no connection open: a load balancer opening
        # a connection per request must see readiness 503 before we stop listening.
        if self.drain_deadline is not None and not self.should_exit:
            if time.monotonic() >= self.drain_deadline:
                self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets=None) -> None:
        deadline = time.monotonic() + self.policy.drain_seconds
        for server in self.servers:
            server.close()
        for sock in sockets or []:  # a worker's copy of the shared socket (the
            sock.close()  # server above may hold a duplicate of it)
        # Every worker stops listening before any client is told to reconnect:
        # a reconnection queued on a socket that then closes would be reset.
        while (
            not self.force_exit
            and time.monotonic() < deadline
            and await self._port_still_listening()
        ):
            await asyncio.sleep(POLL_SECONDS)
        self.server_state.closing = True
        while (
            self.server_state.connections
            and time.monotonic() < deadline
            and not self.force_exit
        ):
            await asyncio.sleep(POLL_SECONDS)
        if self.server_state.connections and not self.force_exit:
            log.warning(
                "serve.drain_seconds=%g ran out with %d connection(s) open: "
                "closing them (a request on them is cut)",
                self.policy.drain_seconds,
                len(self.server_state.connections),
            )
        self.config.timeout_graceful_shutdown = max(deadline - time.monotonic(), 0)
        await super().shutdown(sockets)

    async def _port_still_listening(self) -> bool:
        """Whether another worker still accepts on the service's port (a
        connection attempt is not refused)."""
        host = LOOPBACK.get(self.config.host, self.config.host)
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, self.config.port), PROBE_SECONDS
            )
        except (OSError, asyncio.TimeoutError):
            return False
        writer.close()
        return True


def _run_worker(config: uvicorn.Config, policy: ShutdownPolicy, sockets) -> None:
    """A worker process of several (spawned: module level, picklable)."""
    config.configure_logging()
    DrainingServer(config, policy).run(sockets=sockets)


def serve(config: uvicorn.Config, policy: ShutdownPolicy) -> bool:
    """Run the service until it is stopped; False if it never started."""
    if config.workers == 1:
        server = DrainingServer(config, policy)
        server.run()
        return server.started
    return _supervise(config, policy)


def _supervise(config: uvicorn.Config, policy: ShutdownPolicy) -> bool:
    """Several workers on one listening socket: start them, replace one that
    dies, and on SIGTERM/SIGINT stop listening and pass SIGTERM to each."""
    sock = config.bind_socket()
    spawn = multiprocessing.get_context("spawn")
    stopping: List[int] = []  # a plain list: signal handlers must not take locks
    previous = {
        sig: signal.signal(sig, lambda signum, _: stopping.append(signum))
        for sig in (signal.SIGTERM, signal.SIGINT)
    }

    def start() -> multiprocessing.process.BaseProcess:
        worker = spawn.Process(target=_run_worker, args=(config, policy, [sock]))
        worker.start()
        return worker

    workers: List[multiprocessing.process.BaseProcess] = [
        start() for _ in range(config.workers)
    ]
    started = True
    try:
        while not stopping:
            time.sleep(SUPERVISE_SECONDS)
            for index, worker in enumerate(workers):
                if worker.is_alive():
                    continue
                if worker.exitcode == STARTUP_FAILURE:
                    log.error("worker %d failed to start: stopping", worker.pid)
                    started = False
                    stopping.append(signal.SIGTERM)
                    break
                log.warning(
                    "worker %d died (exit %s): replaced", worker.pid, worker.exitcode
                )
                workers[index] = start()
    finally:
        sock.close()  # the workers hold their own copies until they stop accepting
        for worker in workers:
            if worker.is_alive():
                os.kill(worker.pid, signal.SIGTERM)
        limit = 2 * policy.drain_seconds + KILL_MARGIN_SECONDS
        for worker in workers:
            worker.join(limit)
            if worker.is_alive():
                log.error("worker %d did not stop in %gs: killed", worker.pid, limit)
                worker.kill()
                worker.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return started
