"""Who a process is in a distributed run, from torchrun's or srun's variables
(core/launch.py)."""

from __future__ import annotations

import pytest

from modelsphere.core.errors import ModelSphereError
from modelsphere.core.launch import (
    SLURM_PORT_BASE,
    SLURM_PORT_SPAN,
    SLURM_STEPS_APART,
    Launch,
    expand_nodelist,
    launch_from_environment,
    launched_rank,
)

SRUN = {  # task 3 of 4, two per node, as srun sets them
    "SLURM_JOB_ID": "123456",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "3",
    "SLURM_NTASKS": "4",
    "SLURM_LOCALID": "1",
    "SLURM_NODELIST": "gpu[07-08]",
}


def test_srun_tasks_meet_on_the_first_host_at_a_port_from_the_job_id():
    launch = launch_from_environment(SRUN)
    port = SLURM_PORT_BASE + (123456 * SLURM_STEPS_APART + 0) % SLURM_PORT_SPAN
    assert port < 32768  # below the ephemeral ports
    assert launch == Launch(3, 4, 1, "slurm", "gpu07", port)
    assert launch.rendezvous_environment() == {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "gpu07",
        "MASTER_PORT": str(port),
    }
    chosen = launch_from_environment(dict(SRUN, MASTER_PORT="29400"))
    assert chosen.port == 29400
    next_step = launch_from_environment(dict(SRUN, SLURM_STEP_ID="1"))
    assert next_step.port != launch.port  # two srun steps of one job at once


def test_torchrun_variables_win_and_a_batch_script_is_one_process():
    torchrun = dict(SRUN, RANK="5", WORLD_SIZE="8", LOCAL_RANK="1")
    assert launch_from_environment(torchrun) == Launch(5, 8, 1, "torchrun")
    batch_script = {k: v for k, v in SRUN.items() if k != "SLURM_STEP_ID"}
    assert launch_from_environment(batch_script) == Launch()
    assert launch_from_environment(dict(SRUN, SLURM_NTASKS="1")) == Launch()
    assert launch_from_environment({}) == Launch()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"SLURM_PROCID": "4"}, "SLURM_PROCID=4 is not a task of SLURM_NTASKS=4"),
        ({"SLURM_LOCALID": "5"}, "SLURM_LOCALID=5 cannot be the node rank"),
        ({"SLURM_NTASKS": "four"}, "SLURM_NTASKS='four' is not a whole number"),
        ({"SLURM_NODELIST": ""}, "SLURM_NODELIST is empty"),
        ({"SLURM_NODELIST": "gpu[a-b]"}, "'a-b' is not a number or a range"),
    ],
)
def test_slurm_variables_that_disagree_are_one_clear_line(change, message):
    with pytest.raises(ModelSphereError, match=message):
        launch_from_environment(dict(SRUN, **change))
    assert launched_rank(dict(SRUN, **change)) == 0  # the run dir's resolver


def test_a_world_size_without_a_rank_is_refused_outside_srun():
    """Every process would take rank 0 and wait for the others forever."""
    with pytest.raises(ModelSphereError, match="WORLD_SIZE=2 is set without RANK"):
        launch_from_environment({"WORLD_SIZE": "2"})
    # a SLURM script exporting WORLD_SIZE for its srun tasks: SLURM's ranks
    srun = launch_from_environment(dict(SRUN, WORLD_SIZE="4"))
    assert (srun.launcher, srun.rank) == ("slurm", 3)


def test_compressed_host_lists_expand_in_order():
    assert expand_nodelist("gpu[01-03,7],login,cpu[9-10]-ib") == [
        "gpu01",
        "gpu02",
        "gpu03",
        "gpu7",  # each range keeps its own zero padding
        "login",
        "cpu9-ib",
        "cpu10-ib",
    ]
    assert expand_nodelist("localhost") == ["localhost"]
    assert expand_nodelist("r[1-2]-n[01-02]") == [
        "r1-n01",
        "r1-n02",
        "r2-n01",
        "r2-n02",
    ]
