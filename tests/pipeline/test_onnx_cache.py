"""The ONNX engine's export cache (`model.onnx` beside the weights): used only when
it was exported from these weights and reproduces them; rebuilt otherwise."""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import onnx
import pytest

from helpers import make_table
from modelsphere.core.devices import select_device
from modelsphere.inference import engines
from modelsphere.inference.predictor import Predictor

CPU = select_device("cpu", False, "auto")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, trained_runs):
    """Two runs of the same data and architecture with different seeds."""
    base = tmp_path_factory.mktemp("onnx_cache")
    first = trained_runs.copy("binary_seed_1", base)
    second = trained_runs.copy("binary_seed_2", base)
    return first, second


@pytest.fixture
def run_dir(two_runs, tmp_path):
    """A private copy of the first run, without any cached graph."""
    copy = tmp_path / "run"
    shutil.copytree(two_runs[0], copy)
    (copy / engines.ONNX_FILE).unlink(missing_ok=True)
    return copy


def no_export(monkeypatch):
    def refuse(module, weights_sha256):
        raise AssertionError("exported although a valid cache was there")

    monkeypatch.setattr(engines, "_export", refuse)


def scores(run_dir, engine="onnx"):
    frame = make_table(rows=40).drop(columns=["label"])
    return Predictor.from_run_dir(run_dir, CPU, 16, engine=engine).predict_frame(frame)


def assert_matches_torch(onnx_scores, run_dir):
    torch_scores = scores(run_dir, engine="torch")
    np.testing.assert_allclose(
        onnx_scores["yes_probability"], torch_scores["yes_probability"], atol=1e-5
    )


def test_first_use_exports_and_caches_stamped_with_the_weights(run_dir):
    scores(run_dir)
    graph = onnx.load(str(run_dir / engines.ONNX_FILE))
    stamps = {prop.key: prop.value for prop in graph.metadata_props}
    weights = json.loads((run_dir / "model.json").read_text())["weights_sha256"]
    # The weights and the inference form the graph was exported from.
    assert stamps[engines.ONNX_WEIGHTS_KEY] == (
        f"{weights}/FoldedPiecewiseMLP+categorical-table"
    )
    assert not list(run_dir.glob(".*.tmp")), "no temp file is left behind"


def test_a_valid_cache_is_used_without_exporting(run_dir, monkeypatch, caplog):
    expected = scores(run_dir)
    no_export(monkeypatch)
    with caplog.at_level(logging.INFO, logger="modelsphere.inference.engines"):
        again = scores(run_dir)
    assert "loaded the ONNX graph cached in" in caplog.text
    np.testing.assert_allclose(
        again["yes_probability"], expected["yes_probability"], rtol=0, atol=0
    )
    assert_matches_torch(again, run_dir)


def test_a_graph_of_another_inference_form_is_exported_again(run_dir, caplog):
    """A graph cached from the unfolded MLP (same weights, same function, more
    work) is replaced by the folded one."""
    stamp = stamp_changed_and_scored(
        run_dir, caplog, "/FoldedPiecewiseMLP", "/TabularMLP"
    )
    assert stamp.endswith("/FoldedPiecewiseMLP+categorical-table")


def test_a_graph_of_an_earlier_layout_of_the_form_is_exported_again(run_dir, caplog):
    """A graph cached before the folded form read its categorical levels from
    one table (same weights, same function, more operators) is replaced."""
    stamp = stamp_changed_and_scored(run_dir, caplog, "+categorical-table", "")
    assert stamp.endswith("+categorical-table")


def stamp_changed_and_scored(run_dir, caplog, old: str, new: str) -> str:
    """Caches the run's graph, replaces `old` by `new` in its stamp, scores again
    (checking the cache was not used) and returns the stamp the graph has then."""
    scores(run_dir)
    graph = onnx.load(str(run_dir / engines.ONNX_FILE))
    for prop in graph.metadata_props:
        if prop.key == engines.ONNX_WEIGHTS_KEY:
            prop.value = prop.value.replace(old, new)
    onnx.save(graph, str(run_dir / engines.ONNX_FILE))
    with caplog.at_level(logging.INFO, logger="modelsphere.inference.engines"):
        scores(run_dir)
    assert "loaded the ONNX graph cached in" not in caplog.text
    graph = onnx.load(str(run_dir / engines.ONNX_FILE))
    stamps = {prop.key: prop.value for prop in graph.metadata_props}
    return stamps[engines.ONNX_WEIGHTS_KEY]


def test_a_graph_from_other_weights_is_exported_again(run_dir, two_runs, caplog):
    scores(two_runs[1])  # caches the second run's graph
    shutil.copy(two_runs[1] / engines.ONNX_FILE, run_dir / engines.ONNX_FILE)
    with caplog.at_level(logging.INFO, logger="modelsphere.inference.engines"):
        onnx_scores = scores(run_dir)
    assert "was exported from other weights: exporting again" in caplog.text
    assert_matches_torch(onnx_scores, run_dir)


def test_a_graph_stamped_right_but_computing_wrong_is_exported_again(
    run_dir, two_runs, caplog
):
    """A swapped graph that claims these weights is caught by the probe batch."""
    scores(two_runs[1])
    graph = onnx.load(str(two_runs[1] / engines.ONNX_FILE))
    scores(run_dir)  # caches this run's own graph, for its stamp
    ours = onnx.load(str(run_dir / engines.ONNX_FILE))
    stamp = {p.key: p.value for p in ours.metadata_props}[engines.ONNX_WEIGHTS_KEY]
    for prop in graph.metadata_props:
        if prop.key == engines.ONNX_WEIGHTS_KEY:
            prop.value = stamp
    onnx.save(graph, str(run_dir / engines.ONNX_FILE))
    with caplog.at_level(logging.INFO, logger="modelsphere.inference.engines"):
        onnx_scores = scores(run_dir)
    assert "does not reproduce the PyTorch model's outputs" in caplog.text
    assert_matches_torch(onnx_scores, run_dir)


def test_a_damaged_cache_is_exported_again(run_dir, caplog):
    (run_dir / engines.ONNX_FILE).write_bytes(b"not an onnx graph")
    with caplog.at_level(logging.INFO, logger="modelsphere.inference.engines"):
        scores(run_dir)
    assert "is not a usable ONNX graph" in caplog.text
    assert onnx.load(str(run_dir / engines.ONNX_FILE)).graph.node


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_a_read_only_run_dir_still_scores(run_dir, caplog):
    run_dir.chmod(0o555)
    try:
        with caplog.at_level(logging.INFO, logger="modelsphere.inference.engines"):
            scores(run_dir)
    finally:
        run_dir.chmod(0o755)
    assert "could not cache the ONNX graph" in caplog.text
    assert not (run_dir / engines.ONNX_FILE).exists()


def test_an_unwritable_cache_still_scores(run_dir, monkeypatch, caplog):
    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engines, "atomic_write_bytes", disk_full)
    with caplog.at_level(logging.INFO, logger="modelsphere.inference.engines"):
        out = scores(run_dir)
    assert "could not cache the ONNX graph" in caplog.text
    assert len(out) == 40
    assert not (run_dir / engines.ONNX_FILE).exists()


def test_auto_engine_is_onnx_on_cpu_and_torch_elsewhere():
    assert engines.resolve_engine("auto", CPU) == "onnx"
    assert engines.resolve_engine("torch", CPU) == "torch"

    class Cuda:
        class device:
            type = "cuda"

    assert engines.resolve_engine("auto", Cuda) == "torch"


def test_the_graph_is_written_ahead_and_then_loaded_not_exported(
    run_dir, monkeypatch, caplog
):
    """`python -m modelsphere.inference.onnx_cache RUN` (the container's build
    step) writes the stamped graph that a later start loads as it is."""
    from modelsphere.inference import onnx_cache

    assert onnx_cache.main([str(run_dir)]) == 0
    assert (run_dir / engines.ONNX_FILE).is_file()
    no_export(monkeypatch)
    with caplog.at_level(logging.INFO):
        scores(run_dir)
    assert "loaded the ONNX graph cached" in caplog.text


def test_writing_the_graph_of_no_run_stops_with_one_line(tmp_path, caplog):
    from modelsphere.inference import onnx_cache

    with caplog.at_level(logging.ERROR):
        assert onnx_cache.main([str(tmp_path / "no_run")]) == 2
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.startswith("error: ") and "no_run" in line


def test_the_onnx_engine_runs_batch_size_rows_at_a_time(run_dir):
    """40 rows at 16 per run: three session runs, the outputs in the rows'
    order, equal to one run of them all."""
    frame = make_table(rows=40).drop(columns=["label"])
    sliced = Predictor.from_run_dir(run_dir, CPU, 16, engine="onnx")
    whole = Predictor.from_run_dir(run_dir, CPU, 1_000, engine="onnx")
    runs = []
    session = sliced.engine.session

    class CountingSession:
        def run(self, names, feeds):
            runs.append(len(next(iter(feeds.values()))))
            return session.run(names, feeds)

    sliced.engine.session = CountingSession()
    got = sliced.predict_frame(frame)
    assert runs == [16, 16, 8]
    np.testing.assert_allclose(
        got["yes_probability"], whole.predict_frame(frame)["yes_probability"], atol=1e-7
    )


def test_the_onnx_engine_scores_no_rows_as_no_outputs(run_dir):
    engine = Predictor.from_run_dir(run_dir, CPU, 16, engine="onnx").engine
    numeric = np.empty((0, engine.n_numeric), dtype=np.float32)
    categorical = np.empty((0, engine.n_categorical), dtype=np.int64)
    assert len(engine(numeric, categorical)) == 0
