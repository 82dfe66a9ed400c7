"""The default MLP's first hidden layer over piecewise-linear numerics (the
`embedding` form), computed without materialising the embeddings.

The embeddings have no activation (version "B"), so per numeric column c the
first Linear of the flattened embeddings is linear in the column's encoding
e = [1, ..., 1, f, 0, ..., 0] (x in bin j, f its fraction of it). With E_c the
column's bin rows (`linear.weight[c]`, [bins, d]), S_c[k] = sum_{i<k} E_c[i]
their sums before each bin (and one past the last), W_c the column's [hidden, d]
slice of the first Linear and a_c, b_c its `linear0`, the column adds

    W_c S_c[j] + f (W_c S_c[j + 1] - W_c S_c[j]) + x (W_c a_c) + W_c b_c

(W_c S_c[j + 1] - W_c S_c[j] is W_c E_c[j], the bin's own row): two gathered
rows of the mapped sums, instead of the (bins x d) product per column and the
(columns x d) x hidden product of the first Linear. The value's own term joins
the two rows: the encoding's fraction is f = x s_j + t_j (its scale and shift
for bin j), so x = l_j + f / s_j with l_j = -t_j / s_j, and the gathered rows
are W_c S_c[j] + l_j W_c a_c and W_c E_c[j] + W_c a_c / s_j (no product of the
batch's values with the slopes, forward or backward). The mapped rows are
computed once per batch from the same parameters, so the model, its gradients
(autograd through the products) and its saved weights are those of the
embedding form; only the order of the floating-point sums differs, and the
value's term takes the value back from its rounded fraction (to about the
rounding of the bin's edge and width, as the fraction itself). The sums
are taken on the [bins, d] rows, as a triangular matrix product (deterministic
on CUDA too, where a cumulative sum is not), and only they (the widest
column's bins + 1 per column, with linear0's two rows) go through the first
Linear: each bin's own row is the difference of two mapped sums, taken in the
hidden space (in bfloat16 under CUDA's autocast it then carries the sums'
rounding: for fractions within the bin, of the order the sum term already
has); the value's share of the slope is added to both rows in the encoding's
float32. Per training step this costs one product of every column's sums with the
first Linear, shared by the batch, and per row two gathered rows per column
(benchmarks/results/train_throughput.md). Differentiable in the weights only:
the training loop's inputs need no gradient.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from modelsphere.models.row_gather import gathered_rows, gathered_rows_gradients


class _ThroughColumns(torch.autograd.Function):
    """[columns, n, d] rows -> [columns, n, hidden]: each column's rows through
    its [hidden, d] slice of a Linear's [hidden, inputs] weight (the first
    columns x d inputs). The weight's gradient is written in the weight's own
    layout; through a reshaped view, autograd would transpose it element by
    element, which costs about as much as the product."""

    @staticmethod
    def forward(ctx, rows, weight):
        ctx.save_for_backward(rows, weight)
        return torch.bmm(rows, _column_slices(weight, rows).transpose(1, 2))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        rows, weight = ctx.saved_tensors
        grad = grad.to(rows.dtype)  # a bfloat16 product's under autocast
        slices = _column_slices(weight, rows)
        rows_grad = torch.bmm(grad, slices) if ctx.needs_input_grad[0] else None
        if not ctx.needs_input_grad[1]:
            return rows_grad, None
        n_columns, _, d = rows.shape
        weight_grad = torch.empty_like(weight)
        weight_grad[:, n_columns * d :] = 0  # the other inputs' share is not ours
        per_column = torch.bmm(grad.transpose(1, 2), rows)  # [columns, hidden, d]
        _column_slices(weight_grad, rows).copy_(per_column)
        return rows_grad, weight_grad


class _MappedRowsSum(torch.autograd.Function):
    """[columns, positions + 3, hidden] mapped rows (per column: the sums of its
    bins' rows before each position and one past the last, then linear0's slope
    and bias) and the first Linear's bias -> the first layer's numeric part,
    [rows, hidden]: per value, the sum before its bin plus its fraction times
    the bin's own row (the next sum minus this one), each with its share of the
    value times the slope (`left` + fraction x `inverse_scale` is the value,
    both [columns, positions], zero at the package's padding); plus every
    bias. Positions index the mapped rows' own layout (the sum before position
    j of column c at c x (positions + 3) + j; a column's last bin sits at its
    last position, as in the package's layout); the bins' own rows are laid out
    alike, so one position reads both. The backward writes the mapped rows'
    gradient as one tensor: through slices of it, autograd would zero-fill and
    add a tensor of its size per slice."""

    @staticmethod
    def forward(ctx, mapped, bias, left, inverse_scale, position, fraction):
        n_columns, width, hidden = mapped.shape
        n_positions = width - 3
        # the rows in the encoding's precision at least: under a float16
        # autocast, an edge or bin width past its range would be infinite
        dtype = torch.promote_types(mapped.dtype, left.dtype)
        ctx.save_for_backward(left, inverse_scale, position, fraction)
        ctx.shape, ctx.dtype, ctx.table_dtype = mapped.shape, mapped.dtype, dtype
        ctx.bias_dtype = bias.dtype
        slope, shift = mapped[:, n_positions + 1 :].to(dtype).unbind(1)
        # per bin, in the sums' layout (no position reads the rows past the
        # bins: they are left unset): the sum before it with the value's left
        # edge times the slope, and its own row with the slope over its scale
        steps = torch.empty(mapped.shape, dtype=dtype, device=mapped.device)
        bin_rows = torch.empty_like(steps)
        torch.addcmul(
            mapped[:, :n_positions].to(dtype),
            left[..., None],
            slope[:, None],
            out=steps[:, :n_positions],
        )
        torch.sub(
            mapped[:, 1 : n_positions + 1],
            mapped[:, :n_positions],
            out=bin_rows[:, :n_positions],
        )
        bin_rows[:, :n_positions].addcmul_(inverse_scale[..., None], slope[:, None])
        out = gathered_rows(
            steps.reshape(-1, hidden),
            bin_rows.reshape(-1, hidden),
            position,
            fraction,
        )
        return out.add_(bias + shift.sum(0))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        left, inverse_scale, position, fraction = ctx.saved_tensors
        n_columns, width, hidden = ctx.shape
        n_positions = width - 3
        grad = grad.to(ctx.table_dtype).contiguous()
        steps_grad, bin_rows_grad = gathered_rows_gradients(
            position, fraction, grad, n_columns * width
        )
        mapped_grad = steps_grad.view(ctx.shape)
        bin_rows_grad = bin_rows_grad.view(ctx.shape)[:, :n_positions]
        # linear0's slope, through both rows (before the sums' gradient is
        # written over the steps' in place)
        slope_grad = torch.bmm(left[:, None], mapped_grad[:, :n_positions])
        slope_grad.baddbmm_(inverse_scale[:, None], bin_rows_grad)
        # a bin's own row is the next sum minus its own
        mapped_grad[:, 1 : n_positions + 1] += bin_rows_grad
        mapped_grad[:, :n_positions] -= bin_rows_grad
        mapped_grad[:, n_positions + 1] = slope_grad[:, 0]
        mapped_grad[:, n_positions + 2] = grad.sum(0)
        # a copy: as a view it would hold all of mapped_grad as the bias's grad
        bias_grad = mapped_grad[0, n_positions + 2].to(ctx.bias_dtype, copy=True)
        return mapped_grad.to(ctx.dtype), bias_grad, None, None, None, None


def _column_slices(weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A Linear's [hidden, inputs] weight as [columns, hidden, d] slices of its
    first columns x d inputs (a view, whatever the weight's strides)."""
    n_columns, _, d = rows.shape
    return weight[:, : n_columns * d].unflatten(1, (n_columns, d)).transpose(0, 1)


class PiecewiseFirstLayer(nn.Module):
    """first(cat([flatten(embedding(numeric)), categorical])) for a
    PiecewiseLinearEmbeddings `embedding` (the package's, version "B") and the
    Linear `first`. Holds only what the bin edges fix, as buffers that are not
    saved: the weights stay in `embedding` and `first`. Built on the CPU, as
    the embedding is (even inside a `torch.device("meta")` block: it reads the
    embedding's values)."""

    def __init__(self, edges: Sequence[Sequence[float]], embedding: nn.Module):
        super().__init__()
        with torch.device("cpu"):
            self._build(edges, embedding)

    def _build(self, edges: Sequence[Sequence[float]], embedding: nn.Module) -> None:
        if (
            embedding.linear0 is None
            or embedding.linear.bias is not None
            or embedding.activation is not None
        ):
            raise ValueError(
                "PiecewiseFirstLayer computes version B embeddings without an "
                "activation (a linear0, no bias in linear): this one differs"
            )
        impl = embedding.impl
        n_features, n_positions = impl.weight.shape
        bins = [len(column) - 1 for column in edges]
        padded = [
            list(column) + [float("inf")] * (n_positions - n)
            for column, n in zip(edges, bins)
        ]
        self.register_buffer("edges", torch.tensor(padded), persistent=False)
        # A value's sorted search among its column's edges (padded with +inf to
        # the widest column) returns one of positions + 2 slots. Per column and
        # slot: the value's row in the mapped rows' layout (`_MappedRowsSum`: a
        # column's positions + 3 rows; values below the first edge in the first
        # bin, above the last in the last, which sits at the column's last
        # position as in the package's [columns x positions] layout), and the
        # scale and shift of its fraction of that bin. int32 rows: a faster sort
        # in the backward.
        width, slots = n_positions + 3, n_positions + 2
        found = torch.arange(slots)[None, :] - 1
        last = torch.tensor(bins)[:, None] - 1
        found = torch.minimum(found.clamp_min(0), last)
        position = torch.where(found == last, n_positions - 1, found)
        self.register_buffer(
            "slot_scale", impl.weight.gather(1, position).reshape(-1), persistent=False
        )
        self.register_buffer(
            "slot_shift", impl.bias.gather(1, position).reshape(-1), persistent=False
        )
        position = position + torch.arange(n_features)[:, None] * width
        self.register_buffer(
            "slot_position", position.reshape(-1).int(), persistent=False
        )
        slot_offset = torch.arange(n_features, dtype=torch.int32) * slots
        self.register_buffer("slot_offset", slot_offset[:, None], persistent=False)
        # [positions + 1, positions], ones below the diagonal: each position's
        # sum of the rows before it, and one past the last
        before = torch.ones(n_positions + 1, n_positions).tril(-1)
        self.register_buffer("before", before, persistent=False)

    def positions(self, numeric: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """[rows, columns] numerics -> the row of each value's bin in the mapped
        rows' layout (a column's last bin at its last position, as in the
        package's [columns x positions] layout) and the value's fraction of
        that bin (below 0 or above 1 beyond the outer edges, as the package's
        encoding), both [rows, columns], laid out column by column (as the
        search runs, and the gradient's sort reads them)."""
        x = numeric.T.contiguous()
        slot = torch.searchsorted(self.edges, x, right=True, out_int32=True)
        slot = (slot + self.slot_offset).view(-1)
        position = self.slot_position.index_select(0, slot).view_as(x)
        scale = self.slot_scale.index_select(0, slot).view_as(x)
        shift = self.slot_shift.index_select(0, slot).view_as(x)
        return position.T, torch.addcmul(shift, x, scale).T

    def forward(
        self,
        numeric: torch.Tensor,
        categorical: List[torch.Tensor],
        embedding: nn.Module,
        first: nn.Linear,
    ) -> torch.Tensor:
        impl, bin_weight = embedding.impl, embedding.linear.weight
        n_features, _, d = bin_weight.shape
        if impl.mask is not None:  # the package's padding positions stay zero
            bin_weight = bin_weight * impl.mask[..., None]
        linear0 = embedding.linear0
        # every [d] row a column maps through its [d, hidden] slice of `first`:
        # the sums of its bins' rows before each position and one past the
        # last, then linear0's slope and bias, in one batched product
        through = torch.cat(
            [
                self.before.to(bin_weight.dtype) @ bin_weight,
                linear0.weight[:, None],
                linear0.bias[:, None],
            ],
            dim=1,
        )
        mapped = _ThroughColumns.apply(through, first.weight)
        position, encoded = self.positions(numeric)
        # each bin's value as its left edge + fraction / scale (padding: 0)
        scale = impl.weight
        inverse_scale = torch.where(scale != 0, scale.reciprocal(), 0.0)
        left = -impl.bias * inverse_scale
        out = _MappedRowsSum.apply(
            mapped, first.bias, left, inverse_scale, position, encoded
        )
        if categorical:
            categorical_weight = first.weight[:, n_features * d :]
            out = out + F.linear(torch.cat(categorical, dim=1), categorical_weight)
        return out
