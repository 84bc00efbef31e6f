"""SmoothHess and global_interactions over torch.distributed: two gloo ranks give the one-process result."""

from __future__ import annotations

import datetime
import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, List

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


def _mismatch_worker(rank: int, init: str, out: str) -> None:
    """One gloo rank of a global_interactions run whose two batches differ in their features."""
    from captum_smoothhess import SmoothHess, global_interactions

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=init, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=30)
    )
    try:
        # Batch 0 (rank 0) has 6 features, batch 1 (rank 1) 7.
        batches = [torch.randn(4, 6), torch.randn(4, 7)]
        global_interactions(
            SmoothHess(lambda z: z[:, :3] * z[:, :1]),
            batches,
            target=1,
            batch_size=4,
            stdevs=0.5,
            n_samples=8,
            generator=torch.Generator().manual_seed(rank),
        )
        got = "no error"
    except Exception as e:  # the message, whatever it is, goes back to the test
        got = f"{type(e).__name__}: {e}"
    Path(out, f"rank{rank}.txt").write_text(got, encoding="utf-8")
    dist.destroy_process_group()


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
def test_ranks_with_different_chunk_budgets_agree_and_draw_their_own_blocks(tmp_path: Path) -> None:
    """A CPU and a CUDA rank have different default budgets: the ranks take the smallest chunk, so no
    draw is counted twice or never; each rank evaluates a contiguous run of the chunks, so the two
    draw different blocks (but for the one at the boundary, and the rotations' first blocks)."""
    _launch(tmp_path, "budgets")
    single = torch.load(tmp_path / "single.pt")
    got = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    for g in got:
        torch.testing.assert_close(g["hess"], single["hess"], rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(single["hess"]) > 0
    mixed = [{k for k in g["drawn"] if k % 8} for g in got]  # blocks a rank drew for its own draws
    assert len(mixed[0] & mixed[1]) <= 1 and len(mixed[0]) >= 15 and len(mixed[1]) >= 15


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


def _raising_worker(rank: int, init: str, out: str) -> None:
    """One gloo rank of a global_interactions run whose model raises on rank 1's batch."""
    from captum_smoothhess import SmoothHess, global_interactions

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=init, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=30)
    )

    def model(z: torch.Tensor) -> torch.Tensor:
        if rank == 1:
            raise RuntimeError("model failed on rank 1")
        return z[:, :2] * z[:, :1]

    try:
        global_interactions(SmoothHess(model), torch.randn(8, 3), target=1, batch_size=4, n_samples=8)
        got = "no error"
    except Exception as e:
        got = f"{type(e).__name__}: {e}"
    Path(out, f"rank{rank}.txt").write_text(got, encoding="utf-8")
    dist.destroy_process_group()


def _spawn_two(worker: Any, tmp_path: Path) -> List[int]:
    """Run ``worker(rank, init, out)`` on two spawned gloo ranks; their exit codes."""
    ctx = multiprocessing.get_context("spawn")
    init = f"file://{tmp_path / 'init'}"
    procs = [ctx.Process(target=worker, args=(rank, init, str(tmp_path))) for rank in (0, 1)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=120)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    return [p.exitcode for p in procs]


@needs_gloo
def test_global_interactions_model_raising_on_one_rank_raises_on_every_rank(tmp_path: Path) -> None:
    """Rank 0 raised nothing itself and waited in the sums' all_reduce for the backend's timeout."""
    assert _spawn_two(_raising_worker, tmp_path) == [0, 0]
    got = [(tmp_path / f"rank{rank}.txt").read_text(encoding="utf-8") for rank in (0, 1)]
    assert got[0].startswith("RuntimeError: process_group: rank(s) [1] of the group raised while "), got
    assert "explaining its batches" in got[0], got
    assert got[1] == "RuntimeError: model failed on rank 1", got


@needs_gloo
def test_ranks_called_differently_all_raise_and_split_the_default_chunks(tmp_path: Path) -> None:
    """Different inputs, n_samples, batch size or tolerance per rank: every rank raises, naming what
    differs (instead of a silently wrong result, a hang or an abort); a rank whose own check fails
    raises its error and the others say so. With the default chunking both ranks take samples."""
    import json

    _launch(tmp_path, "agree")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]
    for field in ("inputs", "n_samples", "n_samples_batch_size", "tolerance"):
        for got in ranks:
            assert got[field].startswith(
                f"ValueError: process_group: the ranks were called with different {field} "
            )
    for got in ranks:  # LayerSmoothHess: its activations (its layout) differ
        assert got["layer_inputs"].startswith(
            "ValueError: process_group: the ranks were called with different inputs "
        )
    assert ranks[0]["neuron_nan_on_rank_1"].startswith("RuntimeError: process_group: rank(s) [1]")
    assert ranks[1]["neuron_nan_on_rank_1"].startswith("ValueError: inputs")
    for case, error in (
        ("bad_stdevs_on_rank_1", "ValueError: stdevs"),
        ("nan_inputs_on_rank_1", "ValueError: inputs"),
        ("odd_n_samples_on_rank_1", "ValueError: n_samples"),
    ):
        assert ranks[0][case].startswith("RuntimeError: process_group: rank(s) [1]"), ranks[0][case]
        assert ranks[1][case].startswith(error), ranks[1][case]
    # The model raising on rank 1 in its share of the sampling: rank 0 raises too instead of waiting in
    # the next collective (it waited for the backend's timeout before).
    for case in (
        "raises_while_sampling",
        "raises_while_sampling_return_error",
        "raises_while_sampling_tolerance",
    ):
        assert ranks[0][case].startswith(
            "RuntimeError: process_group: rank(s) [1] of the group raised while"
        ), ranks[0][case]
        assert ranks[1][case] == "RuntimeError: model failed on rank 1", ranks[1][case]
    # 200 samples of 2 examples split evenly, plus one row per example checking the target.
    assert [int(got["rows"]) for got in ranks] == [202, 202]


@needs_gloo
def test_global_interactions_size_mismatch_raises_on_every_rank(tmp_path: Path) -> None:
    """The rank with the larger interactions raises too, rather than waiting in the next all_reduce."""
    exit_codes = _spawn_two(_mismatch_worker, tmp_path)
    expected = "ValueError: inputs: the ranks' batches give interactions of sizes 6 and 7"
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text(encoding="utf-8") == expected, rank
    assert exit_codes == [0, 0]
