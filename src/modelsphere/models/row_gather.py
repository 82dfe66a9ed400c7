"""A sum of gathered rows, with its gradient computed without a scatter.

Both forms of the piecewise-linear first layer (`piecewise_tables.py`,
`piecewise_first_layer.py`) reduce to it: per value, the row of its bin in one
table plus its fraction of the bin times the same row of a second. The gradient
of such a table is the same gather run backwards: the (row, table row) pairs
sorted by table row, each table row's output gradients summed, in a fixed order
(deterministic sums)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


class _StepAndSlope(torch.autograd.Function):
    """out[r] = sum_c step[position[r, c]] + fraction[r, c] x slope[position[r, c]]
    (two tables of the same shape read at the same rows), its gradient one sort
    of the positions and two gathers; none for the fractions."""

    @staticmethod
    def forward(ctx, step, slope, position, fraction):
        ctx.save_for_backward(position, fraction)
        ctx.n_rows, ctx.dtypes = step.shape[0], (step.dtype, slope.dtype)
        return gathered_rows(step, slope, position, fraction)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        position, fraction = ctx.saved_tensors
        step_grad, slope_grad = gathered_rows_gradients(
            position, fraction, grad, ctx.n_rows
        )
        step_dtype, slope_dtype = ctx.dtypes
        return step_grad.to(step_dtype), slope_grad.to(slope_dtype), None, None


def gathered_rows(
    step: torch.Tensor,
    slope: torch.Tensor,
    position: torch.Tensor,
    fraction: torch.Tensor,
) -> torch.Tensor:
    """The sum itself, without autograd (see `step_and_slope`)."""
    position = position.contiguous()  # the bags read rows of it: one copy for both
    steps = F.embedding_bag(position, step, mode="sum")
    fraction = fraction.to(slope.dtype).contiguous()
    return steps + F.embedding_bag(
        position, slope, per_sample_weights=fraction, mode="sum"
    )


def gathered_rows_gradients(
    position: torch.Tensor,
    fraction: torch.Tensor,
    grad: torch.Tensor,
    n_rows: int,
):
    """The gradients of the two tables of `gathered_rows` from its output's
    [rows, width] gradient, each [n_rows, width] (n_rows: at least the largest
    position + 1; rows no value reads get zeros): per table row, the sum of the
    output gradients of the rows that read it (times their fractions, for the
    slope table), in the order of a stable sort of the positions.

    Each column reads its own table rows, after those of the columns before it
    (both forms lay their tables out so). The sort then leaves every column's
    values as one run, in column order: taken column by column (cheapest when
    `position` and `fraction` are laid out so, as [columns, rows] tensors seen
    transposed), a sorted value's batch row is its index in the sort's input
    minus its column's start, and the sums are those of the [rows, columns]
    order (a stable sort keeps a table row's readers in row order either way).
    A layout that broke the rule would give batch rows outside the output's
    gradient, which the gather refuses."""
    n_batch, n_columns = position.shape
    by_column = position.T.contiguous().view(-1)
    keys, order = torch.sort(by_column, stable=True)
    column_start = torch.arange(n_columns, device=order.device)[:, None] * n_batch
    batch_rows = (order.view(n_columns, n_batch) - column_start).view(-1)
    # where each table row's run of sorted positions starts (empty runs too)
    table_rows = torch.arange(n_rows, dtype=keys.dtype, device=keys.device)
    offsets = torch.searchsorted(keys, table_rows)
    grad = grad.contiguous()
    step_grad = F.embedding_bag(batch_rows, grad, offsets=offsets, mode="sum")
    weights = fraction.T.contiguous().view(-1).index_select(0, order)
    slope_grad = F.embedding_bag(
        batch_rows,
        grad,
        offsets=offsets,
        per_sample_weights=weights.to(grad.dtype),
        mode="sum",
    )
    return step_grad, slope_grad


def step_and_slope(
    step: torch.Tensor,
    slope: torch.Tensor,
    position: torch.Tensor,
    fraction: torch.Tensor,
) -> torch.Tensor:
    """[rows, columns] positions (rows of `step` and `slope`, both [n, width])
    and fractions -> [rows, width]: per row, the sum over its columns of the
    step row plus the fraction times the slope row. Differentiable in the two
    tables only (once)."""
    return _StepAndSlope.apply(step, slope, position, fraction)
