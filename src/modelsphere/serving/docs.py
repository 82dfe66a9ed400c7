"""The API's documentation pages behind the API key.

FastAPI serves /docs, /redoc and /openapi.json to anyone. The schema names every
feature, every category level and an example record, so when an API key is set
(and `serve.docs_require_key`, the default) the three pages are served here
instead, each requiring the key like the model's routes. A browser cannot send
the key, so read the schema with it (`curl -H "X-API-Key: ..." .../openapi.json`)
or set `serve.docs_require_key=false` to browse /docs.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

OPENAPI_URL, DOCS_URL, REDOC_URL = "/openapi.json", "/docs", "/redoc"


def hidden_docs_settings() -> dict:
    """FastAPI's arguments that turn its own, open, documentation pages off."""
    return {"openapi_url": None, "docs_url": None, "redoc_url": None}


def add_keyed_docs(app: FastAPI, authorised: Any) -> None:
    """/openapi.json, /docs and /redoc, each behind `authorised` (a Depends)."""
    guarded = {"dependencies": [authorised], "include_in_schema": False}

    @app.get(OPENAPI_URL, **guarded)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get(DOCS_URL, **guarded)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=OPENAPI_URL, title=app.title)

    @app.get(REDOC_URL, **guarded)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=OPENAPI_URL, title=app.title)
