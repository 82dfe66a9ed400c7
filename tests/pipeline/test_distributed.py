"""DistributedDataParallel under torchrun on the CPU (gloo, 2 processes).

What DDP is for, checked directly: each rank's forward receives its own disjoint
share of every global batch, the replicas hold identical weights after every
optimizer step although they saw different rows (the gradients were averaged),
and the result matches one process within float tolerance. Through `train.py`,
each epoch's history records the rows every process trained on, and the run
stops if the replicas' weights disagree at the end.

Tolerance: each rank takes every other row of the single-process batch and weights
its mean loss by its share, so the averaged gradient is mathematically the
single-process gradient; only the order of float32 additions differs (the
all-reduce sums two partial gradients instead of one). Those rounding differences
(~1e-7 relative per step) compound over a few epochs to well under 1e-5 in the
weights and 1e-5 in the metrics, which is what the test allows.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

import pytest
import torch
from safetensors.torch import load_file

from helpers import REPO, compose_config, free_port, make_table
from helpers.ddp_probe import BATCH_SIZE, ROWS, replay, train_probe
from modelsphere.core.devices import select_device
from modelsphere.core.errors import ModelSphereError
from modelsphere.core.runs import CHECKPOINT_FILE
from modelsphere.data.preprocessing import prepare_data
from modelsphere.data.splits import split_row_groups
from modelsphere.features.tensors import split_tensors
from modelsphere.models.artifact import load_artifact
from modelsphere.models.registry import build_model, spec_from_config
from modelsphere.training.checkpoint import load_checkpoint
from modelsphere.training.distributed import DistContext
from modelsphere.training.epochs import evaluate_split
from modelsphere.training.optimization import make_loss
from modelsphere.training.run import run_training

TOLERANCE = 1e-5
NODE_TIMEOUT = 120  # seconds for a 2-epoch run on two "nodes"
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# every process holds every row and shares one permutation: matches one process
REPLICATED = "train.ddp_data=replicated"


def settings(tmp_path: Path, outputs: str, *extra: str):
    return [
        "data=csv",
        f"data.path={tmp_path / 'table.csv'}",
        "data.target=label",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.outputs_dir={tmp_path / outputs}",
        "device=cpu",
        "model=mlp_small",
        "train.batch_size=32",
        "train.scheduler=constant",
        "train.early_stopping_patience=null",
        "train.plot=false",
        *extra,
    ]


def torchrun(tmp_path: Path, overrides, script="train.py"):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", str(REPO / script), *overrides]
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=300
    )


def only_run(outputs: Path) -> Path:
    runs = list((outputs / "train").iterdir())
    assert len(runs) == 1, runs  # one run dir, not one per process
    return runs[0]


def assert_close_runs(single: Path, multi: Path) -> None:
    left = load_file(str(single / "model.safetensors"))
    right = load_file(str(multi / "model.safetensors"))
    assert left.keys() == right.keys()
    for name in left:
        assert torch.allclose(left[name], right[name], atol=TOLERANCE), name
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (single, multi)]
    for split in ("val", "test"):
        for name, value in metrics[0]["final"][split].items():
            assert metrics[1]["final"][split][name] == pytest.approx(
                value, abs=TOLERANCE
            ), (split, name)
    assert metrics[1]["training"]["processes"] == 2
    batch = metrics[1]["training"]["batch_size"]
    for one, two in zip(metrics[0]["history"], metrics[1]["history"]):
        (n_train,) = one["rows_per_process"]
        first, second = two["rows_per_process"]  # each rank trained on its half
        assert first + second == n_train
        assert abs(first - n_train / 2) <= batch and abs(second - n_train / 2) <= batch


@pytest.fixture
def table(tmp_path):
    make_table(rows=400).to_csv(tmp_path / "table.csv", index=False)


def test_two_processes_match_one_and_write_one_run_dir(tmp_path, table):
    single = tmp_path / "single" / "train" / "run"
    run_training(
        compose_config(settings(tmp_path, "single", "train.max_epochs=3")), single
    )
    result = torchrun(
        tmp_path, settings(tmp_path, "multi", "train.max_epochs=3", REPLICATED)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    multi = only_run(tmp_path / "multi")
    assert (tmp_path / "multi" / "latest").resolve() == multi.resolve()
    assert_close_runs(single, multi)
    assert "Traceback" not in result.stdout + result.stderr


def test_a_distributed_run_resumes_like_a_single_one(tmp_path, table):
    single = tmp_path / "single" / "train" / "run"
    run_training(
        compose_config(settings(tmp_path, "single", "train.max_epochs=4")), single
    )
    first = torchrun(
        tmp_path, settings(tmp_path, "multi", "train.max_epochs=2", REPLICATED)
    )
    assert first.returncode == 0, first.stdout + first.stderr
    multi = only_run(tmp_path / "multi")
    resumed = torchrun(
        tmp_path,
        settings(
            tmp_path,
            "multi",
            "train.max_epochs=4",
            f"train.resume={multi}",
            REPLICATED,
        ),
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # The finished 2-epoch run is kept; the continued run is a new run dir.
    continued = (tmp_path / "multi" / "latest").resolve()
    assert continued != multi.resolve()
    assert len(json.loads((multi / "metrics.json").read_text())["history"]) == 2
    assert len(json.loads((continued / "metrics.json").read_text())["history"]) == 4
    assert_close_runs(single, continued)


def test_each_rank_trains_its_share_and_replicas_stay_identical(tmp_path):
    result = torchrun(tmp_path, [str(tmp_path)], script="tests/helpers/ddp_probe.py")
    assert result.returncode == 0, result.stdout + result.stderr
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    order = ranks[0]["order"]
    assert torch.equal(order, ranks[1]["order"])  # one global permutation
    steps = -(-ROWS // BATCH_SIZE)
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == steps
    for step in range(steps):
        batch = set(order[step * BATCH_SIZE : (step + 1) * BATCH_SIZE].tolist())
        mine, theirs = (set(rank["seen"][step].tolist()) for rank in ranks)
        assert not mine & theirs, step  # disjoint shares
        assert mine | theirs == batch, step  # together, the whole global batch
        assert torch.equal(
            ranks[0]["weights"][step], ranks[1]["weights"][step]
        ), f"replicas differ after step {step}: gradients were not averaged"
    assert ranks[0]["rows"] + ranks[1]["rows"] == ROWS
    assert all(abs(rank["rows"] - ROWS / 2) <= BATCH_SIZE for rank in ranks)
    assert ranks[0]["mean_loss"] == pytest.approx(ranks[1]["mean_loss"])

    _, single = train_probe(DistContext())
    assert single["rows"] == ROWS
    for step in range(steps):  # the same updates as one process, up to rounding
        assert torch.allclose(
            single["weights"][step], ranks[0]["weights"][step], atol=TOLERANCE
        ), step
    assert single["mean_loss"] == pytest.approx(ranks[0]["mean_loss"], rel=1e-5)

    assert [rank["after_training"] for rank in ranks] == ["agree", "agree"]
    for rank in ranks:
        assert "ended training with different weights" in rank["after_drift"]
        # gloo's worker thread let go of every all-reduced tensor before the
        # caller went on: one that lets go while the interpreter exits aborts
        # the process (SIGABRT) after a run that succeeded.
        assert set(rank["kept_after_all_reduce"]) == {1}


def test_each_rank_holds_and_trains_only_its_shard(tmp_path):
    """train.ddp_data=shards: a process holds 1/world of the rows, walks only
    those, and the averaged gradient is that of the whole global batch (the
    shares of a short last batch differ: 5 and 6 rows)."""
    result = torchrun(
        tmp_path, [str(tmp_path), "shards"], script="tests/helpers/ddp_probe.py"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    held = [set(rank["held"].tolist()) for rank in ranks]
    assert not held[0] & held[1] and held[0] | held[1] == set(range(ROWS))
    assert [len(h) for h in held] == [ROWS // 2, ROWS - ROWS // 2]
    steps = -(-(ROWS - ROWS // 2) // (BATCH_SIZE // 2))
    global_batches = []
    for step in range(steps):
        mine, theirs = (rank["seen"][step] for rank in ranks)
        assert set(mine.tolist()) <= held[0] and set(theirs.tolist()) <= held[1]
        global_batches.append(torch.cat([mine, theirs]))
        assert torch.equal(
            ranks[0]["weights"][step], ranks[1]["weights"][step]
        ), f"replicas differ after step {step}: gradients were not averaged"
    for rank, rows in zip(ranks, held):  # every held row once per epoch
        assert sorted(torch.cat(rank["seen"]).tolist()) == sorted(rows)
        assert rank["rows"] == len(rows)
    assert [len(b) for b in global_batches] == [BATCH_SIZE] * (steps - 1) + [11]
    reference = replay(global_batches)  # one process taking those batches
    for step in range(steps):
        assert torch.allclose(
            reference[step], ranks[0]["weights"][step], atol=TOLERANCE
        ), step
    assert [rank["after_training"] for rank in ranks] == ["agree", "agree"]


STREAMED = ("train.loading=stream", "data.write_row_group_rows=50")


@pytest.mark.parametrize("loading", [(), STREAMED], ids=["memory", "stream"])
def test_a_sharded_run_holds_half_the_rows_and_reports_whole_split_metrics(
    tmp_path, table, loading
):
    """In memory, each process holds its half of every split; streamed, each
    reads only its own row groups. Either way the metrics are the whole split's."""
    # balanced class weights: counted over the whole training split, not a
    # shard; bin edges placed on a seeded sample of it (50 of its rows)
    balanced = ["train.class_weights=balanced", "model.piecewise.subsample=50"]
    balanced += [*loading, "train.shuffle_buffer_rows=100"]
    result = torchrun(
        tmp_path, settings(tmp_path, "multi", "train.max_epochs=2", *balanced)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = only_run(tmp_path / "multi")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    training = metrics["training"]
    cfg = compose_config(settings(tmp_path, "multi", *balanced))
    data = prepare_data(cfg.data, cfg.paths.data_dir)
    n_train = data.split_rows("train")
    assert training["ddp_data"] == "shards"
    if loading:
        groups = split_row_groups(data, "train")
        assert len(groups) >= 4 and training["loading"] == "stream"
        halves = [sum(groups[0::2]), sum(groups[1::2])]
        assert training["rows_held_per_process"] == halves
    else:
        halves = [n_train // 2, n_train - n_train // 2]
        assert training["rows_held_per_process"] == halves
    assert len(training["peak_rss_mib_per_process"]) == 2
    assert all(mib > 0 for mib in training["peak_rss_mib_per_process"])
    for epoch in metrics["history"]:  # each process trained on its shard only
        assert epoch["rows_per_process"] == training["rows_held_per_process"]
    # Validation and test were scored in shards and gathered: the metrics are
    # those of the whole split, as one process computes them with these weights.
    artifact = load_artifact(run_dir)
    model = build_model(artifact.spec)
    model.load_state_dict(artifact.state_dict)
    train = split_tensors(data, "train", artifact.feature_state, torch.device("cpu"))
    loss_fn = make_loss(artifact.task, train.target, "balanced")
    # the bin edges were placed on the whole split's rows, as one process does
    assert artifact.spec == spec_from_config(
        cfg.model, artifact.feature_state, artifact.task, train=train, seed=cfg.seed
    )
    for split in ("val", "test"):
        whole = split_tensors(data, split, artifact.feature_state, torch.device("cpu"))
        expected = evaluate_split(
            model,
            whole,
            artifact.feature_state,
            artifact.task,
            select_device("cpu"),
            cfg.train.eval_batch_size,
            loss_fn,
        )
        assert metrics["final"][split]["rows"] == data.split_rows(split)
        for name, value in expected.items():
            assert metrics["final"][split][name] == pytest.approx(
                value, abs=TOLERANCE
            ), (split, name)


def start_srun(overrides, tasks: int = 2, ranks=None, **changes: str):
    """`srun --ntasks=<tasks> python train.py ...` on this machine: one process
    per task (or only those in `ranks`) with the variables srun sets (the node
    list is this host; the port is chosen free here instead of derived from the
    job id)."""
    port = str(free_port())
    processes = []
    for rank in range(tasks) if ranks is None else ranks:
        env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
        env.update(
            SLURM_JOB_ID="4242",
            SLURM_STEP_ID="0",
            SLURM_PROCID=str(rank),
            SLURM_NTASKS=str(tasks),
            SLURM_LOCALID=str(rank),
            SLURM_NODELIST="localhost",
            MASTER_PORT=port,
            PYTHONUNBUFFERED="1",
        )
        env.update(changes)
        env = {k: v for k, v in env.items() if v is not None}  # None: unset
        processes.append(
            subprocess.Popen(
                [sys.executable, str(REPO / "train.py"), *overrides],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return processes


def srun(overrides, tasks: int = 2, ranks=None, **changes: str):
    """As `start_srun`, waiting for every task: (exit codes, outputs)."""
    processes = start_srun(overrides, tasks, ranks, **changes)
    with all_stopped(processes):
        outputs = [process.communicate(timeout=300)[0] for process in processes]
    return [process.returncode for process in processes], outputs


@contextmanager
def all_stopped(processes) -> Iterator[None]:
    """Every process is killed if still running when the block ends (a test
    that times out leaves none waiting on a rendezvous)."""
    try:
        yield
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_srun_tasks_train_one_distributed_run_without_torchrun(tmp_path, table):
    codes, outputs = srun(settings(tmp_path, "multi", "train.max_epochs=1"))
    assert codes == [0, 0], "\n".join(outputs)[-4000:]
    assert "distributed (slurm): rank 0 of 2" in outputs[0]
    run_dir = only_run(tmp_path / "multi")
    training = json.loads((run_dir / "metrics.json").read_text())["training"]
    assert training["processes"] == 2
    held = training["rows_held_per_process"]
    assert abs(held[0] - held[1]) <= 1  # each task holds its half


def test_slurm_variables_that_disagree_stop_every_task_with_one_line(tmp_path, table):
    codes, outputs = srun(
        settings(tmp_path, "multi"), SLURM_NTASKS="2", SLURM_PROCID="2"
    )
    assert codes == [2, 2]
    for output in outputs:
        assert "SLURM_PROCID=2 is not a task of SLURM_NTASKS=2" in output
        assert "Traceback" not in output


# A run long enough to be stopped in the middle; its epochs take milliseconds.
LONG = ("train.max_epochs=3000",)
FAULT_TIMEOUT_S = 10  # train.ddp_timeout_s in the fault tests
WAIT_S = 120


def wait_for_epoch(processes, outputs: Path) -> Path:
    """The run dir, once its checkpoint holds a finished epoch."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for process in processes:
            assert process.poll() is None, process.communicate()[0][-3000:]
        for path in (outputs / "train").glob(f"*/{CHECKPOINT_FILE}"):
            with suppress(ModelSphereError):
                if load_checkpoint(path.parent)["epoch"] >= 1:
                    return path.parent
        time.sleep(0.05)
    raise AssertionError("no epoch finished")


@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP])
def test_a_rank_that_dies_or_hangs_stops_the_other_with_one_line(
    tmp_path, table, fault
):
    """Rank 1 is killed (its connections close) or frozen (rank 0's next
    collective waits out train.ddp_timeout_s): rank 0 stops on its own, with
    one line, and the checkpoint it last wrote still loads."""
    overrides = settings(
        tmp_path, "multi", *LONG, f"train.ddp_timeout_s={FAULT_TIMEOUT_S}"
    )
    processes = start_srun(overrides)
    with all_stopped(processes):
        run_dir = wait_for_epoch(processes, tmp_path / "multi")
        processes[1].send_signal(fault)
        output = processes[0].communicate(timeout=FAULT_TIMEOUT_S + WAIT_S)[0]
    assert processes[0].returncode == 2, output[-3000:]
    assert "process 0 of 2 lost the other processes" in output
    assert f"train.ddp_timeout_s={FAULT_TIMEOUT_S}" in output
    assert f"resume with: python train.py train.resume={run_dir}" in output
    assert "Traceback" not in output
    assert load_checkpoint(run_dir)["epoch"] >= 1


@pytest.mark.parametrize(
    "where", [{"MASTER_ADDR": "127.0.0.1"}, {"SLURM_NODELIST": "no-such-host.invalid"}]
)
def test_an_unreachable_rendezvous_stops_with_one_line(tmp_path, table, where):
    """Rank 1 started alone: nobody listens at the rendezvous, or its host
    does not resolve; the wait is bounded by train.ddp_timeout_s."""
    overrides = settings(tmp_path, "multi", "train.ddp_timeout_s=3")
    codes, outputs = srun(overrides, ranks=[1], **where)
    assert codes == [2], outputs[0][-3000:]
    host = where.get("MASTER_ADDR") or where["SLURM_NODELIST"]
    assert f"process 1 of 2 could not reach the rendezvous at {host}:" in outputs[0]
    assert "within train.ddp_timeout_s=3 s" in outputs[0]
    assert "Traceback" not in outputs[0]


def fake_scontrol(tmp_path: Path) -> dict:
    """An `scontrol` that records its arguments: what SLURM would be asked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_a_preempted_slurm_job_requeues_itself_and_resumes(tmp_path, table):
    """SLURM warns one task (SIGUSR1) before pre-empting the job: every task
    stops at the same batch, rank 0 saves, records the run dir and requeues the
    job once; the requeued job (same command, SLURM_RESTART_COUNT=1) resumes
    that run dir by itself and finishes it."""
    overrides = settings(tmp_path, "multi", "train.max_epochs=20")
    path = fake_scontrol(tmp_path)
    processes = start_srun(overrides, **path)
    with all_stopped(processes):
        run_dir = wait_for_epoch(processes, tmp_path / "multi")
        processes[1].send_signal(signal.SIGUSR1)  # rank 0 hears it from rank 1
        outputs = [process.communicate(timeout=WAIT_S)[0] for process in processes]
    codes = [process.returncode for process in processes]
    assert codes == [128 + signal.SIGUSR1] * 2, outputs[0][-3000:]
    assert "SLURM job 4242 requeued" in outputs[0]
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    marker = tmp_path / "multi" / ".requeue" / "slurm-4242.json"
    assert json.loads(marker.read_text())["run_dir"] == str(run_dir.resolve())
    stopped = json.loads((run_dir / "metrics.json").read_text())
    assert stopped["status"] == "interrupted"
    assert stopped["interrupted"]["signal"] == "SIGUSR1"

    codes, outputs = srun(overrides, SLURM_RESTART_COUNT="1", **path)
    assert codes == [0, 0], outputs[0][-3000:]
    assert f"resuming {run_dir.resolve()}" in outputs[0]
    finished = json.loads((run_dir / "metrics.json").read_text())
    assert finished["status"] == "completed"
    assert [row["epoch"] for row in finished["history"]] == list(range(1, 21))
    assert not marker.exists()  # a later step of the job starts afresh


@contextmanager
def two_network_namespaces() -> Iterator[list]:
    """Two "nodes" on this machine: network namespaces joined by a veth pair,
    each seeing only its own loopback and its end of the pair. Yields
    (namespace, interface, address) per node; removed on exit."""
    tag = os.getpid() % 100_000
    nodes = [
        (f"msn{tag}{side}", f"msv{tag}{side}", f"10.213.{tag % 250}.{number}")
        for number, side in ((1, "a"), (2, "b"))
    ]
    (ns_a, link_a, _), (ns_b, link_b, _) = nodes
    setup = [
        ["ip", "netns", "add", ns_a],
        ["ip", "netns", "add", ns_b],
        ["ip", "link", "add", link_a, "type", "veth", "peer", "name", link_b],
    ]
    for namespace, link, address in nodes:
        setup += [
            ["ip", "link", "set", link, "netns", namespace],
            ["ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", link],
            ["ip", "-n", namespace, "link", "set", link, "up"],
            ["ip", "-n", namespace, "link", "set", "lo", "up"],
        ]
    try:
        for command in setup:
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"network namespaces unavailable: {done.stderr.strip()}")
        yield nodes
    finally:
        for namespace, _, _ in nodes:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


@pytest.mark.skipif(
    shutil.which("ip") is None or os.geteuid() != 0,
    reason="two network namespaces need iproute2 and root",
)
def test_two_nodes_in_their_own_network_namespaces_train_one_run(tmp_path, table):
    """torchrun --nnodes=2 with the c10d rendezvous, one agent per "node": the
    processes reach each other only through the veth pair."""
    with two_network_namespaces() as nodes:
        host, run_id = nodes[0][2], nodes[0][0]  # one rendezvous for both agents
        agents = []
        for number, (namespace, link, address) in enumerate(nodes):
            command = ["ip", "netns", "exec", namespace, "env"]
            command += [f"GLOO_SOCKET_IFNAME={link}", sys.executable]
            command += ["-m", "torch.distributed.run", "--nnodes=2"]
            command += ["--nproc_per_node=1", "--rdzv_backend=c10d"]
            command += [f"--rdzv_endpoint={host}:29400", f"--rdzv_id={run_id}"]
            command += [f"--rdzv_conf=is_host={int(number == 0)}"]
            command += [f"--local-addr={address}", str(REPO / "train.py")]
            command += settings(tmp_path, "multi", "train.max_epochs=2")
            log = tmp_path / f"node{number}.log"  # files: no pipe fills up
            with open(log, "w") as sink:
                agents.append(
                    subprocess.Popen(
                        command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT
                    )
                )
        with all_stopped(agents):
            for agent in agents:
                agent.wait(timeout=NODE_TIMEOUT)
        outputs = [(tmp_path / f"node{n}.log").read_text() for n in range(2)]
    assert [agent.returncode for agent in agents] == [0, 0], "\n".join(outputs)[-4000:]
    logs = "\n".join(outputs)
    assert "rank 0 of 2" in logs and "rank 1 of 2" in logs
    run_dir = only_run(tmp_path / "multi")
    training = json.loads((run_dir / "metrics.json").read_text())["training"]
    assert training["processes"] == 2
    held = training["rows_held_per_process"]
    assert abs(held[0] - held[1]) <= 1  # each node's process holds its half


def test_a_streamed_split_is_not_replicated(tmp_path, table):
    codes, outputs = srun(settings(tmp_path, "multi", REPLICATED, *STREAMED))
    assert codes == [2, 2], outputs[0][-3000:]
    for output in outputs:
        assert "train.ddp_data=replicated asks every process to hold" in output
        assert "Traceback" not in output
