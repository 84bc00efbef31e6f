"""Worker for test_distributed.py, launched by ``torch.distributed.run`` with 2 processes.

Mode ``smoothhess`` (the default): each rank computes SmoothHess with the
default process group (the ranks split the samples) and saves its result; rank
0 also saves the single-process result for the same seed, computed after the
process group is destroyed.

Mode ``shared``: as the default mode, with orthogonal blocks that share rotations.

Mode ``budgets``: default chunking with a different chunk budget on each rank.

Mode ``global``: each rank computes :func:`global_interactions` over the same
batches (the ranks split the batches), and rank 0 saves the single-process
result for the same seed the same way.
"""

from __future__ import annotations

import sys
from typing import Callable, List, Tuple

import torch
import torch.distributed as dist
from torch import nn

from captum_smoothhess import SmoothHess, global_interactions


def _mlp(d: int = 6) -> nn.Module:
    """The workers' model, from seed 0 (the inputs drawn next continue that stream)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, 3))


def _counted(net: nn.Module) -> Tuple[Callable[[torch.Tensor], torch.Tensor], List[int]]:
    """``net`` as a function counting the rows it evaluates (in the returned one-element list)."""
    rows = [0]

    def counted(inp: torch.Tensor) -> torch.Tensor:
        rows[0] += inp.shape[0]
        return net(inp)

    return counted, rows


def main_global(out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    net = _mlp(5)
    x, y = torch.randn(10, 5), torch.randint(0, 3, (10,))
    counted, rows = _counted(net)

    def run(seed: int) -> dict:
        gi = global_interactions(
            SmoothHess(counted),
            x,
            target=y,
            batch_size=3,
            stdevs=0.5,
            n_samples=40,
            generator=torch.Generator().manual_seed(seed),
        )
        return {"mean": gi.mean, "mean_abs": gi.mean_abs, "stderr": gi.stderr, "n": gi.n_examples}

    # Each rank passes a different generator: rank 0's seed is broadcast.
    got = run(7 + rank)
    torch.save({**got, "rows": rows[0]}, f"{out}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        rows[0] = 0
        torch.save({**run(7), "rows": rows[0]}, f"{out}/single.pt")


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    net = _mlp()
    x = torch.randn(2, 6)
    counted, rows = _counted(net)

    sh = SmoothHess(counted, kernel="poisson")
    # Each rank passes a different generator: rank 0's seed is broadcast.
    hess, grad = sh.attribute(
        x,
        target=1,
        stdevs=0.5,
        n_samples=600,
        n_samples_batch_size=50,
        generator=torch.Generator().manual_seed(7 + rank),
        return_gradient=True,
    )
    torch.save({"hess": hess, "grad": grad, "rows": rows[0]}, f"{out}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        single, sgrad = sh.attribute(
            x,
            target=1,
            stdevs=0.5,
            n_samples=600,
            n_samples_batch_size=50,
            generator=torch.Generator().manual_seed(7),
            return_gradient=True,
        )
        torch.save({"hess": single, "grad": sgrad}, f"{out}/single.pt")


def main_error(out: str) -> None:
    """Orthogonal SmoothHess with ``return_error`` over two ranks (whole groups per rank)."""
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    net = _mlp()
    x = torch.randn(2, 6)

    def run(seed: int, chunk: int) -> dict:
        hess, err = SmoothHess(net).attribute(
            x,
            target=1,
            stdevs=0.5,
            n_samples=240,
            n_samples_batch_size=chunk,
            generator=torch.Generator().manual_seed(seed),
            return_error=True,
        )
        return {"hess": hess, "stderr": err.stderr, "relative": err.relative, "n": err.n_samples}

    for chunk in (4, 36):  # chunks inside one group, and chunks of whole groups
        torch.save(run(7 + rank, chunk), f"{out}/rank{rank}_{chunk}.pt")
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        torch.save(run(7, 50), f"{out}/single.pt")


def main_tolerance(out: str) -> None:
    """A tolerance over two ranks: the examples stop where one process stops them."""
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    net = _mlp()
    x = torch.randn(3, 6)

    def run(seed: int, chunk: int) -> dict:
        hess, grad, err = SmoothHess(net).attribute(
            x,
            target=1,
            stdevs=0.5,
            n_samples=6000,
            n_samples_batch_size=chunk,
            generator=torch.Generator().manual_seed(seed),
            tolerance=0.08,
            return_gradient=True,
            # Baselines weight the sums (and the chunk of 36 runs grouped): both go through the rounds.
            baselines=0.25 if chunk == 36 else None,
            feature_mask=torch.tensor([0, 0, 1, 1, 2, 2]) if chunk == 36 else None,
        )
        return {
            "hess": hess,
            "grad": grad,
            "stderr": err.stderr,
            "relative": err.relative,
            "n": err.n_samples,
            "grad_stderr": err.gradient_stderr,
        }

    for chunk in (4, 36):
        torch.save(run(7 + rank, chunk), f"{out}/rank{rank}_{chunk}.pt")
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        torch.save(run(7, 4), f"{out}/single_4.pt")
        torch.save(run(7, 36), f"{out}/single_36.pt")


def main_shared(out: str) -> None:
    """Orthogonal blocks that share rotations (the threshold lowered to 2 features), Gaussian."""
    from captum_smoothhess import _sampling

    _sampling._SHARE_MIN_DIM = 2
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    net = _mlp()
    x = torch.randn(2, 6)
    sh = SmoothHess(net)

    def run(seed: int) -> dict:
        # 300 draws: groups of 48 draws (8 blocks of 6), chunks of 25 draws across ranks.
        hess, grad = sh.attribute(
            x,
            target=1,
            stdevs=0.5,
            n_samples=600,
            n_samples_batch_size=50,
            generator=torch.Generator().manual_seed(seed),
            return_gradient=True,
        )
        return {"hess": hess, "grad": grad}

    torch.save(run(7 + rank), f"{out}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        torch.save(run(7), f"{out}/single.pt")


def main_budgets(out: str) -> None:
    """Default chunking with a different chunk budget per rank (as a CPU and a CUDA rank have), and
    orthogonal blocks that share rotations (from 2 features on): records the blocks each rank draws."""
    from captum_smoothhess import _sampling

    _sampling._SHARE_MIN_DIM = 2
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    default_budget = _sampling._CPU_CHUNK_ELEMENTS
    if rank == 0:
        _sampling._CPU_CHUNK_ELEMENTS = 1 << 7  # chunks of half a block (3 draws) here; rank 1: all
    drawn: List[int] = []
    draw = _sampling.OrthogonalStream._draw

    def recorded(self: _sampling.OrthogonalStream, k: int) -> torch.Tensor:
        drawn.append(k)
        return draw(self, k)

    _sampling.OrthogonalStream._draw = recorded  # type: ignore[method-assign]
    net = _mlp()
    x = torch.randn(2, 6)

    def run() -> dict:
        # 300 draws: 50 blocks of 6 draws, groups of 8 blocks sharing a rotation.
        hess = SmoothHess(net).attribute(
            x, target=1, stdevs=0.5, n_samples=600, generator=torch.Generator().manual_seed(7)
        )
        return {"hess": hess, "drawn": sorted(set(drawn))}

    torch.save(run(), f"{out}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        _sampling._CPU_CHUNK_ELEMENTS = default_budget
        torch.save(run(), f"{out}/single.pt")


def main_agree(out: str) -> None:
    """Calls that differ between the ranks, or fail on one: every rank raises, none waits.

    Also the default chunking: both ranks evaluate samples. Writes each case's outcome per rank.
    """
    import datetime
    import json

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    net = _mlp()
    x = torch.randn(2, 6)
    counted, rows = _counted(net)

    base = {"target": 1, "stdevs": 0.5, "n_samples": 200}
    cases = {
        "inputs": {"inputs": x + rank},  # each rank its own data (process_group=False does that)
        "n_samples": {"n_samples": 200 + 40 * rank},
        "n_samples_batch_size": {"n_samples_batch_size": 20 + 20 * rank},
        "tolerance": {"tolerance": 0.1 + 0.2 * rank},
        "bad_stdevs_on_rank_1": {"stdevs": 0.5 - rank},  # rank 1 fails its own check
        "nan_inputs_on_rank_1": {"inputs": x * (float("nan") if rank else 1.0)},  # checked in attribute
        "odd_n_samples_on_rank_1": {"n_samples": 200 + rank},
    }
    outcome = {}
    for name, change in cases.items():
        kw = {**base, **change}
        inputs = kw.pop("inputs", x)
        try:
            SmoothHess(counted).attribute(inputs, generator=torch.Generator().manual_seed(0), **kw)
            outcome[name] = "no error"
        except Exception as e:  # the message goes back to the test
            outcome[name] = f"{type(e).__name__}: {e}"
    # The layer methods share the exchange: a layer's activations that differ, a NaN on one rank.
    from captum_smoothhess import LayerSmoothHess, NeuronSmoothHess

    for name, call in {
        "layer_inputs": lambda: LayerSmoothHess(net, net[0]).attribute(x + rank, **base),
        "neuron_nan_on_rank_1": lambda: NeuronSmoothHess(net, net[0]).attribute(
            x * (float("nan") if rank else 1.0), neuron_selector=1, stdevs=0.5, n_samples=200
        ),
    }.items():
        try:
            call()
            outcome[name] = "no error"
        except Exception as e:
            outcome[name] = f"{type(e).__name__}: {e}"
    # The model raises on rank 1 once its checks have passed (its first sampling chunk): without and
    # with error groups, and with a tolerance (rounds of groups, one collective a round).
    calls = [0]

    def fails_on_rank_1(inp: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if rank == 1 and calls[0] == 3:  # (1: the target's check, 2: the first chunk)
            raise RuntimeError("model failed on rank 1")
        return net(inp)

    for name, extra in {
        "raises_while_sampling": {},
        "raises_while_sampling_return_error": {"return_error": True},
        "raises_while_sampling_tolerance": {"tolerance": 1e-9},
    }.items():
        calls[0] = 0
        try:
            SmoothHess(fails_on_rank_1).attribute(
                x, generator=torch.Generator().manual_seed(0), n_samples_batch_size=20, **base, **extra
            )
            outcome[name] = "no error"
        except Exception as e:
            outcome[name] = f"{type(e).__name__}: {e}"
    rows[0] = 0
    SmoothHess(counted).attribute(x, generator=torch.Generator().manual_seed(0), **base)
    outcome["rows"] = str(rows[0])
    with open(f"{out}/rank{rank}.json", "w", encoding="utf-8") as f:
        json.dump(outcome, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[2] == "global":
        main_global(sys.argv[1])
    elif len(sys.argv) > 2 and sys.argv[2] == "error":
        main_error(sys.argv[1])
    elif len(sys.argv) > 2 and sys.argv[2] == "tolerance":
        main_tolerance(sys.argv[1])
    elif len(sys.argv) > 2 and sys.argv[2] == "shared":
        main_shared(sys.argv[1])
    elif len(sys.argv) > 2 and sys.argv[2] == "budgets":
        main_budgets(sys.argv[1])
    elif len(sys.argv) > 2 and sys.argv[2] == "agree":
        main_agree(sys.argv[1])
    else:
        main(sys.argv[1])
