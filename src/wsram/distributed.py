"""Data-parallel training on torch.distributed, started by ``torchrun``.

Every process (rank) draws its own canvases and actions, computes its gradient, and the
gradients are averaged with one all-reduce of a flat buffer per update; parameters then
stay identical on every rank without ever being sent. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sync(self, params: list[torch.Tensor], flags: list[float]) -> list[float]:
        """Average the gradients of ``params`` over ranks and sum ``flags`` (e.g. "stop
        requested") in the same all-reduce; a no-op on one process."""
        if self.world == 1:
            return flags
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads]
                         + [torch.tensor(flags, dtype=grads[0].dtype, device=grads[0].device)])
        dist.all_reduce(flat)
        n = flat.numel() - len(flags)
        flat[:n].div_(self.world)
        offset = 0
        for p, g in zip(params, grads, strict=True):
            k = g.numel()
            if p.grad is None:
                p.grad = flat[offset:offset + k].view_as(p).clone()
            else:
                p.grad.copy_(flat[offset:offset + k].view_as(p))
            offset += k
        return flat[n:].tolist()

    announced: bool = False

    def announce(self, ok: bool) -> None:
        """Rank 0: tell the other ranks whether its setup (checks, locks, preparation)
        succeeded; they wait in :meth:`await_setup`. At most once; no-op in one process."""
        if self.world > 1 and not self.announced:
            self.announced = True
            dist.broadcast(self._flag(1.0 if ok else 0.0), src=0)

    def await_setup(self) -> bool:
        """Other ranks: wait for rank 0's :meth:`announce`; True if its setup succeeded."""
        if self.world == 1:
            return True
        flag = self._flag(0.0)
        dist.broadcast(flag, src=0)
        return bool(flag.item() > 0.5)

    def _flag(self, value: float) -> torch.Tensor:
        device = (torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl"
                  else torch.device("cpu"))
        return torch.tensor([value], device=device)

    def finish(self) -> None:
        """After a successful run, wait until every rank is done (rank 0 evaluates and
        saves after the others' last update) before the group is torn down: a rank that
        tears its connections down while another still uses the group can abort."""
        if self.world > 1 and dist.is_initialized():
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def from_env(device: str) -> Dist:
    """Join the process group that torchrun describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        # Other ranks wait while rank 0 prepares (e.g. pretrains an encoder, computes
        # features): allow that an hour rather than the backends' default 10-30 minutes.
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=60))
    return Dist(rank=rank, world=world, local_rank=local_rank)


def rank_seed(seed: int, rank: int, stream: int) -> int:
    """Seed of one random stream of one rank; rank 0 keeps the single-process seeds."""
    base = seed + stream
    return base if rank == 0 else base + 1_000_003 * rank
