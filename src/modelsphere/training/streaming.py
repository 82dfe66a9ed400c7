"""Training on a split larger than memory: its Parquet row groups, streamed.

`train.loading=stream` (or `auto`, when the training split's tensors would pass
`train.memory_budget_mib`) never holds a whole split:

- Each process owns the row groups of the train split whose index modulo the
  processes is its rank (a single process owns them all). Every epoch it walks
  its own groups in a seeded random order, in windows of whole row groups of at
  least `train.shuffle_buffer_rows` rows: the shuffle buffer. A window's rows are
  shuffled with a seed of their own and cut into batches; a batch may take the
  last rows of one window and the first of the next, so a process trains on
  each of its rows once per epoch, in ceil(rows / batch) steps as in memory.
- While the model trains on one window, a thread reads and transforms the next
  (double buffering; a window read back from the stream cache is loaded in the
  training thread): two windows are in memory at a time, three while a batch
  takes the last rows of one window and the first of the next.
- Where an epoch stands is its seed and its next step; a resumed run skips the
  windows already done without reading them and continues with the very next
  batch, so it ends as the uninterrupted run would.
- Validation and test are scored a row group at a time, each process its own
  groups, and the scores gathered (training/epochs.py `evaluate_split`).
- With `train.stream_cache` (training/stream_cache.py), the training and
  validation groups' tensors are kept on disk after their first epoch: later
  epochs read them back instead of reading and transforming the Parquet again.

Under DDP the steps work as with `train.ddp_data=shards` (training/sharding.py):
every process takes batch_size / W rows of its own per step, and one that has
run out takes part with none.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import torch

from modelsphere.core.errors import ModelSphereError
from modelsphere.data.splits import (
    ProcessedData,
    iter_split_frames,
    read_row_groups,
    split_row_groups,
)
from modelsphere.features.tensors import SplitTensors, frame_tensors
from modelsphere.features.transform import encode_target
from modelsphere.training.distributed import DistContext
from modelsphere.training.sharding import BatchPlan
from modelsphere.training.stream_cache import GroupCache

log = logging.getLogger(__name__)

LOADINGS = ("auto", "memory", "stream")  # train.loading
MIB = 2**20
BUDGET_SHARE_OF_MEMORY = 0.5  # train.memory_budget_mib=null: half the machine's
PROBE_ROWS = 1  # rows transformed to learn a row's size in tensors
SEED_MIX = 1_000_003  # mixes (epoch seed, rank, window) into a window's seed
SEED_MODULUS = 2**63


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def tensor_bytes_per_row(data: ProcessedData, feature_state, device) -> int:
    """What one training row costs as model-ready tensors."""
    groups = split_row_groups(data, "train") if data.format == "parquet" else []
    if groups:
        frame = read_row_groups(data, "train", [0]).head(PROBE_ROWS)
    else:
        frame = next(iter_split_frames(data, "train")).head(PROBE_ROWS)
    row = frame_tensors(frame, feature_state, torch.device("cpu"), "train split")
    return sum(part.element_size() * part[0].numel() for part in row.parts())


def choose_loading(
    loading: str,
    budget_mib: Optional[float],
    rows_held: int,
    bytes_per_row: int,
) -> Tuple[bool, str]:
    """Whether to stream the training split, and why (for the log)."""
    if loading != "auto":
        return loading == "stream", f"train.loading={loading}"
    need = rows_held * bytes_per_row
    budget = (
        budget_mib * MIB
        if budget_mib is not None
        else physical_memory_bytes() * BUDGET_SHARE_OF_MEMORY
    )
    over = need > budget
    return over, (
        f"its tensors would take {need / MIB:,.1f} MiB, "
        f"{'over' if over else 'within'} the memory budget of "
        f"{budget / MIB:,.1f} MiB (train.memory_budget_mib)"
    )


def window_seed(seed: int, rank: int, window: int) -> int:
    return ((seed * SEED_MIX + rank) * SEED_MIX + window) % SEED_MODULUS


@dataclass(frozen=True)
class StreamPlan(BatchPlan):
    """A BatchPlan whose rows are the row groups each process owns."""

    group_rows: Tuple[int, ...] = ()  # rows of every row group of the split
    buffer_rows: int = 1  # a window holds whole row groups of at least this many

    streamed = True

    @classmethod
    def for_stream(
        cls,
        batch_size: int,
        context: DistContext,
        group_rows: Sequence[int],
        buffer_rows: int,
        chosen: bool = False,
    ) -> "StreamPlan":
        world = context.world_size
        if len(group_rows) < world:
            raise ModelSphereError(
                f"the training split has {len(group_rows)} row group(s), fewer than "
                f"the {world} processes that would each stream their own: lower "
                "data.write_row_group_rows and run data_preprocessing.py again, or "
                "train.loading=memory"
            )
        if chosen:
            batch_size -= batch_size % world
        if batch_size % world:
            raise ModelSphereError(
                f"train.batch_size={batch_size} does not divide into the {world} "
                "processes' equal shares of each batch (train.loading=stream): use "
                f"a multiple of {world}"
            )
        shards = tuple(sum(group_rows[rank::world]) for rank in range(world))
        return cls(
            batch_size,
            context,
            sum(group_rows),
            shards,
            group_rows=tuple(group_rows),
            buffer_rows=buffer_rows,
        )

    def own_groups(self) -> List[int]:
        world = self.context.world_size
        return list(range(self.context.rank, len(self.group_rows), world))

    def shard_order(self, seed: int, device) -> torch.Tensor:
        """This process's row groups, in the order of the epoch seeded `seed`."""
        own = torch.tensor(self.own_groups(), dtype=torch.int64)
        generator = torch.Generator().manual_seed(seed + self.context.rank)
        return own[torch.randperm(len(own), generator=generator)].to(device)

    def windows(self, order: Sequence[int]) -> List[List[int]]:
        """The epoch's groups in windows of at least `buffer_rows` rows each
        (the last window takes what is left)."""
        windows: List[List[int]] = [[]]
        rows = 0
        for group in order:
            if rows >= self.buffer_rows:
                windows.append([])
                rows = 0
            windows[-1].append(int(group))
            rows += self.group_rows[int(group)]
        return windows if windows[0] else []


class StreamedTrainSplit:
    """The train split as a stream of batches (see the module's docstring)."""

    def __init__(
        self,
        data: ProcessedData,
        feature_state,
        device: torch.device,
        cache: Optional[GroupCache] = None,
    ):
        self.data, self.feature_state, self.device = data, feature_state, device
        self.cache = cache
        self._empty: Optional[SplitTensors] = None  # a batch of no rows, made once

    def targets(self, plan: StreamPlan) -> torch.Tensor:
        """This process's training targets (class counts for class weights),
        read from the target column alone."""
        name = self.feature_state["target"]["name"]
        parts = [
            frame_tensors_target(
                read_row_groups(self.data, "train", [group], [name]),
                self.feature_state,
            )
            for group in plan.own_groups()
        ]
        return torch.cat(parts).to(self.device)

    def load_window(self, groups: List[int], seed: int) -> SplitTensors:
        """A window's rows, read (or taken from the cache), transformed and
        shuffled."""
        parts = [
            group_tensors(self.data, "train", group, self.feature_state, self.cache)
            for group in groups
        ]
        tensors = _to(_concat(parts), self.device)
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(tensors), generator=generator).to(self.device)
        return SplitTensors(*(part[order] for part in tensors.parts()))

    def batches(self, plan: StreamPlan, progress) -> Iterator[Tuple[SplitTensors, int]]:
        """The batches from `progress.next_step` on, each with its global size."""
        windows = plan.windows(progress.order.tolist())
        rank = plan.context.rank
        skip = plan.rows_before(progress.next_step)  # rows already trained on
        first = 0
        while first < len(windows) and skip >= self._rows(plan, windows[first]):
            skip -= self._rows(plan, windows[first])
            first += 1
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream") as pool:

            def read(window: int) -> Optional[Future]:
                if window >= len(windows):
                    return None
                seed = window_seed(progress.seed, rank, window)
                groups = windows[window]
                if self.cache is not None and self.cache.holds(groups):
                    # Read back in a fraction of a second: here, since a thread
                    # beside torch's own slows training more than it saves.
                    loaded: Future = Future()
                    loaded.set_result(self.load_window(groups, seed))
                    return loaded
                return pool.submit(self.load_window, groups, seed)

            pending: List[SplitTensors] = []
            held = 0
            ahead, next_window = read(first), first + 1
            for step in range(progress.next_step, plan.steps()):
                while held < plan.local_batch and ahead is not None:
                    window = ahead.result()
                    ahead, next_window = read(next_window), next_window + 1
                    if skip:
                        window = _rows_from(window, skip)
                        skip = 0
                    pending.append(window)
                    held += len(window)
                if held == 0:  # this process's rows ran out: none this step
                    yield self._no_rows(), plan.global_rows(step)
                    continue
                batch, pending = _take(pending, plan.local_batch)
                held -= len(batch)
                yield batch, plan.global_rows(step)

    def _no_rows(self) -> SplitTensors:
        if self._empty is None:
            self._empty = no_rows(self.data, "train", self.feature_state, self.device)
        return self._empty

    @staticmethod
    def _rows(plan: StreamPlan, window: List[int]) -> int:
        return sum(plan.group_rows[group] for group in window)


class StreamedEvalSplit:
    """A validation or test split, scored one row group at a time; each process
    scores its own groups (its index modulo the processes)."""

    def __init__(
        self,
        data: ProcessedData,
        split: str,
        feature_state,
        device: torch.device,
        context: DistContext,
        cache: Optional[GroupCache] = None,
    ):
        self.data, self.split = data, split
        self.feature_state, self.device, self.context = feature_state, device, context
        self.groups = split_row_groups(data, split)
        self.cache = cache

    def chunks(self) -> Iterator[SplitTensors]:
        world, rank = self.context.world_size, self.context.rank
        mine = list(range(rank, len(self.groups), world))
        if not mine:  # a process with no group scores no rows
            yield no_rows(self.data, self.split, self.feature_state, self.device)
        for group in mine:
            tensors = group_tensors(
                self.data, self.split, group, self.feature_state, self.cache
            )
            yield _to(tensors, self.device)


def no_rows(data: ProcessedData, split: str, feature_state, device) -> SplitTensors:
    """A batch of none of the split's rows (its columns alone)."""
    frame = read_row_groups(data, split, [])
    return frame_tensors(frame, feature_state, device, f"{split} split")


def group_tensors(
    data: ProcessedData,
    split: str,
    group: int,
    feature_state,
    cache: Optional[GroupCache],
) -> SplitTensors:
    """One row group's tensors (on the CPU), from the cache when it has them."""

    def transformed() -> SplitTensors:
        frame = read_row_groups(data, split, [group])
        return frame_tensors(
            frame, feature_state, torch.device("cpu"), f"{split} split"
        )

    return transformed() if cache is None else cache.get(group, transformed)


def frame_tensors_target(frame, feature_state) -> torch.Tensor:
    name = feature_state["target"]["name"]
    return torch.from_numpy(encode_target(frame[name], feature_state, "train split"))


def _rows_from(tensors: SplitTensors, start: int) -> SplitTensors:
    return SplitTensors(*(part[start:] for part in tensors.parts()))


def _take(
    pending: List[SplitTensors], rows: int
) -> Tuple[SplitTensors, List[SplitTensors]]:
    """The first `rows` rows of the pending windows (fewer when they run out;
    at least one row must be pending), and what is left of them."""
    taken: List[SplitTensors] = []
    left = rows
    while pending and left > 0:
        head = pending[0]
        if len(head) <= left:
            taken.append(head)
            left -= len(head)
            pending = pending[1:]
        else:
            taken.append(SplitTensors(*(part[:left] for part in head.parts())))
            pending = [_rows_from(head, left)] + pending[1:]
            left = 0
    return (taken[0] if len(taken) == 1 else _concat(taken)), pending


def _concat(parts: List[SplitTensors]) -> SplitTensors:
    """The rows of `parts`, one after the other."""
    return SplitTensors(
        *(torch.cat(columns) for columns in zip(*(p.parts() for p in parts)))
    )


def _to(tensors: SplitTensors, device) -> SplitTensors:
    return SplitTensors(*(part.to(device) for part in tensors.parts()))
