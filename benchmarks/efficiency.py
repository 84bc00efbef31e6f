"""Gradient calls for a given accuracy: iid vs orthogonal sampling, reported vs actual error, cost.

Run ``python benchmarks/efficiency.py`` (``--quick`` for a smoke run). Tables:

1. Error variance (mean squared relative Frobenius error over seeds) at equal gradient calls,
   ``sampling="iid"`` vs the default ``"orthogonal"``, Gaussian and Poisson kernels, on the
   one-hidden-layer ReLU oracle (closed form; d = 10, 100, 784) and on the trained digits MLP
   (d = 64; reference from one 10^6-call run of the default sampling, another seed). Antithetic
   pairs throughout. Then the ratio at d = 10 for nine oracles (hidden width x bandwidth): how
   much the gain depends on the function, and with fewer pairs than one rotation holds (why the
   default is iid there). Then what the
   tilted radii of the Gaussian blocks add (``chi_{d+1}`` radii with importance weights, vs
   ``chi_d``): the Hessian's variance ratio with each, and the smoothed gradient's error
   variance, which the gradient weights keep near that of ``chi_d`` radii. Then what sharing one
   rotation over a group of 8 blocks costs (d = 256 and 784, from which SmoothHess shares): the
   error variance with a rotation per block and with the shared one. Then (``--only quaternion``)
   what whole rotations from ``Sp(d/4)`` (the default from 256 features, a multiple of 4) cost in
   error variance against Haar ``O(d)`` ones, on oracles whose first layer is random, image-smooth,
   or local to the groups of 4 features that the quaternions pair, with one block and with one group
   of 8; and the time to draw one rotation of each kind.
2. ``tolerance=0.05``: the gradient calls each sampling uses and the actual error reached, and
   the calibration of ``return_error``: reported relative error over actual RMS error, and how
   often ``+-2 stderr`` covers the closed form (per entry).
3. Wall time, MLP 784-500-300-250-250-10: dense SmoothHess (default and iid sampling, the
   default before its blocks shared rotations: a Haar rotation per block and tilted radii, the
   default with Haar ``O(d)`` rotations by QR, with the tilted radii that it keeps below 256
   features, with the two-layer mixers of the ``d`` that do not factor, and with Haar ``O(d)``
   rotations from their reflectors, the default before ``Sp(d/4)``) over the floor of a plain
   SmoothGrad, ``n`` batched gradient calls with their Gaussian noise drawn; 15 interleaved
   rounds, ratios are medians of per-round ratios (``_timing.interleaved``). For reference, what
   Captum's own SmoothGrad (``NoiseTunnel(Saliency)``, the same ``n`` and batches) pays. Then the default and
   iid against the floor as ``n`` grows (n = 8192 to 50,176: the orthogonal draws of a call fill
   part of one group of 8 blocks, one group, two and four), each ``n`` interleaved on its own:
   a group's rotation and its ``d x d x d`` product are paid once per group, whatever the
   number of its blocks that the call uses.
   ``--only allocator``: the same floor and default at n = 8192, each state in a fresh process:
   as started, and with glibc's heap settled (a 16 MiB block freed first, which raises glibc's
   dynamic ``mmap`` threshold to 16 MiB and its trim threshold to 32 MiB, as in any process that
   has freed a tensor of that size), with the page faults of each call (``getrusage``, Linux). The
   faults come from glibc handing freed memory at the top of its heap back to the system and the
   next gradient call faulting it in again; how many a call takes depends on what the process
   allocated before it. Each state also times SmoothHess with its own chunking
   (``n_samples_batch_size=None``: on CPU at most ``2^20`` input elements a chunk, never across two
   blocks; here half a block, 392 pairs, 784 calls) against the floor in batches of the same size, and beside
   them, in the same rounds, SmoothHess in one chunk of all ``n`` calls (the default before the CPU
   budget) and the floor in one batch of ``n``. Not part of the default tables.
4. Drawing ``m`` orthogonal directions (d = 784 and 150,528): QR of ``d x m``, the sampler's
   ``m`` Householder reflectors drawn directly (Stewart's method: the same law, no
   factorisation), and a structured random orthogonal transform (three rounds of random signs
   and a fast Walsh-Hadamard transform, which is orthogonal but not Haar, so not exact).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import math
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple
from unittest import mock

import _checkout  # noqa: F401  (this checkout's package first on sys.path)
import torch
from _timing import interleaved
from captum.attr import NoiseTunnel, Saliency
from smoothhess import mlp784
from torch import Tensor, nn

from captum_smoothhess import SmoothHess, _sampling
from captum_smoothhess.datasets import load_digits_tensors
from captum_smoothhess.demo._training import _fit


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def oracle(
    d: int, hidden: int, kernel: str, eps: float, batch: int, layer: str = "random"
) -> Tuple[nn.Module, Tensor, Tensor]:
    """A one-hidden-layer ReLU net, points, and its smoothed Hessian in closed form.

    ``layer``: the first layer's rows, ``"random"`` (iid normals over ``sqrt(d)``), ``"smooth"`` (noise
    blurred on the ``sqrt(d) x sqrt(d)`` grid, as a trained image model's filters) or ``"local"`` (each
    row on one group of 4 consecutive features, the quaternions of ``_quaternionic_rows``); the last two
    of unit norm.
    """
    g = _gen(0)
    w = torch.randn(hidden, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    if layer == "smooth":
        side = math.isqrt(d)
        taps = torch.exp(-0.5 * (torch.arange(-4, 5, dtype=torch.float64) / 2.0) ** 2)
        taps /= taps.sum()
        grid = w.reshape(hidden, 1, side, side)
        grid = nn.functional.conv2d(grid, taps.view(1, 1, 1, -1), padding=(0, 4))
        w = nn.functional.conv2d(grid, taps.view(1, 1, -1, 1), padding=(4, 0)).reshape(hidden, d)
    elif layer == "local":
        group = torch.arange(hidden) % (d // 4)
        w = w * ((torch.arange(d)[None] // 4) == group[:, None])
    if layer != "random":
        w = w / w.norm(dim=1, keepdim=True)
    b = torch.randn(hidden, generator=g, dtype=torch.float64) * 0.5
    a = torch.randn(hidden, generator=g, dtype=torch.float64)
    first, last = nn.Linear(d, hidden).double(), nn.Linear(hidden, 1).double()
    with torch.no_grad():
        first.weight.copy_(w)
        first.bias.copy_(b)
        last.weight.copy_(a[None])
        last.bias.zero_()
    net = nn.Sequential(first, nn.ReLU(), last)
    x = torch.randn(batch, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    pre, scale = x @ w.T + b, eps * w.norm(dim=1)
    if kernel == "gaussian":
        dens = torch.exp(-0.5 * (pre / scale) ** 2) / (scale * math.sqrt(2 * math.pi))
    else:
        dens = 1.0 / (math.pi * scale * (1 + (pre / scale) ** 2))
    return net, x, torch.einsum("bk,ki,kj->bij", a * dens, w, w)


def oracle_gradient(net: Any, x: Tensor, eps: float) -> Tensor:
    """The Gaussian-smoothed gradient of :func:`oracle`'s net: ``sum_k a_k Phi(m_k / (eps |w_k|)) w_k``."""
    w, b, a = net[0].weight.detach(), net[0].bias.detach(), net[2].weight.detach()[0]
    return (a * torch.special.ndtr((x @ w.T + b) / (eps * w.norm(dim=1)))) @ w


def digits_mlp() -> Tuple[nn.Module, Tensor]:
    data = load_digits_tensors(dtype=torch.float64)
    with torch.random.fork_rng():  # the same net whichever tables ran before (nn.Linear draws globally)
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    net = net.double()
    _fit(net, data.x_train, data.y_train, nn.functional.cross_entropy, 30, lr=1e-3, batch=128, seed=1)
    return net, data.x_test[:4]


def rel(h: Tensor, ref: Tensor) -> Tensor:
    return (h - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)


def mse(
    sh: Any, x: Tensor, ref: Tensor, eps: float, n: int, sampling: str, seeds: int, **kw: object
) -> float:
    errs = [
        rel(sh.attribute(x, stdevs=eps, n_samples=n, sampling=sampling, generator=_gen(s), **kw), ref)
        for s in range(seeds)
    ]
    return float((torch.stack(errs) ** 2).mean())


def variance_table(quick: bool) -> None:
    print("\n| model | kernel | d | n (calls) | iid rel. err (RMS) | orthogonal (RMS) | variance ratio |")
    print("|---|---|---|---|---|---|---|")
    dims = [10, 100] if quick else [10, 100, 784]
    seeds = 4 if quick else 20
    for d, kernel in itertools.product(dims, ("gaussian", "poisson")):
        eps = 0.5
        net, x, ref = oracle(d, 2 * d, kernel, eps, 1 if d == 784 else 4)
        sh: Any = SmoothHess(net, kernel=kernel)
        # Cheap at d = 10: enough seeds there for the ratio to be known to a few percent.
        s = 2 if d == 784 and not quick else (10 * seeds if d == 10 else seeds)
        for mult in (4,) if quick or d == 784 else (4, 16):
            n = mult * d
            e_iid = mse(sh, x, ref, eps, n, "iid", s if d < 784 else 6)
            e_orth = mse(sh, x, ref, eps, n, "orthogonal", s if d < 784 else 6)
            errs = f"{e_iid**0.5:.4f} | {e_orth**0.5:.4f} | {e_iid / e_orth:.2f}"
            print(f"| ReLU oracle | {kernel} | {d} | {n} | {errs} |")
    net, x = digits_mlp()
    for kernel in ("gaussian", "poisson"):
        sh = SmoothHess(net, kernel=kernel)
        eps = 0.5
        ref_n = 40_000 if quick else 1_000_000
        ref = sh.attribute(x, target=0, stdevs=eps, n_samples=ref_n, generator=_gen(999))
        n = 4 * 64 if quick else 8 * 64
        kw = {"target": 0}
        e_iid = mse(sh, x, ref, eps, n, "iid", seeds, **kw)
        e_orth = mse(sh, x, ref, eps, n, "orthogonal", seeds, **kw)
        errs = f"{e_iid**0.5:.4f} | {e_orth**0.5:.4f} | {e_iid / e_orth:.2f}"
        print(f"| digits MLP (ref n={ref_n}) | {kernel} | 64 | {n} | {errs} |")


def oracle_table(quick: bool) -> None:
    """The variance ratio at d = 10 over the oracle's width and bandwidth (how much it depends on f)."""
    print("\n| ReLU oracle, Gaussian, d = 10, n = 160 | hidden units | eps | variance ratio |")
    print("|---|---|---|---|")
    d, seeds = 10, 10 if quick else 100
    for hidden, eps in itertools.product((10, 20, 40), (0.25, 0.5, 1.0)):
        net, x, ref = oracle(d, hidden, "gaussian", eps, 4)
        sh = SmoothHess(net)
        ratio = mse(sh, x, ref, eps, 16 * d, "iid", seeds) / mse(sh, x, ref, eps, 16 * d, "orthogonal", seeds)
        print(f"| | {hidden} | {eps} | {ratio:.2f} |")


def partial_table(quick: bool) -> None:
    """The variance ratio when the call draws fewer pairs than one full rotation holds."""
    print("\n| ReLU oracle, Gaussian | d | antithetic pairs | variance ratio |")
    print("|---|---|---|---|")
    seeds = 8 if quick else 40
    for d in (100,) if quick else (100, 400):
        net, x, ref = oracle(d, 2 * d, "gaussian", 0.5, 4)
        sh = SmoothHess(net)
        for pairs in (d // 16, d // 4, d // 2, d, 2 * d):
            ratio = mse(sh, x, ref, 0.5, 2 * pairs, "iid", seeds) / mse(
                sh, x, ref, 0.5, 2 * pairs, "orthogonal", seeds
            )
            print(f"| | {d} | {pairs} | {ratio:.2f} |")


def _errors(
    sh: Any, x: Tensor, refs: Tuple[Tensor, Tensor], eps: float, n: int, seeds: int, **kw: Any
) -> Tensor:
    """Mean squared relative errors (Hessian, smoothed gradient) over ``seeds`` runs."""
    out = []
    for s in range(seeds):
        h, g = sh.attribute(x, stdevs=eps, n_samples=n, generator=_gen(s), return_gradient=True, **kw)
        out.append(torch.stack([rel(h, refs[0]), rel(g, refs[1])]))
    return torch.stack(out).square().mean(dim=(0, 2))


def tilt_table(quick: bool) -> None:
    """What the tilted radii add: error variances with chi_d radii and with the tilted ones (Gaussian)."""
    print(
        "\n| Gaussian | d | n (calls) | Hessian variance ratio to iid: chi_d radii | tilted (default) "
        "| smoothed-gradient error variance, iid | chi_d radii | tilted |"
    )
    print("|---|---|---|---|---|---|---|---|")
    cases: List[Tuple[str, Any, Tensor, Any, int, int, Dict[str, Any]]] = []
    for d in (10,) if quick else (10, 100):
        net, x, ref = oracle(d, 2 * d, "gaussian", 0.5, 4)
        seeds = (20 if quick else 200) if d == 10 else 40
        cases.append(("ReLU oracle", net, x, (ref, oracle_gradient(net, x, 0.5)), 16 * d, seeds, {}))
    net, x = digits_mlp()
    ref_n = 40_000 if quick else 1_000_000
    refs = SmoothHess(net).attribute(
        x, target=0, stdevs=0.5, n_samples=ref_n, generator=_gen(999), return_gradient=True
    )
    cases.append((f"digits MLP (ref n={ref_n})", net, x, refs, 8 * 64, 5 if quick else 40, {"target": 0}))
    for name, net, x, refs, n, seeds, kw in cases:
        sh = SmoothHess(net)
        iid = _errors(sh, x, refs, 0.5, n, seeds, sampling="iid", **kw)
        tilted = _errors(sh, x, refs, 0.5, n, seeds, sampling="orthogonal", **kw)
        with mock.patch.object(_sampling, "_TILT_MIN_DIM", 1 << 62):
            plain = _errors(sh, x, refs, 0.5, n, seeds, sampling="orthogonal", **kw)
        hess = f"{float(iid[0] / plain[0]):.2f} | {float(iid[0] / tilted[0]):.2f}"
        grad = f"{float(iid[1]):.3g} | {float(plain[1]):.3g} | {float(tilted[1]):.3g}"
        print(f"| {name} | {x.shape[1]} | {n} | {hess} | {grad} |")


def share_table(quick: bool) -> None:
    """What sharing a rotation over a group of blocks costs in error variance (Gaussian, d >= 256)."""
    print(
        "\n| Gaussian | d | n (calls) | blocks | Hessian variance, a rotation per block | shared "
        "| ratio shared / per block | ratio to iid, shared |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for d, seeds in ((256, 8),) if quick else ((256, 60), (784, 16)):
        net, x, ref = oracle(d, 2 * d, "gaussian", 0.5, 2)
        sh = SmoothHess(net)
        n = 2 * _sampling._SHARE_BLOCKS * d  # one whole group
        shared = mse(sh, x, ref, 0.5, n, "orthogonal", seeds)
        iid = mse(sh, x, ref, 0.5, n, "iid", seeds)
        with mock.patch.object(_sampling, "_SHARE_MIN_DIM", 1 << 62):
            alone = mse(sh, x, ref, 0.5, n, "orthogonal", seeds)
        cells = f"{alone:.4g} | {shared:.4g} | {shared / alone:.3f} | {iid / shared:.2f}"
        print(f"| ReLU oracle | {d} | {n} | {n // (2 * d)} | {cells} |")


def quaternion_table(quick: bool) -> None:
    """Whole rotations from Sp(d/4) (the default from ``_QUATERNION_MIN_DIM`` features) against Haar O(d)
    ones: the Hessian's error variance on three ReLU oracles, with one block (n = 2 d calls) and one group
    of 8 (n = 16 d); then what drawing one rotation costs."""
    print(
        "\n| Gaussian, ReLU oracle | first layer | d | n (calls) | Hessian variance, O(d) rotations ", end=""
    )
    print("| Sp(d/4) rotations (default) | ratio Sp / O(d) |")
    print("|---|---|---|---|---|---|---|")
    for d, seeds in ((256, 6),) if quick else ((256, 40), (784, 12)):
        for layer in ("random", "smooth", "local"):
            net, x, ref = oracle(d, 2 * d, "gaussian", 0.5, 2, layer)
            sh = SmoothHess(net)
            for n in (2 * d, 16 * d):
                default = mse(sh, x, ref, 0.5, n, "orthogonal", seeds)
                with mock.patch.object(_sampling, "_QUATERNION_MIN_DIM", 1 << 62):
                    haar = mse(sh, x, ref, 0.5, n, "orthogonal", seeds)
                print(f"| | {layer} | {d} | {n} | {haar:.4g} | {default:.4g} | {default / haar:.3f} |")
    print(
        "\n| d | Haar O(d) rotation: its normals + d reflectors (ms) | Sp(d/4): its normals + ormqr (ms) ",
        end="",
    )
    print("| ratio |")
    print("|---|---|---|---|")
    cpu = torch.device("cpu")
    for d in (256,) if quick else (256, 784):

        def haar_rotation(d: int = d) -> None:
            gauss = _sampling._lower_gaussian(1, d, _gen(0), cpu, torch.float32)
            _sampling._haar_columns(gauss, overwrite=True, rows=True)

        def sp_rotation(d: int = d) -> None:
            _sampling._quaternionic_rows(1, d, _gen(0), cpu, torch.float32)

        t = interleaved([haar_rotation, sp_rotation], 3 if quick else 31)
        print(f"| {d} | {1e3 * t.best[0]:.2f} | {1e3 * t.best[1]:.2f} | {t.ratio[1]:.3f} |")


def tolerance_table(quick: bool) -> None:
    print(
        "\n| model | kernel | d | sampling | tolerance | mean calls | actual err (RMS / max) "
        "| reported / actual RMS | +-2 stderr coverage |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    # d = 256: blocks share rotations in groups of 8, and the error groups are single blocks all the same.
    for d, kernel in itertools.product([10] if quick else [10, 100, 256], ("gaussian", "poisson")):
        seeds = 3 if quick else (10 if d == 10 else 5)
        eps = 0.5
        net, x, ref = oracle(d, 2 * d, kernel, eps, 4)
        sh: Any = SmoothHess(net, kernel=kernel)
        for sampling in ("iid", "orthogonal"):
            calls, actual, rep, act, cover = [], [], [], [], []
            for s in range(seeds):
                h, err = sh.attribute(
                    x, stdevs=eps, n_samples=2000 * d, tolerance=0.05, sampling=sampling, generator=_gen(s)
                )
                calls.append(err.n_samples.double().mean())
                actual.append(rel(h, ref))
                h, err = sh.attribute(
                    x, stdevs=eps, n_samples=40 * d, sampling=sampling, return_error=True, generator=_gen(s)
                )
                rep.append(err.relative**2)
                act.append(rel(h, ref) ** 2)
                cover.append(((h - ref).abs() <= 2 * err.stderr).double().mean())
            ratio = float((torch.stack(rep).mean() / torch.stack(act).mean()).sqrt())
            reached = torch.cat(actual)
            mean_calls, rms, worst = (
                float(torch.stack(calls).mean()),
                float(reached.square().mean().sqrt()),
                float(reached.max()),
            )
            coverage = float(torch.stack(cover).mean())
            cells = f"{mean_calls:.0f} | {rms:.4f} / {worst:.4f} | {ratio:.2f} | {coverage:.1%}"
            print(f"| ReLU oracle | {kernel} | {d} | {sampling} | 0.05 | {cells} |")


def _floor(net: nn.Module, x: Tensor, eps: float, target: int, n: int, batch: int) -> Callable[[], None]:
    """A plain SmoothGrad's cost: ``n`` gradient calls in batches, their Gaussian noise drawn."""

    def f() -> None:
        g = _gen(0)
        for start in range(0, n, batch):
            rows = min(batch, n - start)
            pts = (x + eps * torch.randn(rows, x.shape[1], generator=g)).requires_grad_()
            torch.autograd.grad(net(pts)[:, target].sum(), pts)

    return f


def _dense(sh: Any, x: Tensor, eps: float, target: int, n: int, batch: int, sampling: Optional[str]) -> None:
    """Dense SmoothHess with the same ``n`` and batches (seeded)."""
    sh.attribute(
        x,
        target=target,
        stdevs=eps,
        n_samples=n,
        n_samples_batch_size=batch,
        sampling=sampling,
        generator=_gen(0),
    )


def timing_table(quick: bool) -> None:
    n = 1568 if quick else 8192
    batch = min(1024, n)
    repeats = 1 if quick else 15
    net = mlp784()
    x = torch.rand(1, 784, generator=_gen(1))
    sh = SmoothHess(net)
    eps, target = 0.1, 3

    floor = _floor(net, x, eps, target, n, batch)

    def run(
        sampling: Optional[str],
        qr: bool = False,
        tilt: bool = False,
        share: bool = True,
        layered: bool = False,
        quaternionic: bool = True,
    ) -> Callable[[], None]:
        patches: List[Any] = []
        if not quaternionic:  # Haar O(d) rotations (the default before Sp(d/4))
            patches.append(mock.patch.object(_sampling, "_QUATERNION_MIN_DIM", 1 << 62))
        if qr:  # the O(d) orthogonalisation the sampler used before its reflectors (the same law)
            patches.append(mock.patch.object(_sampling, "_QUATERNION_MIN_DIM", 1 << 62))
            patches.append(mock.patch.object(_sampling, "_haar_columns", _qr_directions))
            patches.append(mock.patch.object(_sampling, "_lower_gaussian", _full_gaussian))
        if tilt:  # tilted radii and their weights at d = 784 too (what they would cost)
            patches.append(mock.patch.object(_sampling, "_TILT_MAX_DIM", 1 << 62))
        if not share:  # a Haar rotation per block, explicit scores (with tilt: the default before sharing)
            patches.append(mock.patch.object(_sampling, "_SHARE_MIN_DIM", 1 << 62))
        if layered:  # the two-layer mixers, which any d can have (the Kronecker ones need d = s c)
            patches.append(mock.patch.object(_sampling._Mixer, "draw_many", staticmethod(_layered_mixers)))

        def f() -> None:
            with contextlib.ExitStack() as stack:
                for patch in patches:
                    stack.enter_context(patch)
                _dense(sh, x, eps, target, n, batch, sampling)

        return f

    tunnel = NoiseTunnel(Saliency(net))

    def captum_smoothgrad() -> None:  # what a Captum user pays for SmoothGrad (for reference)
        tunnel.attribute(
            x, nt_type="smoothgrad", nt_samples=n, nt_samples_batch_size=batch, stdevs=eps, target=target
        )

    contenders: List[Callable[[], object]] = [
        floor,
        run(None),
        run("iid"),
        run(None, share=False, tilt=True, quaternionic=False),
        run(None, qr=True),
        run(None, tilt=True),
        run(None, layered=True),
        run(None, quaternionic=False),
        captum_smoothgrad,
    ]
    t = interleaved(contenders, repeats)
    print("\n| MLP 784-500-300-250-250-10 | n | floor: noise + gradients (s) | time (s) | ratio to floor |")
    print("|---|---|---|---|---|")
    names = (
        "orthogonal (default)",
        "iid",
        "orthogonal, a rotation per block (before)",
        "orthogonal, rotations by QR",
        "orthogonal, tilted radii",
        "orthogonal, two-layer mixers",
        "orthogonal, Haar O(d) rotations (before)",
    )
    for i, name in enumerate(names, start=1):
        print(f"| dense SmoothHess, {name} | {n} | {t.best[0]:.3f} | {t.best[i]:.3f} | {t.ratio[i]:.3f} |")
    i = len(names) + 1
    row = f"| {n} | {t.best[0]:.3f} | {t.best[i]:.3f} | {t.ratio[i]:.3f} |"
    print(f"| Captum's SmoothGrad, NoiseTunnel(Saliency) (for reference) {row}")
    growth_table(net, x, eps, target, batch, quick)


def growth_table(net: nn.Module, x: Tensor, eps: float, target: int, batch: int, quick: bool) -> None:
    """The default's and iid's ratio to the floor as ``n`` grows (a group's fixed cost amortised)."""
    d = x.shape[1]
    sizes = (1568, 3136) if quick else (8192, 12544, 25088, 50176)
    share = _sampling._SHARE_BLOCKS
    print(f"\n| MLP 784-500-300-250-250-10, n | blocks (groups of {share}) | floor (s) ", end="")
    print("| default: ratio | iid: ratio |")
    print("|---|---|---|---|---|")
    sh = SmoothHess(net)
    for n in sizes:
        calls = [functools.partial(_dense, sh, x, eps, target, n, batch, s) for s in (None, "iid")]
        rounds = 1 if quick else (15 if n <= 12544 else 7)
        t = interleaved([_floor(net, x, eps, target, n, batch), *calls], rounds)
        blocks = n / 2 / d  # antithetic pairs: n / 2 draws, d per block
        groups = math.ceil(blocks / share)
        print(f"| {n} | {blocks:.2f} ({groups}) | {t.best[0]:.3f} | {t.ratio[1]:.3f} | {t.ratio[2]:.3f} |")


def _allocator_child(state: str, quick: bool) -> None:
    """One process's floor and default at n = 8192 (``--only allocator``); prints one table row."""
    import resource  # Unix only, like the table

    if state == "settled":  # freed untouched: glibc's thresholds move, no page is faulted in
        block = torch.empty(1 << 22)
        del block
    n = 1568 if quick else 8192
    batch, rounds = min(1024, n), 1 if quick else 15
    net, eps, target = mlp784(), 0.1, 3
    x = torch.rand(1, 784, generator=_gen(1))
    sh = SmoothHess(net)
    faults: List[List[int]] = [[], []]

    def counted(i: int, fn: Callable[[], None]) -> Callable[[], None]:
        def f() -> None:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            fn()
            faults[i].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

        return f

    default = functools.partial(_dense, sh, x, eps, target, n, batch, None)
    t = interleaved([counted(0, _floor(net, x, eps, target, n, batch)), counted(1, default)], rounds)
    floor_faults, default_faults = (int(statistics.median(f)) for f in faults)
    cells = f"{t.best[0]:.3f} | {floor_faults} | {default_faults} | {t.ratio[1]:.3f}"
    print(f"| {state} | {n} | {batch} | {cells} |")

    # SmoothHess's own chunking (n_samples_batch_size=None), against the floor in batches of the same size;
    # beside them one chunk of all n calls (the default before the CPU budget) and the floor in one batch.
    draws = n // 2
    length = _sampling.orthogonal_block_length(x.shape[1])
    chunk = 2 * _sampling.default_chunk(draws, 1, x.shape[1], 2, x.device, length)

    def own_chunking() -> None:
        sh.attribute(x, target=target, stdevs=eps, n_samples=n, generator=_gen(0))

    for f in faults:
        f.clear()
    contenders: List[Callable[[], object]] = [
        counted(0, _floor(net, x, eps, target, n, chunk)),
        counted(1, own_chunking),
        functools.partial(_dense, sh, x, eps, target, n, n, None),
        _floor(net, x, eps, target, n, n),
    ]
    t = interleaved(contenders, rounds)
    floor_faults, default_faults = (int(statistics.median(f)) for f in faults)
    cells = f"{t.best[0]:.3f} | {floor_faults} | {default_faults} | {t.ratio[1]:.3f}"
    print(f"| {state} | {n} | {chunk} (default chunking) | {cells} |")
    beside = f"{t.best[0]:.3f} | | |"
    print(f"| {state} | {n} | {n} (one chunk, beside it) | {beside} {t.ratio[2]:.3f} |")
    print(f"| {state} | {n} | {n} (the floor in one batch, beside it) | {beside} {t.ratio[3]:.3f} |")


def allocator_table(quick: bool) -> None:
    """The default's ratio to the floor with glibc's heap as the process starts and settled (each in a
    fresh process), and the page faults per call (medians)."""
    print(
        "\n| MLP 784-500-300-250-250-10, glibc heap | n | batch | floor (s) | floor: faults a call ", end=""
    )
    print("| default: faults a call | default / floor |")
    print("|---|---|---|---|---|---|---|")
    for state in ("as started", "settled"):
        args = [sys.executable, __file__, "--allocator-child", state] + (["--quick"] if quick else [])
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
        print("\n".join(out.strip().splitlines()[-4:]))


def _fwht(v: Tensor) -> Tensor:
    """Orthonormal fast Walsh-Hadamard transform of the rows of ``v`` (length a power of two)."""
    m, d = v.shape
    h = 1
    while h < d:
        v = v.reshape(m, d // (2 * h), 2, h)
        v = torch.stack((v[:, :, 0] + v[:, :, 1], v[:, :, 0] - v[:, :, 1]), dim=2).reshape(m, d)
        h *= 2
    return v / math.sqrt(d)


def _layered_mixers(
    dim: int, count: int, generator: torch.Generator, device: torch.device, dtype: torch.dtype
) -> List[Any]:
    """Two-layer mixers for any ``d`` (what ``_Mixer.draw_many`` gives when ``d`` does not factor)."""
    return [_sampling._LayeredMixer(dim, generator, device, dtype) for _ in range(count)]


def _qr_directions(gauss: Tensor, overwrite: bool = False, rows: bool = False) -> Tensor:
    """What the sampler used before: the Q of the QR of ``gauss``, signs fixed (R's diagonal > 0); with
    ``rows``, its transpose written into ``gauss``."""
    q, r = torch.linalg.qr(gauss)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]
    return gauss.copy_(q.mT) if rows else q


def _full_gaussian(
    batch: int, dim: int, generator: torch.Generator, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """A whole ``d x d`` Gaussian matrix (the QR contender needs all of it; the sampler draws the lower
    triangle only)."""
    return torch.randn(batch, dim, dim, generator=generator, device=device, dtype=dtype)


def orthogonalisation_table(quick: bool) -> None:
    print(
        "\n| d | directions m | QR of d x m (s) | m Householder reflectors drawn directly, the sampler's (s) "
        "| 3 x (signs + FWHT), padded to a power of 2 (s) |"
    )
    print("|---|---|---|---|---|")
    for d, m in ((784, 196),) if quick else ((784, 784), (150528, 32), (150528, 222)):
        gauss = torch.randn(1, d, m, generator=_gen(0))
        fns: List[Callable[[], object]] = [
            functools.partial(_qr_directions, gauss),
            functools.partial(_sampling._haar_columns, gauss),
        ]
        t = interleaved(fns, 2 if d > 784 else 7)
        pad = 1 << (d - 1).bit_length()
        g = _gen(0)
        t0 = time.perf_counter()
        v = torch.zeros(m, pad)
        v[torch.arange(m), torch.randperm(pad, generator=g)[:m]] = 1.0
        for _ in range(3):
            v = _fwht(v * (torch.randint(0, 2, (pad,), generator=g) * 2 - 1))
        fw_s = time.perf_counter() - t0
        print(f"| {d} | {m} | {t.best[0]:.4f} | {t.best[1]:.4f} | {fw_s:.4f} |")


def _oracle_smoothgrad(net: nn.Module, x: Tensor, eps: float) -> Tensor:
    """The Gaussian-smoothed gradient of the one-hidden-layer ReLU oracle in closed form:
    ``sum_k a_k Phi((w_k x + b_k) / (eps |w_k|)) w_k``."""
    first, last = net[0], net[2]  # type: ignore[index]
    w, b, a = first.weight.detach(), first.bias.detach(), last.weight.detach()[0]
    return (a * torch.special.ndtr((x @ w.T + b) / (eps * w.norm(dim=1)))) @ w


def tunnel_table(quick: bool) -> None:
    """SmoothGrad (KernelNoiseTunnel over Saliency) error variance by sampling, closed-form gradient."""
    from captum.attr import Saliency

    from captum_smoothhess import KernelNoiseTunnel

    print(
        "\n| SmoothGrad, ReLU oracle | d | nt_samples | sampling | RMS rel. error | variance ratio to iid |"
    )
    print("|---|---|---|---|---|---|")
    seeds = 5 if quick else 30
    for d in (10,) if quick else (10, 100):
        eps = 0.5
        net, x, _ = oracle(d, 2 * d, "gaussian", eps, 4)
        exact = _oracle_smoothgrad(net, x, eps)
        n = 4 * d
        base = None
        for sampling in ("iid", "antithetic", "orthogonal", "orthogonal_antithetic"):
            nt = KernelNoiseTunnel(Saliency(net), sampling=sampling)
            errs = [
                rel(nt.attribute(x, nt_samples=n, stdevs=eps, abs=False, generator=_gen(s)), exact)
                for s in range(seeds)
            ]
            m = float((torch.stack(errs) ** 2).mean())
            base = m if base is None else base
            print(f"| | {d} | {n} | {sampling} | {m**0.5:.4f} | {base / m:.2f} |")


def _coverage(results: List[Tuple[Tensor, Any]], truth: Tensor) -> Tuple[float, float]:
    """(share of entries within +-2 reported stderr of ``truth``, over seeds; median over entries of the
    RMS reported stderr over the spread of the estimates across seeds)."""
    est = torch.stack([r[0] for r in results])
    err = torch.stack([r[1].stderr for r in results])
    cover = float(((est - truth).abs() <= 2 * err).double().mean())
    return cover, float((err.square().mean(0).sqrt() / est.std(0)).median())


def tunnel_error_table(quick: bool) -> None:
    """Calibration of the noise tunnels' ``return_error``: SmoothGrad of the ReLU oracle against its
    closed form (every sampling), SmoothGrad² and VarGrad, NoiseGrad and FusionGrad against a
    20,000-sample reference of the same method (another seed)."""
    from captum.attr import Saliency

    from captum_smoothhess import FusionGrad, KernelNoiseTunnel, NoiseGrad

    print("\n| ReLU oracle | d | nt_samples | sampling | nt_type | +-2 stderr coverage ", end="")
    print("| reported / actual |")
    print("|---|---|---|---|---|---|---|")
    seeds, big = (8, 2000) if quick else (100, 20000)
    for d in (10,) if quick else (10, 100):
        eps = 0.5
        net, x, _ = oracle(d, 2 * d, "gaussian", eps, 4)
        exact = _oracle_smoothgrad(net, x, eps)
        n = 4 * d  # four orthogonal blocks
        tunnel = functools.partial(KernelNoiseTunnel, Saliency(net))
        cases: List[Tuple[str, Any, str, str, Optional[Tensor]]] = [
            ("KernelNoiseTunnel", tunnel(sampling=s), s, "smoothgrad", exact)
            for s in ("iid", "antithetic", "orthogonal", "orthogonal_antithetic")
        ]
        cases += [("KernelNoiseTunnel", tunnel(), "iid", t, None) for t in ("smoothgrad_sq", "vargrad")]
        if d == 10:
            cases += [
                (m.__name__, m(Saliency(net)), "iid", "smoothgrad", None) for m in (NoiseGrad, FusionGrad)
            ]
        for name, method, sampling, nt_type, truth in cases:
            kw: Dict[str, Any] = dict(nt_type=nt_type, abs=False)
            if name == "KernelNoiseTunnel":
                kw["stdevs"] = eps  # (the weight noise keeps its default, 0.2)
            if truth is None:
                truth = method.attribute(x, nt_samples=big, generator=_gen(10_000), **kw)
            runs = [
                method.attribute(x, nt_samples=n, generator=_gen(s), return_error=True, **kw)
                for s in range(seeds)
            ]
            cover, ratio = _coverage(runs, truth)
            print(f"| {name} | {d} | {n} | {sampling} | {nt_type} | {cover:.1%} | {ratio:.2f} |")
    tunnel_tolerance_table(quick)


def tunnel_tolerance_table(quick: bool) -> None:
    """``tolerance=0.05`` on KernelNoiseTunnel (Saliency of a ReLU MLP 10-32-3, float64, 4 examples,
    stdevs 0.5): samples taken and the actual relative error against a 200,000-sample reference."""
    from captum.attr import Saliency

    from captum_smoothhess import KernelNoiseTunnel

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3)).double()
    x = torch.randn(4, 10, dtype=torch.float64)
    seeds, big = (4, 20_000) if quick else (40, 200_000)
    reference = KernelNoiseTunnel(Saliency(net), sampling="antithetic").attribute(
        x, nt_samples=big, stdevs=0.5, target=0, abs=False, generator=_gen(99)
    )
    print("\n| tolerance 0.05, ReLU MLP 10-32-3 | sampling | mean samples | actual rel. error: RMS ", end="")
    print("| share above 0.05 | max |")
    print("|---|---|---|---|---|---|")
    for sampling in ("iid", "antithetic"):
        tunnel = KernelNoiseTunnel(Saliency(net), sampling=sampling)
        used, actual = [], []
        for s in range(seeds):
            attr, err = tunnel.attribute(
                x, nt_samples=100_000, stdevs=0.5, target=0, abs=False, tolerance=0.05, generator=_gen(s)
            )
            used.append(float(err.n_samples[0]))
            actual.append(rel(attr, reference))
        e = torch.cat(actual)
        cells = f"{statistics.mean(used):.0f} | {float(e.square().mean().sqrt()):.3f} | "
        cells += f"{float((e > 0.05).double().mean()):.0%} | {float(e.max()):.3f}"
        print(f"| | {sampling} | {cells} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument(
        "--only",
        default="variance,tilt,share,quaternion,oracles,partial,tolerance,timing,qr,tunnel,tunnel_error",
        help="comma-separated tables",
    )
    parser.add_argument("--allocator-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.allocator_child:
        _allocator_child(args.allocator_child, args.quick)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    tables = {
        "variance": variance_table,
        "tilt": tilt_table,
        "share": share_table,
        "quaternion": quaternion_table,
        "oracles": oracle_table,
        "partial": partial_table,
        "tolerance": tolerance_table,
        "timing": timing_table,
        "qr": orthogonalisation_table,
        "tunnel": tunnel_table,
        "tunnel_error": tunnel_error_table,
        "allocator": allocator_table,
    }
    for name in args.only.split(","):
        tables[name](args.quick)


if __name__ == "__main__":
    main()
