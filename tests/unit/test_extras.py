"""core/extras.py: a missing optional package is named with the extra that
installs it, by the features that need one and by the entry points' safety net."""

from __future__ import annotations

import logging
from contextlib import ExitStack

import pytest
from omegaconf import OmegaConf

from modelsphere import cli
from modelsphere.core import extras
from modelsphere.core.errors import ModelSphereError

pytestmark = pytest.mark.unit


def test_a_module_is_traced_to_the_extra_that_installs_it():
    assert extras.owner_of_module("fastapi.routing") == ("serve", "fastapi")
    assert extras.owner_of_module("onnxruntime") == ("onnx", "onnxruntime")
    assert extras.owner_of_module("numpy") is None
    assert extras.owner_of_module(None) is None


def test_a_missing_module_stops_with_one_line_naming_its_extra(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    with pytest.raises(ModelSphereError) as caught:
        extras.require_module("matplotlib", "plots", "plots")
    message = str(caught.value)
    assert "\n" not in message
    assert "plots needs the 'plots' extra (matplotlib not installed)" in message
    assert "pip install -r requirements-plots.txt" in message
    with pytest.raises(ModelSphereError, match="serve.py needs the 'serve' extra"):
        monkeypatch.setattr(extras, "missing_packages", lambda extra: ("fastapi",))
        extras.require_extra("serve", "serve.py")


def test_a_by_product_without_its_extra_is_skipped_with_one_warning(
    monkeypatch, caplog
):
    monkeypatch.setattr(extras, "missing_packages", lambda extra: ("matplotlib",))
    monkeypatch.setattr(extras, "_SKIPPED", set())
    with caplog.at_level(logging.WARNING):
        assert not extras.optional_feature("plots", "plots")
        assert not extras.optional_feature("plots", "plots")
    warnings = [r.getMessage() for r in caplog.records if "no plots" in r.getMessage()]
    assert len(warnings) == 1 and "requirements-plots.txt" in warnings[0]


def _run_task(task, tmp_path):
    with ExitStack() as guards:
        return cli._run(task, OmegaConf.create({}), tmp_path, guards)


def test_an_entry_point_names_the_extra_of_a_module_it_could_not_import(
    tmp_path, caplog
):
    def task(cfg, output_dir):
        raise ModuleNotFoundError("No module named 'uvicorn'", name="uvicorn")

    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as stopped:
        _run_task(task, tmp_path)
    assert stopped.value.code == cli.USAGE_ERROR_EXIT_CODE
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "needs the 'serve' extra (uvicorn not installed)" in line


def test_an_entry_point_lets_a_missing_module_of_no_extra_through(tmp_path):
    def task(cfg, output_dir):
        raise ModuleNotFoundError("No module named 'typo'", name="typo")

    with pytest.raises(ModuleNotFoundError):
        _run_task(task, tmp_path)


def test_serve_py_needs_the_onnx_extra_only_for_the_onnx_engine(monkeypatch):
    """Checked before the server starts (in the background load it would only
    ever answer 503)."""
    from modelsphere.serving.config import require_serving_extras

    monkeypatch.setattr(
        extras,
        "missing_packages",
        lambda extra: ("onnxruntime",) if extra == "onnx" else (),
    )
    with pytest.raises(ModelSphereError, match="serve.engine=onnx needs the 'onnx'"):
        require_serving_extras(OmegaConf.create({"serve": {"engine": "onnx"}}))
    require_serving_extras(OmegaConf.create({"serve": {"engine": "torch"}}))
