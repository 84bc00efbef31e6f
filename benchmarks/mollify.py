"""Benchmark of the kernel mollifiers: overhead and speed-up, printed as a table.

Rows:

* ``KernelNoiseTunnel`` (Gaussian, drop-in path) vs Captum's ``NoiseTunnel``
  at the same ``nt_samples``: the overhead of the subclass (goal <= 1.05x);
  the Poisson kernel (kernel path) for reference.
* ``NoiseGrad`` vs a plain loop that deep-copies the model, perturbs its
  weights and runs the attribution once per draw, at ``nt_samples=25`` on a
  small MLP (goal: NoiseGrad >= 2x faster; its draws are batched through vmap).
* ``NoiseGrad`` and ``FusionGrad`` vs the same loop (FusionGrad's also adds
  input noise) on a ResNet-18, two 3x224x224 images, 10 draws, ``Saliency``
  inside (goal: at least as fast; the draws run one by one on a private copy).
* Peak memory of ``NoiseGrad`` on the ResNet-18 at 5 and at 20 draws, each in a
  fresh process (goal: flat, ratio <= 1.1).

Contenders are timed by ``_timing.interleaved``: times are the best round,
ratios the median of per-round ratios. Usage::

    python benchmarks/mollify.py            # full run
    python benchmarks/mollify.py --quick    # smoke run, a few seconds
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple

import _checkout  # noqa: F401  (this checkout's package first on sys.path)
import torch
from _memory import peak_mib
from _resnet import resnet18
from _timing import interleaved
from captum.attr import IntegratedGradients, NoiseTunnel, Saliency
from torch import Tensor, nn

from captum_smoothhess.noise_tunnel import KernelNoiseTunnel
from captum_smoothhess.noisegrad import FusionGrad, NoiseGrad

# name, setting, baseline s, ours s, ratio, goal, peak memory (MiB, or "")
Row = Tuple[str, str, float, float, float, str, str]


def _mlp(d_in: int, hidden: int, d_out: int, depth: int = 2) -> nn.Module:
    layers: List[nn.Module] = []
    d = d_in
    for _ in range(depth):
        layers += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers).eval()


def _plain_noisegrad_loop(
    model: nn.Module, x: Tensor, target: int, n: int, eps: float, input_eps: float = 0.0
) -> Tensor:
    """The baseline: deep-copy and perturb the model (and the inputs, for FusionGrad) once per draw."""
    total = torch.zeros_like(x)
    for _ in range(n):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(1 + eps * torch.randn_like(p))
        xn = x + input_eps * torch.randn_like(x) if input_eps else x
        total += Saliency(m).attribute(xn.detach().requires_grad_(), target=target, abs=False)
    return total / n


def _images(quick: bool) -> Tuple[str, nn.Module, Tensor]:
    """The ResNet-18 and two 3x224x224 images; a small CNN on 32x32 images for the smoke run."""
    gen = torch.Generator().manual_seed(1)
    if not quick:
        return "ResNet-18", resnet18(0), torch.randn(2, 3, 224, 224, generator=gen)
    torch.manual_seed(0)
    cnn = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    return "small CNN", cnn.eval(), torch.randn(2, 3, 32, 32, generator=gen)


def _peak_mib(draws: int, quick: bool) -> Tuple[float, float]:
    """Peak resident memory added by one NoiseGrad call (MiB) and its time, in a fresh process."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peak", str(draws)] + (
        ["--quick"] if quick else []
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return float(out["peak"]), float(out["time"])


def _peak_child(draws: int, quick: bool) -> None:
    _, net, x = _images(quick)
    with open("/proc/self/statm") as f:
        before = int(f.read().split()[1]) * resource.getpagesize() / 2**20
    t0 = time.perf_counter()
    NoiseGrad(Saliency(net)).attribute(x, nt_samples=draws, stdevs=0.2, target=3, abs=False)
    elapsed = time.perf_counter() - t0
    peak = peak_mib() - before
    print(json.dumps(dict(peak=peak, time=elapsed)))


def run(quick: bool) -> List[Row]:
    torch.manual_seed(0)
    repeats = 2 if quick else 8
    rows: List[Row] = []

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
        rows.append((f"KernelNoiseTunnel/{name}", setting, t_nt, t_knt, r_knt, "<= 1.05", ""))
        rows.append((f"  Poisson kernel/{name}", "(kernel path)", t_nt, t_po, r_po, "info", ""))

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
    rows.append(("NoiseGrad/Saliency", "nt_samples=25, B=16", t_loop, t_ng, 1 / r_ng, ">= 2 (speed-up)", ""))

    # 3. NoiseGrad and FusionGrad vs the deep-copy loop on a ResNet-18.
    model, resnet, images = _images(quick)
    draws = 2 if quick else 10
    size = "x".join(str(s) for s in images.shape)
    for label, explainer, input_eps in (
        ("NoiseGrad", NoiseGrad(Saliency(resnet)), 0.0),
        ("FusionGrad", FusionGrad(Saliency(resnet)), 0.1),
    ):
        kw = dict(nt_samples=draws, stdevs=0.2, target=3, abs=False)
        if input_eps:
            kw["input_stdevs"] = input_eps
        (t_loop, t_ours), (_, r_ours) = interleaved(
            [
                functools.partial(_plain_noisegrad_loop, resnet, images, 3, draws, 0.2, input_eps),
                functools.partial(explainer.attribute, images, **kw),
            ],
            1 if quick else 4,
        )
        setting = f"{model}, {size}, nt_samples={draws}"
        rows.append((f"{label}/Saliency", setting, t_loop, t_ours, 1 / r_ours, ">= 1 (speed-up)", ""))

    # 4. Peak memory does not grow with the number of draws.
    few, many = (2, 4) if quick else (5, 20)
    (m_few, t_few), (m_many, t_many) = _peak_mib(few, quick), _peak_mib(many, quick)
    rows.append(
        (
            "NoiseGrad peak memory",
            f"{model}, {size}, {few} vs {many} draws",
            t_few,
            t_many,
            m_many / m_few,
            "<= 1.1 (peak ratio)",
            f"{m_few:.0f} / {m_many:.0f}",
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (smoke run)")
    parser.add_argument("--peak", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak:
        _peak_child(args.peak, args.quick)
        return
    rows = run(args.quick)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu")
    header = f"{'benchmark':30} {'setting':40} {'baseline s':>11} {'ours s':>9} {'ratio':>7}"
    header += f" {'peak MiB':>10}  goal"
    print(header)
    print("-" * len(header))
    for name, setting, base, ours, ratio, goal, mem in rows:
        print(f"{name:30} {setting:40} {base:11.4f} {ours:9.4f} {ratio:7.3f} {mem:>10}  {goal}")
    print(
        "ratio: median over rounds of ours/baseline (overhead rows), baseline/ours (speed-up rows), "
        "or peak memory at many / few draws; times: best round"
    )


if __name__ == "__main__":
    main()
