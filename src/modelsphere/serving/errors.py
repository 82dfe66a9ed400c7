"""The service's errors: every one is JSON {"error": ..., "detail": [{loc, msg,
type}]}; bad input is a 4xx naming the field, never a 500."""

import logging
from typing import Callable, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from modelsphere.core.errors import ModelSphereError, RowError
from modelsphere.serving import oip

log = logging.getLogger(__name__)

ERRORS_SHOWN = 3


class RowsRefused(Exception):
    """A RowError from the predictor, with how the route names a row's field."""

    def __init__(self, error: RowError, loc_of: Callable[[int, Optional[str]], list]):
        super().__init__(str(error))
        self.error, self.loc_of = error, loc_of


def _error(status: int, message: str, detail: Optional[list] = None) -> JSONResponse:
    return JSONResponse({"error": message, "detail": detail or []}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    """Every error is JSON {"error": ..., "detail": [{loc, msg, type}]}; bad input
    is a 4xx naming the field, never a 500."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        detail = [
            {
                "loc": list(err.get("loc", [])),
                "msg": err.get("msg", ""),
                "type": err.get("type", ""),
            }
            for err in exc.errors()
        ]
        shown = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            for item in detail[:ERRORS_SHOWN]
        )
        more = (
            f" (and {len(detail) - ERRORS_SHOWN} more)"
            if len(detail) > ERRORS_SHOWN
            else ""
        )
        return _error(422, f"invalid request: {shown}{more}", detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        response = _error(exc.status_code, str(exc.detail))
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(oip.OipError)
    async def oip_error(request: Request, exc: oip.OipError):
        return _error(
            422,
            exc.message,
            [{"loc": exc.loc, "msg": exc.message, "type": "value_error"}],
        )

    @app.exception_handler(RowsRefused)
    async def rows_refused(request: Request, exc: RowsRefused):
        error = exc.error
        detail = [
            {
                "loc": exc.loc_of(position, error.column),
                "msg": str(error),
                "type": "value_error",
            }
            for position in error.positions[:ERRORS_SHOWN]
        ]
        return _error(422, str(error), detail)

    @app.exception_handler(ModelSphereError)
    async def model_error(request: Request, exc: ModelSphereError):
        return _error(422, str(exc))

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, exc: ClientDisconnect):
        # the client left (or was timed out: serving.protocol); nothing is sent
        log.info("client left before its request arrived: %s", request.url.path)
        return _error(400, "client disconnected")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        # A bug, not bad input: logged with its traceback, answered in the usual shape.
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, "internal error (logged on the server)")
