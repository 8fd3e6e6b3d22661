"""Distributed start-up on compute nodes: one SLURM task per GPU, no torchrun.

Under SLURM (submitit), ``submitit.helpers.TorchDistributedEnvironment`` turns the SLURM_*
variables into RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT, which
torch.distributed (and Megatron-Bridge's initialisation) read. Outside SLURM (local runs,
torchrun, tests) the variables already present are kept and a single-process default is
filled in. Stdlib + submitit only: no torch import here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int


def export_env(set_cuda_visible_devices: bool = False) -> DistEnv:
    """Export the torch.distributed env vars for this process and return them.

    ``set_cuda_visible_devices``: pin each task to GPU ``LOCAL_RANK`` (for clusters that do
    not bind GPUs per task themselves; see
    https://github.com/facebookincubator/submitit/issues/1704).
    """
    in_slurm_task = "SLURM_JOB_ID" in os.environ and "SLURM_PROCID" in os.environ
    in_local_job = os.environ.get("SUBMITIT_EXECUTOR") == "local"  # submitit LocalExecutor tasks
    if (in_slurm_task or in_local_job) and "RANK" not in os.environ:
        from submitit.helpers import TorchDistributedEnvironment

        env = TorchDistributedEnvironment()
        env.export(set_cuda_visible_devices=set_cuda_visible_devices)
    else:
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
        os.environ.setdefault("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    return DistEnv(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ["LOCAL_RANK"]),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])),
        master_addr=os.environ["MASTER_ADDR"],
        master_port=int(os.environ["MASTER_PORT"]),
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_job_env(rank: int, world: int, port: int | str) -> dict[str, str]:
    """The variables ``export_env`` reads for rank ``rank`` of a ``world``-process job started
    by hand on this machine (tests, benchmarks)."""
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
