"""The thin path of a well-formed request: the route's own checks and answer,
without FastAPI's per-request machinery around them.

FastAPI's handler of a route solves its dependencies (the key and content-type
guards, then the body) and round-trips the answer through the route's response
model; for a one-record request that costs as much as scoring the record. A route
given a thin handler (`ServiceRoute.thin_handler`) tries it first, on the event
loop: it checks the same guards with the same functions, parses the body with
the same request model (parsing and validating in one step, pydantic's JSON
mode: the model's strict types take the same values from JSON text as from the
standard library's parse), then calls the same answer function as the route and
writes its answer as JSON. The answer function builds the response model's shape
from validated records and the engine's columns, leaving out fields it has no
value for, so the route's response model, which the full handler validates it
against, has nothing to change (a test checks the two answers are equal). When
any check fails it returns None, and FastAPI's handler answers the request as
before: each refusal is told by the route's full handler, in one place.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Dict, Optional

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel
from pydantic_core import to_json

from modelsphere.serving.guards import KEY_HEADER_NAME, is_json, key_matches

ThinHandler = Callable[[Request, bytes], Awaitable[Optional[Response]]]
JSON_MEDIA_TYPE = "application/json"


def thin_json_handler(
    request_model: type,
    answer: Callable[[Any], Awaitable[Dict[str, Any]]],
    api_key: Optional[str],
) -> ThinHandler:
    """A thin handler for a route whose body is `request_model` and whose
    endpoint returns `answer(body)`, already in its response model's shape.
    Only a key sent as X-API-Key is checked here (a Bearer key takes the full
    handler)."""

    async def handle(request: Request, body: bytes) -> Optional[Response]:
        given = request.headers.get(KEY_HEADER_NAME, "").strip() or None
        if not is_json(request) or not key_matches(given, api_key):
            return None
        try:
            parsed: BaseModel = request_model.model_validate_json(body)
        except (ValueError, RecursionError):
            # not JSON, not UTF-8, nested too deeply, or not the model: the full
            # handler says which (a ValidationError is a ValueError)
            return None
        # (non-finite scores never reach an answer: the predictor refuses them
        # as row errors; were one to, it would be null, never bare NaN)
        content = to_json(await answer(parsed), inf_nan_mode="null")
        return Response(content, media_type=JSON_MEDIA_TYPE)

    return handle
