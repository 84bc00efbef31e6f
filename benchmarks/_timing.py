"""One timing routine for every benchmark that compares contenders.

A call runs faster right after a call of the same function (the memory
allocator hands back the blocks just freed), and the speed of a shared host
drifts over seconds. So each timed call follows its own untimed warm-up call,
the order of the contenders rotates between rounds (no contender always comes
after the same other one), and ratios are the median over rounds of the
per-round ratio, whose two calls are close in time.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, List, NamedTuple, Optional

import torch


class Timings(NamedTuple):
    """Per contender: the best round's seconds, and the median per-round ratio to contender 0."""

    best: List[float]
    ratio: List[float]


def _sync(device: Optional[torch.device]) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: List[Callable[[], object]], rounds: int, device: Optional[torch.device] = None
) -> Timings:
    """Time ``fns`` over ``rounds`` rounds (see the module docstring); CUDA work is synchronised."""
    times = [[0.0] * rounds for _ in fns]
    for r in range(rounds):
        for k in range(len(fns)):
            i = (r + k) % len(fns)
            fns[i]()
            _sync(device)
            start = time.perf_counter()
            fns[i]()
            _sync(device)
            times[i][r] = time.perf_counter() - start
    ratios = [statistics.median(t / t0 for t, t0 in zip(ts, times[0])) for ts in times]
    return Timings([min(ts) for ts in times], ratios)
