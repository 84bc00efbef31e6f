"""The estimator core: one streaming loop for every Stein estimate of the package.

:func:`stein_estimate` takes the flat points ``x`` ``(B, d)``, the bandwidths,
an :class:`~captum_smoothhess._evaluators.Evaluator` (the gradients of the
selected scalar at a chunk of perturbed points) and a
:class:`~captum_smoothhess._sampling.Sampler` (canonical noise by draw index,
the perturbed points, and the ``(scores, terms)`` pairs of the gradients),
and streams the pairs of each chunk into a reduction: a dense or grouped
Hessian sum, or the kept factors (:mod:`~captum_smoothhess.factors`). The
samples are split across the ranks of a ``torch.distributed`` process group
by chunk, and the sums all-reduced. Memory is one chunk, whatever the number
of samples. SmoothHess, CASO's SmoothHess curvature and the layer methods are
shells around this loop, each with its own evaluator.

With :class:`Tracking` (``return_error`` / ``tolerance``) the chunks are cut
at the boundaries of independent groups of draws (the ranks then take whole
groups), the reduction closes each group into its batch-means sums
(:mod:`~captum_smoothhess._errors`), and with a tolerance the examples whose
estimated relative error is small enough leave the batch: the evaluator,
the noise rows and the reduction then work on the remaining rows only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional, Protocol, Tuple

import torch
from torch import Tensor

from ._captum import progress
from ._errors import GroupStats
from ._evaluators import Evaluator
from ._sampling import Sampler, chunks, default_chunk
from ._validation import _check_positive_int


class Reduction(Protocol):
    """What the core streams the ``(scores, terms)`` pairs of each chunk into."""

    def add(self, scores: Tensor, terms: Tensor) -> None:
        """Add one chunk, both ``(B, c, d)``."""

    def all_reduce(self, group: Any) -> None:
        """Sum the partial results of the ranks of ``group`` in place."""


class TrackedReduction(Reduction, Protocol):
    """A reduction that also keeps batch-means sums over groups of draws (for the reported error)."""

    def select(self, index: Optional[Tensor]) -> None:
        """Route the next chunks to rows ``index`` of the batch (all rows if ``None``)."""

    def close_group(self, draws: int) -> None:
        """End the current group of ``draws`` draws of the selected rows."""

    def relative(self) -> Tensor:
        """``(B,)`` estimated relative error of each example so far."""


@dataclass
class Tracking:
    """Groups of draws for the reported error, and an optional tolerance to stop at.

    ``group`` is the length (draws) of an independent group; ``tolerance``
    stops an example once its estimated relative error is at most it, after
    at least ``min_groups`` groups. The loop fills ``gradient`` (batch-means
    sums of the per-draw mean gradient), ``draws`` (``(B,)`` draws used) and
    ``errors`` (the largest estimated error of the active examples, after
    each group).
    """

    group: int
    tolerance: Optional[float] = None
    min_groups: int = 4
    gradient: Optional[GroupStats] = None
    draws: Optional[Tensor] = None
    errors: List[float] = field(default_factory=list)


def _group_chunks(draws: int, group: int, chunk: int) -> Iterator[Tuple[int, int, int, bool]]:
    """``(start, stop, group index, closes the group)``: chunks of at most ``chunk`` inside each group."""
    for k, g_start in enumerate(range(0, draws, group)):
        g_stop = min(draws, g_start + group)
        for start in range(g_start, g_stop, chunk):
            stop = min(g_stop, start + chunk)
            yield start, stop, k, stop == g_stop


def chunk_size(n_samples_batch_size: Optional[int], draws: int, batch: int, dim: int, copies: int) -> int:
    """Draws per chunk: from the user's ``n_samples_batch_size`` (gradient calls), or a memory budget."""
    if n_samples_batch_size is None:
        return default_chunk(draws, batch, dim, copies)
    return max(1, _check_positive_int(n_samples_batch_size, "n_samples_batch_size") // copies)


def stein_estimate(
    x: Tensor,
    eps: Tensor,
    evaluate: Evaluator,
    sampler: Sampler,
    draws: int,
    chunk: int,
    reduction: Reduction,
    group: Optional[Any] = None,
    show_progress: bool = False,
    desc: str = "SmoothHess",
    tracking: Optional[Tracking] = None,
) -> Tensor:
    """Stream ``draws`` draws in chunks of ``chunk`` through ``evaluate`` into ``reduction``.

    Returns the sum over all gradient calls of the gradients, ``(B, d)`` (the
    smoothed gradient times the number of calls). With a ``group`` the ranks
    take the chunks round-robin (whole error groups with ``tracking``) and the
    sums are all-reduced, so every rank ends with the one-process result.
    With ``tracking`` the reduction must be a :class:`TrackedReduction`.
    """
    world, rank = (1, 0)
    if group is not None:
        world, rank = torch.distributed.get_world_size(group), torch.distributed.get_rank(group)
    grad_sum = torch.zeros_like(x)
    if tracking is None:
        for i, (start, stop) in enumerate(chunks(draws, chunk, show_progress, desc=desc)):
            if i % world != rank:
                continue
            u = sampler.noise(start, stop)
            grads = evaluate(sampler.points(x, eps, u))
            grad_sum += grads.sum(1)
            reduction.add(*sampler.pairs(u, grads))
    else:
        bar = progress(total=-(-draws // tracking.group), desc=desc) if show_progress else None
        try:
            _tracked_loop(
                x, eps, evaluate, sampler, draws, chunk, reduction, tracking, grad_sum, world, rank, bar
            )
        finally:
            if bar is not None:
                bar.close()
    if group is not None:
        reduction.all_reduce(group)
        torch.distributed.all_reduce(grad_sum, group=group)
        if tracking is not None:
            assert tracking.gradient is not None
            tracking.gradient.all_reduce(group)
    if tracking is not None:
        assert tracking.gradient is not None
        tracking.draws = tracking.gradient.draws
    return grad_sum


def _tracked_loop(
    x: Tensor,
    eps: Tensor,
    evaluate: Evaluator,
    sampler: Sampler,
    draws: int,
    chunk: int,
    reduction: Any,
    tracking: Tracking,
    grad_sum: Tensor,
    world: int,
    rank: int,
    bar: Any,
) -> None:
    """The loop with groups: the same steps, per group, on the examples still active."""
    copies = sampler.copies
    tracking.gradient = stats = GroupStats(x)
    active: Optional[Tensor] = None  # rows still sampled; None: all
    x_a, evaluate_a = x, evaluate
    for start, stop, k, closes in _group_chunks(draws, tracking.group, chunk):
        if k % world != rank:
            continue
        u = sampler.noise(start, stop)
        if active is not None:
            u = u[active]
        grads = evaluate_a(sampler.points(x_a, eps, u))
        per_call = grads.sum(1)
        if active is None:
            grad_sum += per_call
        else:
            grad_sum.index_add_(0, active, per_call)
        stats.add(per_call / copies, active)
        reduction.add(*sampler.pairs(u, grads))
        if not closes:
            continue
        length = min(draws, (k + 1) * tracking.group) - k * tracking.group
        stats.close(length, active)
        reduction.close_group(length)
        if tracking.tolerance is not None or bar is not None:
            rel = reduction.relative()
            rows = torch.arange(x.shape[0], device=x.device) if active is None else active
            current = rel[rows]
            worst = float(current.max()) if current.numel() else 0.0
            tracking.errors.append(worst)
            if bar is not None:
                bar.set_postfix_str(f"error {worst:.3g}")
                bar.update()
            if tracking.tolerance is not None and k + 1 >= tracking.min_groups:
                # NaN (fewer than two groups, or a zero estimate so far) is never done.
                keep = ~(current <= tracking.tolerance)
                if not bool(keep.all()):
                    active = rows[keep]
                    if active.numel() == 0:
                        break
                    x_a, evaluate_a = x[active], evaluate.subset(active)
                    reduction.select(active)


def resolve_group(process_group: Optional[Any]) -> Optional[Any]:
    """The process group to split samples over: the given one, else the default one if any.

    ``False`` means this process alone, even when a default group is initialised.
    """
    if process_group is False or not torch.distributed.is_available():
        return None
    if process_group is None:
        if not torch.distributed.is_initialized():
            return None
        process_group = torch.distributed.group.WORLD
    return process_group if torch.distributed.get_world_size(process_group) > 1 else None


def distributed_seed(seed: int, group: Any, device: torch.device) -> int:
    """Rank 0's seed, on every rank of ``group``."""
    backend_device = device if torch.distributed.get_backend(group) == "nccl" else torch.device("cpu")
    t = torch.tensor([seed], dtype=torch.int64, device=backend_device)
    torch.distributed.broadcast(t, src=torch.distributed.get_global_rank(group, 0), group=group)
    return int(t.item())
