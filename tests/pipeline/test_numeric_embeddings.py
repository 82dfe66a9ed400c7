"""Numeric embeddings: the piecewise-linear bins fitted on the training split, their
edge cases, and their round trip through the spec (model.json)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch
from omegaconf import OmegaConf

from helpers import compose_config, train_tiny
from modelsphere.core.errors import ModelSphereError
from modelsphere.models.artifact import load_artifact
from modelsphere.models.config import validate_model
from modelsphere.models.layers import categorical_embeddings, mlp_backbone
from modelsphere.models.members import MEMBERS_FOR_REGRESSION, MeanOfMembers
from modelsphere.models.numeric_embeddings import (
    FoldedPiecewiseMLP,
    fit_bin_edges,
    import_rtdl,
    piecewise_embeddings,
)
from modelsphere.models.piecewise_tables import PiecewiseLinearTables
from modelsphere.models.registry import build_model, inference_form
from modelsphere.models.spec import ModelSpec, piecewise_width
from modelsphere.training.run import run_training

QUANTILE = {
    "n_bins": 8,
    "bins": "quantile",
    "d_embedding": 4,
    "tree_min_samples_leaf": 20,
    "tree_min_impurity_decrease": 0.0,
    "subsample": 100_000,
}
TREE = {**QUANTILE, "bins": "tree"}


def columns(rows: int = 400, seed: int = 0) -> torch.Tensor:
    """[continuous, 0/1 indicator, constant, three-valued] columns."""
    gen = torch.Generator().manual_seed(seed)
    return torch.stack(
        [
            torch.randn(rows, generator=gen),
            (torch.rand(rows, generator=gen) < 0.3).float(),
            torch.full((rows,), 2.5),
            torch.randint(0, 3, (rows,), generator=gen).float(),
        ],
        dim=1,
    )


def test_quantile_edges_per_column():
    numeric = columns()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # single-bin columns are expected: no noise
        edges = fit_bin_edges(numeric, torch.zeros(400), "binary", QUANTILE, seed=0)
    continuous, indicator, constant, three = edges
    assert len(continuous) == QUANTILE["n_bins"] + 1
    assert continuous == sorted(continuous)
    assert continuous[0] == pytest.approx(numeric[:, 0].min().item())
    assert continuous[-1] == pytest.approx(numeric[:, 0].max().item())
    # Fewer distinct values, fewer bins: quantiles that coincide merge.
    assert indicator == [0.0, 1.0]
    assert three == [0.0, 1.0, 2.0]
    # A column constant on the training split gets one bin around its value.
    assert constant == [2.0, 3.0]
    json.dumps(edges)  # plain data for model.json


def test_tree_edges_find_the_step_in_the_target():
    numeric = columns()
    target = (numeric[:, 0] > 0.7).long()
    edges = fit_bin_edges(numeric, target, "binary", TREE, seed=0)
    inner = edges[0][1:-1]
    assert inner, "the tree found no split"
    assert min(abs(edge - 0.7) for edge in inner) < 0.1
    # Regression targets work the same way.
    edges = fit_bin_edges(numeric, numeric[:, 3] * 2.0, "regression", TREE, seed=0)
    assert 0.5 <= edges[3][1] <= 1.5  # the split between 0 and 1, then 1 and 2


def test_tree_edges_without_scikit_learn_name_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.tree", None)
    with pytest.raises(ModelSphereError, match="bins=tree.*scikit-learn.*quantile"):
        fit_bin_edges(columns(), torch.zeros(400).long(), "binary", TREE, seed=0)


def test_building_and_quantile_bins_do_not_import_scikit_learn():
    """rtdl_num_embeddings imports scikit-learn when it can (~1 s): a model with
    numeric embeddings is built, and quantile bins are fitted, without it; tree
    bins import it when asked."""
    code = (
        "import sys, torch\n"
        "from modelsphere.models.registry import ModelSpec, build_model\n"
        "from modelsphere.models.numeric_embeddings import (\n"
        "    FoldedPiecewiseMLP, fit_bin_edges)\n"
        f"settings = {QUANTILE!r}\n"
        "edges = fit_bin_edges(torch.randn(50, 2), torch.zeros(50), 'binary', "
        "settings, 0)\n"
        "spec = ModelSpec(2, [], [], [4], 1, extra={'piecewise': "
        "{'d_embedding': 4, 'edges': edges}})\n"
        "build_model(spec)\n"
        "assert 'sklearn' not in sys.modules, 'scikit-learn was imported'\n"
        # Tree bins, later in the same process, get scikit-learn after all.
        f"tree = {TREE!r}\n"
        "y = torch.arange(50) % 2\n"
        "fit_bin_edges(torch.randn(50, 2), y, 'binary', tree, 0)\n"
        "assert 'sklearn.tree' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bins_cap_at_the_training_rows_and_subsample_by_seed():
    small = columns(rows=5)
    edges = fit_bin_edges(small, torch.zeros(5), "binary", QUANTILE, seed=0)
    assert len(edges[0]) <= 5  # n_bins capped at rows - 1
    capped = {**QUANTILE, "subsample": 50}
    numeric = columns(rows=1000)
    first = fit_bin_edges(numeric, torch.zeros(1000), "binary", capped, seed=1)
    again = fit_bin_edges(numeric, torch.zeros(1000), "binary", capped, seed=1)
    other = fit_bin_edges(numeric, torch.zeros(1000), "binary", capped, seed=2)
    full = fit_bin_edges(numeric, torch.zeros(1000), "binary", QUANTILE, seed=1)
    assert first == again and first[0] != other[0] and first[0] != full[0]


def test_too_few_rows_is_a_clear_error():
    with pytest.raises(ModelSphereError, match="at least 3 rows; it has 2"):
        fit_bin_edges(columns(rows=2), torch.zeros(2), "binary", QUANTILE, seed=0)


def test_the_embedding_is_piecewise_linear_with_kinks_at_the_edges():
    """Inside a bin the output is linear in x; across an edge the slope changes."""
    edges = [[-1.0, 0.0, 1.0]]
    spec = ModelSpec(
        n_numeric=1,
        cardinalities=[],
        embedding_dims=[],
        hidden_sizes=[4],
        n_outputs=1,
        extra={"piecewise": {"d_embedding": 3, "edges": edges}},
    )
    torch.manual_seed(0)
    embedding = build_model(spec).numeric_embeddings
    torch.nn.init.normal_(embedding.linear.weight)  # version B starts linear
    x = torch.tensor([[-0.8], [-0.5], [-0.2], [0.2], [0.5], [0.8]])
    out = embedding(x).detach()[:, 0, :]
    left, right = out[1] - out[0], out[4] - out[3]
    torch.testing.assert_close(out[2] - out[1], left)  # linear within [-1, 0]
    torch.testing.assert_close(out[5] - out[4], right)  # linear within [0, 1]
    assert not torch.allclose(left, right, atol=1e-3)  # the kink at 0


def test_the_default_model_saves_its_edges_and_reloads_them(tmp_path):
    cfg = compose_config([])
    assert cfg.model.numeric_embedding == "piecewise_linear"
    run_dir = train_tiny(tmp_path, "model.piecewise.n_bins=6", task="regression")
    artifact = load_artifact(run_dir)
    saved = json.loads((run_dir / "model.json").read_text())["model_spec"]
    edges = saved["extra"]["piecewise"]["edges"]
    assert len(edges) == artifact.spec.n_numeric
    assert all(2 <= len(column) <= 7 for column in edges)
    # The bins rebuilt from model.json are the ones training placed: the encoding
    # buffers saved with the weights match them exactly (strict load).
    assert saved["extra"]["piecewise"]["form"] == "embedding"
    rebuilt = build_model(ModelSpec(**saved))
    buffers = {k: v for k, v in rebuilt.state_dict().items() if ".impl." in k}
    assert buffers
    for name, tensor in buffers.items():
        torch.testing.assert_close(tensor, artifact.state_dict[name])
    # a regression target: the default's members, each folded for predictions
    built = artifact.build(torch.device("cpu"))
    assert isinstance(built, MeanOfMembers)
    assert len(built.members) == MEMBERS_FOR_REGRESSION
    assert all(isinstance(member, FoldedPiecewiseMLP) for member in built.members)


def test_the_tables_form_saves_its_edges_as_knots_and_reloads_them(tmp_path):
    run_dir = train_tiny(
        tmp_path, "model.piecewise.n_bins=6", "model.piecewise.form=tables"
    )
    artifact = load_artifact(run_dir)
    saved = json.loads((run_dir / "model.json").read_text())["model_spec"]
    assert saved["extra"]["piecewise"]["form"] == "tables"
    edges = saved["extra"]["piecewise"]["edges"]
    knots = torch.tensor([value for column in edges for value in column])
    rebuilt = build_model(ModelSpec(**saved))
    assert rebuilt.tables is not None and rebuilt.numeric_embeddings is None
    torch.testing.assert_close(rebuilt.state_dict()["tables.knot_value"], knots)
    torch.testing.assert_close(artifact.state_dict["tables.knot_value"], knots)
    assert isinstance(artifact.build(torch.device("cpu")), FoldedPiecewiseMLP)


@pytest.mark.parametrize(
    "n_numeric, width",
    [(1, 32), (64, 32), (65, 31), (100, 20), (4096, 1)],
)
def test_wide_tables_get_narrower_numeric_embeddings(n_numeric, width):
    """32 per column, shrunk so that all of them stay within 2048 inputs."""
    settings = {"d_embedding": 32, "max_numeric_width": 2048}
    assert piecewise_width(settings, n_numeric) == width


@pytest.mark.parametrize(
    "edges",
    [
        [[-1.0, 0.0, 1.0], [0.0, 1.0], [-2.0, -1.0, 0.5, 3.0], [2.0, 3.0]],  # mixed
        [[-1.0, 0.0, 1.0], [0.0, 0.5, 2.0]],  # equal bin counts: no padding mask
        [[0.0, 1.0], [-1.0, 1.0]],  # one bin each: no clamping at all
    ],
)
@pytest.mark.parametrize("cards", [[5, 4], []])
@pytest.mark.parametrize("normalization", ["none", "layernorm"])
@pytest.mark.parametrize("form", [None, "embedding", "tables"])  # None: saved before
def test_the_folded_inference_form_computes_the_same_function(
    edges, cards, normalization, form
):
    piecewise = {"d_embedding": 4, "edges": edges}
    if form is not None:
        piecewise["form"] = form
    spec = ModelSpec(
        n_numeric=len(edges),
        cardinalities=cards,
        embedding_dims=[3] * len(cards),
        hidden_sizes=[16, 8],
        n_outputs=3,
        normalization=normalization,
        extra={"piecewise": piecewise},
    )
    torch.manual_seed(0)
    model = build_model(spec).eval()
    assert (model.tables is not None) == (form == "tables")
    for parameter in model.parameters():  # trained-looking weights everywhere
        torch.nn.init.normal_(parameter, std=0.5)
    folded = inference_form(model)
    assert isinstance(folded, FoldedPiecewiseMLP)
    assert_same_function(folded, model, len(edges), cards)
    # Fewer inputs to the first layer: the real bins, not columns x d_embedding;
    # the categorical levels are rows of one table, read by one gather.
    n_bins = sum(len(column) - 1 for column in edges)
    assert folded.first.in_features == n_bins + len(edges) + 3 * len(cards)
    assert folded.categorical_embedding.shape == (sum(cards), 3 if cards else 0)


@pytest.mark.parametrize("form", ["embedding", "tables"])
def test_categorical_embeddings_of_unequal_widths_fold_into_one_padded_table(form):
    cards, dims = [5, 4, 3], [2, 5, 1]
    edges = [[-1.0, 0.0, 1.0], [0.0, 0.5, 2.0, 3.0]]
    spec = ModelSpec(
        n_numeric=2,
        cardinalities=cards,
        embedding_dims=dims,
        hidden_sizes=[16, 8],
        n_outputs=1,
        extra={"piecewise": {"d_embedding": 4, "edges": edges, "form": form}},
    )
    torch.manual_seed(0)
    model = build_model(spec).eval()
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.5)
    folded = inference_form(model)
    assert folded.categorical_embedding.shape == (sum(cards), max(dims))
    assert_same_function(folded, model, len(edges), cards)


def assert_same_function(folded, model, n_numeric: int, cards) -> None:
    """The folded form's outputs are the model's (to float rounding) on 64 rows
    of numerics inside and beyond the edges and random levels."""
    gen = torch.Generator().manual_seed(1)
    numeric = torch.randn(64, n_numeric, generator=gen) * 3  # inside and beyond
    categorical = torch.stack(
        [torch.randint(0, c, (64,), generator=gen) for c in cards]
        or [torch.zeros(64, dtype=torch.long)],
        dim=1,
    )[:, : len(cards)]
    with torch.no_grad():
        torch.testing.assert_close(
            folded(numeric, categorical),
            model(numeric, categorical),
            atol=1e-5,
            rtol=1e-5,
        )


@pytest.mark.parametrize("form", ["embedding", "tables"])
def test_the_folded_forms_graph_reads_every_categorical_column_in_one_gather(form):
    """ONNX Runtime pays a fixed cost per operator, most of a one-record call's:
    the exported folded form has as many operators with 2 categorical columns
    as with 6 (the levels are rows of one table, not a gather per column)."""
    onnx = pytest.importorskip("onnx")
    engines = pytest.importorskip("modelsphere.inference.engines")
    edges = [[-1.0, 0.0, 1.0], [0.0, 0.5, 2.0, 3.0]]
    counts = {}
    for cards in ([5, 4], [5, 4, 3, 6, 2, 7]):
        spec = ModelSpec(
            n_numeric=2,
            cardinalities=cards,
            embedding_dims=[3] * len(cards),
            hidden_sizes=[16, 8],
            n_outputs=1,
            extra={"piecewise": {"d_embedding": 4, "edges": edges, "form": form}},
        )
        torch.manual_seed(0)
        folded = inference_form(build_model(spec).eval())
        module = engines._PresentInputs(folded, 2, len(cards))
        graph = onnx.load_from_string(engines._export(module, None))
        counts[len(cards)] = [node.op_type for node in graph.graph.node]
    assert counts[2] == counts[6]
    assert counts[6].count("Gather") <= 2  # the levels' rows (and a numeric one)


def test_models_without_piecewise_embeddings_run_as_they_are():
    spec = ModelSpec(
        n_numeric=2, cardinalities=[], embedding_dims=[], hidden_sizes=[4], n_outputs=1
    )
    model = build_model(spec)
    assert inference_form(model) is model


# Edges with a one-bin column (no clamp at all) and uneven bin counts.
TABLE_EDGES = [
    [-1.0, 0.0, 0.5, 2.0],
    [0.0, 1.0],
    [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0],
]
TABLE_VALUES = torch.tensor(
    [  # inside, on edges, below the first and above the last edge
        [-2.0, -1.0, -5.0],
        [0.2, 0.5, 0.5],
        [3.0, 2.0, 10.0],
        [0.5, 0.0, -1.0],
        [2.0, 1.0, 3.0],
        [-1.0, 0.3, -3.0],
    ]
)


def trained_tables() -> PiecewiseLinearTables:
    torch.manual_seed(0)
    tables = PiecewiseLinearTables(TABLE_EDGES, 5)
    with torch.no_grad():
        tables.knots.add_(torch.randn_like(tables.knots))  # bends everywhere
    return tables


def test_tables_are_a_linear_map_of_the_piecewise_linear_encoding():
    """The same function as rtdl_num_embeddings' encoding times a matrix (its
    rows: each bin's rise), open first and last bins included."""
    tables = trained_tables()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoding = import_rtdl().PiecewiseLinearEncoding(
            [torch.tensor(column) for column in TABLE_EDGES]
        )(TABLE_VALUES)
    expected = encoding @ tables.increments() + tables.folded_bias()
    torch.testing.assert_close(tables(TABLE_VALUES), expected.detach())


def test_the_tables_gradient_is_that_of_the_interpolation():
    """The backward gather gives the gradient autograd gives for the weighted
    sum of the two knot rows per column."""
    tables = trained_tables()
    upstream = torch.randn(
        len(TABLE_VALUES), 5, generator=torch.Generator().manual_seed(2)
    )
    tables(TABLE_VALUES).backward(upstream)
    lower, fraction = tables.bin_and_fraction(TABLE_VALUES)
    knots = tables.knots.detach().clone().requires_grad_()
    expected = (
        (1 - fraction)[..., None] * knots[lower]
        + fraction[..., None] * knots[lower + 1]
    ).sum(1)
    expected.backward(upstream)
    torch.testing.assert_close(tables.knots.grad, knots.grad)


def test_fresh_tables_are_a_linear_layer():
    """Before training, each column's function is a line through all its bins
    (the plain MLP's first layer): no bend to unlearn."""
    torch.manual_seed(0)
    tables = PiecewiseLinearTables(TABLE_EDGES, 5)
    low, high = TABLE_VALUES[0], TABLE_VALUES[2]  # beyond the edges on both sides
    ends = tables(torch.stack([low, high]))
    for t in (0.1, 0.37, 0.5, 0.9):
        torch.testing.assert_close(
            tables((low + t * (high - low))[None])[0],
            ends[0] + t * (ends[1] - ends[0]),
        )


def test_tabm_refuses_the_tables_form():
    cfg = compose_config(
        ["model=tabm", "model.numeric_embedding=piecewise_linear"]
        + ["model.piecewise.form=tables"]
    )
    with pytest.raises(ModelSphereError, match="model.piecewise.form=embedding"):
        validate_model(cfg.model)
    tabm = compose_config(["model=tabm", "model.numeric_embedding=piecewise_linear"])
    validate_model(tabm.model)  # the preset embeds per member


def test_the_default_model_starts_from_the_weights_its_results_were_measured_with():
    """The seeded start of the default MLP: numeric embeddings, then categorical
    embeddings, then the layers. Another order trains other models than the
    ones benchmarks/results/quality*.md measured."""
    edges = [[-1.0, 0.0, 1.0], [0.0, 1.0]]
    spec = ModelSpec(
        n_numeric=2,
        cardinalities=[5, 4],
        embedding_dims=[3, 2],
        hidden_sizes=[8],
        n_outputs=1,
        extra={"piecewise": {"d_embedding": 4, "edges": edges, "form": "embedding"}},
    )
    torch.manual_seed(0)
    model = build_model(spec)
    torch.manual_seed(0)
    numeric = piecewise_embeddings(edges, 4)
    categorical = categorical_embeddings([5, 4], [3, 2])
    backbone, width = mlp_backbone(2 * 4 + 5, [8], "none", "relu", 0.0)
    head = torch.nn.Linear(width, 1)
    expected = {
        **{f"numeric_embeddings.{k}": v for k, v in numeric.state_dict().items()},
        **{f"embeddings.{k}": v for k, v in categorical.state_dict().items()},
        **{f"backbone.{k}": v for k, v in backbone.state_dict().items()},
        **{f"head.{k}": v for k, v in head.state_dict().items()},
    }
    built = model.state_dict()
    assert list(built) == list(expected)
    for name, tensor in expected.items():
        assert torch.equal(built[name], tensor), name


def test_a_run_saved_before_the_form_setting_continues(tmp_path):
    """Runs trained before `model.piecewise.form` existed have no such key in
    their config.yaml: continuing one trains on as the embedding form."""
    run_dir = train_tiny(tmp_path)
    saved = OmegaConf.load(run_dir / "config.yaml")
    del saved.model.piecewise["form"]
    OmegaConf.save(saved, run_dir / "config.yaml")
    cfg = OmegaConf.merge(saved, {"train": {"resume": str(run_dir), "max_epochs": 3}})
    overrides = [f"train.resume={run_dir}", "train.max_epochs=3"]
    run_training(cfg, tmp_path / "outputs" / "train" / "continued", overrides)
    (continued,) = [
        path
        for path in (tmp_path / "outputs" / "train").iterdir()
        if path.name not in ("run",)
    ]
    model = json.loads((continued / "model.json").read_text())["model_spec"]
    assert model["extra"]["piecewise"]["form"] == "embedding"
    history = json.loads((continued / "metrics.json").read_text())["history"]
    assert len(history) == 3


FIRST_LAYER_EDGES = [
    # (edges float32 holds exactly: the values put on them are then on them)
    [[-1.0, -0.25, 0.375, 1.0], [0.0, 1.0], [-2.0, -1.0, 0.0, 1.0, 2.0, 3.0]],
    [[0.0, 1.0], [2.0, 3.0]],  # one bin each: the package lays no padding
    [[-1.0, 0.0, 1.0], [-1.0, 0.5, 1.0]],  # as many bins each: no mask
]


def embedding_form_spec(edges, cards, hidden_sizes=(16, 8), n_outputs=3):
    """The default MLP's spec (the embedding form) over these bin edges and
    categorical cardinalities."""
    return ModelSpec(
        n_numeric=len(edges),
        cardinalities=list(cards),
        embedding_dims=[3] * len(cards),
        hidden_sizes=list(hidden_sizes),
        n_outputs=n_outputs,
        extra={"piecewise": {"d_embedding": 4, "edges": edges, "form": "embedding"}},
    )


@pytest.mark.parametrize("edges", FIRST_LAYER_EDGES)
@pytest.mark.parametrize("cards", [[5, 4], []])
def test_the_default_first_layer_is_the_embeddings_through_the_first_linear(
    edges, cards
):
    """The default MLP computes its first hidden layer without the embeddings:
    the same values, and the same gradient for every parameter, as embedding ->
    flatten -> first Linear, for values inside every bin, on the edges and
    beyond the outer ones. (In float64 but for the encoding's float32 scale and
    shift per bin: on an edge, a fraction off by their rounding, ~1e-8, which
    the package clamps to the bin and this layer does not.)"""
    spec = embedding_form_spec(edges, cards)
    torch.manual_seed(0)
    model = build_model(spec).double()
    assert model.first_layer is not None
    for parameter in model.parameters():  # trained-looking weights everywhere
        torch.nn.init.normal_(parameter, std=0.5)
    gen = torch.Generator().manual_seed(1)
    numeric = torch.randn(96, len(edges), generator=gen, dtype=torch.float64) * 3
    numeric[:4] = torch.tensor([column[len(column) // 2] for column in edges])
    numeric[4:8] = torch.tensor([column[0] for column in edges])
    categorical = torch.stack(
        [torch.randint(0, c, (96,), generator=gen) for c in cards]
        or [torch.zeros(96, dtype=torch.long)],
        dim=1,
    )[:, : len(cards)]
    upstream = torch.randn(96, 3, generator=gen, dtype=torch.float64)

    def composed(numeric, categorical):
        parts = [model.numeric_embeddings(numeric).flatten(1)] + [
            table(categorical[:, i]) for i, table in enumerate(model.embeddings)
        ]
        return model.head(model.backbone(torch.cat(parts, dim=1)))

    grads = []
    for forward in (model, composed):
        model.zero_grad()
        out = forward(numeric, categorical)
        out.backward(upstream)
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (fused, fused_grads), (expected, expected_grads) = grads
    torch.testing.assert_close(fused, expected, atol=1e-7, rtol=1e-7)
    names = [name for name, _ in model.named_parameters()]
    for name, got, want in zip(names, fused_grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-7, rtol=1e-7, msg=name)


def test_the_default_first_layer_costs_about_what_a_plain_first_layer_does():
    """A training step of the default MLP on 64 numeric columns (48 bins each),
    its matrix products counted in FLOPs (torch's counter leaves the gathers
    out): at most twice the plain MLP's, where computing the embeddings and
    their 2,048-wide first layer costs about eight times."""
    from torch.utils.flop_counter import FlopCounterMode

    gen = torch.Generator().manual_seed(0)
    n_numeric, rows = 64, 1024
    edges = [sorted(torch.randn(49, generator=gen).tolist()) for _ in range(n_numeric)]
    numeric = torch.randn(rows, n_numeric, generator=gen)
    categorical = torch.zeros(rows, 0, dtype=torch.long)

    def step_flops(extra) -> int:
        spec = ModelSpec(
            n_numeric=n_numeric,
            cardinalities=[],
            embedding_dims=[],
            hidden_sizes=[256, 256],
            n_outputs=1,
            extra=extra,
        )
        model = build_model(spec)
        counter = FlopCounterMode(display=False)
        with counter:
            model(numeric, categorical).sum().backward()
        return counter.get_total_flops()

    plain = step_flops({})
    default = step_flops(
        {"piecewise": {"d_embedding": 32, "edges": edges, "form": "embedding"}}
    )
    assert default < 2 * plain, (default, plain)


def test_the_default_first_layer_trains_under_bfloat16_autocast():
    """CUDA trains with bfloat16 autocast: the first layer's products run in
    bfloat16 there and its backward takes their bfloat16 gradients (run here
    with the CPU's autocast); the gradients stay within bfloat16's precision of
    float32's."""
    edges = FIRST_LAYER_EDGES[0]
    spec = embedding_form_spec(edges, [5], n_outputs=1)
    torch.manual_seed(0)
    model = build_model(spec)
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.5)
    gen = torch.Generator().manual_seed(1)
    numeric = torch.randn(64, len(edges), generator=gen)
    categorical = torch.randint(0, 5, (64, 1), generator=gen)
    grads = []
    for amp in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(numeric, categorical)
        assert out.dtype == (torch.bfloat16 if amp else torch.float32)
        out.float().sum().backward()
        grads.append([parameter.grad.clone() for parameter in model.parameters()])
    for full, half in zip(*grads):
        assert half.dtype == torch.float32
        assert (half - full).norm() <= 0.03 * full.norm()


def test_the_default_first_layer_scores_edges_past_float16s_range_under_autocast():
    """Under a float16 autocast the first layer's products run in float16; the
    value's share of linear0 is added in the encoding's float32, so a column
    whose edges and bin widths pass float16's range (65,504: numerics left
    unscaled) still gets finite outputs. (Its linear0 gradient, the values
    times the output's, can still pass float16's range: scale such columns.)"""
    edges = [[0.0, 1e5, 3e5], [-1.0, 0.0, 1.0]]
    spec = embedding_form_spec(edges, [], n_outputs=1)
    torch.manual_seed(0)
    model = build_model(spec)
    gen = torch.Generator().manual_seed(1)
    numeric = torch.stack(
        [torch.rand(64, generator=gen) * 3e5, torch.randn(64, generator=gen)], dim=1
    )
    categorical = torch.zeros(64, 0, dtype=torch.long)
    with torch.no_grad():
        expected = model(numeric, categorical)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(numeric, categorical)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), expected, rtol=0.02, atol=0.02)


def test_the_default_first_layer_reads_a_weight_of_any_layout():
    """The first Linear's weight in another memory layout (same values): the
    same outputs and gradients, as slices are views that follow its strides."""
    edges = FIRST_LAYER_EDGES[0]
    spec = embedding_form_spec(edges, [5], hidden_sizes=[16], n_outputs=1)
    gen = torch.Generator().manual_seed(1)
    numeric = torch.randn(32, len(edges), generator=gen)
    categorical = torch.randint(0, 5, (32, 1), generator=gen)
    results = []
    for column_major in (False, True):
        torch.manual_seed(0)
        model = build_model(spec)
        for parameter in model.parameters():
            torch.nn.init.normal_(parameter, std=0.5)
        first = model.backbone[0]
        if column_major:
            first.weight.data = first.weight.data.T.contiguous().T
            assert not first.weight.is_contiguous()
        out = model(numeric, categorical)
        out.sum().backward()
        results.append((out.detach(), first.weight.grad.clone()))
    (out, grad), (moved_out, moved_grad) = results
    torch.testing.assert_close(moved_out, out)
    torch.testing.assert_close(moved_grad, grad)


def test_the_default_first_layer_gradients_hold_only_their_own_memory():
    """The first Linear's bias gradient is computed with all the layer's mapped
    rows' gradient ([columns, positions + 3, hidden]): it is a tensor of its own,
    not a view that would keep that buffer alive as `bias.grad` until the next
    zero_grad (and share it with every in-place change to the gradients)."""
    edges = FIRST_LAYER_EDGES[0]
    spec = embedding_form_spec(edges, [5], hidden_sizes=[16], n_outputs=1)
    torch.manual_seed(0)
    model = build_model(spec)
    gen = torch.Generator().manual_seed(1)
    numeric = torch.randn(32, len(edges), generator=gen)
    categorical = torch.randint(0, 5, (32, 1), generator=gen)
    model(numeric, categorical).sum().backward()
    for name, parameter in model.named_parameters():
        grad = parameter.grad
        own_bytes = grad.numel() * grad.element_size()
        assert grad.untyped_storage().nbytes() == own_bytes, name


def test_the_default_first_layer_refuses_embeddings_it_does_not_compute():
    from modelsphere.models.piecewise_first_layer import PiecewiseFirstLayer

    edges = FIRST_LAYER_EDGES[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        activated = import_rtdl().PiecewiseLinearEmbeddings(
            [torch.tensor(column) for column in edges], 4, activation=True, version="B"
        )
    with pytest.raises(ValueError, match="version B embeddings without an"):
        PiecewiseFirstLayer(edges, activated)
