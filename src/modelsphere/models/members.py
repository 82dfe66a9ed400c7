"""An ensemble of independently initialised copies of one network
(`model.members`), trained together and averaged.

Every member sees the same batches; each starts from its own initial weights
(built one after the other from the run's seed, so member 0 starts where a
single model would) and draws its own dropout masks. In training mode the
ensemble returns every member's output, [rows, k, n_outputs], and the loss is
the mean of the members' losses (`training.epochs.batch_loss`), so each member
learns as it would alone; validation and early stopping see the ensemble's
mean. In eval mode it returns one output per row, the members' mean (of values
for regression, of probabilities otherwise), so evaluation, prediction, the API
and the ONNX graph treat it like any single model.

How a member weighs a batch's rows (`model.member_sampling`): `shared` (the
default), each row once for every member; or `online_bagging`, a fresh
Poisson(1) count for each row and member each time the row is presented, which
scales that member's gradient from the row. This is online bagging (Oza and
Russell 2001), the streaming form of the bootstrap, which a mini-batch loop can
apply without holding k resampled copies of the split, so members walk
different effective samples, not only from different starting points. The
counts touch gradients only: the training loss the run reports is the
members' plain mean, and eval mode is unchanged. It is not the default: on the
quality benchmark's regression sets it did not narrow ames' spread over the
seeds, and it raised the mean RMSE on computers (quality_regression.md, notes).

The rule (`members: null`): MEMBERS_FOR_REGRESSION for a regression target, one
for classification. Under squared error, the error of the members' mean is the
members' mean squared error minus their mean squared spread around that mean
(Krogh and Vedelsby 1995, the ambiguity decomposition), so averaging can only
lower the RMSE the model is scored on, by as much as the members disagree; on
the quality benchmark's regression sets that was worth the default's gap to
LightGBM on hotel_rates (benchmarks/results/quality_regression.md). The price is k
times the training and inference arithmetic.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn
from torch.nn import functional as F

from modelsphere.models.spec import ModelSpec

MEMBERS_FOR_REGRESSION = 8  # members of the default (`members: null`) regressor
MEMBERS_KEY = "members"  # spec.extra[MEMBERS_KEY]: {"k", "task", "sampling"}
MEMBER_SAMPLING = ("shared", "online_bagging")
# what a spec from before `model.member_sampling` trained with
SAMPLING_BEFORE_THE_SETTING = "shared"


def members_for(requested: Optional[int], task: str) -> int:
    """`model.members`: as set, or the rule's count for `task` when null."""
    if requested is not None:
        return int(requested)
    return MEMBERS_FOR_REGRESSION if task == "regression" else 1


def member_settings(
    requested: Optional[int], task: str, sampling: str
) -> Dict[str, Any]:
    """What the spec records: nothing for a single network (so its artifact is
    what it was before ensembles existed), else the count, the task and how
    the members weigh the rows in training."""
    k = members_for(requested, task)
    if k == 1:
        return {}
    return {MEMBERS_KEY: {"k": k, "task": task, "sampling": sampling}}


def member_count(spec: ModelSpec) -> int:
    return int(spec.extra.get(MEMBERS_KEY, {}).get("k", 1))


def mean_of_members(outputs: torch.Tensor, task: str) -> torch.Tensor:
    """[rows, k, n_outputs] -> [rows, n_outputs]: logits of the mean probability
    (binary, multiclass) or the mean value (regression)."""
    if task == "regression":
        return outputs.mean(dim=1)
    log_k = math.log(outputs.shape[1])
    if task == "binary":  # logit(mean p) = log(mean p) - log(mean (1 - p))
        log_p = torch.logsumexp(F.logsigmoid(outputs), dim=1) - log_k
        log_q = torch.logsumexp(F.logsigmoid(-outputs), dim=1) - log_k
        return log_p - log_q
    # multiclass: softmax(log(mean p)) == mean p, since mean p sums to one
    return torch.logsumexp(F.log_softmax(outputs, dim=2), dim=1) - log_k


class _GradientWeights(torch.autograd.Function):
    """The identity forward; the backward multiplies the gradient by `weights`."""

    @staticmethod
    def forward(ctx, outputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weights)
        return outputs.view_as(outputs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weights,) = ctx.saved_tensors
        return grad * weights, None


def online_bagging(outputs: torch.Tensor) -> torch.Tensor:
    """[rows, k, n_outputs] with each (row, member)'s gradient scaled by its own
    Poisson(1) count, drawn from the run's seeded generator as dropout masks
    are (so a resumed run draws what an uninterrupted one would)."""
    rate = torch.ones(outputs.shape[:2] + (1,), device=outputs.device)
    return _GradientWeights.apply(outputs, torch.poisson(rate).to(outputs.dtype))


def each_member(
    members: nn.ModuleList, numeric: torch.Tensor, categorical: torch.Tensor
) -> torch.Tensor:
    """Every member's output, [rows, k, n_outputs]."""
    return torch.stack([member(numeric, categorical) for member in members], dim=1)


class Members(nn.Module):
    """k networks built by `build(spec)`, one after the other."""

    def __init__(self, spec: ModelSpec, build: Callable[[ModelSpec], nn.Module]):
        super().__init__()
        self.spec = spec
        settings = spec.extra[MEMBERS_KEY]
        self.task = settings["task"]
        self.sampling = settings.get("sampling", SAMPLING_BEFORE_THE_SETTING)
        self.members = nn.ModuleList(build(spec) for _ in range(member_count(spec)))

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        outputs = each_member(self.members, numeric, categorical)
        if not self.training:
            return mean_of_members(outputs, self.task)
        if self.sampling == "online_bagging":
            return online_bagging(outputs)
        return outputs


class MeanOfMembers(nn.Module):
    """The inference form of `Members`: each member's own inference form, their
    outputs averaged as in eval mode."""

    def __init__(
        self, model: Members, inference_form: Callable[[nn.Module], nn.Module]
    ):
        super().__init__()
        self.spec = model.spec
        self.task = model.task
        self.members = nn.ModuleList(inference_form(member) for member in model.members)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        outputs = each_member(self.members, numeric, categorical)
        return mean_of_members(outputs, self.task)
