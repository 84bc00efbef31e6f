"""Benchmark of the kernel mollifiers: overhead and speed-up, printed as a table.

Rows:

* ``KernelNoiseTunnel`` (Gaussian, drop-in path) vs Captum's ``NoiseTunnel``
  at the same ``nt_samples``: the overhead of the subclass (goal <= 1.05x);
  the Poisson kernel (kernel path) for reference.
* ``NoiseGrad`` vs a plain loop that deep-copies the model, perturbs its
  weights and runs the attribution once per draw, at ``nt_samples=25`` on a
  small MLP (goal: NoiseGrad >= 2x faster).

Contenders are timed by ``_timing.interleaved``: times are the best round,
ratios the median of per-round ratios. Usage::

    python benchmarks/mollify.py            # full run
    python benchmarks/mollify.py --quick    # smoke run, a few seconds
"""

from __future__ import annotations

import argparse
import copy
import functools
from typing import List, Tuple

import torch
from _timing import interleaved
from captum.attr import IntegratedGradients, NoiseTunnel, Saliency
from torch import Tensor, nn

from captum_smoothhess.noise_tunnel import KernelNoiseTunnel
from captum_smoothhess.noisegrad import NoiseGrad


def _mlp(d_in: int, hidden: int, d_out: int, depth: int = 2) -> nn.Module:
    layers: List[nn.Module] = []
    d = d_in
    for _ in range(depth):
        layers += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers).eval()


def _plain_noisegrad_loop(model: nn.Module, x: Tensor, target: int, n: int, eps: float) -> Tensor:
    """The baseline: deep-copy and perturb the model once per draw."""
    total = torch.zeros_like(x)
    for _ in range(n):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(1 + eps * torch.randn_like(p))
        total += Saliency(m).attribute(x, target=target, abs=False)
    return total / n


def run(quick: bool) -> List[Tuple[str, str, float, float, float, str]]:
    torch.manual_seed(0)
    repeats = 2 if quick else 8
    rows: List[Tuple[str, str, float, float, float, str]] = []

    # 1. KernelNoiseTunnel vs NoiseTunnel at the same nt_samples.
    net = _mlp(784, 256, 10)
    x = torch.randn(8 if quick else 32, 784)
    n = 10 if quick else 50
    for name, method in (("Saliency", Saliency), ("IntegratedGradients", IntegratedGradients)):
        extra = {"n_steps": 10} if method is IntegratedGradients else {}
        nt = NoiseTunnel(method(net))
        knt = KernelNoiseTunnel(method(net))
        kpo = KernelNoiseTunnel(method(net), "poisson")
        kw = dict(nt_samples=n, nt_samples_batch_size=n // 2, stdevs=0.2, target=3, **extra)
        # Saliency runs are ~10x shorter, hence noisier: give them more rounds.
        rounds = repeats * (4 if method is Saliency else 1)
        (t_nt, t_knt, t_po), (_, r_knt, r_po) = interleaved(
            [functools.partial(t.attribute, x, **kw) for t in (nt, knt, kpo)], rounds
        )
        setting = f"nt_samples={n}, B={x.shape[0]}"
        rows.append((f"KernelNoiseTunnel/{name}", setting, t_nt, t_knt, r_knt, "<= 1.05"))
        rows.append((f"  Poisson kernel/{name}", "(kernel path)", t_nt, t_po, r_po, "info"))

    # 2. NoiseGrad vs deep-copy loop, nt_samples = 25, small MLP.
    small = _mlp(64, 128, 10)
    xs = torch.randn(16, 64, requires_grad=True)
    ng = NoiseGrad(Saliency(small))
    (t_loop, t_ng), (_, r_ng) = interleaved(
        [
            lambda: _plain_noisegrad_loop(small, xs, 3, 25, 0.2),
            lambda: ng.attribute(xs, nt_samples=25, stdevs=0.2, target=3, abs=False),
        ],
        repeats,
    )
    rows.append(("NoiseGrad/Saliency", "nt_samples=25, B=16", t_loop, t_ng, 1 / r_ng, ">= 2 (speed-up)"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (smoke run)")
    args = parser.parse_args()
    rows = run(args.quick)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu")
    header = f"{'benchmark':38} {'setting':24} {'baseline s':>11} {'ours s':>9} {'ratio':>7}  goal"
    print(header)
    print("-" * len(header))
    for name, setting, base, ours, ratio, goal in rows:
        print(f"{name:38} {setting:24} {base:11.4f} {ours:9.4f} {ratio:7.3f}  {goal}")
    print(
        "ratio: median over rounds of ours/baseline (overhead rows) or baseline/ours (speed-up row); "
        "times: best round"
    )


if __name__ == "__main__":
    main()
