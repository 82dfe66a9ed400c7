"""The README's and docs' commands are real: every line composes and validates."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from helpers import REPO, compose_config
from modelsphere.inference.config import validate_evaluate_app, validate_predict_app
from modelsphere.serving.config import validate_serve_app
from modelsphere.training.config import validate_train_app

CONFIG_OF = {
    "data_preprocessing.py": ("config", validate_train_app),
    "train.py": ("config", validate_train_app),
    "evaluate.py": ("evaluate", validate_evaluate_app),
    "predict.py": ("predict", validate_predict_app),
    "serve.py": ("serve", validate_serve_app),
}


def readme_commands(*pages: Path):
    """The script commands in the bash blocks of `pages` (default: the README)."""
    text = "\n".join(page.read_text() for page in pages or (REPO / "README.md",))
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if re.match(
                r"python (data_preprocessing|train|evaluate|predict|serve)\.py", line
            ):
                commands.append(line)
    return commands


def test_readme_has_a_cookbook():
    commands = readme_commands()
    scripts = {shlex.split(command)[1] for command in commands}
    assert scripts == set(CONFIG_OF)
    assert any(" -m " in command for command in commands)
    assert len(commands) >= 15


DOC_PAGES = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))


@pytest.mark.parametrize("command", readme_commands(*DOC_PAGES))
def test_readme_command_composes_and_validates(command):
    """Every command in the README and docs/*.md composes and validates."""
    words = shlex.split(command.replace("<run>", "run"))
    script, overrides = words[1], [w for w in words[2:] if w != "-m"]
    config_name, validate = CONFIG_OF[script]
    if " -m " in command:
        # A sweep: every combination of the comma-separated values must compose.
        overrides = [_first_sweep_value(o) for o in overrides]
    cfg = compose_config(overrides, config_name)
    validate(cfg)


def _first_sweep_value(override: str) -> str:
    key, value = override.split("=", 1)
    if value.startswith("["):
        return f"{key}={value[: value.index(']') + 1]}"
    return f"{key}={value.split(',')[0]}"


def test_setup_commands_match_makefile_and_ci():
    readme = (REPO / "README.md").read_text()
    assert "make pipeline" in readme and "make test" in readme
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^pipeline:", makefile, flags=re.M)
    assert re.search(r"^test:", makefile, flags=re.M)
    ci_lines = [
        line.strip()
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert ci_lines[-1] == "make test"


def test_readme_decisions_table_is_generated_from_the_results():
    """No figure in the README's decisions table is typed by hand: it is exactly
    what docs/report/readme_table.py renders from benchmarks/results/."""
    sys.path.insert(0, str(REPO / "docs" / "report"))
    from facts import load_results
    from readme_table import render, with_table

    readme = (REPO / "README.md").read_text()
    table = render(load_results(REPO / "benchmarks" / "results"))
    assert "rows/s" in table
    assert readme == with_table(
        readme, table
    ), "README's decisions table is stale: run python docs/report/readme_table.py"


def test_models_doc_quality_figures_are_generated_from_the_results():
    """docs/models.md's quality figures are exactly what
    docs/report/quality_summary.py renders from benchmarks/results/."""
    sys.path.insert(0, str(REPO / "docs" / "report"))
    from quality_summary import DOC, load, render, with_block

    doc = DOC.read_text()
    block = render(load())
    assert "mean rank" in block and "| ames |" in block
    assert doc == with_block(
        doc, block
    ), "docs/models.md's quality figures are stale: run docs/report/quality_summary.py"


def test_scaling_doc_preprocess_figures_are_generated_from_the_results():
    """docs/scaling.md's preprocess table is what docs/report/scaling_summary.py
    renders from preprocess_scale.json."""
    sys.path.insert(0, str(REPO / "docs" / "report"))
    from quality_summary import with_block
    from scaling_summary import BEGIN, DOC, END, load, render

    doc = DOC.read_text()
    block = render(load())
    assert "| 10,000,000 | preprocessing |" in block and "GiB target" in block
    assert doc == with_block(
        doc, block, BEGIN, END
    ), "docs/scaling.md's preprocess figures are stale: run scaling_summary.py"


def test_benchmarks_doc_trade_offs_are_generated_from_the_results():
    """docs/benchmarks.md's trade-offs in brief are what
    docs/report/benchmarks_summary.py renders from benchmarks/results/."""
    sys.path.insert(0, str(REPO / "docs" / "report"))
    from benchmarks_summary import BEGIN, DOC, END, render
    from facts import load_results
    from quality_summary import RESULTS, with_block

    text = DOC.read_text()
    block = render(load_results(RESULTS))
    assert "not measured yet" not in block  # every CPU figure found in its file
    assert text == with_block(
        text, block, BEGIN, END
    ), "docs/benchmarks.md's trade-offs are stale: run benchmarks_summary.py"


def test_serving_doc_figures_are_generated_from_the_results():
    """docs/serving.md's engine and load figures are what
    docs/report/benchmarks_summary.py renders from serve_load.json."""
    sys.path.insert(0, str(REPO / "docs" / "report"))
    from benchmarks_summary import SERVING_BEGIN, SERVING_DOC, SERVING_END
    from benchmarks_summary import render_serving
    from facts import load_results
    from quality_summary import RESULTS, with_block

    text = SERVING_DOC.read_text()
    block = render_serving(load_results(RESULTS))
    assert "not measured yet" not in block
    assert text == with_block(
        text, block, SERVING_BEGIN, SERVING_END
    ), "docs/serving.md's figures are stale: run docs/report/benchmarks_summary.py"


def test_readme_output_tree_names_real_files():
    readme = (REPO / "README.md").read_text()
    for name in [
        "model.safetensors",
        "model.json",
        "checkpoint.pt",
        "metrics.json",
        "training_curve.png",
        "config.yaml",
    ]:
        assert name in readme
    from modelsphere.models import artifact as artifacts
    from modelsphere.training import checkpoint
    from modelsphere.training import run as training

    assert artifacts.WEIGHTS_FILE == "model.safetensors"
    assert artifacts.META_FILE == "model.json"
    assert checkpoint.CHECKPOINT_FILE == "checkpoint.pt"
    assert training.METRICS_FILE == "metrics.json"
    assert training.CURVE_FILE == "training_curve.png"
    assert training.CONFIG_FILE == "config.yaml"
