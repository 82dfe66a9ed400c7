"""The summary of benchmarks/quality.py: mean ± std over seeds, the issue's
targets, and the Markdown table."""

from __future__ import annotations

import statistics
from typing import Any, Dict, List

OPTIONS = ("mlp", "mlp_plr", "tabm")
REFERENCES = ("lightgbm", "linear")
# Model options run with overrides, measured beside the option itself: the
# default with the skew rule choosing the target's scale (features/target.py),
# and the default as it was before the regression changes (100 epochs).
VARIANTS = {
    "mlp_log_target": ("mlp", ("model.features.target_transform=auto",)),
    # the default before regression targets got an ensemble (models/members.py)
    "mlp_previous": ("mlp", ("model.members=1",)),
}
BEFORE = "mlp_previous"
# The regression targets: the default's mean RMSE at most LightGBM's + this many
# of LightGBM's stds, and its std at most this multiple of LightGBM's.
REGRESSION_GAP_STDS, REGRESSION_STD_RATIO = 0.5, 1.5
PRIMARY = {"binary": "roc_auc", "multiclass": "accuracy", "regression": "rmse"}
REPORTED = {
    "binary": ("roc_auc", "accuracy"),
    "multiclass": ("accuracy", "roc_auc"),
    "regression": ("rmse",),
}


def _mean_std(values: List[float]) -> Dict[str, float]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std}


def summarise(runs: Dict[str, List[Dict]], task: str) -> Dict[str, Any]:
    summary = {}
    for model, model_runs in runs.items():
        summary[model] = {
            metric: _mean_std([r["test"][metric] for r in model_runs])
            for metric in REPORTED[task]
        }
        summary[model]["seconds"] = _mean_std([r["seconds"] for r in model_runs])
    return summary


def _better(task: str, a: float, b: float) -> bool:
    return a < b if task == "regression" else a > b


def targets_report(results: Dict[str, Any], models: List[str]) -> Dict[str, Any]:
    """The issue's targets: (1) on every data set the default `mlp` beats the
    better reference or trails it by at most one std (the larger of the two
    models' stds); (2) on average `tabm` or `mlp_plr` beats both references
    (mean rank over data sets, by the primary metric, lower is better)."""
    report: Dict[str, Any] = {"per_dataset": {}, "mean_rank": {}}
    refs = [m for m in REFERENCES if m in models]
    ranks: Dict[str, List[int]] = {m: [] for m in models}
    for name, entry in results.items():
        task, summary = entry["task"], entry["summary"]
        metric = PRIMARY[task]
        ordered = sorted(
            models,
            key=lambda m: summary[m][metric]["mean"]
            * (1 if task == "regression" else -1),
        )
        for rank, model in enumerate(ordered, 1):
            ranks[model].append(rank)
        if "mlp" not in models or not refs:
            continue
        best_ref = ordered[min(ordered.index(r) for r in refs)]
        mlp, ref = summary["mlp"][metric], summary[best_ref][metric]
        tolerance = max(mlp["std"], ref["std"])
        gap = mlp["mean"] - ref["mean"]
        met = _better(task, mlp["mean"], ref["mean"]) or abs(gap) <= tolerance
        paired = [  # seed by seed: the same split for both models
            a["test"][metric] - b["test"][metric]
            for a, b in zip(entry["runs"]["mlp"], entry["runs"][best_ref])
        ]
        report["per_dataset"][name] = {
            "metric": metric,
            "better_reference": best_ref,
            "gap": gap,
            "tolerance": tolerance,
            "met": bool(met),
            "paired_gap": _mean_std(paired),
        }
        if task == "regression" and "lightgbm" in models:
            report.setdefault("regression", {})[name] = _regression_check(
                summary, models
            )
    report["mean_rank"] = {m: statistics.fmean(r) for m, r in ranks.items() if r}
    if BEFORE in models and report.get("regression"):
        ratios = [c["vs_previous"] for c in report["regression"].values()]
        report["regression_mean_ratio_vs_previous"] = statistics.fmean(ratios)
    if refs:
        best_ref_rank = min(report["mean_rank"][r] for r in refs)
        report["strong_option_beats_references"] = {
            m: report["mean_rank"][m] < best_ref_rank
            for m in ("tabm", "mlp_plr")
            if m in report["mean_rank"]
        }
    return report


def _regression_check(summary: Dict[str, Any], models: List[str]) -> Dict[str, Any]:
    """The default against LightGBM on one regression set: its mean within
    REGRESSION_GAP_STDS of LightGBM's stds, its std within REGRESSION_STD_RATIO
    times LightGBM's; and its mean RMSE as a ratio of the previous default's."""
    mlp, lgbm = summary["mlp"]["rmse"], summary["lightgbm"]["rmse"]
    bound = lgbm["mean"] + REGRESSION_GAP_STDS * lgbm["std"]
    check = {
        "mean_bound": bound,
        "mean_met": mlp["mean"] <= bound,
        "std_ratio": mlp["std"] / lgbm["std"] if lgbm["std"] else float("inf"),
    }
    check["std_met"] = check["std_ratio"] <= REGRESSION_STD_RATIO
    if BEFORE in models:
        check["vs_previous"] = mlp["mean"] / summary[BEFORE]["rmse"]["mean"]
    return check


def render_markdown(payload: Dict[str, Any]) -> str:
    setup, results = payload["setup"], payload["results"]
    models, report = setup["models"], payload["targets"]
    lines = [
        "# Model quality: the model options against LightGBM and a linear model",
        "",
        f"{payload['date']}, {payload['machine']['platform']}, "
        f"{payload['machine']['cpu_count']} CPUs (shared), torch threads "
        f"{setup['threads']}; torch {payload['versions'].get('torch', '?')}.",
        f"Seeds per data set: {setup['seeds']} (each seed: its own split and "
        f"training seed); max rows: {setup['max_rows'] or 'all'}; max epochs: "
        f"{setup['max_epochs'] or 'the config default'}; overrides: "
        f"{setup['override'] or 'none'}"
        f"{' (QUICK: smoke size)' if setup['quick'] else ''}.",
        "Test metric mean ± std over seeds; fit seconds are training time only.",
        "",
        "| data set | task | rows | metric | " + " | ".join(models) + " |",
        "|---" * (4 + len(models)) + "|",
    ]
    for name, entry in results.items():
        for metric in (*REPORTED[entry["task"]], "seconds"):
            cells = []
            for model in models:
                stat = entry["summary"][model][metric]
                digits = 1 if metric == "seconds" else 4
                cells.append(f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}")
            lines.append(
                f"| {name} | {entry['task']} | {entry['rows']} | {metric} | "
                + " | ".join(cells)
                + " |"
            )
    lines += ["", "## Targets", ""]
    for name, check in report["per_dataset"].items():
        verdict = "met" if check["met"] else "MISSED"
        lines.append(
            f"- {name}: mlp vs {check['better_reference']} on {check['metric']}: "
            f"gap {check['gap']:+.4f}, tolerance (one std) {check['tolerance']:.4f}: "
            f"{verdict}; per-seed paired gap {check['paired_gap']['mean']:+.4f} ± "
            f"{check['paired_gap']['std']:.4f}"
        )
    for name, check in report.get("regression", {}).items():
        before = check.get("vs_previous")
        lines.append(
            f"- {name} (regression): mlp mean RMSE vs LightGBM's mean + "
            f"{REGRESSION_GAP_STDS} std ({check['mean_bound']:.4f}): "
            f"{'met' if check['mean_met'] else 'MISSED'}; std ratio to LightGBM's "
            f"{check['std_ratio']:.2f} (at most {REGRESSION_STD_RATIO}): "
            f"{'met' if check['std_met'] else 'MISSED'}"
            + (
                ""
                if before is None
                else f"; RMSE / the previous default's {before:.3f}"
            )
        )
    if "regression_mean_ratio_vs_previous" in report:
        lines.append(
            "- regression, mean over data sets of mlp RMSE / the previous default's: "
            f"{report['regression_mean_ratio_vs_previous']:.3f}"
        )
    ranks = ", ".join(f"{m} {r:.2f}" for m, r in report["mean_rank"].items())
    lines.append(f"- mean rank over data sets (primary metric, 1 = best): {ranks}")
    for model, beats in report.get("strong_option_beats_references", {}).items():
        lines.append(
            f"- {model} beats both references on average (mean rank): "
            f"{'yes' if beats else 'NO'}"
        )
    notes = payload.get("notes")
    if notes:
        lines += ["", "## Notes", "", notes]
    return "\n".join(lines) + "\n"
