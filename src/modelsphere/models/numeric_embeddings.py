"""Embeddings of numeric features, from the maintained `rtdl_num_embeddings`
package (Gorishniy et al., "On Embeddings for Numerical Features in Tabular Deep
Learning", 2022). `model.numeric_embedding` picks one for any architecture:

- `piecewise_linear` (the default `mlp`): each column is cut into bins at edges
  fitted on the training split (its quantiles, or the thresholds of a small
  decision tree fitted to the target). A value x becomes
  [1, ..., 1, (x - left edge) / width, 0, ..., 0], one component per bin, and a
  trained linear map per column turns that into an embedding, on top of a plain
  linear one (the package's version "B", as TabM recommends). The network sees a
  function of each feature that is linear inside a bin and may bend at its edges:
  the thresholds trees find easily and a plain MLP does not.
- `periodic` (`mlp_plr`): x becomes ReLU(Linear([cos(2*pi*c*x), sin(2*pi*c*x)]))
  with trained frequencies c per column.
- `none`: the numeric values go in as they are.

What a module needs is plain data in the model spec (`spec.extra["piecewise"]`
holds the bin edges), so a saved model is rebuilt without the training data.
"""

from __future__ import annotations

import functools
import sys
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from modelsphere.core.config import setting
from modelsphere.core.errors import ModelSphereError
from modelsphere.features.tensors import SplitTensors
from modelsphere.models.spec import ModelSpec, piecewise_width

KINDS = ("none", "piecewise_linear", "periodic")  # model.numeric_embedding
# model.piecewise.form: embedding (the package's embeddings of d_embedding per
# column, then the first Linear) | tables (values at the bin edges read straight
# into the first hidden layer, models/piecewise_tables.py: faster to train, lower
# quality on 2 of the 6 benchmark sets, benchmarks/results/quality_tables_form.md)
PIECEWISE_FORMS = ("embedding", "tables")
BIN_RULES = ("quantile", "tree")  # model.piecewise.bins


@dataclass
class PeriodicConfig:
    """`model.periodic`: periodic embeddings (mlp_plr). Gorishniy et al. 2022;
    the defaults are the package's and the paper's."""

    d_embedding: int = setting(24, ge=1)  # width of each numeric column's embedding
    n_frequencies: int = setting(48, ge=1)  # cos/sin pairs per column
    # sigma of the initial frequencies; the key setting
    frequency_init_scale: float = setting(0.01, gt=0)
    lite: bool = False  # true: one output layer shared by all columns


@dataclass
class PiecewiseConfig:
    """`model.piecewise`: piecewise-linear embeddings (the default mlp), with
    target-aware bins (Gorishniy et al. 2022, "T" bins)."""

    # at most this many bins per column (fewer distinct values or fewer training
    # rows: fewer bins)
    n_bins: int = setting(48, ge=2)
    # tree: a decision tree's splits on the target per column; quantile: the
    # column's quantiles
    bins: str = setting("tree", choices=BIN_RULES)
    form: str = setting("embedding", choices=PIECEWISE_FORMS)
    d_embedding: int = setting(32, ge=1)  # width of each numeric column's embedding,
    max_numeric_width: int = setting(2048, ge=1)  # shrunk so all stay within this
    tree_min_samples_leaf: int = setting(64, ge=1)  # bins=tree only
    tree_min_impurity_decrease: float = setting(1e-4, ge=0)  # bins=tree only
    subsample: int = setting(200_000, ge=3)  # training rows used to place the edges


@functools.cache
def import_rtdl() -> ModuleType:
    """rtdl_num_embeddings, without the scikit-learn import it makes at import
    time when scikit-learn is installed (~1 s here, paid by every predict.py and
    server start). Only tree bins need it; `_tree_options` hands it over then.
    Runs once, when a model with numeric embeddings is first built or trained."""
    if "rtdl_num_embeddings" in sys.modules or "sklearn.tree" in sys.modules:
        import rtdl_num_embeddings

        return rtdl_num_embeddings
    sys.modules["sklearn.tree"] = None  # type: ignore[assignment]  # ImportError
    try:
        import rtdl_num_embeddings
    finally:
        del sys.modules["sklearn.tree"]
    return rtdl_num_embeddings


# A column that is constant on the training split gets one bin around its value.
CONSTANT_COLUMN_HALF_WIDTH = 0.5
# The package warns for every column with a single bin; here that is expected
# (0/1 missing indicators, columns where the bin tree finds no split) and
# harmless: the column is then min-max scaled, which its linear part covers.
SINGLE_BIN_WARNING = r"The \d+-th feature has just two bin edges"


def periodic_embeddings(n_numeric: int, settings: Dict[str, Any]) -> nn.Module:
    """The periodic module for `n_numeric` (>= 1) columns."""
    return import_rtdl().PeriodicEmbeddings(
        n_numeric,
        int(settings["d_embedding"]),
        n_frequencies=int(settings["n_frequencies"]),
        frequency_init_scale=float(settings["frequency_init_scale"]),
        lite=bool(settings["lite"]),
    )


def piecewise_embeddings(edges: List[List[float]], d_embedding: int) -> nn.Module:
    """The piecewise-linear module for these bin edges (one list per column).

    Built on the CPU even inside a `torch.device("meta")` block (the artifact's
    shape check): rtdl_num_embeddings reads the values of the edges and of tensors
    it derives from them while it builds, which meta tensors do not have."""
    bins = [torch.tensor(column, dtype=torch.float32, device="cpu") for column in edges]
    with warnings.catch_warnings(), torch.device("cpu"):
        warnings.filterwarnings("ignore", message=SINGLE_BIN_WARNING)
        return import_rtdl().PiecewiseLinearEmbeddings(
            bins, d_embedding, activation=False, version="B"
        )


def numeric_embedding(spec: ModelSpec) -> Tuple[nn.Module, int]:
    """The numeric embedding module of a spec with numeric columns and
    "piecewise" or "periodic" settings, and the width of its flattened output."""
    if "piecewise" in spec.extra:
        settings = spec.extra["piecewise"]
        d_embedding = int(settings["d_embedding"])
        module = piecewise_embeddings(settings["edges"], d_embedding)
    else:
        settings = spec.extra["periodic"]
        d_embedding = int(settings["d_embedding"])
        module = periodic_embeddings(spec.n_numeric, settings)
    return module, spec.n_numeric * d_embedding


def numeric_modules(spec: ModelSpec) -> Tuple[Optional[nn.Module], int]:
    """The spec's numeric embedding (None if the numerics go in as they are) and
    the width it hands on. rtdl_num_embeddings is imported only when a spec asks
    for an embedding (`import_rtdl` keeps it from importing scikit-learn)."""
    embedded = "piecewise" in spec.extra or "periodic" in spec.extra
    if not (spec.n_numeric and embedded):
        return None, spec.n_numeric
    return numeric_embedding(spec)


def bin_fit_rows(
    n_rows: int, settings: Dict[str, Any], seed: int
) -> Optional[torch.Tensor]:
    """The rows of an `n_rows`-row training split the bin edges are placed on,
    in the order used; None: all of them, in order."""
    if n_rows <= settings["subsample"]:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n_rows, generator=generator)[: settings["subsample"]]


def fit_bin_edges(
    numeric: torch.Tensor,
    target: torch.Tensor,
    task: str,
    settings: Dict[str, Any],
    seed: int,
) -> List[List[float]]:
    """Bin edges per numeric column, fitted on the training split (at most
    `settings["subsample"]` rows of it, drawn with `seed`): `n_bins` quantiles,
    or with `bins: tree` the split points of a decision tree per column."""
    numeric, target = numeric.detach().cpu().float(), target.detach().cpu()
    rows = bin_fit_rows(len(numeric), settings, seed)
    if rows is not None:
        numeric, target = numeric[rows], target[rows]
    if len(numeric) < 3:
        raise ModelSphereError(
            "model.numeric_embedding=piecewise_linear places bin edges on the "
            f"training split, which needs at least 3 rows; it has {len(numeric)}"
        )
    edges = [
        [value - CONSTANT_COLUMN_HALF_WIDTH, value + CONSTANT_COLUMN_HALF_WIDTH]
        for value in numeric[0].tolist()
    ]
    varying = (numeric != numeric[0]).any(dim=0).nonzero().flatten().tolist()
    if varying:
        n_bins = min(int(settings["n_bins"]), len(numeric) - 1)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=SINGLE_BIN_WARNING)
            fitted = import_rtdl().compute_bins(
                numeric[:, varying],
                n_bins,
                **_tree_options(target, task, settings, seed),
            )
        for column, column_edges in zip(varying, fitted):
            edges[column] = [float(v) for v in column_edges.tolist()]
    return edges


def _tree_options(
    target: torch.Tensor, task: str, settings: Dict[str, Any], seed: int
) -> Dict[str, Any]:
    if settings["bins"] != "tree":
        return {}
    try:
        import sklearn.tree
    except ImportError:
        raise ModelSphereError(
            "model.piecewise.bins=tree fits a decision tree per numeric column and "
            "needs scikit-learn, which is not installed: pip install -r "
            "requirements.txt, or use model.piecewise.bins=quantile"
        ) from None
    import_rtdl().sklearn_tree = (
        sklearn.tree
    )  # what the package finds when it imports it
    regression = task == "regression"
    return {
        "tree_kwargs": {
            "min_samples_leaf": int(settings["tree_min_samples_leaf"]),
            "min_impurity_decrease": float(settings["tree_min_impurity_decrease"]),
            "random_state": seed,
        },
        "y": (target.float() if regression else target.long()).reshape(-1),
        "regression": regression,
    }


def numeric_embedding_settings(
    model_cfg: Any, task: str, train: Optional[SplitTensors], seed: int
) -> Dict[str, Any]:
    """{"periodic": settings}, {"piecewise": settings with the bin edges fitted
    on `train`}, or {} for numerics that go in as they are."""
    kind = model_cfg.numeric_embedding
    if kind == "periodic":
        periodic = model_cfg.periodic
        keys = ("d_embedding", "n_frequencies", "frequency_init_scale", "lite")
        return {"periodic": {key: periodic[key] for key in keys}}
    if kind != "piecewise_linear":
        return {}
    if train is None:
        raise ModelSphereError(
            "model.numeric_embedding=piecewise_linear fits its bin edges on the "
            "training split: spec_from_config needs train="
        )
    piecewise = dict(model_cfg.piecewise)
    n_numeric = train.numeric.shape[1]
    if not n_numeric:
        return {"piecewise": {"d_embedding": piecewise["d_embedding"], "edges": []}}
    edges = fit_bin_edges(train.numeric, train.target, task, piecewise, seed)
    return {
        "piecewise": {
            "d_embedding": piecewise_width(piecewise, n_numeric),
            "edges": edges,
            # a run's config saved before the setting existed resumes as it ran
            "form": piecewise.get("form", "embedding"),
        }
    }


def piecewise_form(spec: ModelSpec) -> str:
    """How a spec's piecewise-linear numerics enter the MLP (artifacts saved
    before the setting existed hold the embedding form)."""
    return spec.extra.get("piecewise", {}).get("form", "embedding")


class FoldedPiecewiseMLP(nn.Module):
    """The inference form of a TabularMLP over piecewise-linear encoded numerics:
    the encoding of each column's real bins, then one first layer.

    From the `embedding` form (`fold_embedding`): version "B" embeddings have no
    activation, so embedding -> flatten -> the first Linear is linear in each
    column's encoding and is folded into one matrix (as batch norm is folded into
    a convolution); the padding of the package's [columns, max bins] layout is
    dropped, so the first layer reads sum(bins) + columns + categorical inputs
    instead of columns x d_embedding (Telco: 138 against 360). From the `tables`
    form (`fold_tables`): its bin rows are that matrix already.

    The categorical embeddings are rows of one table (`categorical_embedding`,
    each column's levels after the columns before it: `categorical_offset`,
    every row as wide as the widest embedding, zero-padded, with zero weights
    for the padding), read by one gather for all the columns. Exported, that is
    three operators in place of a split, and a squeeze and a gather per column
    (Telco: 21 of the graph's 105), each with ONNX Runtime's fixed cost per
    operator; in eager PyTorch, one embedding lookup in place of one per column.
    """

    # in the stamp of its cached ONNX graph (inference.predictor.graph_stamp):
    # a graph exported before the categorical levels were one table is
    # exported again
    graph_layout = "categorical-table"

    def __init__(
        self,
        model: nn.Module,
        encoding,
        weight,
        bias,
        rest: nn.Module,
        categorical_weight: torch.Tensor,
    ):
        """`weight` [encoded + numeric inputs, hidden] and `bias` [hidden]: the
        first layer's numeric part; `categorical_weight` [sum of the categorical
        embeddings' widths, hidden]: its rows for the concatenated embeddings of
        `model.embeddings`."""
        super().__init__()
        self.spec = model.spec
        self.rest = rest
        self.head = model.head
        for name, tensor in zip(
            ("feature", "scale", "shift", "lower", "upper"), encoding
        ):
            self.register_buffer(name, tensor.detach().clone())
        table, offset, padded_weight = _categorical_table(
            model.embeddings, categorical_weight
        )
        self.register_buffer("categorical_embedding", table)
        self.register_buffer("categorical_offset", offset)
        weight = torch.cat([weight, padded_weight])
        self.first = nn.Linear(weight.shape[0], weight.shape[1])
        with torch.no_grad():
            self.first.weight.copy_(weight.T)
            self.first.bias.copy_(bias)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        encoded = numeric[:, self.feature] * self.scale + self.shift
        encoded = torch.minimum(torch.maximum(encoded, self.lower), self.upper)
        parts = [encoded, numeric]
        if len(self.categorical_offset):
            levels = categorical + self.categorical_offset
            # an embedding lookup, not indexing the table with `levels`: served
            # by 2 torch workers, the indexing form answered 0.2x the requests/s
            # (benchmarks/serve_load.py, 1 row, concurrency 8)
            parts.append(F.embedding(levels, self.categorical_embedding).flatten(1))
        return self.head(self.rest(self.first(torch.cat(parts, dim=1))))


def _categorical_table(
    embeddings: nn.ModuleList, weight: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The categorical embeddings as one [levels, widest] table (each row
    zero-padded), the table's first row of each column ([columns], int64), and
    `weight` ([sum of the widths, hidden]: the first layer's rows for the
    concatenated embeddings) laid out for the padded rows (zero rows for the
    padding)."""
    with torch.no_grad():
        widths = [table.weight.shape[1] for table in embeddings]
        widest = max(widths, default=0)
        tables, rows = [], []
        for table, own in zip(embeddings, weight.split(widths)):
            padding = widest - own.shape[0]
            tables.append(F.pad(table.weight, (0, padding)))
            rows.append(F.pad(own, (0, 0, 0, padding)))
        hidden = weight.shape[1]
        table = torch.cat(tables) if tables else weight.new_zeros(0, widest)
        padded = torch.cat(rows) if rows else weight.new_zeros(0, hidden)
        sizes = torch.tensor([len(part) for part in tables], dtype=torch.int64)
    return table, sizes.cumsum(0) - sizes, padded


def fold_embedding(model: nn.Module) -> FoldedPiecewiseMLP:
    """The folded form of an MLP with the package's piecewise-linear embeddings."""
    embedding, first = model.numeric_embeddings, model.backbone[0]
    impl = embedding.impl
    n_features, max_bins = impl.weight.shape
    d = embedding.linear.weight.shape[2]
    with torch.no_grad():
        hidden = first.weight.shape[0]
        w_numeric = first.weight[:, : n_features * d].reshape(hidden, n_features, d)
        w_categorical = first.weight[:, n_features * d :]
        # [features, bins, hidden], [features, hidden], [hidden]
        through_bins = torch.einsum("fnd,hfd->fnh", embedding.linear.weight, w_numeric)
        through_linear = torch.einsum("fd,hfd->fh", embedding.linear0.weight, w_numeric)
        bias = first.bias + torch.einsum("fd,hfd->h", embedding.linear0.bias, w_numeric)
        lower, upper = _encoding_bounds(impl, n_features, max_bins)
        kept = (
            impl.mask
            if impl.mask is not None
            else torch.ones(n_features, max_bins, dtype=torch.bool)
        )
        encoding = [
            kept.nonzero()[:, 0],
            impl.weight[kept],
            impl.bias[kept],
            lower[kept],
            upper[kept],
        ]
        weight = torch.cat([through_bins[kept], through_linear])
    return FoldedPiecewiseMLP(
        model, encoding, weight, bias, model.backbone[1:], w_categorical.T
    )


def fold_tables(model: nn.Module) -> FoldedPiecewiseMLP:
    """The folded form of an MLP whose first layer is PiecewiseLinearTables: the
    numerics themselves get zero weight (their slope is in the bins' rows)."""
    tables = model.tables
    with torch.no_grad():
        hidden = tables.bias.shape[0]
        n_numeric = len(tables.start)
        weight = torch.cat(
            [tables.increments(), tables.bias.new_zeros(n_numeric, hidden)]
        )
        categorical_weight = (
            model.categorical_first.weight.T
            if model.categorical_first is not None
            else weight.new_zeros(0, hidden)
        )
        bias = tables.folded_bias()
    return FoldedPiecewiseMLP(
        model,
        tables.encoding_bounds(),
        weight,
        bias,
        model.backbone,
        categorical_weight,
    )


def _encoding_bounds(
    impl: nn.Module, n_features: int, max_bins: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The clamp of each component of the package's encoding, as [lower, upper]:
    the first bin (-inf, 1], the middle ones [0, 1], the last [0, inf), and no
    clamp at all for a column with a single bin (or when every column has one)."""
    inf = float("inf")
    lower = torch.full((n_features, max_bins), 0.0)
    upper = torch.full((n_features, max_bins), 1.0)
    if max_bins == 1:
        return lower - inf, upper + inf
    lower[:, 0] = -inf
    upper[:, -1] = inf
    if impl.single_bin_mask is not None:
        lower[impl.single_bin_mask, -1] = -inf
    return lower, upper
