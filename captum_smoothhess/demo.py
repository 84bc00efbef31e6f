"""The end-to-end demo behind ``python -m captum_smoothhess demo``."""

from __future__ import annotations

import math
import os

import torch

from .smoothhess import SmoothHess


def run_demo(out: str = "demo_output", quick: bool = False) -> None:
    """Print SmoothHess interactions of a small ReLU network and check them.

    The network is ``f(x) = sum_k a_k relu(w_k^T x + b_k)``, whose smoothed
    Hessian has a closed form, so the demo prints the estimate next to the
    exact value.
    """
    os.makedirs(out, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    d, hidden, eps = 5, 32, 0.5
    w = torch.randn(hidden, d, generator=gen)
    b = torch.randn(hidden, generator=gen)
    a = torch.randn(hidden, generator=gen)
    first, last = torch.nn.Linear(d, hidden), torch.nn.Linear(hidden, 1)
    with torch.no_grad():
        first.weight.copy_(w)
        first.bias.copy_(b)
        last.weight.copy_(a[None])
        last.bias.zero_()
    net = torch.nn.Sequential(first, torch.nn.ReLU(), last)
    x = torch.randn(1, d, generator=gen)
    n = 2_000 if quick else 100_000
    hess = SmoothHess(net).attribute(x, target=0, stdevs=eps, n_samples=n, generator=gen, show_progress=True)
    pre = x @ w.T + b
    scale = eps * w.norm(dim=1)
    dens = torch.exp(-0.5 * (pre / scale) ** 2) / (scale * math.sqrt(2 * math.pi))
    exact = torch.einsum("bk,ki,kj->bij", a * dens, w, w)
    err = float((hess - exact).norm() / exact.norm())
    torch.set_printoptions(precision=3, sci_mode=False)
    print(f"SmoothHess of a 1-hidden-layer ReLU net at x (stdevs={eps}, n={n}):")
    print(hess[0])
    print("Closed form:")
    print(exact[0])
    print(f"relative Frobenius error: {err:.3%}")
