"""SmoothHess and global_interactions over torch.distributed: two gloo ranks give the one-process result."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(tmp_path: Path, *args: str) -> None:
    """Run dist_worker.py on two gloo ranks."""
    worker = Path(__file__).with_name("dist_worker.py")
    # The workers import this checkout (the script's folder, not the root, is on their path).
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(worker),
        str(tmp_path),
        *args,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]


needs_gloo = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


@needs_gloo
def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    _launch(tmp_path)
    single = torch.load(tmp_path / "single.pt")
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["hess"], single["hess"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["grad"], single["grad"], rtol=1e-5, atol=1e-6)
        # Each rank evaluated half of the 2 x 600 perturbed rows (plus the 2-row check).
        assert got["rows"] == 600 + 2
    assert torch.count_nonzero(single["hess"]) > 0


@needs_gloo
def test_two_ranks_equal_one_process_with_shared_rotations(tmp_path: Path) -> None:
    """Ranks see parts of blocks and groups: each forms what its part of the rotated sums holds."""
    _launch(tmp_path, "shared")
    single = torch.load(tmp_path / "single.pt")
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["hess"], single["hess"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["grad"], single["grad"], rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(single["hess"]) > 0


@needs_gloo
def test_global_interactions_two_ranks_equal_one_process(tmp_path: Path) -> None:
    _launch(tmp_path, "global")
    single = torch.load(tmp_path / "single.pt")
    assert single["n"] == 10
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["n"] == 10
        for key in ("mean", "mean_abs", "stderr"):
            torch.testing.assert_close(got[key], single[key], rtol=1e-5, atol=1e-7)
    # Batches of 3, 3, 3, 1 taken round-robin: rank 0 explains 3 + 3 examples, rank 1 3 + 1; each
    # example costs 40 gradient rows plus its row in SmoothHess's target check. The per-batch calls
    # ran in one process: a rank's rows add up to the whole single-process count.
    rows = [torch.load(tmp_path / f"rank{r}.pt")["rows"] for r in (0, 1)]
    assert rows == [6 * 41, 4 * 41]
    assert sum(rows) == single["rows"] == 10 * 41
    assert torch.count_nonzero(single["stderr"]) > 0


@needs_gloo
def test_two_ranks_return_error_equal_one_process(tmp_path: Path) -> None:
    """Orthogonal blocks and their error groups do not depend on the ranks or the chunk size."""
    _launch(tmp_path, "error")
    single = torch.load(tmp_path / "single.pt")
    for rank in (0, 1):
        for chunk in (4, 36):
            got = torch.load(tmp_path / f"rank{rank}_{chunk}.pt")
            for key in ("hess", "stderr", "relative"):
                torch.testing.assert_close(got[key], single[key], rtol=1e-4, atol=1e-6)
            assert torch.equal(got["n"], single["n"])
    assert bool((single["stderr"] > 0).all())


@needs_gloo
def test_two_ranks_tolerance_equal_one_process(tmp_path: Path) -> None:
    """With a tolerance the examples stop after the same groups on two ranks as in one process."""
    _launch(tmp_path, "tolerance")
    for chunk in (4, 36):  # dense; grouped with baselines
        single = torch.load(tmp_path / f"single_{chunk}.pt")
        assert len(set(single["n"].tolist())) > 1  # the examples did stop at different counts
        stopped = single["n"] < 6000  # those that reached the tolerance before the cap
        assert bool(stopped.any()) and bool((single["relative"][stopped] <= 0.08).all())
        for rank in (0, 1):
            got = torch.load(tmp_path / f"rank{rank}_{chunk}.pt")
            assert torch.equal(got["n"], single["n"])
            for key in ("hess", "grad", "stderr", "relative", "grad_stderr"):
                torch.testing.assert_close(got[key], single[key], rtol=1e-4, atol=1e-6)
