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
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

import torch
from torch import Tensor

from ._evaluators import Evaluator
from ._sampling import Sampler, chunks, default_chunk
from ._validation import _check_positive_int


class Reduction(Protocol):
    """What the core streams the ``(scores, terms)`` pairs of each chunk into."""

    def add(self, scores: Tensor, terms: Tensor) -> None:
        """Add one chunk, both ``(B, c, d)``."""

    def all_reduce(self, group: Any) -> None:
        """Sum the partial results of the ranks of ``group`` in place."""


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
) -> Tensor:
    """Stream ``draws`` draws in chunks of ``chunk`` through ``evaluate`` into ``reduction``.

    Returns the sum over all gradient calls of the gradients, ``(B, d)`` (the
    smoothed gradient times the number of calls). With a ``group`` the ranks
    take the chunks round-robin and the sums are all-reduced, so every rank
    ends with the one-process result.
    """
    world, rank = (1, 0)
    if group is not None:
        world, rank = torch.distributed.get_world_size(group), torch.distributed.get_rank(group)
    grad_sum = torch.zeros_like(x)
    for i, (start, stop) in enumerate(chunks(draws, chunk, show_progress, desc=desc)):
        if i % world != rank:
            continue
        u = sampler.noise(start, stop)
        grads = evaluate(sampler.points(x, eps, u))
        grad_sum += grads.sum(1)
        reduction.add(*sampler.pairs(u, grads))
    if group is not None:
        reduction.all_reduce(group)
        torch.distributed.all_reduce(grad_sum, group=group)
    return grad_sum


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
