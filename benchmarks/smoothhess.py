"""SmoothHess cost against the gradient floor, and antithetic vs plain accuracy.

Run ``python benchmarks/smoothhess.py`` (``--quick`` for a smoke run). Two tables:

1. On an MLP 784-500-300-250-250-10, the time of dense SmoothHess with
   ``n`` samples over the time of the *gradient floor*: the same ``n``
   gradient evaluations of the target logit, in the same batches, on
   perturbed inputs prepared in advance (nothing else: no noise drawing, no
   scores, no accumulation); and the bare ``d x d`` product of the estimate,
   the one step beyond the floor that a dense estimate cannot skip. Timed by
   ``_timing.interleaved`` in one process: ratios are medians of per-round
   ratios.
2. On a one-hidden-layer ReLU network with d = 10, whose smoothed Hessian has
   a closed form, the relative Frobenius error at fixed ``n`` with antithetic
   pairs and with plain sampling (mean over seeds).
"""

from __future__ import annotations

import argparse
import itertools
import math
from typing import List, NamedTuple, Optional

import _checkout  # noqa: F401  (this checkout's package first on sys.path)
import torch
from _timing import interleaved
from torch import Tensor, nn

from captum_smoothhess import SmoothHess


def mlp784() -> nn.Module:
    torch.manual_seed(0)
    sizes = [784, 500, 300, 250, 250, 10]
    layers: List[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()


class FloorTimes(NamedTuple):
    """Seconds (best round) and median per-round ratios to the floor.

    ``bound_ratio`` is ``(floor + product) / floor``: the least dense/floor
    ratio an exact dense estimate can reach.
    """

    floor: float
    product: float
    dense: float
    factors: float
    dense_ratio: float
    factors_ratio: float
    bound_ratio: float


def floor_and_smoothhess(
    net: nn.Module,
    x: Tensor,
    n: int,
    batch_size: int,
    repeats: int,
    device: torch.device,
    sampling: Optional[str] = None,
) -> FloorTimes:
    """Times of the gradient floor, of the product alone, and of dense and factored SmoothHess.

    The *product* is the one step a dense estimate cannot skip: the ``d x d``
    sum ``S^T D`` over the ``n / 2`` antithetic pairs (``2 (n/2) d^2`` flops),
    timed on random factors of the same shapes in the same chunks.
    """
    net, x = net.to(device), x.to(device)
    sh = SmoothHess(net)
    target, eps = 3, 0.1
    # The floor's inputs: the same number of perturbed points, in the same batches, made in advance.
    chunks: List[Tensor] = []
    for start in range(0, n, batch_size):
        rows = min(batch_size, n - start)
        chunks.append((x + eps * torch.randn(rows, *x.shape[1:], device=device)).requires_grad_())
    dim = x[0].numel()
    pairs = [torch.randn(2, x.shape[0], len(c) // 2, dim, device=device) for c in chunks]
    total = torch.zeros(x.shape[0], dim, dim, device=device)

    def floor() -> None:
        for pts in chunks:
            torch.autograd.grad(net(pts)[:, target].sum(), pts)

    def product() -> None:
        for s, d in pairs:
            total.baddbmm_(s.transpose(1, 2), d)

    def smoothhess(output: str) -> None:
        sh.attribute(
            x,
            target=target,
            stdevs=eps,
            n_samples=n,
            n_samples_batch_size=batch_size,
            generator=torch.Generator(device=device).manual_seed(0),
            output=output,
            sampling=sampling,
        )

    t = interleaved(
        [floor, product, lambda: smoothhess("dense"), lambda: smoothhess("factors")], repeats, device
    )
    floor_s, product_s, dense_s, factors_s = t.best
    return FloorTimes(floor_s, product_s, dense_s, factors_s, t.ratio[2], t.ratio[3], 1 + t.ratio[1])


def closed_form_errors(n: int, seeds: int) -> tuple[float, float]:
    gen = torch.Generator().manual_seed(0)
    d, hidden, eps = 10, 20, 0.7
    w, b, a = (
        torch.randn(hidden, d, generator=gen),
        torch.randn(hidden, generator=gen),
        torch.randn(hidden, generator=gen),
    )

    def f(z: Tensor) -> Tensor:
        return torch.relu(z @ w.T + b) @ a

    x = torch.randn(1, d, generator=gen)
    scale = eps * w.norm(dim=1)
    pre = x @ w.T + b
    dens = torch.exp(-0.5 * (pre / scale) ** 2) / (scale * math.sqrt(2 * math.pi))
    exact = torch.einsum("bk,ki,kj->bij", a * dens, w, w)
    sh = SmoothHess(f)
    out = []
    for antithetic in (True, False):
        errs = []
        for s in range(seeds):
            h = sh.attribute(
                x, stdevs=eps, n_samples=n, antithetic=antithetic, generator=torch.Generator().manual_seed(s)
            )
            assert isinstance(h, Tensor)
            errs.append(float((h - exact).norm() / exact.norm()))
        out.append(sum(errs) / len(errs))
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--sampling", default=None, help="SmoothHess sampling ('iid' or 'orthogonal'); the default by kernel"
    )
    parser.add_argument("--no-errors", action="store_true", help="timings only")
    args = parser.parse_args()
    n = 512 if args.quick else args.n
    repeats = 1 if args.quick else args.repeats
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    x = torch.rand(1, 784, generator=torch.Generator().manual_seed(1))
    batch = min(args.batch_size, n)
    t = floor_and_smoothhess(mlp784(), x, n, batch, repeats, torch.device("cpu"), args.sampling)
    print("\n| MLP 784-500-300-250-250-10 | n | batch | floor (s) | time (s) | ratio to floor |")
    print("|---|---|---|---|---|---|")
    rows = [
        (f"dense SmoothHess, Gaussian ({args.sampling or 'default'} sampling)", t.dense, t.dense_ratio),
        (
            f"factored SmoothHess, Gaussian ({args.sampling or 'default'} sampling)",
            t.factors,
            t.factors_ratio,
        ),
        ("floor + the d x d product alone (bound for dense)", t.floor + t.product, t.bound_ratio),
    ]
    for label, sec, ratio in rows:
        print(f"| {label} | {n} | {batch} | {t.floor:.3f} | {sec:.3f} | {ratio:.3f} |")
    if args.no_errors:
        return
    n_err = 2000 if args.quick else 20000
    seeds = 2 if args.quick else 10
    anti, plain = closed_form_errors(n_err, seeds)
    print(f"\n| d = 10 closed form, n = {n_err}, mean of {seeds} seeds | relative Frobenius error |")
    print("|---|---|")
    print(f"| antithetic pairs | {anti:.4f} |")
    print(f"| plain sampling | {plain:.4f} |")


if __name__ == "__main__":
    main()
