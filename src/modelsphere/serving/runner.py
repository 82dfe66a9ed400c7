"""serve.py: check the config and the artifact, then run uvicorn.

Errors a user can cause (no training run, a damaged artifact, a bad port) are
reported before the server starts. Workers are separate processes; each gets the
settings as JSON in its environment and loads the model itself.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import uvicorn
from omegaconf import OmegaConf

from modelsphere.core.devices import select_device
from modelsphere.core.errors import ModelSphereError
from modelsphere.core.redaction import EnvironmentValues
from modelsphere.core.runs import resolve_run_dir
from modelsphere.models.artifact import load_artifact
from modelsphere.serving.app import SETTINGS_ENV, ServeSettings
from modelsphere.serving.config import validate_serve_app
from modelsphere.serving.protocol import ConnectionLimits
from modelsphere.serving.shutdown import ShutdownPolicy
from modelsphere.serving.shutdown import serve as serve_until_stopped
from modelsphere.serving.telemetry import worker_metrics

log = logging.getLogger(__name__)

APP_FACTORY = "modelsphere.serving.app:app_from_environment"
PROTOCOL = "modelsphere.serving.protocol:ServiceProtocol"


def settings_from_config(cfg: Any) -> ServeSettings:
    validate_serve_app(cfg)
    run_dir = resolve_run_dir(cfg.run_dir, cfg.paths.outputs_dir)
    load_artifact(run_dir)  # refuse a damaged artifact before listening
    device = select_device(cfg.device.name, amp=False)
    log.info("serving %s on %s (%s engine)", run_dir, device.device, cfg.serve.engine)
    serve = OmegaConf.to_container(cfg.serve, resolve=True)
    return ServeSettings(
        run_dir=str(run_dir.resolve()),
        device=device.device.type,
        environment_names=sorted(EnvironmentValues.of(cfg).values),
        **serve,
    )


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another process listens on before uvicorn starts (its own
    message comes after the model is loaded, and in its own format)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ModelSphereError(
                f"serve.port={port} on serve.host={host} cannot be used: "
                f"{exc.strerror or exc}; pick another serve.port"
            ) from exc


def run_service(cfg: Any) -> None:
    settings = settings_from_config(cfg)
    check_port_free(cfg.serve.host, cfg.serve.port)
    os.environ[SETTINGS_ENV] = settings.to_json()
    serve = cfg.serve
    log.info(
        "listening on http://%s:%d (%d worker(s)); docs at /docs%s",
        serve.host,
        serve.port,
        serve.workers,
        "; X-API-Key required" if settings.api_key else "",
    )
    config = uvicorn.Config(
        APP_FACTORY,
        factory=True,
        host=serve.host,
        port=serve.port,
        workers=serve.workers,
        loop="uvloop",
        http=PROTOCOL,
        log_level=serve.log_level,
        access_log=serve.access_log,
        timeout_keep_alive=serve.timeout_keep_alive,
        timeout_graceful_shutdown=serve.drain_seconds,
    )
    policy = ShutdownPolicy(
        drain_seconds=serve.drain_seconds,
        limits=ConnectionLimits(request_read_seconds=serve.timeout_request_read),
    )
    with worker_metrics(serve.workers):
        started = serve_until_stopped(config, policy)
    if not started:
        raise ModelSphereError("the service did not start: see the log above")
