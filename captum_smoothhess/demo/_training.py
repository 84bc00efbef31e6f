"""Seeded in-process training of the small models used by the demo and the reproduction."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn


def _fit(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    epochs: int,
    lr: float = 1e-3,
    batch: int = 256,
    seed: int = 0,
    weight_decay: float = 0.0,
) -> None:
    """Adam on ``(x, y)`` for ``epochs`` epochs of shuffled minibatches, seeded; ends in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        for start in range(0, x.shape[0], batch):
            idx = perm[start : start + batch]
            opt.zero_grad()
            loss_fn(net(x[idx]), y[idx]).backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    net.eval()
