"""The benchmark suite: one table of every performance claim of the package.

Run ``python benchmarks/run.py`` (``--quick`` for a CI smoke run, ``--device cuda``
on a GPU machine, ``--out FILE`` for the markdown copy, default
``docs/benchmarks.md``). Each case runs in its own subprocess, so its peak
resident memory is its own. Contenders timed within one process go through
``_timing.interleaved``: the times shown are the best round, the ratio is the
median of per-round ratios, so machine load moves both alike. Cases that need
a process per contender (peak memory) time one run each.

Cases:

* SmoothHess vs the gradient floor (the same gradient calls in the same
  batches, nothing else) on an MLP with d = 784 and on a 3x32x32 CNN;
* dense vs factored SmoothHess: time and peak memory;
* SmoothHess vs the exact Hessian of the SoftPlus surrogate by double backprop
  (d = 784 and 3072): time and peak memory;
* KernelNoiseTunnel vs NoiseTunnel, NoiseGrad vs a per-draw deep-copy loop
  (from ``benchmarks/mollify.py``);
* CASO iterations and time for both curvature sources (from ``benchmarks/caso.py``);
* group interactions on a 3x224x224 input (196 patches, n = 512): time and peak memory;
* a ResNet-18 on one 3x224x224 image (from ``benchmarks/resnet.py``): grouped and factored
  SmoothHess vs the gradient floor, ``top_pairs``, one pixel's row, ``group``, and CASO;
* two ``torch.distributed`` ranks (gloo, one thread each) vs one process (two threads).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import _checkout  # noqa: F401  (this checkout's package first on sys.path)
import torch
from _memory import peak_mib
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

Row = Dict[str, Any]


def _cnn32() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 8 * 8, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    ).eval()


def _floor_vs_smoothhess(
    net: nn.Module, x: Tensor, n: int, batch_size: int, repeats: int, device: torch.device, name: str
) -> List[Row]:
    from smoothhess import floor_and_smoothhess

    t = floor_and_smoothhess(net, x, n, batch_size, repeats, device)
    setting = f"d={x[0].numel()}, n={n}, batch={batch_size}"

    def row(kind: str, seconds: float, ratio: float, goal: str) -> Row:
        return dict(
            case=f"{name} ({kind})",
            setting=setting,
            baseline="gradient floor",
            t_base=t.floor,
            t_ours=seconds,
            ratio=ratio,
            goal=goal,
        )

    return [
        row("dense", t.dense, t.dense_ratio, "<= 1.10"),
        row("factors", t.factors, t.factors_ratio, "info"),
        row(
            "bound: floor + d x d product alone",
            t.floor + t.product,
            t.bound_ratio,
            "least possible dense ratio",
        ),
    ]


def case_floor_mlp(quick: bool, device: torch.device) -> List[Row]:
    from smoothhess import mlp784

    n = 1024 if quick else 8192
    x = torch.rand(1, 784, generator=torch.Generator().manual_seed(1))
    return _floor_vs_smoothhess(
        mlp784(),
        x,
        n,
        min(1024, n),
        1 if quick else 8,
        device,
        "SmoothHess vs floor, MLP 784-500-300-250-250-10",
    )


def case_floor_cnn(quick: bool, device: torch.device) -> List[Row]:
    n = 256 if quick else 2048
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return _floor_vs_smoothhess(
        _cnn32(), x, n, min(512, n), 1 if quick else 3, device, "SmoothHess vs floor, CNN 3x32x32"
    )


def case_dense_vs_factors(quick: bool, device: torch.device) -> List[Row]:
    """Peak memory needs separate processes: this case re-launches itself per variant."""
    rows = []
    d = 3072
    n = 256 if quick else 2048
    mem, times = {}, {}
    for variant in ("dense", "factors"):
        res = _subprocess(
            ["--inner-factors", variant, "--inner-n", str(n)] + (["--quick"] if quick else []), device
        )
        mem[variant], times[variant] = res["mem"], res["time"]
    rows.append(
        dict(
            case="factored vs dense SmoothHess",
            setting=f"CNN 3x32x32, d={d}, n={n}",
            baseline="dense",
            t_base=times["dense"],
            t_ours=times["factors"],
            ratio=times["factors"] / times["dense"],
            mem=f"dense {mem['dense']:.0f} / factors {mem['factors']:.0f}",
            goal="memory O(nd), no d x d",
        )
    )
    return rows


def _inner_factors(variant: str, n: int, device: torch.device) -> Dict[str, float]:
    from captum_smoothhess import SmoothHess

    net, x = _cnn32().to(device), torch.rand(1, 3, 32, 32, device=device)
    sh = SmoothHess(net)
    base = peak_mib()
    t0 = time.perf_counter()
    gen = torch.Generator(device=device).manual_seed(0)
    if variant == "factors":
        sh.attribute(x, target=3, stdevs=0.1, n_samples=n, output="factors", generator=gen).matvec(
            torch.ones_like(x)
        )
    else:
        sh.attribute(x, target=3, stdevs=0.1, n_samples=n, generator=gen)
    return dict(time=time.perf_counter() - t0, mem=peak_mib() - base)


def case_softplus_exact(quick: bool, device: torch.device) -> List[Row]:
    rows = []
    dims = (784,) if quick else (784, 3072)
    for d in dims:
        res = {
            v: _subprocess(["--inner-exact", v, "--inner-n", str(d)] + (["--quick"] if quick else []), device)
            for v in ("exact", "smoothhess")
        }
        rows.append(
            dict(
                case="SmoothHess vs exact SoftPlus Hessian",
                setting=f"MLP d={d}, n=1024",
                baseline="exact, double backprop",
                t_base=res["exact"]["time"],
                t_ours=res["smoothhess"]["time"],
                ratio=res["smoothhess"]["time"] / res["exact"]["time"],
                mem=f"exact {res['exact']['mem']:.0f} / ours {res['smoothhess']['mem']:.0f}",
                goal="info",
            )
        )
    return rows


def _inner_exact(variant: str, d: int, device: torch.device) -> Dict[str, float]:
    from captum_smoothhess import SmoothHess
    from captum_smoothhess.baselines import exact_hessian, softplus_surrogate

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(d, 500), nn.ReLU(), nn.Linear(500, 300), nn.ReLU(), nn.Linear(300, 10)).to(
        device
    )
    x = torch.rand(1, d, device=device)
    base = peak_mib()
    t0 = time.perf_counter()
    if variant == "exact":
        exact_hessian(softplus_surrogate(net, beta=10.0), x, target=3, chunk_size=256)
    else:
        SmoothHess(net).attribute(
            x, target=3, stdevs=0.1, n_samples=1024, generator=torch.Generator(device=device).manual_seed(0)
        )
    return dict(time=time.perf_counter() - t0, mem=peak_mib() - base)


def case_mollify(quick: bool, device: torch.device) -> List[Row]:
    import mollify

    rows = []
    for name, setting, base, ours, ratio, goal, mem in mollify.run(quick):
        rows.append(
            dict(
                case=name.strip(),
                setting=setting,
                baseline="few draws" if mem else "NoiseTunnel / deep-copy loop",
                t_base=base,
                t_ours=ours,
                ratio=ratio,
                mem=mem,
                goal=goal,
            )
        )
    return rows


def case_caso(quick: bool, device: torch.device) -> List[Row]:
    import caso

    return [
        dict(
            case=r["case"],
            setting=r["setting"],
            baseline=r.get("baseline", ""),
            t_base=r["t_base"],
            t_ours=r["t_ours"],
            ratio=r["ratio"],
            goal=r.get("goal", "info"),
        )
        for r in caso.suite_rows(quick, device)
    ]


def case_image_groups(quick: bool, device: torch.device) -> List[Row]:
    from captum_smoothhess import SmoothHess

    torch.manual_seed(0)
    net = (
        nn.Sequential(
            nn.Conv2d(3, 16, 7, stride=4, padding=3),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(512, 10),
        )
        .eval()
        .to(device)
    )
    side = 112 if quick else 224
    n = 64 if quick else 512
    x = torch.rand(1, 3, side, side, device=device)
    p = side // 16
    patches = (
        torch.arange(p * p, device=device).reshape(p, p).repeat_interleave(16, 0).repeat_interleave(16, 1)
    )
    mask = patches[None].expand(3, side, side)
    base = peak_mib()
    t0 = time.perf_counter()
    out = SmoothHess(net).attribute(
        x,
        target=3,
        stdevs=0.1,
        n_samples=n,
        feature_mask=mask,
        generator=torch.Generator(device=device).manual_seed(0),
    )
    elapsed = time.perf_counter() - t0
    assert isinstance(out, Tensor) and out.shape == (1, p * p, p * p)
    return [
        dict(
            case="group interactions, 16x16 patches",
            setting=f"3x{side}x{side}, G={p * p}, n={n}",
            baseline="-",
            t_base=math.nan,
            t_ours=elapsed,
            ratio=math.nan,
            mem=f"{peak_mib() - base:.0f} (process peak {peak_mib():.0f})",
            goal="< 3 GiB",
        )
    ]


def case_resnet(quick: bool, device: torch.device) -> List[Row]:
    import resnet

    return resnet.run(quick, 1 if quick else 3, device)


def case_distributed(quick: bool, device: torch.device) -> List[Row]:
    n = 2048 if quick else 8192
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        str(HERE / "run.py"),
        "--inner-dist",
        "--inner-n",
        str(n),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    two = json.loads(proc.stdout.strip().splitlines()[-1])["time"]
    one = _inner_dist(n)["time"]
    return [
        dict(
            case="two gloo ranks vs one process",
            setting=f"MLP d=784, n={n}",
            baseline="1 process",
            t_base=one,
            t_ours=two,
            ratio=two / one,
            goal="info (2 cores in all)",
        )
    ]


def _inner_dist(n: int) -> Dict[str, float]:
    import torch.distributed as dist
    from smoothhess import mlp784

    from captum_smoothhess import SmoothHess

    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    net, x = mlp784(), torch.rand(1, 784, generator=torch.Generator().manual_seed(1))
    sh = SmoothHess(net)
    sh.attribute(x, target=3, stdevs=0.1, n_samples=256, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    sh.attribute(
        x,
        target=3,
        stdevs=0.1,
        n_samples=n,
        n_samples_batch_size=512,
        generator=torch.Generator().manual_seed(0),
    )
    elapsed = time.perf_counter() - t0
    if dist.is_initialized():
        dist.destroy_process_group()
    return dict(time=elapsed)


CASES: Dict[str, Callable[[bool, torch.device], List[Row]]] = {
    "floor_mlp": case_floor_mlp,
    "floor_cnn": case_floor_cnn,
    "dense_vs_factors": case_dense_vs_factors,
    "softplus_exact": case_softplus_exact,
    "mollify": case_mollify,
    "caso": case_caso,
    "image_groups": case_image_groups,
    "resnet": case_resnet,
    "distributed": case_distributed,
}


def _subprocess(extra: List[str], device: torch.device) -> Any:
    cmd = [sys.executable, str(HERE / "run.py"), "--device", str(device), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(extra)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _table(rows: List[Row], header: str) -> str:
    lines = [
        header,
        "",
        "| case | setting | baseline | baseline (s) | ours (s) | ratio | peak MiB | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['setting']} | {r['baseline']} | {r['t_base']:.4g} | "
            f"{r['t_ours']:.4g} | {r['ratio']:.3f} | {r.get('mem', '')} | {r['goal']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run for CI")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--cases", default=",".join(CASES), help="comma-separated subset of: " + ", ".join(CASES)
    )
    parser.add_argument(
        "--out",
        help="file for the table (default: docs/benchmarks.md when every case runs; a subset of the "
        "cases is only printed, so that it does not replace the other cases' rows)",
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--inner-factors", help=argparse.SUPPRESS)
    parser.add_argument("--inner-exact", help=argparse.SUPPRESS)
    parser.add_argument("--inner-dist", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--inner-n", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)

    # Inner invocations: print one JSON line and exit.
    if args.inner_factors:
        print(json.dumps(_inner_factors(args.inner_factors, args.inner_n, device)))
        return
    if args.inner_exact:
        print(json.dumps(_inner_exact(args.inner_exact, args.inner_n, device)))
        return
    if args.inner_dist:
        res = _inner_dist(args.inner_n)
        if os.environ.get("RANK", "0") == "0":
            print(json.dumps(res))
        return
    if args.case:
        print(json.dumps(CASES[args.case](args.quick, device)))
        return

    rows: List[Row] = []
    for name in args.cases.split(","):
        print(f"[{name}] ...", file=sys.stderr, flush=True)
        extra = ["--case", name] + (["--quick"] if args.quick else [])
        rows.extend(_subprocess(extra, device))
    header = (
        f"Benchmarks ({'quick' if args.quick else 'full'}), device {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads. Regenerate: `python benchmarks/run.py"
        f"{' --quick' if args.quick else ''}`. Times in seconds (best round); ratio = ours / baseline, "
        "the median of per-round ratios where both run in one process, unless the goal says speed-up."
    )
    table = _table(rows, header)
    print(table)
    out = args.out
    if out is None and set(args.cases.split(",")) == set(CASES):
        out = str(HERE.parent / "docs" / "benchmarks.md")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(table + "\n")
        print(f"\nwritten to {out}", file=sys.stderr)
    else:
        print("\n(a subset of the cases: not written; pass --out to write it)", file=sys.stderr)


if __name__ == "__main__":
    main()
