"""The settings of serve.py (`conf/serve.yaml`): one source for their types and
defaults, which the workers receive too (`app.ServeSettings`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import DictConfig

from modelsphere.core.config import (
    DeviceConfig,
    PathsConfig,
    register_schema,
    require,
    setting,
    validate,
)
from modelsphere.core.extras import require_extra
from modelsphere.inference.engines import ENGINES

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's
MIN_API_KEY_CHARS = 8


@dataclass
class ServeConfig:
    """`serve`: the service and what each worker does."""

    host: str = "127.0.0.1"
    port: int = setting(8000, ge=1, le=65535)
    workers: int = setting(1, ge=1)  # uvicorn worker processes (uvloop + httptools)
    # onnx: ONNX Runtime, the lowest per-call cost; torch
    engine: str = setting("onnx", choices=ENGINES)
    # torch / ONNX Runtime intra-op threads per worker
    threads_per_worker: int = setting(1, ge=1)
    max_batch_rows: int = setting(1024, ge=1)  # more records in one request: 413
    max_body_bytes: int = setting(1 << 20, ge=1024)  # larger bodies: 413
    # larger request bodies are handled on the scoring thread, off the event loop
    inline_max_bytes: int = setting(32768, ge=0)
    # small requests that arrive together are scored in one engine call on the
    # scoring thread (serving/batching.py); false: each on the event loop, alone
    batching: bool = True
    batch_max_rows: int = setting(64, ge=1)  # records in one such call, at most
    forward_batch_rows: int = setting(8192, ge=1)  # rows per forward pass
    # once the model is loaded, the worker's objects leave the garbage
    # collector's scans (serving/heap.py): no full-collection pauses of the
    # event loop under load; false: every collection scans them
    freeze_startup_heap: bool = True
    api_key: Optional[str] = None  # set it to require X-API-Key
    # with an API key: /docs, /redoc and /openapi.json require it too
    docs_require_key: bool = True
    model_name: Optional[str] = None  # null: the data set's name
    log_level: str = setting("info", choices=LOG_LEVELS)
    # one log line per request costs latency; the load balancer logs them
    access_log: bool = False
    # seconds an idle keep-alive connection stays open
    timeout_keep_alive: int = setting(5, ge=1)
    # seconds a request has to arrive whole (head and body) from the connection's
    # opening or the request's first byte: else 408 and the connection is closed
    timeout_request_read: float = setting(10.0, gt=0)
    # SIGTERM: seconds readiness answers 503 while requests are still served, then
    # as long again at most for in-flight requests (serving/shutdown.py)
    drain_seconds: float = setting(10.0, ge=0)

    @staticmethod
    def check(node: DictConfig, key: str) -> None:
        if node.api_key is not None:
            require(
                len(node.api_key) >= MIN_API_KEY_CHARS,
                f"{key}.api_key must be at least {MIN_API_KEY_CHARS} characters",
            )
            # Header values lose their outer whitespace on the way in: such a key
            # could never be sent back.
            require(
                node.api_key == node.api_key.strip(),
                f"{key}.api_key must not start or end with whitespace (nor be "
                "only whitespace): no client could send it",
            )


@dataclass
class ServeAppConfig:
    """`conf/serve.yaml`: the real-time inference service."""

    run_dir: Optional[str] = None  # null: the latest training run
    paths: PathsConfig = field(default_factory=PathsConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    @staticmethod
    def check(node: DictConfig, key: str) -> None:
        require(
            not (node.serve.engine == "onnx" and node.device.name == "cuda"),
            "serve.engine=onnx runs on the CPU: use device=cpu or serve.engine=torch",
        )


def validate_serve_app(cfg: DictConfig) -> None:
    validate(cfg, ServeAppConfig)


def require_serving_extras(cfg: DictConfig) -> None:
    """Stop before the server starts unless the extras it will use are here:
    `serve`, and `onnx` for serve.engine=onnx (the default)."""
    require_extra("serve", "serve.py")
    if cfg.serve.engine == "onnx":
        require_extra("onnx", "serve.engine=onnx")


register_schema("serve_schema", ServeAppConfig)
