"""Smoke runs of the benchmark scripts, so they do not rot (timings are not checked)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def _run(args: list[str]) -> str:
    # The scripts import the package of this checkout, not whichever one is installed.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path)
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=600, check=False, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_smoothhess_benchmark_quick() -> None:
    out = _run([str(BENCH / "smoothhess.py"), "--quick"])
    assert "ratio" in out and "antithetic pairs" in out


def test_resnet_benchmark_quick() -> None:
    out = _run([str(BENCH / "resnet.py"), "--quick"])
    assert "top_pairs(10)" in out and "gradient floor" in out and "HVPs per example" in out


@pytest.mark.parametrize("cases", ["floor_mlp,dense_vs_factors,image_groups", "softplus_exact,distributed"])
def test_suite_quick(tmp_path: Path, cases: str) -> None:
    md = tmp_path / "bench.md"
    out = _run([str(BENCH / "run.py"), "--quick", "--cases", cases, "--out", str(md)])
    text = md.read_text()
    assert text.strip() == out.strip()
    # One row per case at least, each with a finite ratio or an explicit memory figure.
    assert text.count("\n| ") >= len(cases.split(",")) + 1


@pytest.mark.parametrize("flags", [["--quick", "--repeat", "1"], ["--quick", "--reference"]])
def test_caso_benchmark_quick(flags: list[str]) -> None:
    out = _run([str(BENCH / "caso.py"), *flags])
    assert (
        ("rows" in out)
        if "--reference" not in flags
        else ("reference" in out and "| 100-64-10, B=16 | 0.01 | 4 |" in out)
    )


def test_layer_benchmark_quick() -> None:
    out = _run([str(BENCH / "layer.py"), "--quick"])
    assert "gradient floor at the layer" in out and "token-grouped" in out and "process peak MiB" in out


def test_efficiency_benchmark_quick() -> None:
    out = _run(
        [
            str(BENCH / "efficiency.py"),
            "--quick",
            "--only",
            "variance,tilt,share,quaternion,oracles,partial,tolerance,timing,allocator,tunnel_error",
        ]
    )
    assert "variance ratio" in out and "reported / actual" in out and "ratio to floor" in out
    assert "chi_d radii | tilted" in out and "+-2 stderr coverage" in out
    assert "ratio shared / per block" in out and "a rotation per block (before)" in out
    assert "| | local | 256 | 4096 |" in out and "Sp(d/4): its normals + ormqr (ms)" in out
    assert "Haar O(d) rotations (before)" in out
    assert "blocks (groups of 8)" in out and "default: ratio" in out
    assert "| as started | 1568 | 1024 |" in out and "| settled | 1568 | 1024 |" in out
    assert "| settled | 1568 | 784 (default chunking) |" in out
    assert "| settled | 1568 | 1568 (one chunk, beside it) |" in out
    assert (
        "| KernelNoiseTunnel | 10 | 40 | orthogonal_antithetic | smoothgrad |" in out
        and "| FusionGrad |" in out
        and "| tolerance 0.05, ReLU MLP 10-32-3 |" in out
    )
