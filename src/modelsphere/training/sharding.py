"""How the processes of a DDP run share the data (`train.ddp_data`).

- `shards` (the default): process r holds only rows [r*N/W, (r+1)*N/W) of each
  split (N rows, W processes), so its memory falls as processes are added. Every
  epoch each process walks its own seeded permutation of its shard; a step's
  global batch is every process's next batch_size/W rows. Validation and test
  are scored in shards and the scores gathered, so their metrics are the
  single-process metrics of the same weights.
- `replicated`: every process holds every row; each global batch is a slice of
  one permutation shared by all processes, split row-wise across them, so a run
  matches a single-process run up to float rounding, at W copies of the data.

A single process is the replicated plan with one rank: one permutation of the
split, batch after batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from modelsphere.core.errors import ModelSphereError
from modelsphere.training.distributed import SINGLE_PROCESS, DistContext

DDP_DATA = ("shards", "replicated")  # train.ddp_data
SEED_BOUND = 2**62  # an epoch's seed for the shard permutations is drawn below


def shard_sizes(n_rows: int, world_size: int) -> Tuple[int, ...]:
    """The rows each rank holds, in rank order (they differ by at most one)."""
    return tuple(
        n_rows * (rank + 1) // world_size - n_rows * rank // world_size
        for rank in range(world_size)
    )


def shard_rows(n_rows: int, context: DistContext) -> range:
    """This rank's rows of a split of `n_rows` rows."""
    start = n_rows * context.rank // context.world_size
    return range(start, n_rows * (context.rank + 1) // context.world_size)


def holds_shards(context: DistContext, ddp_data: str) -> bool:
    """Whether each process of this run holds only its shard of every split."""
    return context.enabled and ddp_data == "shards"


@dataclass(frozen=True)
class BatchPlan:
    """Which rows each process trains on at each step of an epoch."""

    batch_size: int  # the global batch: what one process would take
    context: DistContext
    population: int  # the training rows of all processes together
    shards: Optional[Tuple[int, ...]] = None  # rows held per rank; None: all

    streamed = False  # the rows are held in memory (training/streaming.py: not)

    @classmethod
    def for_run(
        cls,
        batch_size: int,
        context: DistContext,
        n_rows: int,
        ddp_data: str,
        chosen: bool = False,
    ) -> "BatchPlan":
        """The plan of a run; `chosen`: the batch size was chosen for the data
        (train.batch_size=null), so it may be rounded to a multiple of the
        processes."""
        if not holds_shards(context, ddp_data):
            return cls(batch_size, context, n_rows)
        if chosen:
            batch_size -= batch_size % context.world_size
        if batch_size % context.world_size:
            raise ModelSphereError(
                f"train.batch_size={batch_size} does not divide into the "
                f"{context.world_size} processes' equal shares of each batch "
                f"(train.ddp_data=shards): use a multiple of {context.world_size}, "
                "or train.ddp_data=replicated"
            )
        if n_rows < context.world_size:
            raise ModelSphereError(
                f"the training split has {n_rows} row(s), fewer than the "
                f"{context.world_size} processes that would each hold a shard of it"
            )
        return cls(batch_size, context, n_rows, shard_sizes(n_rows, context.world_size))

    @property
    def sharded(self) -> bool:
        return self.shards is not None

    @property
    def shard_context(self) -> DistContext:
        """The processes that each hold a shard of every split (evaluation
        gathers their scores, class counts are summed over them), or a single
        process when each holds it all."""
        return self.context if self.sharded else SINGLE_PROCESS

    @property
    def local_batch(self) -> int:
        return self.batch_size // self.context.world_size

    def rows_held(self) -> int:
        """The rows of the training split this process holds."""
        return self.shards[self.context.rank] if self.sharded else self.population

    def steps(self) -> int:
        if self.sharded:
            return -(-max(self.shards) // self.local_batch)
        return -(-self.population // self.batch_size)

    def order(self, generator: torch.Generator, device) -> Tuple[torch.Tensor, int]:
        """A new epoch's permutation of the rows this process walks, and the
        seed it came from (shards; 0 otherwise). `generator` advances the same
        way in every process, so its state in a checkpoint serves them all."""
        if not self.sharded:
            return torch.randperm(self.population, generator=generator).to(device), 0
        seed = int(torch.randint(SEED_BOUND, (1,), generator=generator))
        return self.shard_order(seed, device), seed

    def shard_order(self, seed: int, device) -> torch.Tensor:
        """This rank's permutation of its shard for the epoch seeded `seed`."""
        generator = torch.Generator().manual_seed(seed + self.context.rank)
        return torch.randperm(self.rows_held(), generator=generator).to(device)

    def batch(self, order: torch.Tensor, step: int) -> Tuple[torch.Tensor, int]:
        """This process's rows at `step` (positions in the rows it holds) and
        the size of the step's global batch."""
        if self.sharded:
            start = step * self.local_batch
            index = order[start : start + self.local_batch]
            return index, self.global_rows(step)
        global_index = order[step * self.batch_size : (step + 1) * self.batch_size]
        rank, world = self.context.rank, self.context.world_size
        return global_index[rank::world], global_index.shape[0]

    def global_rows(self, step: int) -> int:
        """The size of the step's global batch when each process walks its own
        shard (a process whose shard ran out adds none)."""
        start = step * self.local_batch
        return sum(min(self.local_batch, max(0, rows - start)) for rows in self.shards)

    def smallest_share(self) -> int:
        """The fewest rows any process's forward takes in a step where it takes
        any (a shard that ran out takes part with none, which is harmless)."""
        world = self.context.world_size
        if self.sharded:
            tails = [rows % self.local_batch for rows in self.shards]
            return min([self.local_batch] + [tail for tail in tails if tail])
        last = self.population - (self.steps() - 1) * self.batch_size
        shares = [
            len(range(rank, rows, world))
            for rows in (min(self.batch_size, self.population), last)
            for rank in range(world)
        ]
        return min([share for share in shares if share] or [0])

    def rows_before(self, step: int) -> int:
        """The rows this process trained on in the steps before `step`."""
        if self.sharded:
            return min(step * self.local_batch, self.rows_held())
        rank, world = self.context.rank, self.context.world_size
        rows = 0
        for start in range(
            0, min(step * self.batch_size, self.population), self.batch_size
        ):
            rows += len(
                range(rank, min(self.batch_size, self.population - start), world)
            )
        return rows
