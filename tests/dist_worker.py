"""Worker for test_distributed.py, launched by ``torch.distributed.run`` with 2 processes.

Each rank computes SmoothHess with the default process group (the ranks split
the samples) and saves its result; rank 0 also saves the single-process result
for the same seed, computed with an explicit one-rank-free call.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import nn

from captum_smoothhess import SmoothHess


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(2, 6)
    rows = [0]

    def counted(inp: torch.Tensor) -> torch.Tensor:
        rows[0] += inp.shape[0]
        return net(inp)

    sh = SmoothHess(counted, kernel="poisson")
    # Each rank passes a different generator: rank 0's seed is broadcast.
    hess, grad = sh.attribute(
        x,
        target=1,
        stdevs=0.5,
        n_samples=600,
        n_samples_batch_size=50,
        generator=torch.Generator().manual_seed(7 + rank),
        return_gradient=True,
    )
    torch.save({"hess": hess, "grad": grad, "rows": rows[0]}, f"{out}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        single, sgrad = sh.attribute(
            x,
            target=1,
            stdevs=0.5,
            n_samples=600,
            n_samples_batch_size=50,
            generator=torch.Generator().manual_seed(7),
            return_gradient=True,
        )
        torch.save({"hess": single, "grad": sgrad}, f"{out}/single.pt")


if __name__ == "__main__":
    main(sys.argv[1])
