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
import threading
from typing import Any, Awaitable, Callable, Optional

from fastapi import HTTPException, Request
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelsphere.serving.batching import lone_connection
from modelsphere.serving.guards import refuse_content_encoding
from modelsphere.serving.protocol import OPEN_CONNECTIONS_KEY
from modelsphere.serving.thin_path import ThinHandler

SCORING_THREAD_NAME = "modelsphere-scoring"


class ScoringThread:
    """A daemon thread with its own event loop; `run` awaits a coroutine there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self._run, name=SCORING_THREAD_NAME, daemon=True
        )
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def run(self, work: Awaitable[Any]) -> Any:
        future = asyncio.run_coroutine_threadsafe(work, self.loop)
        return await asyncio.wrap_future(future)

    def post(self, function: Callable[[], None]) -> None:
        """`function()` on the scoring thread, soon; not awaited."""
        self.loop.call_soon_threadsafe(function)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


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
