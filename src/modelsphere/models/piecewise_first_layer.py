"""The default MLP's first hidden layer over piecewise-linear numerics (the
`embedding` form), computed without materialising the embeddings.

The embeddings have no activation (version "B"), so per numeric column c the
first Linear of the flattened embeddings is linear in the column's encoding
e = [1, ..., 1, f, 0, ..., 0] (x in bin j, f its fraction of it). With
R_c = E_c W_c^T, the column's bin rows (`linear.weight[c]`, [bins, d]) through
its slice of the first Linear ([hidden, d]), the column adds

    sum_{k<j} R_c[k] + f R_c[j] + x (W_c a_c) + W_c b_c

(a_c, b_c: its `linear0`): a row of the exclusive cumulative sum of R_c plus f
times a row of R_c, two gathered rows, instead of the (bins x d) product per
column and the (columns x d) x hidden product of the first Linear. R is computed
once per batch from the same parameters, so the model, its gradients (autograd
through the products) and its saved weights are those of the embedding form;
only the order of the floating-point sums differs. The cumulative sums are
taken on the [bins, d] rows before the product, as a triangular matrix
product (deterministic on CUDA too, where a cumulative sum is not). Per
training step this costs one product of every bin's two rows with the first
Linear, shared by the batch, and per row two gathered rows per column
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
    """[columns, 2 positions + 2, hidden] mapped rows (per column: its bins'
    rows, the sums of the rows before each, linear0's slope and bias) and the
    first Linear's bias -> the first layer's numeric part, [rows, hidden]: per
    value, a row of the sums plus its fraction times a row of the bins, plus
    the value times the slope; plus every bias. Positions index the mapped
    rows' own layout (bin j of column c at c x (2 positions + 2) + j), so both
    tables are views of them. The backward writes their gradient as one
    tensor: through slices of it, autograd would zero-fill and add a tensor of
    its size per slice, which cost more than the gathers at 48 bins."""

    @staticmethod
    def forward(ctx, mapped, bias, numeric, position, fraction):
        n_columns, width, hidden = mapped.shape
        n_positions = (width - 2) // 2
        ctx.save_for_backward(numeric, position, fraction)
        ctx.shape, ctx.dtype = mapped.shape, mapped.dtype
        ctx.bias_dtype = bias.dtype
        flat = mapped.reshape(-1, hidden)
        slope, shift = mapped[:, 2 * n_positions :].unbind(1)
        out = torch.addmm(bias + shift.sum(0), numeric.to(mapped.dtype), slope)
        # a bin's sum of the rows before it: n_positions rows after its own row
        return out + gathered_rows(flat[n_positions:], flat, position, fraction)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        numeric, position, fraction = ctx.saved_tensors
        n_columns, width, hidden = ctx.shape
        n_positions = (width - 2) // 2
        grad = grad.to(ctx.dtype).contiguous()
        below_grad, rows_grad = gathered_rows_gradients(
            position, fraction, grad, n_columns * width
        )
        mapped_grad = rows_grad.view(ctx.shape)
        mapped_grad[:, n_positions : 2 * n_positions] = below_grad.view(ctx.shape)[
            :, :n_positions
        ]
        mapped_grad[:, 2 * n_positions] = numeric.T.to(ctx.dtype) @ grad
        mapped_grad[:, 2 * n_positions + 1] = grad.sum(0)
        # a copy: as a view it would hold all of mapped_grad as the bias's grad
        bias_grad = mapped_grad[0, 2 * n_positions + 1].to(ctx.bias_dtype, copy=True)
        return mapped_grad, bias_grad, None, None, None


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
        # per position of the mapped rows' layout (`_MappedRowsSum`: a column's
        # 2 x positions + 2 rows), the scale and shift of a value's fraction of
        # the bin there (zeros where no bin is)
        width = 2 * n_positions + 2
        encoding = torch.zeros(n_features, width, 2)
        encoding[:, :n_positions] = torch.stack([impl.weight, impl.bias], dim=-1)
        self.register_buffer("edges", torch.tensor(padded), persistent=False)
        last_bin = torch.tensor(bins, dtype=torch.int32) - 1
        self.register_buffer("last_bin", last_bin, persistent=False)
        # a column's first mapped row (int32 indices: a faster sort in the
        # backward)
        offsets = torch.arange(n_features, dtype=torch.int32) * width
        self.register_buffer("offset", offsets, persistent=False)
        self.register_buffer("encoding", encoding.reshape(-1, 2), persistent=False)
        # a [positions, positions] strictly lower triangle: each position's sum
        # of the rows before it
        before = torch.ones(n_positions, n_positions).tril(-1)
        self.register_buffer("before", before, persistent=False)

    def positions(self, numeric: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """[rows, columns] numerics -> the row of each value's bin in the mapped
        rows' layout (as in the package's [columns x positions] one, a column's
        last bin sits at its last position) and the value's fraction of that
        bin (below 0 or above 1 beyond the outer edges, as the package's
        encoding)."""
        x = numeric.T.contiguous()
        n_positions = self.edges.shape[1] - 1  # edges padded to the widest
        last = self.last_bin[:, None]
        found = torch.searchsorted(self.edges, x, right=True, out_int32=True) - 1
        found = torch.minimum(found.clamp_min(0), last)
        position = (
            torch.where(found == last, n_positions - 1, found) + self.offset[:, None]
        )
        scale, shift = F.embedding(position, self.encoding).unbind(-1)
        return position.T, (x * scale + shift).T

    def forward(
        self,
        numeric: torch.Tensor,
        categorical: List[torch.Tensor],
        embedding: nn.Module,
        first: nn.Linear,
    ) -> torch.Tensor:
        impl, bin_weight = embedding.impl, embedding.linear.weight
        n_features, n_positions, d = bin_weight.shape
        if impl.mask is not None:  # the package's padding positions stay zero
            bin_weight = bin_weight * impl.mask[..., None]
        linear0 = embedding.linear0
        # every [d] row a column maps through its [d, hidden] slice of `first`:
        # its bins' rows, the sums of the rows before each, then linear0's slope
        # and bias, in one batched product
        through = torch.cat(
            [
                bin_weight,
                self.before.to(bin_weight.dtype) @ bin_weight,
                linear0.weight[:, None],
                linear0.bias[:, None],
            ],
            dim=1,
        )
        mapped = _ThroughColumns.apply(through, first.weight)
        position, encoded = self.positions(numeric)
        out = _MappedRowsSum.apply(mapped, first.bias, numeric, position, encoded)
        if categorical:
            categorical_weight = first.weight[:, n_features * d :]
            out = out + F.linear(torch.cat(categorical, dim=1), categorical_weight)
        return out
