"""TabM (Gorishniy et al., "TabM: Advancing Tabular Deep Learning with
Parameter-Efficient Ensembling", ICLR 2025) from the maintained `tabm` package.

One TabM holds k MLPs that share most weights (BatchEnsemble-style adapters) and
see the same batch. In training mode the model returns every member's output,
[rows, k, n_outputs], and the loss is the mean of the members' losses
(`epochs.batch_loss`), as in the paper. In eval mode it returns one output per
row whose sigmoid/softmax is the mean of the members' probabilities (the mean of
their values for regression), so evaluation, prediction, serving and the ONNX
export treat it like any other model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import torch
from omegaconf import OmegaConf
from torch import nn

from modelsphere.core.config import require, setting
from modelsphere.models.members import mean_of_members
from modelsphere.models.numeric_embeddings import import_rtdl, numeric_modules
from modelsphere.models.spec import Architecture, ModelSpec


def _tabm_package():
    """The `tabm` package, imported when a TabM is first built: it imports
    rtdl_num_embeddings, so that is imported first without scikit-learn."""
    import_rtdl()
    import tabm

    return tabm


TORCH_ACTIVATIONS = {"relu": "ReLU", "gelu": "GELU", "silu": "SiLU"}
ARCH_TYPES = ("tabm", "tabm-mini", "tabm-packed")


@dataclass
class EnsembleConfig:
    """`model.ensemble`: TabM's ensemble of k MLPs (model=tabm)."""

    k: int = setting(32, ge=1)  # ensemble members
    arch_type: str = setting("tabm", choices=ARCH_TYPES)


class TabMEnsemble(nn.Module):
    """TabM over [numeric features (embedded if the spec says so), one-hot
    categoricals]; `hidden_sizes` gives depth and width (all layers equal)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        ensemble = spec.extra["ensemble"]
        self.task = ensemble["task"]
        embeddings, _ = numeric_modules(spec)
        self.tabm = _tabm_package().TabM.make(
            n_num_features=spec.n_numeric,
            cat_cardinalities=list(spec.cardinalities),
            d_out=spec.n_outputs,
            num_embeddings=embeddings,
            n_blocks=len(spec.hidden_sizes),
            d_block=spec.hidden_sizes[0],
            dropout=spec.dropout,
            activation=TORCH_ACTIVATIONS[spec.activation],
            k=int(ensemble["k"]),
            arch_type=ensemble["arch_type"],
        )

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """`TabM.forward` for 2-D inputs, step by step: the package's version reads
        the batch size with `len()`, which fixes it to a constant in an ONNX export,
        and joins int64 one-hot codes to float features, which ONNX cannot."""
        tabm, parts = self.tabm, []
        if self.spec.n_numeric:
            embedded = numeric if tabm.num_module is None else tabm.num_module(numeric)
            parts.append(embedded.flatten(1))
        if self.spec.cardinalities:
            parts.append(tabm.cat_module(categorical).to(numeric.dtype))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        outputs = tabm.output(tabm.backbone(tabm.ensemble_view(x)))
        if self.training:
            return outputs
        return mean_of_members(outputs, self.task)


def ensemble_settings(model_cfg: Any, task: str) -> Dict[str, Any]:
    ensemble = model_cfg.ensemble
    return {
        "ensemble": {"k": ensemble.k, "arch_type": ensemble.arch_type, "task": task}
    }


def check_tabm(model_cfg: Any, key: str) -> None:
    require(
        OmegaConf.select(model_cfg, "members") in (None, 1),
        f"{key}.architecture=tabm is an ensemble already ({key}.ensemble.k "
        f"members): use {key}.members=null or 1, got {model_cfg.members}",
    )
    require(
        len(set(model_cfg.hidden_sizes)) == 1,
        f"{key}.architecture=tabm needs equal {key}.hidden_sizes (TabM's blocks "
        f"share one width), got {list(model_cfg.hidden_sizes)}",
    )
    require(
        model_cfg.normalization == "none",
        f"{key}.architecture=tabm has no normalization layers: use "
        f"{key}.normalization=none",
    )
    require(
        model_cfg.numeric_embedding != "piecewise_linear"
        or OmegaConf.select(model_cfg, "piecewise.form", default="embedding")
        == "embedding",
        f"{key}.piecewise.form=tables is the MLP's first layer; TabM embeds "
        f"piecewise-linear numerics per member: use {key}.piecewise.form=embedding",
    )


ARCHITECTURES = {
    "tabm": Architecture(
        build=TabMEnsemble, settings=ensemble_settings, check=check_tabm
    )
}
