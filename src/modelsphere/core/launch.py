"""Who this process is in a distributed run, read from its launcher's environment.

- torchrun (and any launcher following PyTorch's `env://` convention) sets RANK,
  WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT.
- `srun python train.py` under SLURM starts one task per process and sets
  SLURM_PROCID (the rank), SLURM_NTASKS (the world size), SLURM_LOCALID (the
  rank on its node), SLURM_NODELIST and SLURM_STEP_ID (a job step started by
  srun; a batch script itself has none and is one process). The rendezvous is
  the first host of the node list, on a port every task derives from the job
  and step ids (MASTER_ADDR and MASTER_PORT, when set, are used instead), so no
  launcher is needed between SLURM and the training processes.

When both are set (torchrun started by srun, one per node), torchrun's win.
Variables that disagree stop the run with one line naming them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import List, Mapping, Optional

from modelsphere.core.errors import ModelSphereError

# Every task of a SLURM job step derives the same rendezvous port from the job
# and step ids, below Linux's ephemeral ports (32768 and up).
SLURM_PORT_BASE = 15000
SLURM_PORT_SPAN = 17000
SLURM_STEPS_APART = 31  # consecutive jobs' ports lie this far apart
NODE_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


@dataclass(frozen=True)
class Launch:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "none"  # torchrun | slurm | none
    address: Optional[str] = None  # the rendezvous host (SLURM)
    port: Optional[int] = None  # the rendezvous port (SLURM)

    def rendezvous_environment(self) -> dict:
        """The `env://` variables PyTorch's process group reads, for a launch
        that did not set them itself (SLURM)."""
        if self.launcher != "slurm":
            return {}
        return {
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "MASTER_ADDR": self.address,
            "MASTER_PORT": str(self.port),
        }


def launch_from_environment(environ: Mapping[str, str] = os.environ) -> Launch:
    srun_step = "SLURM_STEP_ID" in environ and "SLURM_NTASKS" in environ
    if "WORLD_SIZE" in environ and "RANK" not in environ and not srun_step:
        raise ModelSphereError(
            f"WORLD_SIZE={environ['WORLD_SIZE']} is set without RANK: start the "
            "processes with torchrun (which sets both) or srun"
        )
    if "WORLD_SIZE" in environ and "RANK" in environ:
        return Launch(
            rank=_integer(environ, "RANK", "0"),
            world_size=_integer(environ, "WORLD_SIZE"),
            local_rank=_integer(environ, "LOCAL_RANK", "0"),
            launcher="torchrun",
        )
    if not srun_step:
        return Launch()
    world_size = _integer(environ, "SLURM_NTASKS")
    if world_size <= 1:
        return Launch()
    rank = _integer(environ, "SLURM_PROCID")
    local_rank = _integer(environ, "SLURM_LOCALID", "0")
    if not 0 <= rank < world_size:
        raise ModelSphereError(
            f"SLURM_PROCID={rank} is not a task of SLURM_NTASKS={world_size} "
            "(ranks run from 0 to SLURM_NTASKS-1): the SLURM variables disagree"
        )
    if not 0 <= local_rank <= rank:
        raise ModelSphereError(
            f"SLURM_LOCALID={local_rank} cannot be the node rank of task "
            f"SLURM_PROCID={rank}: the SLURM variables disagree"
        )
    nodes = expand_nodelist(
        environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_NODELIST", "")
    )
    if "MASTER_PORT" in environ:
        port = _integer(environ, "MASTER_PORT")
    else:
        job = _integer(environ, "SLURM_JOB_ID", "0")
        step = _integer(environ, "SLURM_STEP_ID")  # two steps of one job differ
        port = SLURM_PORT_BASE + (job * SLURM_STEPS_APART + step) % SLURM_PORT_SPAN
    return Launch(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        launcher="slurm",
        address=environ.get("MASTER_ADDR") or nodes[0],
        port=port,
    )


def launched_rank(environ: Mapping[str, str] = os.environ) -> int:
    """This process's rank, 0 outside a distributed run or when the launch
    variables are wrong (training then stops on them with its message)."""
    try:
        return launch_from_environment(environ).rank
    except ModelSphereError:
        return 0


def expand_nodelist(nodelist: str) -> List[str]:
    """SLURM's compressed host list as host names: `gpu[01-03,7],login` ->
    gpu01, gpu02, gpu03, gpu7, login (several bracket groups in one name too)."""
    hosts: List[str] = []
    for item in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", nodelist):
        hosts += _expand_host(item, nodelist)
    if not hosts:
        raise ModelSphereError(
            "SLURM_NODELIST is empty: srun sets it to the job's hosts; the first "
            "is where the processes meet"
        )
    return hosts


def _expand_host(item: str, nodelist: str) -> List[str]:
    match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", item)
    if match is None:
        return [item]
    prefix, ranges, rest = match.groups()
    hosts = []
    for part in ranges.split(","):
        bounds = NODE_RANGE.match(part)
        if bounds is None:
            raise ModelSphereError(
                f"SLURM_NODELIST={nodelist!r}: {part!r} is not a number or a "
                "range of numbers"
            )
        first, last = bounds.group(1), bounds.group(2) or bounds.group(1)
        for number in range(int(first), int(last) + 1):
            hosts += _expand_host(f"{prefix}{number:0{len(first)}d}{rest}", nodelist)
    return hosts


def _integer(environ: Mapping[str, str], name: str, default: Optional[str] = None):
    value = environ.get(name, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ModelSphereError(
            f"{name}={value!r} is not a whole number (set by the launcher: "
            "torchrun or srun)"
        ) from None
