"""A ResNet-18 on one 3x224x224 image (d = 150,528): SmoothHess at image size.

Run ``python benchmarks/resnet.py`` (``--quick``: a 3x32x32 image, for a smoke
run). The network is ``_resnet.resnet18(0)`` (BasicBlocks, batch norm in eval
mode, random weights). Rows:

* grouped SmoothHess over 16x16 patches (196 groups) and factored SmoothHess,
  both ``n = 64`` in one batch, against the *gradient floor*: the same 64
  gradient calls in the same batch on points prepared in advance, nothing
  else. Timed by ``_timing.interleaved``; ratios are medians of per-round ratios;
* the reductions of the factors users reach for at image size:
  ``top_pairs(10)`` (exact), the row of one pixel (``matvec`` with a one-hot
  vector) and ``group`` over the patches, each with its time and the peak
  resident memory of the process during the call;
* CASO with exact Hessian-vector products (``curvature="autograd"``) on two
  images: time and Hessian-vector products per example.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any, Callable, Dict, List, Tuple

import _checkout  # noqa: F401  (this checkout's package first on sys.path)
import torch
from _memory import peak_mib, reset_peak
from _resnet import resnet18
from _timing import interleaved
from run import _table
from torch import Tensor

from captum_smoothhess import SmoothHess, SmoothHessFactors
from captum_smoothhess.caso import CASO

Row = Dict[str, Any]
TARGET, EPS = 3, 0.1


def patch_mask(side: int, patch: int) -> Tensor:
    """Captum-style feature mask ``(3, side, side)``: one group per ``patch x patch`` square."""
    p = side // patch
    grid = torch.arange(p * p).reshape(p, p).repeat_interleave(patch, 0).repeat_interleave(patch, 1)
    return grid[None].expand(3, side, side)


def measured(fn: Callable[[], object], device: torch.device) -> Tuple[float, float, object]:
    """Seconds and process peak MiB (host memory) of one call of ``fn``, and its result."""
    reset_peak()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, peak_mib(), out


def run(quick: bool, repeats: int, device: torch.device) -> List[Row]:
    """All rows, in the format of ``benchmarks/run.py``."""
    side, patch, n = (32, 8, 16) if quick else (224, 16, 64)
    net = resnet18(0).to(device)
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(1)).to(device)
    mask = patch_mask(side, patch).to(device)
    groups = (side // patch) ** 2
    sh = SmoothHess(net)
    noise = torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(2)).to(device)
    points = (x + EPS * noise).requires_grad_()

    def floor() -> None:
        torch.autograd.grad(net(points)[:, TARGET].sum(), points)

    def smoothhess(**kw: Any) -> Any:
        gen = torch.Generator(device=device).manual_seed(0)
        return sh.attribute(
            x, target=TARGET, stdevs=EPS, n_samples=n, n_samples_batch_size=n, generator=gen, **kw
        )

    contenders = [floor, lambda: smoothhess(feature_mask=mask), lambda: smoothhess(output="factors")]
    t = interleaved(contenders, repeats, device)
    setting = f"3x{side}x{side}, d={x.numel()}, n={n}, batch={n}"

    def row(
        case: str, seconds: float, goal: str, ratio: float = math.nan, mem: str = "", where: str = ""
    ) -> Row:
        timed = not math.isnan(ratio)
        return dict(
            case=case,
            setting=where or setting,
            baseline="gradient floor" if timed else "-",
            t_base=t.best[0] if timed else math.nan,
            t_ours=seconds,
            ratio=ratio,
            mem=mem,
            goal=goal,
        )

    rows = [
        row(f"ResNet-18, grouped SmoothHess ({groups} patches)", t.best[1], "<= 1.2", t.ratio[1]),
        row("ResNet-18, factored SmoothHess", t.best[2], "<= 1.2", t.ratio[2]),
    ]
    fac = smoothhess(output="factors")
    assert isinstance(fac, SmoothHessFactors)
    pixel = torch.zeros_like(x)
    pixel[0, 1, side // 2, side // 2] = 1.0
    for case, fn, goal in (
        ("ResNet-18 factors: top_pairs(10), exact", lambda: fac.top_pairs(10), "<= 60 s, < 3 GiB"),
        ("ResNet-18 factors: one pixel's row (matvec, one-hot)", lambda: fac.matvec(pixel), "info"),
        (f"ResNet-18 factors: group({groups} patches)", lambda: fac.group(mask), "info"),
    ):
        fn()  # warm-up
        seconds, peak, _ = min((measured(fn, device) for _ in range(repeats)), key=lambda r: r[0])
        rows.append(row(case, seconds, goal, mem=f"process peak {peak:.0f}"))

    x2 = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(3)).to(device)
    seconds, peak, out = measured(
        lambda: CASO(net).attribute(x2, target=TARGET, curvature="autograd", return_info=True), device
    )
    assert isinstance(out, tuple)
    hvps = ", ".join(f"{h:.0f}" for h in out[1]["hvps"].tolist())
    caso = "ResNet-18, CASO, autograd curvature"
    where = f"two 3x{side}x{side} images, lambda2=1"
    rows.append(
        row(caso, seconds, f"info; HVPs per example {hvps}", mem=f"process peak {peak:.0f}", where=where)
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="a 3x32x32 image, n = 16, one round: a smoke run"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    header = (
        f"ResNet-18, torch {torch.__version__}, {torch.get_num_threads()} threads. Regenerate: "
        f"`python benchmarks/resnet.py{' --quick' if args.quick else ''}`. Times in seconds (best round)."
    )
    print(_table(run(args.quick, repeats, torch.device(args.device)), header))


if __name__ == "__main__":
    main()
