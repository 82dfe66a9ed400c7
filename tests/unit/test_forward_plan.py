"""predict.py's forward stage: how many passes at once, on how many threads."""

from __future__ import annotations

import pytest
import torch

from modelsphere.inference.batch_predict import forward_plan


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)


def test_onnx_with_the_stages_overlapping_runs_one_pass_per_core(four_cores):
    assert forward_plan("onnx", prefetch_chunks=2) == (4, 1)


@pytest.mark.parametrize(
    "engine, prefetch_chunks", [("torch", 2), ("onnx", 0), ("torch", 0)]
)
def test_otherwise_one_pass_on_every_core(four_cores, engine, prefetch_chunks):
    assert forward_plan(engine, prefetch_chunks) == (1, 4)


def test_the_settings_win_and_share_the_cores(four_cores):
    assert forward_plan("onnx", 2, workers=2) == (2, 2)
    assert forward_plan("onnx", 2, threads=2) == (2, 2)
    assert forward_plan("onnx", 2, threads=3) == (1, 3)
    assert forward_plan("torch", 2, workers=3) == (3, 1)
    assert forward_plan("torch", 0, workers=8) == (8, 1)
