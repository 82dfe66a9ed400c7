"""The service's HTTP/1.1 connection handling: uvicorn's httptools protocol with
the edges a public service needs.

- A request must arrive whole (head and body) within `serve.timeout_request_read`
  seconds of the connection opening or of its first byte; otherwise the client is
  answered 408 and the connection is closed. Idle or half-sent connections do not
  hold a file descriptor for ever.
- A request the HTTP parser refuses is answered in the service's JSON error shape.
- Once the server stops accepting connections (the end of a drain), every
  response carries `Connection: close`, so each client ends its connection after
  the answer to its last request instead of racing a close.
- Each request's ASGI scope holds the worker's open connections
  (`OPEN_CONNECTIONS_KEY`, the live set, counted when the request is scored):
  on its only one, no other request can arrive while it is answered, so there
  is nothing to batch it with (serving/batching.py).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Optional

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

# the scope key of the worker's open connections (uvicorn's live set)
OPEN_CONNECTIONS_KEY = "modelsphere.open_connections"
STATUS_LINES = {
    400: b"HTTP/1.1 400 Bad Request\r\n",
    408: b"HTTP/1.1 408 Request Timeout\r\n",
}


@dataclass
class ConnectionLimits:
    request_read_seconds: float


class ServiceState(ServerState):
    """uvicorn's state shared by a worker's connections, with ours."""

    def __init__(self, limits: ConnectionLimits):
        super().__init__()
        self.limits = limits
        self.closing = False  # no new connections: end each one after its answer


def error_response(status: int, message: str, default_headers=()) -> bytes:
    """A whole HTTP response in the service's error shape, closing the connection."""
    body = json.dumps({"error": message, "detail": []}).encode()
    head = [STATUS_LINES[status]]
    for name, value in default_headers:
        head.append(name + b": " + value + b"\r\n")
    head.append(b"content-type: application/json\r\n")
    head.append(b"content-length: %d\r\n" % len(body))
    head.append(b"connection: close\r\n\r\n")
    return b"".join(head) + body


class ServiceProtocol(HttpToolsProtocol):
    """Used through uvicorn's `http=` setting; reads its limits from the
    worker's ServiceState (other servers' state: no read timeout)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read_timer: Optional[asyncio.TimerHandle] = None
        self.head_read = False  # the current request's head has arrived

    # -- the read timeout -------------------------------------------------
    def _read_seconds(self) -> Optional[float]:
        limits = getattr(self.server_state, "limits", None)
        return limits.request_read_seconds if limits is not None else None

    def _arm_read_timer(self) -> None:
        seconds = self._read_seconds()
        if seconds is not None and self.read_timer is None:
            self.read_timer = self.loop.call_later(seconds, self._read_timed_out)

    def _disarm_read_timer(self) -> None:
        if self.read_timer is not None:
            self.read_timer.cancel()
            self.read_timer = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_read_timer()

    def connection_lost(self, exc) -> None:
        self._disarm_read_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_read = False
        if self.cycle is None or self.cycle.response_complete:
            self._arm_read_timer()
        # else: pipelined behind a request still being answered, whose answer
        # must not be replaced by a 408; its reading is paused meanwhile

    def on_headers_complete(self) -> None:
        self.head_read = True
        self.scope[OPEN_CONNECTIONS_KEY] = self.server_state.connections
        super().on_headers_complete()
        if getattr(self.server_state, "closing", False) and self.cycle is not None:
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        self._disarm_read_timer()
        super().on_message_complete()

    def _read_timed_out(self) -> None:
        self.read_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self.head_read and cycle is not None:
            if cycle.response_started:
                # answered before its body came whole (401, 413...): the rest
                # never came; end the connection once the answer is out
                if cycle.response_complete:
                    self.transport.close()
                return
            cycle.disconnected = True  # the route reads a disconnect, sends nothing
            cycle.message_event.set()
        seconds = self._read_seconds()
        self.transport.write(
            error_response(
                408,
                f"the request did not arrive whole within {seconds:g} s "
                "(serve.timeout_request_read)",
                self.server_state.default_headers,
            )
        )
        self.transport.close()

    # -- parser errors in the service's error shape -------------------------
    def send_400_response(self, msg: str) -> None:
        self._disarm_read_timer()
        self.transport.write(
            error_response(
                400,
                f"invalid HTTP request: {msg.rstrip('.')} (malformed request line, "
                "header or chunk)",
                self.server_state.default_headers,
            )
        )
        self.transport.close()
