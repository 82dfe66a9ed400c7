"""The FastAPI app: Open Inference Protocol v2 endpoints, /predict, health, metrics.

`create_app` reads the run's `model.json` to build the request models (so /docs
shows the real fields) and starts loading the predictor in the background from
the lifespan: liveness answers at once, readiness (and inference) answer 503 until
the model is loaded and warmed with one forward pass.

(No `from __future__ import annotations` here: FastAPI reads the annotations of
the routes, whose request models are built at run time.)
"""

import asyncio
import json
import logging
import os
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import PlainTextResponse

from modelsphere import __version__
from modelsphere.core.devices import select_device
from modelsphere.core.errors import RowError
from modelsphere.core.fileio import read_json
from modelsphere.core.redaction import EnvironmentValues, activate, redact_logs
from modelsphere.data.schema import Schema
from modelsphere.inference.predictor import (
    PREDICTION_COLUMN,
    PROBABILITY_SUFFIX,
    Predictor,
)
from modelsphere.models.artifact import META_FILE
from modelsphere.serving import oip
from modelsphere.serving.batching import RequestBatcher
from modelsphere.serving.config import ServeConfig
from modelsphere.serving.errors import RowsRefused, install_error_handlers
from modelsphere.serving.docs import add_keyed_docs, hidden_docs_settings
from modelsphere.serving.guards import (
    BodyLimitMiddleware,
    api_key_guard,
    require_json,
)
from modelsphere.serving.heap import freeze_startup_heap
from modelsphere.serving.routing import ScoringThread, ServiceRoute
from modelsphere.serving.schemas import (
    ErrorResponse,
    PredictResponse,
    predict_request_model,
    record_model,
)
from modelsphere.serving.shutdown import DRAIN_STATE_KEY, DrainSignal
from modelsphere.serving.telemetry import MetricsMiddleware, Telemetry
from modelsphere.serving.thin_path import thin_json_handler

log = logging.getLogger(__name__)

SETTINGS_ENV = "MODELSPHERE_SERVE_SETTINGS"


@dataclass
class ServeSettings(ServeConfig):
    """What a worker needs to serve one run: the `serve` settings (their types
    and defaults are ServeConfig's), the run dir, the device type and the names
    of the environment variables the config took values from (never written to
    a log: core/redaction.py). Passed to workers as JSON."""

    run_dir: str = ""
    device: str = "cpu"
    environment_names: List[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServeSettings":
        return cls(**json.loads(text))


class _Service:
    """The predictor once loaded, or why it could not be; whether the worker is
    draining (set by the server on SIGTERM: serving.shutdown)."""

    def __init__(self):
        self.predictor: Optional[Predictor] = None
        self.error: Optional[str] = None
        self.drain = DrainSignal()

    def check_ready(self) -> None:
        """Readiness: a draining worker is not ready, though it still serves."""
        if self.drain.draining:
            raise HTTPException(503, "shutting down: draining in-flight requests")
        self.ready_predictor()

    def ready_predictor(self) -> Predictor:
        if self.predictor is None:
            detail = (
                f"model failed to load: {self.error}"
                if self.error
                else "model is loading"
            )
            raise HTTPException(503, detail)
        return self.predictor


def _load(settings: ServeSettings, service: _Service) -> None:
    try:
        device = select_device(settings.device, amp=False)
        predictor = Predictor.from_run_dir(
            settings.run_dir,
            device,
            settings.forward_batch_rows,
            settings.engine,
            settings.threads_per_worker,
        )
        predictor.warm_up()
        if settings.freeze_startup_heap:
            frozen = freeze_startup_heap()
            log.info("%d start-up objects frozen out of the GC's scans", frozen)
        service.predictor = predictor
        log.info("model ready (%s engine, %s)", settings.engine, device.device)
    except Exception as exc:  # noqa: BLE001 - reported by the readiness probe
        service.error = str(exc)
        log.error("model failed to load from %s: %s", settings.run_dir, exc)


def create_app(settings: ServeSettings) -> FastAPI:
    meta = read_json(Path(settings.run_dir) / META_FILE, "model metadata")
    schema = Schema.from_dict(meta["schema"])
    feature_state = meta["feature_state"]
    model_name = settings.model_name or meta["config"]["data"]["name"]
    model_version = Path(settings.run_dir).resolve().name
    platform = (
        "onnxruntime_onnx" if settings.engine == "onnx" else "pytorch_torchscript"
    )
    Record = record_model(schema, feature_state)
    PredictRequest = predict_request_model(Record, settings.max_batch_rows)
    telemetry = Telemetry()
    service = _Service()
    authorised = Depends(api_key_guard(settings.api_key))
    json_body = Depends(require_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        torch.set_num_threads(settings.threads_per_worker)
        loading = asyncio.get_running_loop().run_in_executor(
            None, _load, settings, service
        )
        scoring = app.state.scoring = ScoringThread()
        batcher = app.state.batcher = (
            RequestBatcher(
                lambda records: score(
                    service.ready_predictor(), records, batched_calls
                ),
                scoring.post,
                settings.batch_max_rows,
            )
            if settings.batching
            else None
        )
        try:
            yield {DRAIN_STATE_KEY: service.drain}
            await loading
        finally:
            if app.state.scoring is scoring:
                app.state.scoring = None
            if app.state.batcher is batcher:
                app.state.batcher = None
            # joins a request still being scored: not on the event loop
            await asyncio.get_running_loop().run_in_executor(None, scoring.stop)

    keyed_docs = settings.api_key is not None and settings.docs_require_key
    app = FastAPI(
        **(hidden_docs_settings() if keyed_docs else {}),
        title=f"modelsphere: {model_name}",
        version=__version__,
        description=(
            f"Real-time predictions of the {schema.task} model `{model_name}` "
            f"(version `{model_version}`), target `{schema.target}`. "
            "Open Inference Protocol v2 endpoints under /v2, a friendlier /predict, "
            "Prometheus metrics at /metrics."
        ),
        lifespan=lifespan,
    )
    app.router.route_class = ServiceRoute
    if keyed_docs:
        add_keyed_docs(app, authorised)
    app.state.scoring = None  # started by the lifespan
    app.state.batcher = None  # likewise, with serve.batching
    app.state.inline_max_bytes = settings.inline_max_bytes
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, telemetry=telemetry)
    install_error_handlers(app)

    def check_name(name: str) -> None:
        if name != model_name:
            raise HTTPException(
                404, f"model {name!r} not found; this server serves {model_name!r}"
            )

    def check_rows(rows: int) -> None:
        if rows > settings.max_batch_rows:
            raise HTTPException(
                413,
                f"{rows} rows in one request; the limit is {settings.max_batch_rows} "
                "(serve.max_batch_rows)",
            )

    batched_calls = telemetry.engine_calls.labels("batcher")
    direct_calls = telemetry.engine_calls.labels("direct")

    def score(predictor: Predictor, records: List[Dict[str, Any]], calls=direct_calls):
        calls.inc()
        return predictor.predict_records(records)

    async def run_predictor(
        predictor: Predictor,
        records: List[Dict[str, Any]],
        loc_of: Callable[[int, Optional[str]], list],
    ):
        """Score a small request with the others that arrive with it (on the
        scoring thread: serving.batching), a large one, or one on the worker's
        only connection, on the thread its route runs on (a large one's: the
        scoring thread, serving.routing). Rows the model cannot
        score are a 422 naming each one (`loc_of(position, column)`)."""
        batcher: Optional[RequestBatcher] = app.state.batcher
        try:
            if batcher is not None and batcher.takes(len(records)):
                return await batcher.score(records)
            return score(predictor, records)
        except RowError as exc:
            raise RowsRefused(exc, loc_of) from None

    @app.get("/v2/health/live", tags=["health"], summary="Liveness")
    async def live() -> Dict[str, bool]:
        return {"live": True}

    @app.get(
        "/v2/health/ready",
        tags=["health"],
        summary="Readiness: 503 until the model is loaded",
        responses={503: {"model": ErrorResponse}},
    )
    async def ready() -> Dict[str, bool]:
        service.check_ready()
        return {"ready": True}

    @app.get("/v2", tags=["metadata"], summary="Server metadata")
    async def server_metadata() -> Dict[str, Any]:
        return {"name": "modelsphere", "version": __version__, "extensions": []}

    @app.get(
        "/v2/models/{name}",
        tags=["metadata"],
        summary="Model metadata: inputs, outputs, task, classes, training metrics",
        dependencies=[authorised],
        responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
    )
    async def model_metadata(name: str) -> Dict[str, Any]:
        check_name(name)
        return oip.model_metadata(
            schema,
            feature_state,
            model_name,
            model_version,
            platform,
            meta.get("metrics", {}),
        )

    @app.get(
        "/v2/models/{name}/ready",
        tags=["health"],
        summary="Model readiness",
        dependencies=[authorised],
        responses={
            401: {"model": ErrorResponse},
            404: {"model": ErrorResponse},
            503: {"model": ErrorResponse},
        },
    )
    async def model_ready(name: str) -> Dict[str, Any]:
        check_name(name)
        service.check_ready()
        return {"name": model_name, "ready": True}

    @app.post(
        "/v2/models/{name}/infer",
        tags=["inference"],
        summary="Open Inference Protocol v2 inference: one input tensor per feature",
        dependencies=[authorised, json_body],
        response_model=oip.InferResponse,
        response_model_exclude_none=True,
        responses={
            400: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
            401: {"model": ErrorResponse},
            404: {"model": ErrorResponse},
            413: {"model": ErrorResponse},
            415: {"model": ErrorResponse},
            503: {"model": ErrorResponse},
        },
    )
    async def infer(name: str, body: oip.InferRequest) -> Dict[str, Any]:
        check_name(name)
        check_rows(max((len(tensor.data) for tensor in body.inputs), default=0))
        records = oip.records_from_inputs(body, schema)
        predictor = service.ready_predictor()
        tensors = {tensor.name: position for position, tensor in enumerate(body.inputs)}

        def loc_of(row: int, column: Optional[str]) -> list:
            if column in tensors:
                return ["body", "inputs", tensors[column], "data", row]
            return ["body", "inputs"]

        columns = await run_predictor(predictor, records, loc_of)
        telemetry.rows.labels("/v2/models/{name}/infer").inc(len(records))
        outputs = oip.outputs_from_columns(columns, schema.classes, schema.task)
        if body.outputs:
            wanted = {output.name for output in body.outputs}
            outputs = [output for output in outputs if output.name in wanted]
        return {
            "model_name": model_name,
            "model_version": model_version,
            "id": body.id,
            "outputs": outputs,
        }

    @app.post(
        "/predict",
        tags=["inference"],
        summary="Score records: {'records': [{feature: value, ...}]}",
        dependencies=[authorised, json_body],
        response_model=PredictResponse,
        response_model_exclude_none=True,
        responses={
            400: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
            401: {"model": ErrorResponse},
            413: {"model": ErrorResponse},
            415: {"model": ErrorResponse},
            503: {"model": ErrorResponse},
        },
    )
    async def predict(body: PredictRequest) -> Dict[str, Any]:
        return await predictions(body)

    predict_rows = telemetry.rows.labels("/predict")

    async def predictions(body) -> Dict[str, Any]:
        """POST /predict's answer to a validated body (also its thin path's)."""
        check_rows(len(body.records))
        predictor = service.ready_predictor()
        records = [record.model_dump(by_alias=True) for record in body.records]
        columns = await run_predictor(
            predictor,
            records,
            lambda row, column: ["body", "records", row] + ([column] if column else []),
        )
        predict_rows.inc(len(records))
        return {
            "model_name": model_name,
            "model_version": model_version,
            "predictions": _predictions(records, columns, schema),
        }

    @app.get(
        "/metrics",
        tags=["metadata"],
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
    )
    async def metrics():
        return telemetry.render()

    thin_path(app, "/predict").thin_handler = thin_json_handler(
        PredictRequest, predictions, settings.api_key
    )
    app.state.service = service
    app.state.model_name = model_name
    return app


def thin_path(app: FastAPI, path: str) -> ServiceRoute:
    """The app's route at `path` (to give it a thin handler)."""
    return next(
        route
        for route in app.router.routes
        if isinstance(route, ServiceRoute) and route.path == path
    )


def _predictions(records, columns, schema: Schema) -> List[Dict[str, Any]]:
    """Each record's answer in `Prediction`'s shape (schemas.py), without the
    fields it has no value for (as the route's response_model_exclude_none):
    Python numbers and strings, each column converted once."""
    labels = columns[PREDICTION_COLUMN].tolist()
    if schema.task == "regression":
        answers = [{"prediction": float(label)} for label in labels]
    else:
        cast = int if schema.target_kind == "int" else str
        keys = [str(cls) for cls in schema.classes]
        shares = [
            columns[f"{cls}{PROBABILITY_SUFFIX}"].astype(float).tolist()
            for cls in schema.classes
        ]
        answers = [
            {"prediction": cast(label), "probabilities": dict(zip(keys, row))}
            for label, row in zip(labels, zip(*shares))
        ]
    if schema.id_column is None:
        return answers
    ids = [record.get(schema.id_column) for record in records]
    return [
        answer if row_id is None else {"id": row_id, **answer}
        for row_id, answer in zip(ids, answers)
    ]


def app_from_environment() -> FastAPI:
    """The uvicorn factory for worker processes: settings come as JSON in the env."""
    text = os.environ.get(SETTINGS_ENV)
    if not text:
        raise RuntimeError(
            f"{SETTINGS_ENV} is not set: start the service with serve.py"
        )
    if not logging.getLogger().handlers:  # a spawned worker: log like serve.py does
        logging.basicConfig(
            level=logging.INFO, format="[%(asctime)s][%(levelname)s] %(message)s"
        )
    settings = ServeSettings.from_json(text)
    # here uvicorn has configured its loggers, in serve.py's process or a worker
    activate(EnvironmentValues.named(settings.environment_names))
    redact_logs()
    return create_app(settings)
