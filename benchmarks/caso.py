"""CASO solver cost: Hessian-vector products to reach the tolerance, and time per iteration.

For two MLPs (digits size, 64 inputs, and MNIST size, 784 inputs) and the two
curvature sources (exact autograd HVPs, SmoothHess factors), it prints one row
per configuration:

* ``setup s``: gradient and curvature set-up (the double-backprop graph, or the
  SmoothHess samples);
* ``power``: HVPs of the power iteration for ``lambda_max``;
* ``iters``: FISTA iterations to reach ``tol`` (mean over the batch), and
  ``hvps``: all HVPs per example (power iteration and bisection included);
* ``ms/hvp``: solve time divided by the HVPs (one HVP per FISTA iteration
  plus the vector work around it), i.e. the time per iteration;
* ``zeros``: fraction of exact zeros; ``residual``: worst final residual.

Timings are the fastest of ``--repeat`` runs (default 2; 1 with ``--quick``).

Usage: ``python benchmarks/caso.py [--quick] [--device cpu|cuda] [--repeat N]``.
"""

from __future__ import annotations

import argparse
import time
from typing import Dict, List, Optional

import torch
from torch import nn

from captum_smoothhess.caso import CASO, _LossModel, _top_eigenvalue
from captum_smoothhess.kernels import Gaussian


def _mlp(d: int, hidden: int, classes: int, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes)
    )
    return net.to(device).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _run(
    net: nn.Module,
    x: torch.Tensor,
    curvature: str,
    sparsity: Optional[float],
    n_samples: int,
) -> Dict[str, float]:
    device = x.device
    kw: Dict[str, object] = {}
    if curvature == "smoothhess":
        gen = torch.Generator(device=device).manual_seed(0)
        kw = {"stdevs": 0.1, "n_samples": n_samples, "generator": gen}
    model = _LossModel(net, None, (x,), None, None)
    _sync(device)
    start = time.perf_counter()
    if curvature == "autograd":
        quad = model.autograd(second_order=True)
    else:
        gen = torch.Generator(device=device).manual_seed(0)
        quad = model.smoothhess(Gaussian(), 0.1, n_samples, None, gen)
    _sync(device)
    setup = time.perf_counter() - start
    _, power = _top_eigenvalue(quad)

    start = time.perf_counter()
    delta, info = CASO(net).attribute(
        x, lambda2=0.1, sparsity=sparsity, curvature=curvature, return_info=True, **kw
    )
    _sync(device)
    total = time.perf_counter() - start
    assert isinstance(delta, torch.Tensor)
    hvps = float(info["hvps"].float().mean())
    return {
        "setup": setup,
        "power": float(power.float().mean()),
        "iters": float(info["iterations"].float().mean()),
        "hvps": hvps,
        "ms_per_hvp": 1e3 * max(total - setup, 0.0) / max(float(info["hvps"].max()), 1.0),
        "total": total,
        "zeros": float((delta == 0).float().mean()),
        "residual": float(info["residual"].max()),
    }


def suite_rows(quick: bool, device: torch.device) -> List[Dict[str, object]]:
    """Rows for ``benchmarks/run.py``: one per model and curvature source, no sparsity."""
    batch, n_samples = (4, 200) if quick else (32, 1000)
    rows: List[Dict[str, object]] = []
    for d, hidden in ((64, 128), (784, 256)):
        net = _mlp(d, hidden, 10, device)
        x = torch.randn(batch, d, generator=torch.Generator().manual_seed(1)).to(device)
        for curvature in ("autograd", "smoothhess"):
            r = min(
                (_run(net, x, curvature, None, n_samples) for _ in range(1 if quick else 2)),
                key=lambda run: run["total"],
            )
            rows.append(
                {
                    "case": f"CASO, {curvature} curvature",
                    "setting": f"MLP {d}-{hidden}, B={batch}",
                    "baseline": "set-up (s)",
                    "t_base": r["setup"],
                    "t_ours": r["total"],
                    "ratio": r["ms_per_hvp"],
                    "goal": f"ratio = ms/HVP; {r['iters']:.1f} FISTA iters, {r['hvps']:.0f} HVPs",
                }
            )
    return rows


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small batch and few samples")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeat", type=int, default=None, help="runs per row, fastest kept")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batch = 4 if args.quick else 32
    n_samples = 200 if args.quick else 1000
    repeat = args.repeat or (1 if args.quick else 2)

    header = (
        f"{'model':>12} {'curvature':>10} {'sparsity':>8} {'setup s':>8} {'power':>6} {'iters':>7} "
        f"{'hvps':>7} {'ms/hvp':>7} {'total s':>8} {'zeros':>6} {'residual':>9}"
    )
    print(f"CASO, batch {batch}, lambda2 0.1, tol 1e-4, SmoothHess n_samples {n_samples}, device {device}")
    print(header)
    print("-" * len(header))
    for d, hidden in ((64, 128), (784, 256)):
        net = _mlp(d, hidden, 10, device)
        x = torch.randn(batch, d, generator=torch.Generator().manual_seed(1)).to(device)
        for curvature in ("autograd", "smoothhess"):
            for sparsity in (None, 0.8):
                runs = [_run(net, x, curvature, sparsity, n_samples) for _ in range(repeat)]
                r = min(runs, key=lambda run: run["total"])
                print(
                    f"{f'MLP {d}-{hidden}':>12} {curvature:>10} {sparsity or '-':>8} {r['setup']:8.3f} "
                    f"{r['power']:6.1f} {r['iters']:7.1f} {r['hvps']:7.1f} {r['ms_per_hvp']:7.2f} "
                    f"{r['total']:8.2f} {r['zeros']:6.2f} {r['residual']:9.2e}"
                )


if __name__ == "__main__":
    main()
