"""Test helpers: small ReLU networks whose smoothed Hessian has a closed form."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class OneHiddenReLU:
    """f(x) = sum_k a_k relu(w_k^T x + b_k), as an nn.Module and its parameters."""

    w: Tensor
    b: Tensor
    a: Tensor
    net: nn.Module

    def pre(self, x: Tensor) -> Tensor:
        return x @ self.w.T + self.b

    def gaussian_hessian(self, x: Tensor, eps: float | Tensor) -> Tensor:
        """Hessian of f smoothed by N(0, diag(eps^2)): sum_k a_k p_k(m_k) w_k w_k^T."""
        scale = (self.w * eps).norm(dim=1)
        dens = torch.exp(-0.5 * (self.pre(x) / scale) ** 2) / (scale * math.sqrt(2 * math.pi))
        return torch.einsum("bk,ki,kj->bij", self.a * dens, self.w, self.w)

    def poisson_hessian(self, x: Tensor, eps: float) -> Tensor:
        """Same for the multivariate Cauchy: w^T u is Cauchy with scale eps |w|."""
        scale = eps * self.w.norm(dim=1)
        dens = 1.0 / (math.pi * scale * (1 + (self.pre(x) / scale) ** 2))
        return torch.einsum("bk,ki,kj->bij", self.a * dens, self.w, self.w)

    def gaussian_gradient(self, x: Tensor, eps: float) -> Tensor:
        """Smoothed gradient: sum_k a_k Phi(m_k / (eps |w_k|)) w_k."""
        scale = eps * self.w.norm(dim=1)
        return (self.a * torch.special.ndtr(self.pre(x) / scale)) @ self.w


def make_one_hidden(d: int, hidden: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> OneHiddenReLU:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(hidden, d, generator=gen, dtype=dtype)
    b = torch.randn(hidden, generator=gen, dtype=dtype)
    a = torch.randn(hidden, generator=gen, dtype=dtype)
    net = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 1)).to(dtype)
    with torch.no_grad():
        net[0].weight.copy_(w)
        net[0].bias.copy_(b)
        net[2].weight.copy_(a[None])
        net[2].bias.zero_()
    return OneHiddenReLU(w, b, a, net)


def rel_err(est: Tensor, ref: Tensor) -> float:
    """Relative Frobenius error per example, worst over the batch."""
    est, ref = est.detach(), ref.detach()
    num = (est - ref).flatten(1).norm(dim=1)
    return float((num / ref.flatten(1).norm(dim=1)).max())


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class TokenNet(nn.Module):
    """Token ids ``(B, T)`` -> embedding ``(B, T, E)`` -> a ReLU MLP on the flattened tokens."""

    def __init__(self, vocab: int, tokens: int, embed: int, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.emb = nn.Embedding(vocab, embed)
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(tokens * embed, 16), nn.ReLU(), nn.Linear(16, classes)
        )

    def forward(self, ids: Tensor) -> Tensor:
        return self.body(self.emb(ids))


def ks2(a: Tensor, b: Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov distance of the flattened samples (ties allowed)."""
    a = a.reshape(-1).to(torch.float64).sort().values
    b = b.reshape(-1).to(torch.float64).sort().values
    grid = torch.unique(torch.cat([a, b]))
    fa = torch.searchsorted(a, grid, right=True) / a.numel()
    fb = torch.searchsorted(b, grid, right=True) / b.numel()
    return float((fa - fb).abs().max())
