"""Request guards: body-size limit (413), JSON content type and no content
encoding (415), API key (401).

The dependencies are `async def` on purpose: FastAPI runs plain `def` dependencies
in its thread pool, and two thread hops per request cost ~0.25 ms at low load and
100-300 ms p99 tails at 32 concurrent requests (benchmarks/results/serve_load.md).
"""

import json
import secrets
from typing import Optional

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException


class BodyTooLarge(StarletteHTTPException):
    """Raised while the body streams in; an HTTPException so that FastAPI, which
    turns other errors during body reading into a 400, lets it through as 413."""

    def __init__(self, max_bytes: int):
        super().__init__(413, _too_large_message(max_bytes))


def _too_large_message(max_bytes: int) -> str:
    return f"request body larger than {max_bytes} bytes (serve.max_body_bytes)"


def _error_body(status: int, message: str) -> dict:
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json")],
    }, {
        "type": "http.response.body",
        "body": json.dumps({"error": message, "detail": []}).encode(),
    }


class BodyLimitMiddleware:
    """Refuses bodies over `max_bytes` with 413, by Content-Length up front and by
    counting while reading (chunked uploads), before any of it is parsed."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if (
            declared is not None
            and declared.isdigit()
            and int(declared) > self.max_bytes
        ):
            return await self._refuse(send)
        seen = 0
        started = False

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send):
        start, body = _error_body(
            413,
            f"request body larger than {self.max_bytes} bytes (serve.max_body_bytes)",
        )
        await send(start)
        await send(body)


def is_json(request: Request) -> bool:
    content_type = request.headers.get("content-type", "")
    return content_type.split(";")[0].strip().lower() == "application/json"


async def require_json(request: Request) -> None:
    if not is_json(request):
        content_type = request.headers.get("content-type", "")
        raise HTTPException(
            415,
            f"content-type must be application/json, got {content_type or 'none'!r}",
        )


def refuse_content_encoding(request: Request) -> None:
    """A compressed body is refused before FastAPI parses it (it would be read as
    text and reported as invalid UTF-8)."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise HTTPException(
            415,
            f"content-encoding {encoding!r} is not supported: send the JSON body "
            "uncompressed",
        )


# Declared as OpenAPI security schemes, so /docs has an "Authorize" button; the
# check itself (and its 401) is ours. Either header may carry the key.
KEY_HEADER_NAME = "X-API-Key"
API_KEY_HEADER = APIKeyHeader(
    name=KEY_HEADER_NAME,
    scheme_name="ApiKey",
    description="the service's API key (serve.api_key, from MODELSPHERE_API_KEY)",
    auto_error=False,
)
BEARER = HTTPBearer(
    scheme_name="Bearer",
    description="the same key as `Authorization: Bearer <key>`",
    auto_error=False,
)


def key_matches(given: Optional[str], api_key: Optional[str]) -> bool:
    """The key a request gave (None: none) against the service's (None: open)."""
    if api_key is None:
        return True
    return given is not None and secrets.compare_digest(
        given.encode(), api_key.encode()
    )


def api_key_guard(api_key: Optional[str]):
    """A dependency that checks X-API-Key (or `Authorization: Bearer <key>`)."""
    if api_key is None:

        async def open_access() -> None:
            return None

        return open_access

    async def check(
        header: Optional[str] = Security(API_KEY_HEADER),
        bearer: Optional[HTTPAuthorizationCredentials] = Security(BEARER),
    ) -> None:
        # An empty X-API-Key counts as absent: it must not hide a valid Bearer.
        given = (header or "").strip() or None
        if given is None and bearer is not None:
            given = bearer.credentials.strip() or None
        if not key_matches(given, api_key):
            raise HTTPException(
                401,
                "missing or wrong API key: send it in the X-API-Key header",
                headers={"WWW-Authenticate": "ApiKey"},
            )

    return check
