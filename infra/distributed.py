"""Processes of a job launched with torchrun (or alone): who am I, and the few collective steps
bulk jobs need. Training leaves all of this to Lightning."""
import contextlib
import dataclasses
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class Processes:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self):
        return self.rank == 0

    def barrier(self):
        if self.world_size > 1:
            dist.barrier()

    def gather(self, obj):
        """Every process's `obj`, as a list on rank 0 (None elsewhere)."""
        if self.world_size == 1:
            return [obj]
        gathered = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, gathered, dst=0)
        return gathered


def from_environment():
    """The process layout torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK (one process
    without them)."""
    env = os.environ
    return Processes(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


@contextlib.contextmanager
def process_group(procs, device):
    """Join torchrun's process group for the block when there is more than one process (NCCL on
    GPUs, gloo on the CPU)."""
    if procs.world_size == 1:
        yield
        return
    dist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()
