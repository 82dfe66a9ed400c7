"""Each benchmark runs at a tiny size and writes well-formed results (no timings)."""

from __future__ import annotations

import json
import runpy
import sys

import pytest
import torch


def test_train_throughput_smoke(tmp_path, monkeypatch):
    argv = ["train_throughput.py", "--rows", "3000", "--repeats", "1"]
    argv += ["--batch-sizes", "256", "1024", "--data-rows", "1000"]
    argv += ["--inference-batch-sizes", "1", "64", "--matmul-size", "256"]
    argv += ["--timed-work", "0.01", "--models", "mlp", "mlp_tables_form"]
    argv += ["tabm_cpu_size"]
    argv += ["--device", "cpu", "--out", str(tmp_path), "--name", "smoke"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_module("benchmarks.train_throughput", run_name="__main__", alter_sys=True)
    payload = json.loads((tmp_path / "smoke.json").read_text())
    loops = {
        "ours",
        "bare_randperm_loop",
        "ours_batch_1024",
        "bare_randperm_loop_batch_1024",
        "ours_with_dropout_0.1",
        "ours_with_progress",
        "per_row_dataloader",
        "ours_1000_rows",
    }
    assert set(payload["results"]) == loops
    peak = payload["matmul_peak"]["gflops"]
    assert peak > 0
    for result in payload["results"].values():
        assert result["rows_per_second"] > 0
        assert len(result["epoch_seconds"]) == 1
        assert result["fraction_of_peak"] == pytest.approx(result["gflops"] / peak)
    assert payload["results"]["ours_batch_1024"]["batch_size"] == 1024
    assert payload["results"]["ours_1000_rows"]["rows"] == 1000
    # 64 -> 256 -> 256 -> 1 multiply-adds, x2 forward, x2 weight gradients and
    # x2 input gradients (none for the first layer: its input needs none)
    plain_flops = 4 * 64 * 256 + 6 * (256 * 256 + 256)
    assert payload["setup"]["train_flops_per_row"] == plain_flops
    assert set(payload["inference"]) == {"1", "64"}
    assert payload["setup"]["rows"] == 3000
    assert payload["machine"]["device"] == "cpu"
    # The model options, each with its own cost, beside the plain MLP.
    models = payload["models"]
    # mlp_plain: the reference, measured first
    assert set(models) == {"mlp_plain", "mlp", "mlp_tables_form", "tabm_cpu_size"}
    assert models["mlp_plain"]["numeric_embedding"] == "none"
    assert models["mlp"]["numeric_embedding"] == "piecewise_linear"
    assert models["tabm_cpu_size"]["numeric_embedding"] == "none"
    assert models["mlp"]["train_flops_per_row"] > plain_flops
    # the default's first layer, computed without its embeddings, and the
    # tables form: each under twice the plain MLP's arithmetic at batch 1024
    # (the default's bin rows are mapped once per step: more per row at 256)
    for option in ("mlp", "mlp_tables_form"):
        flops = models[option]["batches"]["1024"]["train_flops_per_row"]
        assert plain_flops < flops < 2 * plain_flops
    assert (
        models["mlp"]["batches"]["256"]["train_flops_per_row"]
        == models["mlp"]["train_flops_per_row"]
        > models["mlp"]["batches"]["1024"]["train_flops_per_row"]
    )
    # The loops trained the options, not the plain MLP (64-256-256-1: 83,457).
    plain_parameters = 64 * 256 + 256 + 256 * 256 + 256 + 256 + 1
    assert models["mlp_plain"]["parameters"] == plain_parameters
    assert plain_parameters not in {
        models[m]["parameters"] for m in ("mlp", "tabm_cpu_size")
    }
    for model in models.values():
        assert set(model["batches"]) == {"256", "1024"}
        for batch, result in model["batches"].items():
            plain = models["mlp_plain"]["batches"][batch]
            assert result["vs_plain_mlp"] == pytest.approx(
                result["rows_per_second"] / plain["rows_per_second"]
            )
            assert result["gflops"] == pytest.approx(
                result["rows_per_second"] * result["train_flops_per_row"] / 1e9
            )
    # Targets are judged only for the batch sizes the issues name: the default
    # model against the plain MLP at 1024 here.
    goal = payload["targets"]["default_model_vs_plain_mlp_batch_1024"]
    assert goal["value"] == models["mlp"]["batches"]["1024"]["vs_plain_mlp"]
    bar = payload["targets"]["ours_with_progress_bar_vs_ours"]
    assert bar["value"] == pytest.approx(
        payload["results"]["ours_with_progress"]["rows_per_second"]
        / payload["results"]["ours"]["rows_per_second"]
    )
    assert set(payload["targets"]) == {
        "default_model_vs_plain_mlp_batch_1024",
        "ours_with_progress_bar_vs_ours",
    }
    markdown = (tmp_path / "smoke.md").read_text()
    assert "| ours | 256 |" in markdown and "Ratios:" in markdown
    assert "| mlp | piecewise_linear |" in markdown
    assert "## Inference cost per row" in markdown


def test_model_options_take_turns():
    """Each round times one epoch of every option, after one warm-up each: a
    slower spell of the machine reaches every option alike."""
    from benchmarks.train_throughput import interleaved

    calls = []
    epochs = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = interleaved(epochs, 2, torch.device("cpu"))
    assert calls == list("abc" * 3)
    assert {name: len(seconds) for name, seconds in times.items()} == dict.fromkeys(
        "abc", 2
    )


def test_preprocess_scale_benchmark_smoke(tmp_path, monkeypatch):
    argv = ["preprocess_scale.py", "--rows", "3000", "--repeats", "1"]
    argv += [
        "--out",
        str(tmp_path),
        "--name",
        "smoke",
        "--work-dir",
        str(tmp_path / "work"),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_module("benchmarks.preprocess_scale", run_name="__main__", alter_sys=True)
    payload = json.loads((tmp_path / "smoke.json").read_text())
    steps = payload["results"]["3000"]
    assert set(steps) == {"generation", "preprocessing", "predict"}
    for result in steps.values():
        assert result["rows"] == 3000 and result["rows_per_second"] > 0
        assert result["peak_rss_mib"] > 50  # a Python process with torch/pandas
    assert payload["target"]["met"] is None  # 10M rows not measured here
    assert "| 3,000 | preprocessing |" in (tmp_path / "smoke.md").read_text()


def test_distributed_scale_benchmark_smoke(tmp_path, monkeypatch):
    argv = ["distributed_scale.py", "--rows", "3000", "--numeric", "4"]
    argv += ["--epochs", "1", "--batch-size", "256", "--out", str(tmp_path)]
    argv += ["--name", "smoke", "--work-dir", str(tmp_path / "work")]
    argv += ["--row-group-rows", "500", "--speed-runs", "2"]
    argv += ["--memory-rows", "6000", "--memory-batch-size", "512"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_module(
        "benchmarks.distributed_scale", run_name="__main__", alter_sys=True
    )
    payload = json.loads((tmp_path / "smoke.json").read_text())
    results = payload["results"]
    single = results["1 process x 2 threads"]
    shards = results["2 processes x 1 thread, shards"]
    replicated = results["2 processes x 1 thread, replicated"]
    (n_train,) = single["rows_held_per_process"]
    assert shards["rows_held_per_process"] == [n_train // 2, n_train - n_train // 2]
    assert replicated["rows_held_per_process"] == [n_train, n_train]
    assert shards["ddp_data"] == "shards" and single["processes"] == 1
    for result in results.values():
        assert result["rows_per_second"] > 0
        assert all(mib > 50 for mib in result["peak_rss_mib_per_process"])
    assert payload["targets"]["rows_per_process"]["met"] is True
    for name in ("1 process x 2 threads", "1 process x 2 threads, streamed"):
        runs = results[name]["rows_per_second_runs"]
        assert len(runs) == 2 and results[name]["rows_per_second"] == max(runs)
    assert "| 2 processes x 1 thread, shards |" in (tmp_path / "smoke.md").read_text()
    streamed = results["2 processes x 1 thread, streamed"]
    assert results["1 process x 2 threads, streamed"]["loading"] == "stream"
    assert (
        streamed["loading"] == "stream" and sum(streamed["rows_per_process"]) == n_train
    )
    assert payload["targets"]["stream_speed"]["measured"] > 0
    # the memory target is taken on the larger table, one process against two
    memory = payload["memory"]["results"]
    assert list(memory) == ["1 process x 2 threads", "2 processes x 1 thread, shards"]
    (big_train,) = memory["1 process x 2 threads"]["rows_held_per_process"]
    assert big_train == 2 * n_train  # 70% of 6,000 rows against 70% of 3,000
    shard_peaks = memory["2 processes x 1 thread, shards"]["peak_rss_mib_per_process"]
    ratio = max(shard_peaks) / max(
        memory["1 process x 2 threads"]["peak_rss_mib_per_process"]
    )
    assert payload["targets"]["peak_rss_ratio"]["measured"] == round(ratio, 3)
    assert payload["libraries_peak_rss_mib"] > 50
    assert "Per-process memory on 6,000 rows" in (tmp_path / "smoke.md").read_text()


def test_stream_scale_benchmark_smoke(tmp_path, monkeypatch):
    argv = ["stream_scale.py", "--rows", "6000", "--numeric", "4"]
    argv += ["--budget-mib", "0.01", "--row-group-rows", "1000"]
    argv += ["--buffer-rows", "2000", "--batch-size", "256", "--out", str(tmp_path)]
    argv += ["--name", "smoke", "--work-dir", str(tmp_path / "work")]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_module("benchmarks.stream_scale", run_name="__main__", alter_sys=True)
    payload = json.loads((tmp_path / "smoke.json").read_text())
    training = payload["results"]["training"]
    assert training["loading"] == "stream"  # the budget is far below the split
    assert training["tensors_mib_in_memory"] > 0.01
    assert training["rows_per_second"] > 0 and training["peak_rss_mib"] > 50
    assert payload["targets"]["peak_rss"]["met"] is True
    assert "(stream)" in (tmp_path / "smoke.md").read_text()


def test_stream_quality_benchmark_smoke(tmp_path, monkeypatch):
    argv = ["stream_quality.py", "--datasets", "credit_data", "--seeds", "2"]
    argv += ["--max-epochs", "1", "--out", str(tmp_path), "--name", "smoke"]
    argv += ["--work-dir", str(tmp_path / "work")]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_module("benchmarks.stream_quality", run_name="__main__", alter_sys=True)
    payload = json.loads((tmp_path / "smoke.json").read_text())
    runs = payload["results"]["credit_data"]["runs"]
    assert [r["loading"] for r in runs["memory"]] == ["memory", "memory"]
    assert [r["loading"] for r in runs["stream"]] == ["stream", "stream"]
    assert [r["seed"] for r in runs["stream"]] == [0, 1]
    check = payload["targets"]["credit_data"]
    assert check["metric"] == "roc_auc" and isinstance(check["met"], bool)
    assert "| credit_data | binary |" in (tmp_path / "smoke.md").read_text()


def test_device_crossover_is_where_the_fitted_lines_meet():
    from benchmarks.device_end_to_end import crossovers, line_through

    cpu = line_through([(1_000, 6.0), (100_000, 105.0), (10_000, 99.0)])
    assert cpu == pytest.approx({"start_seconds": 5.0, "seconds_per_row_epoch": 1e-3})
    gpu = {"start_seconds": 15.0, "seconds_per_row_epoch": 1e-4}
    slower = {"start_seconds": 15.0, "seconds_per_row_epoch": 2e-3}
    found = crossovers({"cpu": cpu, "cuda_amp": gpu, "cuda_fp32": slower})
    # 5 + 1e-3 x = 15 + 1e-4 x  ->  x = 10 / 9e-4
    assert found["cuda_amp"]["rows_x_epochs"] == pytest.approx(10 / 9e-4)
    assert found["cuda_fp32"]["rows_x_epochs"] is None
    assert crossovers({"cuda_amp": gpu}) == {}


def test_device_end_to_end_smoke(tmp_path, monkeypatch):
    argv = ["device_end_to_end.py", "--rows", "400", "800", "--epochs", "1"]
    argv += ["--features", "4", "--work-dir", str(tmp_path / "work")]
    argv += ["--out", str(tmp_path), "--name", "smoke"]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.delitem(sys.modules, "benchmarks.device_end_to_end", raising=False)
    runpy.run_module("benchmarks.device_end_to_end", run_name="__main__")
    payload = json.loads((tmp_path / "smoke.json").read_text())
    assert payload["setup"]["variants"] == {"cpu": ["device=cpu"]}  # no CUDA here
    assert set(payload["tables"]) == {"400", "800"}
    for rows, table in payload["tables"].items():
        run = table["train"]["cpu"]
        assert run["device"] == "cpu" and run["epochs"] == 1
        assert run["process_seconds"] > 0 and 0 <= run["test_roc_auc"] <= 1
        assert table["raw_csv"].endswith(".csv") and table["preprocess_seconds"] > 0
    scored = payload["predict"]
    assert scored["rows"] == 800 and scored["variants"]["cpu"]["output_bytes"] > 0
    seconds = [
        payload["tables"][r]["train"]["cpu"]["process_seconds"] for r in ("400", "800")
    ]
    fit = payload["fits"]["cpu"]
    assert fit["start_seconds"] + fit["seconds_per_row_epoch"] * 800 == pytest.approx(
        seconds[1]
    )
    assert payload["crossover"] == {}  # nothing to cross without a GPU
    markdown = (tmp_path / "smoke.md").read_text()
    assert "| 800 | cpu |" in markdown and "## Where the GPU starts to win" in markdown
