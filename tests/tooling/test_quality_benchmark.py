"""benchmarks.quality at smoke size: every model option and reference runs on a
binary, a multiclass and a regression data set and the results are well formed."""

from __future__ import annotations

import json
import math
import runpy
import sys

from modelsphere.models.members import MEMBERS_FOR_REGRESSION

DATASETS = ["credit_data", "hpc_data", "ames"]
MODELS = [
    *("mlp", "mlp_plr", "tabm", "mlp_log_target", "mlp_previous"),
    *("lightgbm", "linear"),
]


def test_quality_benchmark_smoke(tmp_path, monkeypatch):
    argv = ["quality.py", "--quick", "--max-rows", "200", "--datasets", *DATASETS]
    argv += ["--work-dir", str(tmp_path / "work"), "--out", str(tmp_path)]
    argv += ["--name", "smoke", "--threads", "1", "--models", *MODELS]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_module("benchmarks.quality", run_name="__main__", alter_sys=True)

    payload = json.loads((tmp_path / "smoke.json").read_text())
    assert list(payload["results"]) == DATASETS
    assert payload["setup"]["quick"] is True
    for package in ("torch", "tabm", "rtdl_num_embeddings", "lightgbm"):
        assert package in payload["versions"]
    primary = {"binary": "roc_auc", "multiclass": "accuracy", "regression": "rmse"}
    for name, entry in payload["results"].items():
        assert set(entry["runs"]) == set(MODELS)
        metric = primary[entry["task"]]
        for model, runs in entry["runs"].items():
            assert len(runs) == 1 and runs[0]["seconds"] >= 0
            assert math.isfinite(runs[0]["test"][metric])
            assert entry["summary"][model][metric]["std"] == 0.0  # one seed
    # The options ran the real pipeline: one run dir each, with its artifact;
    # the variants: the skew rule choosing the target's scale, and the default
    # before the regression changes.
    transforms, members = {}, {}
    for model in ("mlp", "mlp_plr", "tabm", "mlp_log_target", "mlp_previous"):
        run_dir = tmp_path / "work" / "outputs" / "ames" / f"{model}_seed0"
        meta = json.loads((run_dir / "model.json").read_text())
        option = "mlp" if model in ("mlp_log_target", "mlp_previous") else model
        assert meta["model_spec"]["architecture"] == option
        transforms[model] = meta["feature_state"]["target"]["transform"]
        members[model] = meta["model_spec"]["extra"].get("members", {}).get("k", 1)
        assert meta["config"]["train"]["max_epochs"] == 2  # --quick wins
    assert transforms == {
        "mlp": "none",
        "mlp_plr": "none",
        "tabm": "none",
        "mlp_log_target": "log1p",  # the skew rule: ames' prices are skewed
        "mlp_previous": "none",
    }
    # A regression target gets the ensemble rule's members; the previous
    # default is one network (tabm is an ensemble of its own).
    assert members == {
        "mlp": MEMBERS_FOR_REGRESSION,
        "mlp_plr": MEMBERS_FOR_REGRESSION,
        "tabm": 1,
        "mlp_log_target": MEMBERS_FOR_REGRESSION,
        "mlp_previous": 1,
    }
    # Every model is scored in the target's own units (sale prices in dollars).
    ames = payload["results"]["ames"]["runs"]
    assert all(ames[m][0]["test"]["rmse"] > 1000 for m in MODELS)
    regression = payload["targets"]["regression"]["ames"]
    assert {"mean_met", "std_met", "vs_previous"} <= set(regression)
    targets = payload["targets"]
    assert set(targets["per_dataset"]) == set(DATASETS)
    assert set(targets["mean_rank"]) == set(MODELS)
    markdown = (tmp_path / "smoke.md").read_text()
    assert "| data set | task | rows | metric | mlp |" in markdown
    assert "## Targets" in markdown and "QUICK" in markdown
    assert "ames (regression): mlp mean RMSE vs LightGBM's" in markdown
