"""How the processes of a DDP run share the data (training/sharding.py), checked
without collectives: the plan's arithmetic, the epoch progress a resumed
process rebuilds, and a split read for some of its rows."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from helpers import compose_config, make_table
from modelsphere.core.errors import ModelSphereError
from modelsphere.features import tensors
from modelsphere.data.preprocessing import prepare_data
from modelsphere.features.fit import fit_feature_state_from_split
from modelsphere.features.tensors import split_tensors
from modelsphere.training.distributed import DistContext
from modelsphere.training.epochs import EpochProgress
from modelsphere.training.sharding import BatchPlan, shard_rows, shard_sizes

ROWS = 203
BATCH = 32


def ranks(world: int = 2):
    return [DistContext(rank=r, world_size=world) for r in range(world)]


def test_shards_are_disjoint_cover_the_split_and_differ_by_at_most_one_row():
    for n_rows, world in [(203, 2), (10, 3), (2, 4), (0, 2)]:
        held = [shard_rows(n_rows, c) for c in ranks(world)]
        assert [len(r) for r in held] == list(shard_sizes(n_rows, world))
        assert [i for r in held for i in r] == list(range(n_rows))
        assert max(map(len, held)) - min(map(len, held)) <= 1


def test_each_step_takes_every_process_share_of_one_global_batch():
    plans = [BatchPlan.for_run(BATCH, c, ROWS, "shards") for c in ranks()]
    generator_state = torch.Generator().manual_seed(3).get_state()
    orders = []
    for plan in plans:  # each process draws from the same generator state
        generator = torch.Generator()
        generator.set_state(generator_state)
        orders.append(plan.order(generator, "cpu")[0])
    assert plans[0].steps() == plans[1].steps() == -(-102 // 16)
    trained = [[], []]
    for step in range(plans[0].steps()):
        sizes = []
        for rank, plan in enumerate(plans):
            index, everyone = plan.batch(orders[rank], step)
            trained[rank] += index.tolist()
            sizes.append(len(index))
        assert everyone == sum(sizes)  # both processes know the global batch
        assert everyone == (BATCH if step < plans[0].steps() - 1 else 5 + 6)
    for rank, plan in enumerate(plans):  # each process walks its shard once
        assert sorted(trained[rank]) == list(range(plan.rows_held()))
    # Each shard has its own permutation: with one shared by equal shards,
    # row i and row N/2+i would share every batch of every epoch.
    equal = [BatchPlan.for_run(BATCH, c, 2 * 101, "shards") for c in ranks()]
    same_seed = [plan.order(torch.Generator().manual_seed(3), "cpu") for plan in equal]
    assert not torch.equal(same_seed[0][0], same_seed[1][0])


def test_a_shard_that_runs_out_takes_part_with_no_rows():
    """193 rows: shards of 96 and 97, so rank 0 has no row in the last step."""
    plans = [BatchPlan.for_run(BATCH, c, 193, "shards") for c in ranks()]
    orders = [plan.order(torch.Generator().manual_seed(1), "cpu")[0] for plan in plans]
    last = plans[0].steps() - 1
    (mine, everyone), (theirs, _) = (
        plan.batch(order, last) for plan, order in zip(plans, orders)
    )
    assert (len(mine), len(theirs), everyone) == (0, 1, 1)


@pytest.mark.parametrize(
    "rows, batch, ddp_data, world, smallest",
    [
        (33, 32, "replicated", 1, 1),  # one process, a last batch of one row
        (64, 32, "replicated", 1, 32),
        (195, 32, "shards", 2, 1),  # shards of 97 and 98: a 1-row tail on rank 0
        (194, 32, "shards", 2, 1),  # 97 and 97
        (196, 32, "shards", 2, 2),
        (97, 32, "replicated", 2, 1),  # the last global batch has 1 row
    ],
)
def test_the_smallest_forward_of_a_plan(rows, batch, ddp_data, world, smallest):
    """What model.normalization=batchnorm is checked against (it cannot train
    on one row)."""
    plan = BatchPlan.for_run(batch, ranks(world)[0], rows, ddp_data)
    assert plan.smallest_share() == smallest


def test_fewer_training_rows_than_processes_is_refused():
    with pytest.raises(ModelSphereError, match="fewer than the 4 processes"):
        BatchPlan.for_run(BATCH, ranks(4)[0], 3, "shards")


def test_a_batch_the_processes_cannot_share_equally_is_refused():
    with pytest.raises(ModelSphereError, match="batch_size=33 does not divide"):
        BatchPlan.for_run(33, ranks()[0], ROWS, "shards")
    chosen = BatchPlan.for_run(64, ranks(3)[0], ROWS, "shards", chosen=True)
    assert chosen.batch_size == 63  # a size chosen for the data is rounded
    assert BatchPlan.for_run(33, ranks()[0], ROWS, "replicated").batch_size == 33


@pytest.mark.parametrize("ddp_data", ["shards", "replicated"])
def test_a_resumed_process_rebuilds_its_own_permutation(ddp_data):
    """A checkpoint holds rank 0's progress; rank 1 must take up its own."""
    plans = [BatchPlan.for_run(BATCH, c, ROWS, ddp_data) for c in ranks()]
    started = [
        EpochProgress.start(1, plan, torch.Generator().manual_seed(5), "cpu")
        for plan in plans
    ]
    saved = started[0].payload()
    saved["next_step"] = 3
    for rank, plan in enumerate(plans):
        resumed = EpochProgress.from_payload(saved, "cpu")
        resumed.resume_on(plan)
        assert torch.equal(resumed.order, started[rank].order)
        assert resumed.rows == plan.rows_before(3) > 0
        assert float(resumed.total) == 0.0 or rank == 0


def test_a_mid_epoch_checkpoint_resumes_with_the_same_shards_only():
    two = BatchPlan.for_run(BATCH, ranks(2)[0], ROWS, "shards")
    saved = EpochProgress.start(1, two, torch.Generator(), "cpu").payload()
    for other in (
        BatchPlan.for_run(BATCH, ranks(4)[0], ROWS, "shards"),
        BatchPlan.for_run(BATCH, ranks(2)[0], ROWS, "replicated"),
    ):
        with pytest.raises(ModelSphereError, match="same number of processes"):
            EpochProgress.from_payload(saved, "cpu").resume_on(other)


def processed_table(tmp_path, rows: int, *overrides: str):
    """A small table preprocessed into splits, and its fitted feature state."""
    make_table(rows=rows).to_csv(tmp_path / "t.csv", index=False)
    cfg = compose_config(
        [
            "data=csv",
            f"data.path={tmp_path / 't.csv'}",
            "data.target=label",
            f"paths.data_dir={tmp_path / 'data'}",
            *overrides,
        ]
    )
    data = prepare_data(cfg.data, cfg.paths.data_dir)
    return data, fit_feature_state_from_split(data, cfg.model.features, cfg.seed)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_split_read_for_some_rows_equals_those_rows_of_the_whole(
    tmp_path, monkeypatch, fmt
):
    # rows are picked across several chunks
    monkeypatch.setattr(tensors, "SPLIT_CHUNK_ROWS", 64)
    data, state = processed_table(tmp_path, 300, f"data.format={fmt}")
    whole = split_tensors(data, "train", state, torch.device("cpu"))
    rows = np.random.default_rng(0).permutation(len(whole))[:50]
    # shuffled, a range past the first chunks, repeated rows, none
    for wanted in (rows, range(150, 200), [5, 5, 3], [], range(180, 180)):
        part = split_tensors(data, "train", state, torch.device("cpu"), wanted)
        index = torch.as_tensor(np.asarray(wanted, dtype=np.int64))
        assert torch.equal(part.numeric, whole.numeric[index])
        assert torch.equal(part.categorical, whole.categorical[index])
        assert torch.equal(part.target, whole.target[index])
    with pytest.raises(ModelSphereError, match="asked of the train split"):
        split_tensors(data, "train", state, torch.device("cpu"), [len(whole)])


def test_a_shard_is_read_from_its_own_row_groups_only(tmp_path, monkeypatch):
    data, state = processed_table(tmp_path, 400, "data.write_row_group_rows=32")
    whole = split_tensors(data, "train", state, torch.device("cpu"))
    read = []
    original = pq.ParquetFile.read_row_group

    def counted(self, index, *args, **kwargs):
        read.append(index)
        return original(self, index, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counted)
    shard = shard_rows(len(whole), ranks(2)[1])  # the second half
    part = split_tensors(data, "train", state, torch.device("cpu"), shard)
    assert torch.equal(part.numeric, whole.numeric[shard.start : shard.stop])
    assert torch.equal(part.target, whole.target[shard.start : shard.stop])
    first_group = shard.start // 32
    assert read == list(range(first_group, -(-len(whole) // 32)))


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_split_file_that_disagrees_with_its_manifest_is_refused(tmp_path, fmt):
    # CSV says its length only when read to the end: every shard reads it all
    data, state = processed_table(tmp_path, 120, f"data.format={fmt}")
    n_rows = data.split_rows("train")
    for claimed in (n_rows - 1, n_rows + 1):  # the arrays are sized from it
        data.manifest["splits"]["train"]["rows"] = claimed
        for rows in (None, range(0, 10), [3, 1]):  # a shard's read checks it too
            with pytest.raises(ModelSphereError, match="where the processed data's"):
                split_tensors(data, "train", state, torch.device("cpu"), rows)


def test_a_missing_split_file_says_to_run_preprocessing(tmp_path):
    data, state = processed_table(tmp_path, 120)
    data.split_path("train").unlink()
    with pytest.raises(ModelSphereError, match="processed split not found.*run data_"):
        split_tensors(data, "train", state, torch.device("cpu"), range(0, 10))
