"""How a request reaches its route: clear body errors, and large requests handled
on a scoring thread, off the event loop.

A request's body is read on the event loop (that is I/O). A body larger than
`serve.inline_max_bytes` is then handled whole (JSON parsing, validation,
scoring, the response's serialisation) on the worker's one scoring thread, which
runs its own event loop: the server's loop only moves bytes, so health checks,
metrics and small requests keep answering while large requests are scored, and
large requests are scored one at a time (each already uses
`serve.threads_per_worker` threads). Smaller requests are handled on the loop,
where they cost least.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import queue
import threading
from typing import Any, Callable, Coroutine, Optional

from fastapi import HTTPException, Request
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelsphere.serving.batching import lone_connection
from modelsphere.serving.guards import refuse_content_encoding
from modelsphere.serving.protocol import OPEN_CONNECTIONS_KEY
from modelsphere.serving.thin_path import ThinHandler

SCORING_THREAD_NAME = "modelsphere-scoring"

log = logging.getLogger(__name__)


class ScoringThread:
    """The worker's one scoring thread: it does its work one piece at a time, in
    the order given: functions posted to it (`post`: the request batcher's) and
    coroutines (`run`: large requests), each run on the thread's own event loop
    until it returns (tasks it starts and leaves running move on only while a
    later coroutine runs). It waits on a queue, not in an event loop: what wakes
    it is the release of the queue's lock, where an event loop's
    `call_soon_threadsafe` writes a byte to its self-pipe (a socket). The
    server's event loop, whose thread is what limits a worker's requests/s,
    posts the batcher's work once per batch and pays for the wake-up: the lock
    costs it a fraction of the write (benchmarks/results/serve_load.md has the
    requests/s)."""

    def __init__(self) -> None:
        self._work: "queue.SimpleQueue[Optional[Callable[[], None]]]" = (
            queue.SimpleQueue()
        )
        self._loop = asyncio.new_event_loop()
        self._stopped = False
        self._giving = threading.Lock()  # no work queued behind the stop
        self.thread = threading.Thread(
            target=self._run, name=SCORING_THREAD_NAME, daemon=True
        )
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            while (function := self._work.get()) is not None:
                try:
                    function()
                except BaseException:  # noqa: BLE001 - the thread serves on
                    log.exception("work posted to the scoring thread failed")
        finally:
            self._loop.close()

    async def run(self, work: Coroutine[Any, Any, Any]) -> Any:
        """`await work` on the scoring thread, in the caller's context variables;
        its result or error comes back to the caller's loop. A request cancelled
        before its turn is not run; one cancelled while it runs runs to its end
        (its answer is dropped). Awaited on the scoring thread itself, `work`
        runs there at once (queued, it would wait for the coroutine awaiting it)."""
        if threading.current_thread() is self.thread:
            return await work
        caller = asyncio.get_running_loop()
        answer = caller.create_future()
        context = contextvars.copy_context()

        def settle(result: Any, error: Optional[BaseException]) -> None:
            if answer.done():  # cancelled meanwhile
                return
            if error is not None:
                answer.set_exception(error)
            else:
                answer.set_result(result)

        def run_work() -> None:
            if answer.cancelled():
                work.close()
                return
            try:
                result = context.run(self._loop.run_until_complete, work)
            except BaseException as exc:  # noqa: BLE001 - the caller's to raise
                caller.call_soon_threadsafe(settle, None, exc)
            else:
                caller.call_soon_threadsafe(settle, result, None)

        try:
            self._give(run_work)
        except HTTPException:
            work.close()  # never to run
            raise
        return await answer

    def post(self, function: Callable[[], None]) -> None:
        """`function()` on the scoring thread, soon; not awaited."""
        self._give(function)

    def stop(self) -> None:
        """Ends the thread once the work given before has run; waits for it.
        Work given afterwards is refused (a 503: the server is closing), not
        left waiting."""
        with self._giving:
            self._stopped = True
            self._work.put(None)
        self.thread.join()

    def _give(self, function: Callable[[], None]) -> None:
        with self._giving:
            if self._stopped:
                raise HTTPException(
                    503, "shutting down: the scoring thread has stopped"
                )
            self._work.put(function)


class ServiceRoute(APIRoute):
    """Every route of the service: FastAPI's handler, with a body's parse errors
    said plainly and large bodies handled on the app's scoring thread
    (`app.state.scoring`, `app.state.inline_max_bytes`); a smaller body is
    offered to the route's thin handler first, if it has one (serving.thin_path)."""

    thin_handler: Optional[ThinHandler] = None

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def route(request: Request):
            refuse_content_encoding(request)
            # (this request's task only: serving.batching)
            connections = request.scope.get(OPEN_CONNECTIONS_KEY)
            lone_connection.set(connections is not None and len(connections) == 1)
            scoring: Optional[ScoringThread] = getattr(
                request.app.state, "scoring", None
            )
            try:
                if scoring is not None and request.method == "POST":
                    body = await request.body()  # cached for the handler
                    if len(body) > request.app.state.inline_max_bytes:
                        return await scoring.run(handler(request))
                    if self.thin_handler is not None:
                        response = await self.thin_handler(request, body)
                        if response is not None:
                            return response
                return await handler(request)
            except StarletteHTTPException as exc:
                cause = exc.__cause__
                if exc.status_code != 400 or cause is None:
                    raise
                raise HTTPException(400, body_error(cause)) from exc

        return route


def body_error(cause: BaseException) -> str:
    if isinstance(cause, RecursionError):
        return "request JSON is nested too deeply"
    if isinstance(cause, UnicodeDecodeError):
        return f"request body is not valid UTF-8 ({cause.reason} at byte {cause.start})"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "a number in the request has too many digits"
    return f"request body is not valid JSON: {cause}"
