"""CASO solver cost: Hessian-vector products to reach the tolerance, time, and a fixed-step reference.

For two MLPs (digits size, 64 inputs, and MNIST size, 784 inputs) and the two
curvature sources (exact autograd HVPs, SmoothHess factors), it prints one row
per configuration:

* ``lanczos``: HVPs of the Lanczos method for ``lambda_max`` (mean per example), with
  the check that certifies a low-rank Hessian (whose later products need no model call);
* ``iters``: FISTA iterations to reach ``tol`` (mean over the batch), and
  ``hvps``: all HVPs per example (Lanczos and bisection included);
* ``rows``: Hessian-vector product rows actually computed, relative to a
  solver that keeps every example in the batch until the last one finishes
  (``B x`` the most HVPs of any example): examples that converge leave the batch;
* ``total s``: the whole ``CASO.attribute`` call; ``zeros``: fraction of exact
  zeros; ``residual``: worst final residual.

``--reference`` times CASO against the reference schedule of the CASO paper's
code: power iteration for ``lambda_max`` (20 steps), then 10 fixed FISTA steps
of step ``1 / (lambda2 + lambda_max)`` on the whole batch (re-implemented here
from its description; exact HVPs in both), on the paper's 100-64-10 ReLU MLP
(batch 16) and on two MLPs of real size (784 and 3072 inputs, batch 64), and
reports the time ratio, the HVPs and each one's optimality gap against a tight solve.

Usage: ``python benchmarks/caso.py [--quick] [--device cpu|cuda] [--repeat N] [--reference]``.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import time
import warnings
from typing import Any, Dict, List, Optional

import _checkout  # noqa: F401  (this checkout's package first on sys.path)
import torch
from _timing import interleaved
from torch import nn

from captum_smoothhess import CASO
from captum_smoothhess.solvers import Lanczos, Quadratic


def _mlp(d: int, hidden: int, classes: int, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes)
    )
    return net.to(device).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class _Counted(Quadratic):
    """Counts the rows of every Hessian-vector product of a quadratic and of its subsets."""

    def __init__(self, inner: Quadratic, counter: List[int]) -> None:
        super().__init__(inner.g)
        self.inner, self.counter = inner, counter

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        self.counter[0] += v.shape[0]
        return self.inner.hvp(v)

    def hvp_many(self, vs: torch.Tensor) -> torch.Tensor:
        self.counter[0] += vs.shape[0] * vs.shape[1]
        return self.inner.hvp_many(vs)

    def subset(self, index: torch.Tensor) -> Quadratic:
        return _Counted(self.inner.subset(index), self.counter)

    @property
    def subset_seconds(self) -> float:
        return self.inner.subset_seconds

    @property
    def rank_hint(self) -> Optional[int]:
        return self.inner.rank_hint


def _run(
    net: nn.Module,
    x: torch.Tensor,
    curvature: str,
    sparsity: Optional[float],
    n_samples: int,
) -> Dict[str, float]:
    device = x.device
    kw: Dict[str, Any] = {}
    if curvature == "smoothhess":
        gen = torch.Generator(device=device).manual_seed(0)
        kw = {"stdevs": 0.1, "n_samples": n_samples, "generator": gen}
    _sync(device)
    start = time.perf_counter()
    delta, info = CASO(net).attribute(
        x, lambda2=0.1, sparsity=sparsity, curvature=curvature, return_info=True, **kw
    )
    _sync(device)
    total = time.perf_counter() - start
    rows = _hvp_rows(net, x, curvature, sparsity, n_samples)
    return {
        "power": rows["power"],
        "iters": float(info["iterations"].float().mean()),
        "hvps": float(info["hvps"].float().mean()),
        "rows": rows["fraction"],
        "total": total,
        "zeros": float((delta == 0).float().mean()),
        "residual": float(info["residual"].max()),
    }


def _hvp_rows(
    net: nn.Module, x: torch.Tensor, curvature: str, sparsity: Optional[float], n_samples: int
) -> Dict[str, float]:
    """HVP rows computed by CASO, against keeping every example until the last finishes."""
    import captum_smoothhess.caso as caso_module

    counter = [0]
    original = caso_module.lanczos
    captured: Dict[str, torch.Tensor] = {}

    def counted_lanczos(quad: Quadratic, certify: bool = False) -> Lanczos:
        eig = original(_Counted(quad, counter), certify=certify)
        captured["power"] = eig.hvps
        return eig

    # The solves get their quadratic from Lanczos: counted already, or certified (free products).
    caso_module.lanczos = counted_lanczos
    try:
        kw: Dict[str, Any] = {}
        if curvature == "smoothhess":
            kw = {"stdevs": 0.1, "n_samples": n_samples, "generator": torch.Generator().manual_seed(0)}
        _, info = CASO(net).attribute(
            x, lambda2=0.1, sparsity=sparsity, curvature=curvature, return_info=True, **kw
        )
    finally:
        caso_module.lanczos = original
    # A solver that never shrinks its batch computes B rows per product, as many products as
    # the example that needs most (per phase: Lanczos, then the solves).
    power = captured["power"]
    solve = info["hvps"] - power
    full = x.shape[0] * (int(power.max()) + int(solve.max()))
    return {"power": float(power.float().mean()), "fraction": counter[0] / max(full, 1)}


def _reference_solve(
    net: nn.Module, x: torch.Tensor, target: torch.Tensor, lam1: float, lam2: float
) -> torch.Tensor:
    """The reference schedule: power iteration, then 10 fixed FISTA steps of step 1/L on the batch."""
    xr = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = torch.nn.functional.cross_entropy(net(xr), target, reduction="sum")
        (g,) = torch.autograd.grad(loss, xr, create_graph=True)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        (hv,) = torch.autograd.grad(g, xr, grad_outputs=v, retain_graph=True)
        return hv

    gd = g.detach()
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    for _ in range(20):
        w = hvp(v)
        v = w / w.norm(dim=1, keepdim=True).clamp_min(1e-30)
    top = (v * hvp(v)).sum(1).clamp_min(0)
    big_l = (lam2 + top)[:, None]
    z = torch.zeros_like(gd)
    y, t = z.clone(), 1.0
    for _ in range(10):
        grad = big_l * y - gd - hvp(y)  # gradient of the negated objective, lambda2_eff = L
        step = y - grad / big_l
        z_new = torch.sign(step) * (step.abs() - lam1 / big_l).clamp_min(0)
        t_new = 0.5 * (1 + (1 + 4 * t * t) ** 0.5)
        y = z_new + ((t - 1) / t_new) * (z_new - z)
        z, t = z_new, t_new
    return z


# (layer widths, batch, lambda1) of the fixed-schedule comparison: the CASO paper's 100-64-10 MLP,
# where every product costs about the same whatever its rows (per-call overhead), then two of real
# size; lambda1 is about 0.6 times the mean |gradient| of each (0.01 would zero every entry there).
_REFERENCE_MODELS = (
    ((100, 64, 10), 16, 0.01),
    ((784, 512, 512, 10), 64, 0.0015),
    ((3072, 1024, 1024, 10), 64, 0.0008),
)


def reference_rows(repeat: int = 7, quick: bool = False) -> List[str]:
    """CASO to ``tol`` vs the reference's fixed schedule, per model and ``lambda2``."""
    lines = []
    for widths, batch, lam1 in _REFERENCE_MODELS[:1] if quick else _REFERENCE_MODELS:
        torch.manual_seed(0)
        layers: List[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), nn.ReLU()]
        net = nn.Sequential(*layers[:-1]).eval()
        x = torch.randn(batch, widths[0], generator=torch.Generator().manual_seed(1))
        target = net(x).argmax(1)
        name = f"{'-'.join(map(str, widths))}, B={batch}"
        for lam2 in (4.0, 0.05):
            ours = functools.partial(CASO(net).attribute, x, target=target, lambda1=lam1, lambda2=lam2)
            reference = functools.partial(_reference_solve, net, x, target, lam1, lam2)
            timing = interleaved([reference, ours], repeat)
            with warnings.catch_warnings():  # the tight solve may stop at max_iter near 1e-9
                warnings.simplefilter("ignore", RuntimeWarning)
                tight = CASO(net).attribute(x, target=target, lambda1=lam1, lambda2=lam2, tol=1e-9)
            mine, info = CASO(net).attribute(x, target=target, lambda1=lam1, lambda2=lam2, return_info=True)
            ref = _reference_solve(net, x, target, lam1, lam2)
            gap_ref = float((ref - tight).norm(dim=1).max() / tight.norm(dim=1).max())
            gap_ours = float((mine - tight).norm(dim=1).max() / tight.norm(dim=1).max())
            lines.append(
                f"| {name} | {lam1:g} | {lam2:g} | {timing.best[0] * 1e3:.1f} | {timing.best[1] * 1e3:.1f} | "
                f"{1 / timing.ratio[1]:.2f} | 31 | {float(info['hvps'].float().mean()):.1f} | "
                f"{gap_ref:.2e} | {gap_ours:.2e} |"
            )
    return lines


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
                    "baseline": "HVP rows of a full batch",
                    "t_base": float("nan"),
                    "t_ours": r["total"],
                    "ratio": r["rows"],
                    "goal": f"ratio = rows computed; {r['iters']:.1f} FISTA iters, {r['hvps']:.0f} HVPs",
                }
            )
    return rows


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small batch and few samples")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeat", type=int, default=None, help="runs per row, fastest kept")
    parser.add_argument("--reference", action="store_true", help="only the fixed-step reference comparison")
    args = parser.parse_args(argv)
    if args.reference:
        print("CASO (to tol 1e-4, exact HVPs) vs the reference's power iteration + 10 fixed FISTA steps")
        print(
            "| ReLU MLP | lambda1 | lambda2 | reference ms | CASO ms | CASO speed / reference | "
            "reference HVPs | CASO HVPs (mean) | reference gap | CASO gap |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for line in reference_rows(3 if args.quick else 9, args.quick):
            print(line)
        return
    device = torch.device(args.device)
    batch = 4 if args.quick else 32
    n_samples = 200 if args.quick else 1000
    repeat = args.repeat or (1 if args.quick else 2)

    header = (
        f"{'model':>12} {'curvature':>10} {'sparsity':>8} {'lanczos':>7} {'iters':>7} "
        f"{'hvps':>7} {'rows':>6} {'total s':>8} {'zeros':>6} {'residual':>9}"
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
                    f"{f'MLP {d}-{hidden}':>12} {curvature:>10} {sparsity or '-':>8} "
                    f"{r['power']:7.1f} {r['iters']:7.1f} {r['hvps']:7.1f} {r['rows']:6.2f} "
                    f"{r['total']:8.2f} {r['zeros']:6.2f} {r['residual']:9.2e}"
                )


if __name__ == "__main__":
    main()
