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
at the boundaries of the error groups of draws (the ranks then take whole
groups), the reduction closes each group into its batch-means sums
(:mod:`~captum_smoothhess._errors`), and with a tolerance the examples whose
estimated relative error is small enough leave the batch: the evaluator,
the noise rows and the reduction then work on the remaining rows only.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional, Protocol, Tuple

import torch
from torch import Tensor

from ._captum import progress
from ._errors import GroupStats, accumulation_dtype
from ._evaluators import Evaluator, check_gradient_sum
from ._sampling import Sampler, chunks, default_chunk
from ._validation import _check_positive_int


class Reduction(Protocol):
    """What the core streams the ``(scores, terms)`` pairs of each chunk into.

    Untracked, a reduction may instead take the draws themselves: with an
    ``add_draws(start, stop, u, grads)`` method the core calls it in place of
    :meth:`add` with the noise and the gradients at the chunk's points (no
    explicit scores are formed, and it forms the terms), and with a ``finish()``
    method calls it after the last chunk, before any all-reduce
    (:class:`~captum_smoothhess.factors._RotatedSums`).
    """

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

    ``group`` is the length (draws) of an error group; ``tolerance``
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


def chunk_size(
    n_samples_batch_size: Optional[int], draws: int, sampler: Sampler, device: torch.device
) -> int:
    """Draws per chunk: from the user's ``n_samples_batch_size`` (gradient calls), or a memory budget
    (:func:`~captum_smoothhess._sampling.default_chunk`, cut to the blocks of the sampler's noise)."""
    copies = sampler.copies
    if n_samples_batch_size is None:
        stream = sampler.stream
        return default_chunk(draws, stream.batch, stream.dim, copies, device, stream.block)
    return max(1, _check_positive_int(n_samples_batch_size, "n_samples_batch_size") // copies)


def _group_chunks(draws: int, group: int, chunk: int) -> Iterator[Tuple[int, int, int]]:
    """``(start, stop, owner)`` chunks that never split a group across ranks.

    A chunk of at least one group holds whole groups (its length rounded down
    to a multiple of ``group``) and is owned by its index; a shorter chunk
    lies inside one group and is owned by the group's index.
    """
    if chunk >= group:
        size = chunk // group * group
        for i, start in enumerate(range(0, draws, size)):
            yield start, min(draws, start + size), i
        return
    for k, g_start in enumerate(range(0, draws, group)):
        g_stop = min(draws, g_start + group)
        for start in range(g_start, g_stop, chunk):
            yield start, min(g_stop, start + chunk), k


def _pieces(start: int, stop: int, group: int, draws: int) -> Iterator[Tuple[int, int, int]]:
    """``(offset, stop offset, length of the group it closes or 0)``: a chunk cut at group ends."""
    at = start
    while at < stop:
        g_start = at // group * group
        g_stop = min(draws, g_start + group)
        end = min(stop, g_stop)
        yield at - start, end - start, g_stop - g_start if end == g_stop else 0
        at = end


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
    smoothed gradient times the number of calls). With a ``group`` each rank
    takes a contiguous run of the chunks (with ``tracking``, whole error
    groups in turns) and the sums are all-reduced, so every rank ends with
    the one-process result.
    With ``tracking`` the reduction must be a :class:`TrackedReduction`.
    """
    world, rank = (1, 0)
    if group is not None:
        world, rank = torch.distributed.get_world_size(group), torch.distributed.get_rank(group)
    # Half-precision inputs sum their gradients in float32 (accumulation_dtype); the caller rounds back.
    grad_sum = torch.zeros_like(x, dtype=accumulation_dtype(x.dtype))
    if tracking is None:
        # A reduction that takes the draws themselves (factors._RotatedSums) forms no explicit scores.
        add_draws = getattr(reduction, "add_draws", None)
        # Each rank takes a contiguous run of the chunks, and so draws the noise blocks of its run only
        # (chunks shorter than a block, taken in turns, would have every rank draw nearly every block).
        n_chunks = -(-draws // chunk)
        with ranks_raise_together(group, x.device):
            for i, (start, stop) in enumerate(chunks(draws, chunk, show_progress, desc=desc)):
                if i * world // n_chunks != rank:
                    continue
                u = sampler.noise(start, stop)
                grads = evaluate(sampler.points(x, eps, u))
                weights = sampler.gradient_weights(start, stop)
                # Unweighted: one reduction over all calls, as before (the iid numbers stay bit for bit).
                summed = grads if weights is None else sampler.draw_gradients(grads, weights)
                grad_sum += summed.sum(1, dtype=grad_sum.dtype)
                if add_draws is not None:
                    add_draws(start, stop, u, grads)
                else:
                    reduction.add(*sampler.pairs(u, grads))
                # Freed before the next chunk's are made, whose memory the allocator can then reuse.
                del u, grads, summed
            finish = getattr(reduction, "finish", None)
            if finish is not None:
                finish()
    else:
        # With a tolerance the examples usually stop long before the cap: groups counted, no total (no
        # percentage or ETA against the cap).
        total = -(-draws // tracking.group) if tracking.tolerance is None else None
        bar = progress(total=total, desc=desc) if show_progress else None
        try:
            if group is not None and tracking.tolerance is not None:
                _tracked_rounds(
                    x, eps, evaluate, sampler, draws, chunk, reduction, tracking, grad_sum, group, bar
                )
            else:
                with ranks_raise_together(group, x.device):
                    args = (x, eps, evaluate, sampler, draws, chunk, reduction, tracking, grad_sum)
                    _tracked_loop(*args, world, rank, bar)
        finally:
            if bar is not None:
                bar.close()
    rounds = group is not None and tracking is not None and tracking.tolerance is not None
    if group is not None and not rounds:  # (rounds leave every rank with the whole sums)
        reduction.all_reduce(group)
        torch.distributed.all_reduce(grad_sum, group=group)
        if tracking is not None:
            assert tracking.gradient is not None
            tracking.gradient.all_reduce(group)
    if tracking is not None:
        assert tracking.gradient is not None
        tracking.draws = tracking.gradient.draws
    check_gradient_sum(grad_sum)
    return grad_sum


def _evaluate_draws(
    sampler: Sampler,
    evaluate: Evaluator,
    x: Tensor,
    eps: Tensor,
    start: int,
    stop: int,
    active: Optional[Tensor],
) -> Tuple[Tensor, Tensor, Tensor]:
    """Draws ``start .. stop-1`` of the rows ``active`` (``x``, ``evaluate`` already cut to them):
    their ``(scores, terms)`` pairs and, per draw, the (weighted) sum of its gradient calls."""
    u = sampler.noise(start, stop)
    weights = sampler.gradient_weights(start, stop)
    if active is not None:
        u = u[active]
        weights = None if weights is None else weights[active]
    grads = evaluate(sampler.points(x, eps, u))
    scores, terms = sampler.pairs(u, grads)
    return scores, terms, sampler.draw_gradients(grads, weights)


def _add_gradients(
    total: Tensor, part: Tensor, active: Optional[Tensor], stats: GroupStats, copies: int
) -> None:
    """Add the gradient sums ``part`` of the examples ``active`` (all if ``None``) to ``total`` ``(B, d)``,
    and their per-draw means to the open error group."""
    if active is None:
        total += part
    else:
        total.index_add_(0, active, part)
    stats.add(part / copies, active)


def _stop(tracking: Tracking, reduction: Any, rows: Tensor, groups_done: int, bar: Any) -> Optional[Tensor]:
    """After a group: record the largest error of ``rows``; the mask of those to keep, if any stop."""
    current = reduction.relative()[rows]
    worst = float(current.max())
    tracking.errors.append(worst)
    if bar is not None:
        bar.set_postfix_str(f"error {worst:.3g}")
        bar.update()
    if tracking.tolerance is None or groups_done < tracking.min_groups:
        return None
    # NaN (fewer than two groups, or a zero estimate so far) is never done.
    keep = ~(current <= tracking.tolerance)
    return None if bool(keep.all()) else keep


def _tracked_rounds(
    x: Tensor,
    eps: Tensor,
    evaluate: Evaluator,
    sampler: Sampler,
    draws: int,
    chunk: int,
    reduction: Any,
    tracking: Tracking,
    grad_sum: Tensor,
    group: Any,
    bar: Any,
) -> None:
    """A tolerance across ranks: rounds of one error group per rank, replayed in order by all.

    In round ``r`` rank ``j`` evaluates group ``r W + j`` (``W`` ranks) for the
    examples still sampled; the open sums of the groups are all-gathered and
    every rank closes them one by one in group order, stopping examples as a
    single process would (the later groups of a round are not added to an
    example that stopped earlier in it). Every rank ends with the whole sums.
    """
    world, rank = torch.distributed.get_world_size(group), torch.distributed.get_rank(group)
    copies, length = sampler.copies, tracking.group
    n_groups = -(-draws // length)
    tracking.gradient = stats = GroupStats(grad_sum, wide=True)
    hessian = reduction.stats  # the open group's Hessian sum lives in its `current`
    batch = x.shape[0]
    active: Optional[Tensor] = None
    x_a, evaluate_a = x, evaluate
    for first in range(0, n_groups, world):
        k = first + rank
        piece = torch.zeros_like(grad_sum)  # this group's sum of gradient calls, all rows
        with ranks_raise_together(group, x.device):
            if k < n_groups:
                start, stop = k * length, min(draws, (k + 1) * length)
                for lo in range(start, stop, chunk):
                    hi = min(stop, lo + chunk)
                    scores, terms, per_draw = _evaluate_draws(sampler, evaluate_a, x_a, eps, lo, hi, active)
                    _add_gradients(piece, per_draw.sum(1, dtype=grad_sum.dtype), active, stats, copies)
                    reduction.add(scores, terms)
        shared = [piece, stats.current, hessian.current]
        gathered = [[torch.empty_like(t) for _ in range(world)] for t in shared]
        for out, t in zip(gathered, shared):
            torch.distributed.all_gather(out, t.contiguous(), group=group)
        for j in range(world):
            k = first + j
            if k >= n_groups:
                break
            rows = torch.arange(batch, device=x.device) if active is None else active
            size = min(draws, (k + 1) * length) - k * length
            grad_sum.index_add_(0, rows, gathered[0][j][rows])
            stats.current.copy_(gathered[1][j])
            stats.close(size, active)
            hessian.current.copy_(gathered[2][j])
            reduction.close_group(size)
            keep = _stop(tracking, reduction, rows, k + 1, bar)
            if keep is None:
                continue
            active = rows[keep]
            if active.numel() == 0:
                return
            reduction.select(active)
        if active is not None and (x_a.shape[0] != active.numel()):
            x_a, evaluate_a = x[active], evaluate.subset(active)


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
    """The loop with groups: each chunk's pairs are cut at group ends, and examples may leave.

    An example that reaches the tolerance at the end of a group stops there:
    the later groups of a chunk already evaluated are not added to it, so the
    result does not depend on the chunk size.
    """
    copies = sampler.copies
    tracking.gradient = stats = GroupStats(grad_sum, wide=True)
    batch = x.shape[0]
    active: Optional[Tensor] = None  # rows still sampled; None: all
    x_a, evaluate_a = x, evaluate
    for start, stop, owner in _group_chunks(draws, tracking.group, chunk):
        if owner % world != rank:
            continue
        scores, terms, per_draw = _evaluate_draws(sampler, evaluate_a, x_a, eps, start, stop, active)
        rows = torch.arange(batch, device=x.device) if active is None else active
        live = None  # positions in this chunk's rows of the examples still sampled
        for lo, hi, closed in _pieces(start, stop, tracking.group, draws):
            take = slice(lo, hi)
            g_part, s_part, t_part = per_draw[:, take], scores[:, take], terms[:, take]
            if live is not None:
                g_part, s_part, t_part = g_part[live], s_part[live], t_part[live]
            _add_gradients(grad_sum, g_part.sum(1, dtype=grad_sum.dtype), active, stats, copies)
            reduction.add(s_part, t_part)
            if not closed:
                continue
            stats.close(closed, active)
            reduction.close_group(closed)
            if tracking.tolerance is None and bar is None:
                continue
            keep = _stop(
                tracking, reduction, rows if live is None else rows[live], (start + hi) // tracking.group, bar
            )
            if keep is None:
                continue
            base = torch.arange(rows.shape[0], device=x.device) if live is None else live
            live = base[keep]
            active = rows[live]
            if active.numel() == 0:
                return
            reduction.select(active)
        if live is not None:
            assert active is not None
            x_a, evaluate_a = x[active], evaluate.subset(active)


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


#: What the ranks of a process group must agree on before they split the samples, in order.
AGREED_FIELDS = (
    "inputs (batch size)",
    "inputs (features)",
    "n_samples",
    "n_samples_batch_size",
    "antithetic",
    "tolerance",
    "return_error",
    "return_gradient",
    "output",
    "sampling",
    "feature_mask",
    "stdevs",
    "inputs",
)


def _backend_device(group: Any, device: torch.device) -> torch.device:
    return device if torch.distributed.get_backend(group) == "nccl" else torch.device("cpu")


@contextlib.contextmanager
def ranks_raise_together(
    group: Optional[Any], device: torch.device, work: str = "sampling"
) -> Iterator[None]:
    """Around this rank's share of the ``work``, up to the ranks' next collective: every rank says in one
    ``all_gather`` whether its share raised (the model failing on this rank's points, say), so the others
    raise too instead of waiting in that collective for this one."""
    if group is None:
        yield
        return
    try:
        yield
    except Exception:
        _failed_ranks(group, device, failed=True)
        raise
    failed = _failed_ranks(group, device, failed=False)
    if failed:
        raise RuntimeError(
            f"process_group: rank(s) {failed} of the group raised while {work} (the error is raised "
            "there); this rank's share was fine"
        )


def _failed_ranks(group: Any, device: torch.device, failed: bool) -> List[int]:
    mine = torch.tensor([float(failed)], dtype=torch.float64, device=_backend_device(group, device))
    gathered = [torch.empty_like(mine) for _ in range(torch.distributed.get_world_size(group))]
    torch.distributed.all_gather(gathered, mine, group=group)
    return [r for r, flag in enumerate(gathered) if float(flag) != 0]


@dataclass
class _Pending:
    """An ``attribute`` call whose ranks have not yet exchanged :func:`agree_across_ranks`."""

    group: Any
    done: bool = False


_PENDING: contextvars.ContextVar[Optional[_Pending]] = contextvars.ContextVar("_PENDING", default=None)


@contextlib.contextmanager
def ranks_fail_together(process_group: Optional[Any]) -> Iterator[None]:
    """Around an ``attribute`` call: an exception raised on this rank before the ranks compared their
    calls (any argument check, a forward pass checking the target) still takes part in that exchange,
    so the other ranks raise too instead of waiting for this one in the sampling."""
    group = resolve_group(process_group)
    if group is None:
        yield
        return
    pending = _Pending(group)
    token = _PENDING.set(pending)
    try:
        yield
    except Exception:
        if not pending.done:  # (agree_across_ranks marks it done)
            nccl = torch.distributed.get_backend(group) == "nccl"
            device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
            agree_across_ranks(group, None, device)
        raise
    finally:
        _PENDING.reset(token)


def agree_across_ranks(group: Any, fields: Optional[Tuple[float, ...]], device: torch.device) -> None:
    """Check, before the ranks split the samples, that every rank of ``group`` made the same call.

    ``fields`` holds this rank's values of :data:`AGREED_FIELDS` (numbers;
    the inputs, ``stdevs`` and mask as checksums), or is ``None`` when this
    rank's own checks failed (it then raises its own error after this
    exchange). Every rank takes part in one ``all_gather``, so a rank that
    failed or was called differently never leaves the others waiting in the
    sampling's collectives: they all raise, naming the first field that
    differs.
    """
    pending = _PENDING.get()
    if pending is not None:
        if pending.done:  # (this call's ranks have exchanged already)
            return
        pending.done = True
    size = len(AGREED_FIELDS) + 1
    mine = torch.zeros(size, dtype=torch.float64, device=_backend_device(group, device))
    if fields is not None:
        mine[0] = 1
        mine[1:] = torch.tensor(fields, dtype=torch.float64)
    world = torch.distributed.get_world_size(group)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    torch.distributed.all_gather(gathered, mine, group=group)
    rows = torch.stack(gathered).cpu()
    if fields is None:
        return  # this rank raises its own error
    failed = [r for r in range(world) if rows[r, 0] == 0]
    if failed:
        raise RuntimeError(
            f"process_group: rank(s) {failed} of the group failed their argument checks (the error is "
            "raised there); every rank must make the same valid call"
        )
    for i, name in enumerate(AGREED_FIELDS, start=1):
        column = rows[:, i]
        if bool((column != column[0]).any()):
            other = int((column != column[0]).nonzero()[0])
            raise ValueError(
                f"process_group: the ranks were called with different {name} (rank 0: "
                f"{float(column[0]):.6g}, rank {other}: {float(column[other]):.6g}); every rank must make "
                "the same call, its ranks splitting the samples (process_group=False explains each "
                "rank's own inputs in that process alone)"
            )


def checksum(t: Optional[Tensor]) -> float:
    """A number that differs, with near certainty, between two different tensors (0 for ``None``)."""
    if t is None:
        return 0.0
    flat = t.detach().reshape(-1).double()
    # Position weights 1..97: a permutation of the entries changes the sum too.
    weights = torch.arange(flat.numel(), dtype=torch.float64, device=flat.device).remainder_(97).add_(1)
    return float(flat.sum() + (flat * weights).sum() * 1e-3)


def agreed_chunk(chunk: int, group: Any, device: torch.device) -> int:
    """The smallest default ``chunk`` of the ranks of ``group``, on every rank: the budget depends on
    the device type, and ranks that cut the draws differently would count some twice and others never."""
    t = torch.tensor([chunk], dtype=torch.int64, device=_backend_device(group, device))
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN, group=group)
    return int(t.item())


def distributed_seed(seed: int, group: Any, device: torch.device) -> int:
    """Rank 0's seed, on every rank of ``group``."""
    t = torch.tensor([seed], dtype=torch.int64, device=_backend_device(group, device))
    torch.distributed.broadcast(t, src=torch.distributed.get_global_rank(group, 0), group=group)
    return int(t.item())
