"""Piecewise-linear numerics read straight into the first hidden layer
(`model.piecewise.form=tables`, an option of the MLP).

A linear map of a column's piecewise-linear encoding (Gorishniy et al. 2022) is a
continuous function that is linear between the column's bin edges and
extrapolates linearly beyond the first and the last (the encoding's open
ends). Such a function is fixed by its values at the edges: here each column
keeps one row of `width` values per edge (its "knots"), and a value x between
edges k and k+1 reads (1 - f) x row k + f x row k+1, f being x's fraction of the
bin, i.e. row k + f x (row k+1 - row k). The first layer is then a gather of
two rows per column (`F.embedding_bag`), where the `embedding` form's
parameters are a (bins x d_embedding) matrix per column and a first Linear of
the (columns x d_embedding) embeddings.
Its gradient is the same gather run backwards (`row_gather.py`): the (row,
knot) pairs sorted by knot, each knot's rows summed, instead of a scatter.

The knots start on a line through the edges, so the initial function is the plain
MLP's first Linear in x, and training learns the bends. The same function, as an
encoding and one matrix (for export and batch inference), is
`encoding_bounds` + `increments`.
"""

from __future__ import annotations

import math
from typing import List, Sequence

import torch
from torch import nn

from modelsphere.models.row_gather import step_and_slope


class PiecewiseLinearTables(nn.Module):
    """[rows, columns] numerics -> [rows, width]: per column, the linear
    interpolation of its knot rows at each value, summed over the columns."""

    def __init__(self, edges: Sequence[Sequence[float]], width: int):
        super().__init__()
        bins = [len(column) - 1 for column in edges]
        if not edges or min(bins) < 1:
            raise ValueError("every column needs at least two bin edges")
        most = max(bins)
        padded = [
            list(column) + [math.inf] * (most - n) for column, n in zip(edges, bins)
        ]
        knots = [value for column in edges for value in column]
        column_of_knot = [j for j, column in enumerate(edges) for _ in column]
        self.register_buffer("edges", torch.tensor(padded), persistent=False)
        self.register_buffer("last_bin", torch.tensor(bins) - 1, persistent=False)
        starts = [sum(bins[:j]) + j for j in range(len(bins))]  # a column's knot 0
        self.register_buffer("start", torch.tensor(starts), persistent=False)
        # saved with the weights, so the weights file carries the edges it was
        # trained on (load_state_dict checks its shape, not its values)
        self.register_buffer("knot_value", torch.tensor(knots))
        # As nn.Linear(columns, width) would start: knot rows on a line in x.
        bound = 1 / math.sqrt(len(edges))
        slope = torch.empty(len(edges), width).uniform_(-bound, bound)
        self.knots = nn.Parameter(self.knot_value[:, None] * slope[column_of_knot])
        self.bias = nn.Parameter(torch.empty(width).uniform_(-bound, bound))

    def bin_and_fraction(self, numeric: torch.Tensor):
        """Each value's lower knot (a row of `knots`) and its fraction of the bin,
        below 0 or above 1 in the open first and last bins."""
        x = numeric.float()
        found = torch.searchsorted(self.edges, x.T.contiguous(), right=True) - 1
        found = torch.minimum(found.clamp_min(0), self.last_bin[:, None])
        lower = (found + self.start[:, None]).T
        low, high = self.knot_value[lower], self.knot_value[lower + 1]
        return lower, (x - low) / (high - low)

    def forward(self, numeric: torch.Tensor) -> torch.Tensor:
        lower, fraction = self.bin_and_fraction(numeric)
        # (1 - f) x knot k + f x knot k+1 = knot k + f x (knot k+1 - knot k);
        # a column's last knot is never a lower one, so its (padding) rise is unread
        rise = torch.cat([self.knots[1:] - self.knots[:-1], self.knots[-1:]])
        return self.bias + step_and_slope(self.knots, rise, lower, fraction)

    def bin_rows(self) -> torch.Tensor:
        """Every knot but each column's last: the knot rows the bins start at."""
        last = self.start + self.last_bin + 1
        keep = torch.ones(len(self.knot_value), dtype=torch.bool, device=last.device)
        keep[last] = False
        return keep

    def increments(self) -> torch.Tensor:
        """Per bin, its rise from its lower to its upper knot: the weights of the
        piecewise-linear encoding (the function is the first knots + these)."""
        keep = self.bin_rows()
        return (self.knots[1:] - self.knots[:-1])[keep[:-1]]

    def folded_bias(self) -> torch.Tensor:
        return self.bias + self.knots[self.start].sum(0)

    def encoding_bounds(self) -> List[torch.Tensor]:
        """Per bin: the column it reads, the scale and shift of its fraction, and
        the clamp of the encoding ([lower, upper]: -inf in the first bin, +inf in
        the last, neither for a column of one bin)."""
        keep = self.bin_rows()
        left = self.knot_value[keep]
        width = (self.knot_value[1:] - self.knot_value[:-1])[keep[:-1]]
        n_bins = len(left)
        column = torch.repeat_interleave(
            torch.arange(len(self.start), device=left.device), self.last_bin + 1
        )
        first = self.start - torch.arange(len(self.start), device=left.device)
        lower = torch.zeros(n_bins, device=left.device)
        upper = torch.ones(n_bins, device=left.device)
        lower[first] = -math.inf
        upper[first + self.last_bin] = math.inf
        return [column, 1 / width, -left / width, lower, upper]
