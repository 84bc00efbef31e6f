"""Batched numerical solvers that never touch a model: FISTA, Lanczos, trust regions.

Every routine works on a batch of independent problems at once, one per
example, and touches the model only through a :class:`Quadratic`: the
gradient ``g`` ``(B, d)`` and products ``v -> H v``. An example whose problem
is solved leaves the batch: the remaining rows are gathered into a smaller
quadratic (:meth:`Quadratic.subset`), so later Hessian-vector products cost
only what the unfinished examples need, and an example's iterates do not
depend on the others. Where a subset is costly to build (a new autograd graph,
see :attr:`Quadratic.subset_seconds`), the batch shrinks only when the
products saved are worth more: on a small model, whose products cost per call
rather than per row, it stays whole.

* :func:`lanczos`: ``max(0, lambda_max(H))`` by the Lanczos method and, where
  the Hessians are of low rank (a ReLU network's loss), a certified ``Q T Q^T``
  form of them whose products need no model call; :func:`top_eigenvalue` the
  eigenvalue alone.
* :func:`fista`: the elastic-net-penalised quadratic problem of CASO,
  ``max_d g^T d + 1/2 d^T H d - lambda1 |d|_1 - lambda2/2 |d|^2``, by FISTA
  with backtracking and adaptive restart, to a tolerance on the
  proximal-gradient residual.
* :func:`sparsity_solve`: ``lambda1`` by bisection for a given fraction of
  exact zeros.
* :func:`solve_trust_region`: the exact minimiser of a quadratic model in an
  L2 ball (Moré-Sorensen, hard case included).
"""

from __future__ import annotations

import numbers
import time
from typing import Dict, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from ._validation import _check_number, _check_positive_int

__all__ = [
    "DenseQuadratic",
    "Lanczos",
    "Quadratic",
    "Solution",
    "fista",
    "lanczos",
    "solve_trust_region",
    "sparsity_solve",
    "top_eigenvalue",
]

RadiusType = Union[float, Tensor]

# Lanczos: relative change of the top Ritz value at which it stops, and a cap on its steps.
_EIG_TOL = 1e-5
_EIG_MAX_ITER = 500
# A Krylov basis counts as invariant, and a product as zero, below this many eps of the largest entry of T.
_INVARIANT = 64
# The most directions (hinted rank + 3) that the range finder of :func:`lanczos` takes on.
_RANGE_MAX = 64
# Doublings of the FISTA step constant L allowed in one iteration before giving up.
_MAX_BACKTRACK = 60
# Bisection steps of lambda1 for `sparsity`, and the accepted error in zeros (fraction of d).
_BISECT_STEPS = 40
_SPARSITY_SLACK = 0.005
# The batch is compacted when at most this fraction of its rows is still unfinished.
_COMPACT_FRACTION = 0.75
# Steps ahead over which shrinking the batch must repay building the smaller quadratic.
_PAYBACK_STEPS = 4


class Quadratic:
    """A batch of quadratic models: gradients ``g`` ``(B, d)`` and ``v -> H v`` per example.

    Subclasses implement :meth:`hvp`, and :meth:`subset` where a smaller batch
    is cheaper than the whole one (the default evaluates the whole batch).

    Args:
        g: The gradients, ``(B, d)``.

    Examples:
        A Hessian known only through its products (here ``H = diag(-2, 1)``
        for every example) top-eigenvalued like an explicit one:

        >>> import torch
        >>> from captum_smoothhess.solvers import Quadratic, top_eigenvalue
        >>> class Diagonal(Quadratic):
        ...     def hvp(self, v):
        ...         return v * torch.tensor([-2.0, 1.0])
        >>> top, hvps = top_eigenvalue(Diagonal(torch.ones(3, 2)))
        >>> [round(float(t), 4) for t in top]
        [1.0, 1.0, 1.0]
    """

    def __init__(self, g: Tensor) -> None:
        self.g = g

    def hvp(self, v: Tensor) -> Tensor:
        """``H v`` for every example, ``v`` of shape ``(B, d)``."""
        raise NotImplementedError

    @property
    def separable(self) -> bool:
        """Whether each example's ``H v`` depends on its own ``v`` only, so the batch may shrink."""
        return True

    def hvp_many(self, vs: Tensor) -> Tensor:
        """``H v`` for ``k`` vectors per example at once: ``vs`` ``(k, B, d)`` -> ``(k, B, d)``.

        The default makes ``k`` calls of :meth:`hvp`; override it where one batched call
        is cheaper (double backprop with batched gradients, a dense Hessian)."""
        return torch.stack([self.hvp(v) for v in vs])

    def subset(self, index: Tensor) -> Quadratic:
        """The quadratic of the examples ``index`` (a 1-d long tensor) only."""
        return _RowsOf(self, index)

    @property
    def subset_seconds(self) -> float:
        """About how long :meth:`subset` takes; the solvers shrink the batch only when the
        products it saves are worth more (0, the default: shrink whenever examples finish)."""
        return 0.0

    @property
    def rank_hint(self) -> Optional[int]:
        """The rank the Hessians have in a common case, or ``None``: :func:`lanczos` then looks
        for their range in one batched product (the number of outputs of the model, whose
        loss Hessian has at most that rank for a ReLU network)."""
        return None

    @property
    def counted(self) -> Optional[Tensor]:
        """``(B,)`` bool: the rows whose products call the model (the others are explicit and
        free, not counted in ``hvps``); ``None``: every row."""
        return None


class _RowsOf(Quadratic):
    """Rows ``index`` of a quadratic that has no cheaper subset: pads ``v`` with zeros."""

    def __init__(self, parent: Quadratic, index: Tensor) -> None:
        super().__init__(parent.g.index_select(0, index))
        self.parent = parent
        self.index = index

    def hvp(self, v: Tensor) -> Tensor:
        full = v.new_zeros(self.parent.g.shape).index_copy_(0, self.index, v)
        return self.parent.hvp(full).index_select(0, self.index)

    def subset(self, index: Tensor) -> Quadratic:
        return self.parent.subset(self.index.index_select(0, index))


class _Joint(Quadratic):
    """A batch whose products couple the examples, seen as one example of ``B d`` entries."""

    def __init__(self, parent: Quadratic) -> None:
        super().__init__(parent.g.reshape(1, -1))
        self.parent = parent

    def hvp(self, v: Tensor) -> Tensor:
        return self.parent.hvp(v.reshape(self.parent.g.shape)).reshape(1, -1)


class _Krylov(Quadratic):
    """``H = Q T Q^T`` from a Lanczos basis ``Q`` ``(B, k, d)`` that spans the range of ``H``.

    Rows of ``Q`` past an example's basis are zero, as are the matching rows of ``T``.
    """

    def __init__(self, g: Tensor, basis: Tensor, tri: Tensor) -> None:
        super().__init__(g)
        self.basis, self.tri = basis, tri

    def hvp(self, v: Tensor) -> Tensor:
        coef = torch.bmm(v[:, None, :], self.basis.transpose(1, 2))  # (B, 1, k); T is symmetric
        return torch.bmm(torch.bmm(coef, self.tri), self.basis)[:, 0]

    def subset(self, index: Tensor) -> Quadratic:
        pick = (t.index_select(0, index) for t in (self.g, self.basis, self.tri))
        return _Krylov(*pick)

    @property
    def counted(self) -> Optional[Tensor]:
        return self.g.new_zeros(self.g.shape[0], dtype=torch.bool)


class _Split(Quadratic):
    """Rows ``explicit`` from a :class:`_Krylov` form, the others from the original quadratic."""

    def __init__(self, g: Tensor, explicit: Tensor, krylov: Quadratic, rest: Quadratic) -> None:
        super().__init__(g)
        self.explicit, self.krylov, self.rest = explicit, krylov, rest
        self._at_krylov = explicit.nonzero()[:, 0]
        self._at_rest = (~explicit).nonzero()[:, 0]

    def hvp(self, v: Tensor) -> Tensor:
        out = torch.empty_like(v)
        out.index_copy_(0, self._at_krylov, self.krylov.hvp(v.index_select(0, self._at_krylov)))
        out.index_copy_(0, self._at_rest, self.rest.hvp(v.index_select(0, self._at_rest)))
        return out

    def subset(self, index: Tensor) -> Quadratic:
        explicit = self.explicit.index_select(0, index)
        # Position of each row within its part: how many rows of that part come before it.
        where_k = (torch.cumsum(self.explicit.long(), 0) - 1).index_select(0, index)
        where_r = (torch.cumsum((~self.explicit).long(), 0) - 1).index_select(0, index)
        g = self.g.index_select(0, index)
        if bool(explicit.all()):
            return self.krylov.subset(where_k)
        if not bool(explicit.any()):
            return self.rest.subset(where_r)
        return _Split(
            g, explicit, self.krylov.subset(where_k[explicit]), self.rest.subset(where_r[~explicit])
        )

    @property
    def counted(self) -> Optional[Tensor]:
        return ~self.explicit


class DenseQuadratic(Quadratic):
    """A quadratic with explicit Hessians ``H`` ``(B, d, d)``.

    Examples:
        >>> import torch
        >>> from captum_smoothhess.solvers import DenseQuadratic, top_eigenvalue
        >>> quad = DenseQuadratic(torch.ones(1, 2), torch.diag(torch.tensor([3.0, -1.0]))[None])
        >>> top, hvps = top_eigenvalue(quad)
        >>> round(float(top), 4)
        3.0
    """

    def __init__(self, g: Tensor, hessian: Tensor) -> None:
        super().__init__(g)
        self.hessian = hessian

    def hvp(self, v: Tensor) -> Tensor:
        return (self.hessian @ v[:, :, None])[..., 0]

    def hvp_many(self, vs: Tensor) -> Tensor:
        return torch.einsum("bij,kbj->kbi", self.hessian, vs)

    def subset(self, index: Tensor) -> Quadratic:
        return DenseQuadratic(self.g.index_select(0, index), self.hessian.index_select(0, index))


class Solution(NamedTuple):
    """What :func:`fista` returns, one entry per example.

    ``delta`` ``(B, d)`` the maximiser; ``objective`` of the solved problem;
    ``residual`` the final relative proximal-gradient residual;
    ``iterations`` FISTA iterations; ``hvps`` Hessian-vector products used;
    ``lambda2`` the effective ``lambda2`` of the solved problem.
    """

    delta: Tensor
    objective: Tensor
    residual: Tensor
    iterations: Tensor
    hvps: Tensor
    lambda2: Tensor


def _soft(v: Tensor, tau: Tensor) -> Tensor:
    """Soft-thresholding ``sign(v) max(|v| - tau, 0)``, ``tau`` broadcast per example."""
    return v - torch.clamp(v, -tau, tau)


def _residual(g: Tensor, xs: Tensor, lam1: Tensor, lam2: Tensor, step: Tensor, scale: Tensor) -> Tensor:
    """Norm of the gradient mapping ``L (x - prox(x - grad/L))``, relative to ``|g|``.

    ``xs`` holds ``x`` and ``H x`` stacked, ``(B, 2, d)``.
    """
    x, hx = xs[:, 0], xs[:, 1]
    inv = step.reciprocal()[:, None]
    moved = (lam2[:, None] * x - g - hx) * inv  # grad / L
    # x - prox(x - grad / L) = grad / L + clamp(x - grad / L, -tau, tau)
    gap = moved + torch.clamp(x - moved, -lam1[:, None] * inv, lam1[:, None] * inv)
    return torch.linalg.vector_norm(gap, dim=1) * step / scale


def _objective(g: Tensor, x: Tensor, hx: Tensor, lam1: Tensor, lam2: Tensor) -> Tensor:
    """``g^T x + 1/2 x^T H x - lambda1 |x|_1 - lambda2/2 |x|^2`` per example."""
    return (g * x).sum(1) + 0.5 * (x * hx).sum(1) - lam1 * x.abs().sum(1) - 0.5 * lam2 * (x * x).sum(1)


def _check_gradient(g: Tensor) -> None:
    """Raise if the quadratic's gradient ``g`` has a NaN or Inf (the solvers would return NaN or 0)."""
    if not bool(torch.isfinite(g).all()):
        raise ValueError(
            "forward_func: the gradient g of the loss (the quadratic's quad.g) is NaN or Inf (the "
            "model or loss is not differentiable at these inputs, or overflows)"
        )


def _check_finite(value: Tensor) -> None:
    """Raise if a reduction of Hessian-vector products (NaN or Inf whenever one entry is) is not finite."""
    if not bool(torch.isfinite(value).all()):
        raise ValueError(
            "forward_func: the Hessian-vector product of the loss is NaN or Inf (the model or "
            "loss is not twice differentiable at these inputs, or overflows)"
        )


class _Batch:
    """The unfinished rows of a batched solve, compacted as examples finish.

    ``state`` holds per-row tensors (batch first) of the rows still in the
    batch; ``rows`` their original indices. Finished rows are written to the
    full-size tensors of ``out`` when they leave.
    """

    def __init__(self, quad: Quadratic, state: Dict[str, Tensor], keep: Tuple[str, ...]) -> None:
        self.quad = quad
        self.state = state
        self.rows = torch.arange(quad.g.shape[0], device=quad.g.device)
        self.out = {k: state[k].clone() for k in keep}
        self.hvp_seconds = 0.0

    def hvp(self, v: Tensor) -> Tensor:
        """``H v`` of the current rows, timed (the callers check a reduction of it is finite)."""
        start = time.perf_counter()
        hv = self.quad.hvp(v)
        self.hvp_seconds = time.perf_counter() - start
        return hv

    def compact(self, active: Tensor) -> Tensor:
        """Drop the inactive rows when few enough are left; returns the new ``active`` mask.

        Where building the smaller quadratic costs time (a new autograd graph), the
        batch shrinks only when the products of the next ``_PAYBACK_STEPS`` steps,
        assumed to cost in proportion to their rows, would save more than that. On a
        small model, whose products cost per call rather than per row, it stays whole.
        The iterates of an example are the same either way.
        """
        n_active = int(active.sum())
        full = n_active == active.shape[0] or n_active > _COMPACT_FRACTION * active.shape[0]
        if full or not self.quad.separable:
            return active
        saved = self.hvp_seconds * (1 - n_active / active.shape[0]) * _PAYBACK_STEPS
        if n_active and saved < self.quad.subset_seconds:
            return active
        self.flush()
        keep = active.nonzero()[:, 0]
        self.quad = self.quad.subset(keep) if n_active else self.quad
        self.state = {k: v.index_select(0, keep) for k, v in self.state.items()}
        self.rows = self.rows.index_select(0, keep)
        return active.index_select(0, keep)

    def flush(self) -> None:
        """Write the current rows' kept state into the full-size outputs."""
        for k, v in self.out.items():
            new = self.state[k]
            if v.shape[1:] != new.shape[1:]:  # a buffer grew: pad the output to match
                pad = [p for a, b in zip(reversed(v.shape[1:]), reversed(new.shape[1:])) for p in (0, b - a)]
                v = self.out[k] = torch.nn.functional.pad(v, pad)
            v.index_copy_(0, self.rows, new)


class Lanczos(NamedTuple):
    """What :func:`lanczos` returns, one entry per example.

    ``top`` ``max(0, lambda_max(H))``; ``hvps`` the Hessian-vector products used;
    ``quadratic`` the quadratic to solve with: the input one, or (``certify=True``)
    one whose certified rows take their products from the Lanczos basis instead of
    the model.
    """

    top: Tensor
    hvps: Tensor
    quadratic: Quadratic


def _orthogonal_to(basis: Tensor, v: Tensor) -> Tensor:
    """``v`` ``(B, 1, d)`` less its projection on the orthonormal rows of ``basis``, twice over."""
    for _ in range(2):  # classical Gram-Schmidt twice: orthogonal to working precision
        v = torch.baddbmm(v, torch.bmm(v, basis.transpose(1, 2)), basis, alpha=-1)
    return v


def _start_vector(d: int, seed: int, like: Tensor) -> Tensor:
    gen = torch.Generator(device=like.device)
    gen.manual_seed(seed)
    noise = torch.randn(1, d, generator=gen, device=like.device, dtype=like.dtype)
    return noise / noise.norm(dim=1, keepdim=True)


def lanczos(quad: Quadratic, certify: bool = False) -> Lanczos:
    """The top eigenvalue of every example's ``H`` by the Lanczos method, and optionally ``H`` itself.

    Each example builds a Krylov basis of ``H`` one Hessian-vector product at a
    time (fully re-orthogonalised, so the basis stays orthonormal in finite
    precision) and takes the largest eigenvalue of the projected tridiagonal
    matrix ``T``. That Ritz value approaches ``lambda_max`` from below, far
    faster than power iteration when the top eigenvalues are close, and needs
    no shift for negative curvature. An example stops when the residual of its
    top Ritz pair is at most ``1e-5`` of the Ritz value (some eigenvalue then
    lies that close, and the top one far closer), when the basis spans an
    invariant subspace (for the low-rank Hessian of a ReLU network's
    cross-entropy this happens after at most ``C`` products, ``C`` the number
    of classes), or after ``min(d, 500)`` products. It starts from the
    gradient plus one fixed random direction, the same for every example, so
    that an example's result does not depend on its batch.

    With ``certify=True``, an example whose basis becomes invariant spends one
    more product on a fixed random direction orthogonal to it; if ``H`` maps
    that to zero (to rounding), the basis holds the whole range of ``H``
    (with probability one) and ``H = Q T Q^T`` exactly: that example's later
    products are three small matrix products, no call of the model. Where
    :attr:`Quadratic.rank_hint` says the Hessians are often of a low rank
    ``r`` (with ``r + 3 <= min(d, 64)``), the range of ``H`` is instead sought in
    one batched product of ``r + 3`` fixed random directions (:meth:`Quadratic.hvp_many`):
    ``Q`` an orthonormal basis of the products of the first ``r``, ``T`` fitted
    by least squares on ``r + 2`` of them, the last held out to check
    ``H = Q T Q^T``. That is about the products Lanczos needs, in one call
    instead of ``r + 2`` sequential ones; examples that fail the check (a
    Hessian of higher rank) go on to Lanczos.

    Args:
        quad: The quadratic models.
        certify: Whether to look for, and check, a basis of the whole range of ``H``.

    Returns:
        A :class:`Lanczos`.

    Examples:
        >>> import torch
        >>> from captum_smoothhess.solvers import DenseQuadratic, lanczos
        >>> gen = torch.Generator().manual_seed(0)
        >>> j = torch.randn(2, 3, 20, generator=gen, dtype=torch.float64)  # rank-3 Hessians
        >>> g = torch.randn(2, 20, generator=gen, dtype=torch.float64)
        >>> quad = DenseQuadratic(g, j.transpose(1, 2) @ j)
        >>> eig = lanczos(quad, certify=True)
        >>> eig.hvps.tolist()  # the rank, the start's part outside the range, the check
        [5, 5]
        >>> v = torch.randn(2, 20, generator=gen, dtype=torch.float64)
        >>> torch.allclose(eig.quadratic.hvp(v), quad.hvp(v))
        True
    """
    if not quad.separable:  # the examples' Hessians are coupled: one operator on the whole batch
        top, hvps, _ = lanczos(_Joint(quad))
        batch = quad.g.shape[0]
        return Lanczos(top.expand(batch).clone(), hvps.expand(batch).clone(), quad)
    hint = quad.rank_hint if certify else None
    if hint is not None and hint + 3 <= min(quad.g.shape[1], _RANGE_MAX):
        return _by_range(quad, hint)
    return _krylov(quad, certify)


def _krylov(quad: Quadratic, certify: bool) -> Lanczos:
    """The Lanczos iteration of :func:`lanczos` on a separable batch."""
    g = quad.g
    batch, d = g.shape
    finfo = torch.finfo(g.dtype)
    steps = min(d, _EIG_MAX_ITER)
    # The basis and the tridiagonal matrix live in buffers that double when full.
    size = min(steps, 15) + 1
    basis = g.new_zeros(batch, size, d)
    unit, fixed = g / g.norm(dim=1, keepdim=True).clamp_min(finfo.tiny), _start_vector(d, 0, g)
    v0 = unit + fixed
    # Two unit vectors nearly opposite (always possible at d = 1, where they are +-1) would cancel to a
    # zero start: their difference is then a start of length about 2.
    opposite = torch.linalg.vector_norm(v0, dim=1, keepdim=True) < 0.5
    v0 = torch.where(opposite, unit - fixed, v0)
    basis[:, 0] = v0 / v0.norm(dim=1, keepdim=True).clamp_min(finfo.tiny)
    false = torch.zeros(batch, dtype=torch.bool, device=g.device)
    rows = _Batch(
        quad,
        {
            "basis": basis,
            "tri": g.new_zeros(batch, size, size),
            "top": g.new_zeros(batch),
            "scale": g.new_zeros(batch),  # the largest entry of T so far
            "hvps": torch.zeros(batch, dtype=torch.long, device=g.device),
            "checking": false,  # the newest basis vector tests the range of H
            "certified": false.clone(),
        },
        ("top", "hvps", "certified") + (("basis", "tri") if certify else ()),
    )
    active = torch.ones(batch, dtype=torch.bool, device=g.device)
    checking = False
    for j in range(steps):
        s = rows.state
        if j + 1 == s["basis"].shape[1]:
            s["basis"] = torch.cat((s["basis"], torch.zeros_like(s["basis"])), 1)
            s["tri"] = torch.nn.functional.pad(s["tri"], (0, j + 1, 0, j + 1))
        basis, tri = s["basis"][:, : j + 1], s["tri"]
        w = rows.hvp(basis[:, j])[:, None]
        s["hvps"].add_(active)
        raw = torch.linalg.vector_norm(w[:, 0], dim=1) if checking else None
        # Classical Gram-Schmidt twice against the whole basis. The first pass's coefficient
        # on the newest vector is alpha_j = q_j^T H q_j (on the older ones beta_{j-1} and 0).
        coef = torch.bmm(w, basis.transpose(1, 2))
        w = torch.baddbmm(w, coef, basis, alpha=-1)
        w = torch.baddbmm(w, torch.bmm(w, basis.transpose(1, 2)), basis, alpha=-1)[:, 0]
        beta = torch.linalg.vector_norm(w, dim=1)
        _check_finite(beta)
        alpha = coef[:, 0, j]
        tri[:, j, j] = alpha
        s["scale"] = torch.maximum(s["scale"], torch.maximum(alpha.abs(), beta))
        small = _INVARIANT * finfo.eps * s["scale"]
        invariant = beta <= small
        if raw is None:  # a check step adds a zero block to T: the Ritz values stay
            ritz, vectors = torch.linalg.eigh(tri[:, : j + 1, : j + 1])  # reads the lower triangle
            theta = ritz[:, -1]
            s["top"] = torch.where(active, theta, s["top"])
            # |H y - theta y| of the top Ritz pair: some eigenvalue lies within it of theta.
            stop = beta * vectors[:, -1, -1].abs() <= _EIG_TOL * theta.abs().clamp_min(finfo.tiny)
            stop = stop | invariant
        else:  # H maps the test direction to (almost) zero: the basis holds range(H)
            s["certified"] = s["certified"] | (s["checking"] & (raw <= small))
            stop = s["checking"] | invariant
        restart = torch.zeros_like(active)
        if certify:
            if j + 1 == d:  # the basis spans everything
                s["certified"] = s["certified"] | (active & invariant)
            else:
                restart = active & invariant & ~s["checking"]
                stop = stop & ~restart
        active = active & ~stop
        if not bool(active.any()):
            break
        q_next = w / beta.clamp_min(finfo.tiny)[:, None]
        tri[:, j + 1, j] = beta
        checking = bool(restart.any())
        if checking:  # a fixed random direction orthogonal to the basis tests it
            u = _orthogonal_to(basis, _start_vector(d, 1, g).expand(len(active), 1, d))[:, 0]
            u = u / torch.linalg.vector_norm(u, dim=1, keepdim=True).clamp_min(finfo.tiny)
            q_next = torch.where(restart[:, None], u, q_next)
            tri[:, j + 1, j] = torch.where(restart, 0.0, beta)
        s["checking"] = restart
        s["basis"][:, j + 1] = q_next
        active = rows.compact(active)
    rows.flush()
    out = rows.out
    quadratic = _certified(quad, out) if certify and bool(out["certified"].any()) else quad
    return Lanczos(out["top"].clamp_min(0), out["hvps"], quadratic)


def _by_range(quad: Quadratic, k: int) -> Lanczos:
    """:func:`lanczos` with ``certify=True`` by a one-pass range finder of ``k`` directions.

    One batched product of ``k + 3`` fixed random directions ``Omega``: ``Q``
    orthonormalises ``H Omega_k`` (the first ``k``; it holds ``range(H)`` when
    ``rank(H) <= k``), ``T`` is the least-squares solution of
    ``Q^T H Omega = T Q^T Omega`` over ``k + 2`` of them (overdetermined, so well
    conditioned), and the last direction ``u``, held out, must satisfy
    ``|H u - Q T Q^T u| <= _INVARIANT eps |T| |u|``. Every example uses the same
    ``Omega``, so its result does not depend on its batch; failing examples go on
    to Lanczos.
    """
    g = quad.g
    batch, d = g.shape
    gen = torch.Generator(device=g.device)
    gen.manual_seed(0)
    fit = k + 2
    omega = torch.randn(fit + 1, 1, d, generator=gen, device=g.device, dtype=g.dtype).expand(-1, batch, -1)
    y = quad.hvp_many(omega.contiguous())  # (k + 3, B, d)
    _check_finite(torch.linalg.vector_norm(y, dim=(0, 2)))
    q = torch.linalg.qr(y[:k].permute(1, 2, 0)).Q  # (B, d, k)
    seen = torch.bmm(q.transpose(1, 2), omega[:fit].permute(1, 2, 0))  # Q^T Omega (B, k, k + 2)
    image = torch.bmm(q.transpose(1, 2), y[:fit].permute(1, 2, 0))  # Q^T H Omega
    tri = torch.linalg.lstsq(seen.transpose(1, 2), image.transpose(1, 2)).solution.transpose(1, 2)
    tri = 0.5 * (tri + tri.transpose(1, 2))
    q = q.transpose(1, 2)  # (B, k, d), rows orthonormal
    u, hu = omega[fit], y[fit]
    mapped = torch.bmm(torch.bmm(torch.bmm(u[:, None], q.transpose(1, 2)), tri), q)[:, 0]
    small = _INVARIANT * torch.finfo(g.dtype).eps * tri.abs().amax((1, 2)) * u.norm(dim=1)
    passed = torch.linalg.vector_norm(hu - mapped, dim=1) <= small
    top = torch.linalg.eigvalsh(tri)[:, -1].clamp_min(0)
    hvps = torch.full((batch,), fit + 1, dtype=torch.long, device=g.device)
    krylov = _Krylov(g, q, tri)
    if bool(passed.all()):
        return Lanczos(top, hvps, krylov)
    pick, rest = passed.nonzero()[:, 0], (~passed).nonzero()[:, 0]
    none = not bool(passed.any())
    more = _krylov(quad if none else quad.subset(rest), certify=True)
    top = top.index_copy(0, rest, more.top)
    hvps = hvps.index_add(0, rest, more.hvps)
    return Lanczos(
        top, hvps, more.quadratic if none else _Split(g, passed, krylov.subset(pick), more.quadratic)
    )


def _certified(quad: Quadratic, out: Dict[str, Tensor]) -> Quadratic:
    """``quad`` with its certified rows' products taken from ``Q T Q^T`` (Lanczos' basis)."""
    certified = out["certified"]
    pick = certified.nonzero()[:, 0]
    sizes = out["hvps"].index_select(0, pick)
    width = int(sizes.max())
    keep = (torch.arange(width, device=sizes.device)[None] < sizes[:, None]).to(quad.g.dtype)
    basis = out["basis"].index_select(0, pick)[:, :width] * keep[:, :, None]
    lower = out["tri"].index_select(0, pick)[:, :width, :width] * keep[:, :, None] * keep[:, None, :]
    tri = lower + torch.tril(lower, -1).transpose(1, 2)
    krylov = _Krylov(quad.g.index_select(0, pick), basis, tri)
    if bool(certified.all()):
        return krylov
    return _Split(quad.g, certified, krylov, quad.subset((~certified).nonzero()[:, 0]))


def top_eigenvalue(quad: Quadratic) -> Tuple[Tensor, Tensor]:
    """``max(0, lambda_max(H))`` per example by the Lanczos method; also the HVPs used.

    See :func:`lanczos` (without ``certify``) for the method and when it stops.

    Args:
        quad: The quadratic models.

    Returns:
        ``(top, hvps)``, both ``(B,)``: the clamped top eigenvalue and the
        Hessian-vector products each example used.

    Examples:
        >>> import torch
        >>> from captum_smoothhess.solvers import DenseQuadratic, top_eigenvalue
        >>> h = torch.diag(torch.tensor([-4.0, 1.0, 2.0]))[None]
        >>> top, _ = top_eigenvalue(DenseQuadratic(torch.ones(1, 3), h))
        >>> round(float(top), 3)
        2.0
    """
    top, hvps, _ = lanczos(quad)
    return top, hvps


PerExample = Union[float, Tensor]


def _per_example(value: PerExample, argument: str, like: Tensor, positive: bool) -> Tensor:
    """``value`` (a number, NumPy scalars included, or a tensor of one value or one per example) as a
    ``(B,)`` tensor of ``like``'s dtype and device (``B = like.shape[0]``): finite, and ``> 0``
    (``positive``) or ``>= 0``; the errors name ``argument``."""
    batch = like.shape[0]
    if isinstance(value, Tensor):
        t = value.detach().to(device=like.device, dtype=like.dtype)
        if t.numel() == 1:
            t = t.reshape(1).repeat(batch)  # (a tensor of its own: the callers may update it in place)
        elif t.shape in ((batch,), (batch, 1), (1, batch)):
            t = t.reshape(batch)
        else:
            raise ValueError(
                f"{argument}: expected one value or one per example, shape ({batch},), got {tuple(t.shape)}"
            )
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        t = torch.full((batch,), float(value), device=like.device, dtype=like.dtype)
    else:
        raise TypeError(f"{argument}: expected a number or a tensor, got {value!r}")
    bad = ~torch.isfinite(t) | ((t <= 0) if positive else (t < 0))
    if bool(bad.any()):
        raise ValueError(f"{argument}: every value must be finite and {'> 0' if positive else '>= 0'}")
    return t


def _check_l2(lam2: PerExample, lam2_eff: PerExample, like: Tensor) -> Tuple[Tensor, Tensor]:
    """``lam2`` and ``lam2_eff`` as ``(B,)`` tensors: positive, and ``lam2_eff >= lam2``."""
    l2 = _per_example(lam2, "lam2", like, positive=True)
    l2_eff = _per_example(lam2_eff, "lam2_eff", like, positive=True)
    if bool((l2_eff < l2).any()):
        raise ValueError("lam2_eff: must be at least lam2 (it is lam2 + max(0, lambda_max(H)))")
    return l2, l2_eff


def _check_solve(tol: float, max_iter: int) -> Tuple[float, int]:
    return _check_number(tol, "tol", allow_zero=False), _check_positive_int(max_iter, "max_iter")


def fista(
    quad: Quadratic,
    lam1: PerExample,
    lam2: PerExample,
    lam2_eff: PerExample,
    tol: float,
    max_iter: int,
    active: Optional[Tensor] = None,
) -> Solution:
    r"""Solve CASO's problem for every example by FISTA with backtracking and adaptive restart.

    Maximises ``g^T d + 1/2 d^T H d - lambda1 |d|_1 - lambda2_eff/2 |d|^2``
    from ``d = 0``, i.e. minimises its negative, whose smooth part has
    gradient ``lambda2_eff d - g - H d``. One Hessian-vector product per
    iteration (plus one per rejected step): ``H`` of the candidate gives both
    the backtracking test and the next gradient, and ``H y`` follows from
    ``H x`` by linearity. Should the problem turn out non-concave (a step with
    ``d^T H d > lambda2_eff |d|^2``: ``lambda_max`` was underestimated),
    ``lambda2_eff`` is raised to ``lambda2 + d^T H d / |d|^2`` and that example
    restarts from zero. An example stops when its residual is at most ``tol``
    or after ``max_iter`` iterations (restarts included), and then leaves the
    batch.

    Args:
        quad: The quadratic models.
        lam1: ``(B,)`` weights of the L1 penalty, ``>= 0`` (or one number for all).
        lam2: ``(B,)`` weights of the L2 penalty, ``> 0`` (or one number).
        lam2_eff: ``(B,)`` the L2 weight that makes the problem concave,
            ``lam2 + max(0, lambda_max(H))`` (or one number), ``>= lam2``.
        tol: Tolerance on the proximal-gradient residual, relative to ``|g|``, ``> 0``.
        max_iter: Cap on the iterations of each example, ``>= 1``.
        active: ``(B,)`` bool, the examples to solve (others return ``d = 0``).

    Returns:
        A :class:`Solution`.

    Raises:
        ValueError: A NaN or Inf in ``g`` or in a Hessian-vector product; a
            ``lam1`` < 0, ``lam2`` <= 0, ``lam2_eff`` < ``lam2``, ``tol`` <= 0 or
            ``max_iter`` < 1 (or NaN, Inf, or a tensor that is not ``(B,)``).
        TypeError: Arguments of the wrong type.

    Examples:
        >>> import torch
        >>> from captum_smoothhess.solvers import DenseQuadratic, fista
        >>> g = torch.tensor([[1.0, -0.2]])
        >>> quad = DenseQuadratic(g, torch.zeros(1, 2, 2))
        >>> lam = torch.tensor([0.5])
        >>> sol = fista(quad, lam, torch.ones(1), torch.ones(1), 1e-6, 100)
        >>> sol.delta.abs()  # soft(g, 0.5) / lambda2: the small entry is exactly zero
        tensor([[0.5000, 0.0000]])
    """
    g = quad.g
    _check_gradient(g)
    tol, max_iter = _check_solve(tol, max_iter)
    lam2_t, lam2_eff_t = _check_l2(lam2, lam2_eff, g)
    lam1_t = _per_example(lam1, "lam1", g, positive=False)
    if active is not None and (not isinstance(active, Tensor) or active.shape != (g.shape[0],)):
        raise ValueError(f"active: expected a bool tensor of shape ({g.shape[0]},)")
    return _fista(quad, lam1_t, lam2_t, lam2_eff_t, tol, max_iter, active)


def _fista(
    quad: Quadratic,
    lam1: Tensor,
    lam2: Tensor,
    lam2_eff: Tensor,
    tol: float,
    max_iter: int,
    active: Optional[Tensor] = None,
) -> Solution:
    """:func:`fista` on checked arguments."""
    g = quad.g
    batch, dim = g.shape
    eps = torch.finfo(g.dtype).eps
    long0 = torch.zeros(batch, dtype=torch.long, device=g.device)
    # The iterate x and its product H x travel together as (B, 2, d): one op moves both.
    rows = _Batch(
        quad,
        {
            "g": g,
            "scale": g.norm(dim=1).clamp_min(torch.finfo(g.dtype).tiny),
            "lam1": lam1,
            "lam2": lam2,
            "lam2_eff": lam2_eff.clone(),
            "xs": g.new_zeros(batch, 2, dim),
            "xs_prev": g.new_zeros(batch, 2, dim),
            "t": torch.ones_like(lam2_eff),
            "step": lam2_eff.clone(),
            "iters": long0,
            "steps": long0.clone(),
            "hvps": long0.clone(),
            "res": torch.zeros_like(lam2_eff),
        },
        ("xs", "res", "iters", "hvps", "lam2_eff"),
    )
    s = rows.state
    s["res"] = _residual(g, s["xs"], lam1, s["lam2_eff"], s["step"], s["scale"])
    everyone = torch.ones(batch, dtype=torch.bool, device=g.device)
    active = (everyone if active is None else active) & (s["res"] > tol)
    active = rows.compact(active)
    while bool(active.any()):
        s = rows.state
        g_r, lam1_r, lam2_eff_r, step = s["g"], s["lam1"], s["lam2_eff"], s["step"]
        xs, t = s["xs"], s["t"]
        t_next = 0.5 * (1 + torch.sqrt(torch.addcmul(torch.ones_like(t), t, t, value=4)))
        ys = torch.addcmul(xs, ((t - 1) / t_next)[:, None, None], xs - s["xs_prev"])
        y, hy = ys[:, 0], ys[:, 1]
        hy_norm = torch.linalg.vector_norm(hy, dim=1)
        pending, reset = active, None
        z, hz = y, hy
        for attempt in range(_MAX_BACKTRACK):
            # Proximal step from y: soft-thresholding of y - (lambda2_eff y - g - H y) / step.
            inv = step.reciprocal()
            u = torch.addcmul(y * (1 - lam2_eff_r * inv)[:, None], g_r + hy, inv[:, None])
            tau = (lam1_r * inv)[:, None]
            step_z = _soft(u, tau)
            step_hz = rows.hvp(step_z)
            if attempt:  # a retry moves only the rows still searching
                z = torch.where(pending[:, None], step_z, z)
                hz = torch.where(pending[:, None], step_hz, hz)
            else:
                z, hz = step_z, step_hz
            counted = rows.quad.counted
            s["hvps"].add_(pending if counted is None else pending & counted)
            diff = z - y
            dd = torch.linalg.vecdot(diff, diff)
            dhd = torch.linalg.vecdot(diff, hz - hy)
            excess = torch.addcmul(dhd, lam2_eff_r, dd, value=-1)
            # Rounding of d^T (Hz - Hy) and of lambda2 |d|^2: a few ulps of the terms.
            norms = dd.sqrt() * (torch.linalg.vector_norm(hz, dim=1) + hy_norm)
            slack = 16 * eps * torch.addcmul(norms, lam2_eff_r, dd)
            bad = pending & (excess > slack) & (dd > 0)
            # Accept where the smooth part's curvature along d is at most the step constant.
            pending = pending & ~bad & (-excess > step * dd + slack)
            flags = torch.stack((bad.any(), pending.any(), torch.isfinite(dhd).all())).tolist()
            if not flags[2]:  # d^T H z is finite exactly when H z is
                _check_finite(dhd)
            if flags[0]:  # lambda_max was underestimated: raise lambda2_eff, restart from 0
                lam2_eff_r = torch.where(bad, s["lam2"] + dhd / dd.clamp_min(eps), lam2_eff_r)
                step = torch.where(bad, torch.maximum(step, lam2_eff_r), step)
                reset = bad if reset is None else reset | bad
            if not flags[1]:
                break
            step = torch.where(pending, 2 * step, step)
        else:
            raise RuntimeError("CASO: the step-size search failed; the Hessian-vector products look wrong")
        x = xs[:, 0]
        upd = active if reset is None else active & ~reset
        restart = torch.linalg.vecdot(y - z, z - x) > 0
        s["xs_prev"] = torch.where(upd[:, None, None], xs, s["xs_prev"])
        xs = torch.where(upd[:, None, None], torch.stack((z, hz), 1), xs)
        t = torch.where(upd, torch.where(restart, 1.0, t_next), t)
        s["iters"].add_(upd)
        s["steps"].add_(active)
        if reset is not None:
            xs = xs.masked_fill(reset[:, None, None], 0)
            s["xs_prev"] = s["xs_prev"].masked_fill(reset[:, None, None], 0)
            t = t.masked_fill(reset, 1.0)
        s.update(xs=xs, t=t, step=step, lam2_eff=lam2_eff_r)
        res = _residual(g_r, xs, lam1_r, lam2_eff_r, step, s["scale"])
        s["res"] = torch.where(active, res, s["res"])
        active = active & (s["res"] > tol) & (s["steps"] < max_iter)
        active = rows.compact(active)
    rows.flush()
    out = rows.out
    x, hx = out["xs"][:, 0], out["xs"][:, 1]
    objective = _objective(g, x, hx, lam1, out["lam2_eff"])
    return Solution(x, objective, out["res"], out["iters"], out["hvps"], out["lam2_eff"])


def _merge(keep: Tensor, new: Solution, old: Solution) -> Solution:
    """Per example: ``new`` where ``keep``, else ``old``."""
    return Solution(*(torch.where(keep[:, None] if a.dim() == 2 else keep, a, b) for a, b in zip(new, old)))


def sparsity_solve(
    quad: Quadratic, lam2: PerExample, lam2_eff: PerExample, eta: float, tol: float, max_iter: int
) -> Tuple[Solution, Tensor]:
    """Bisect ``lambda1`` per example so that a fraction ``eta`` of ``delta`` is exactly 0.

    At ``lambda1 >= |g|_inf`` the solution is 0; the number of zeros grows
    with ``lambda1``. Each step solves the unfinished examples (to within
    0.5% of ``d`` zeros) with :func:`fista`.

    Args:
        quad: The quadratic models.
        lam2: ``(B,)`` L2 weights.
        lam2_eff: ``(B,)`` effective L2 weights (see :func:`fista`).
        eta: Fraction of exact zeros wanted, in ``[0, 1)``.
        tol: Residual tolerance of each solve.
        max_iter: Iteration cap of each solve.

    Returns:
        The solution closest to the target count, and its ``lambda1`` ``(B,)``;
        ``hvps`` counts every bisection step.

    Raises:
        TypeError: ``eta`` that is not a number.
        ValueError: ``eta`` outside ``[0, 1)`` (or NaN), a NaN or Inf in ``g``
            or in a Hessian-vector product, or ``lam2``, ``lam2_eff``, ``tol``,
            ``max_iter`` as :func:`fista` refuses them.

    Examples:
        >>> import torch
        >>> from captum_smoothhess.solvers import DenseQuadratic, sparsity_solve
        >>> g = torch.tensor([[4.0, -3.0, 2.0, 1.0]])
        >>> quad = DenseQuadratic(g, torch.zeros(1, 4, 4))
        >>> sol, lam1 = sparsity_solve(quad, torch.ones(1), torch.ones(1), 0.5, 1e-6, 100)
        >>> (sol.delta == 0).sum().item()
        2
    """
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real):
        raise TypeError(f"eta: expected a number in [0, 1), got {eta!r}")
    if not 0 <= float(eta) < 1:
        raise ValueError(f"eta: must lie in [0, 1), got {eta}")
    g = quad.g
    _check_gradient(g)
    tol, max_iter = _check_solve(tol, max_iter)
    lam2, lam2_eff = _check_l2(lam2, lam2_eff, g)
    batch, dim = g.shape
    want = round(float(eta) * dim)
    slack = int(_SPARSITY_SLACK * dim)
    lo = torch.zeros(batch, dtype=g.dtype, device=g.device)
    hi = g.abs().amax(1)
    best_lam = hi.clone()
    zero = torch.zeros(batch, dtype=g.dtype, device=g.device)
    count = torch.zeros(batch, dtype=torch.long, device=g.device)
    best = Solution(torch.zeros_like(g), zero, zero, count, count, lam2_eff)
    best_err = torch.full_like(count, dim - want)
    hvps = torch.zeros_like(count)
    active = best_err > slack
    for _ in range(_BISECT_STEPS):
        if not bool(active.any()):
            break
        mid = 0.5 * (lo + hi)
        sol = _fista(quad, mid, lam2, lam2_eff, tol, max_iter, active)
        hvps += sol.hvps
        zeros = (sol.delta == 0).sum(1)
        err = (zeros - want).abs()
        better = active & (err < best_err)
        best = _merge(better, sol, best)
        best_lam = torch.where(better, mid, best_lam)
        best_err = torch.where(better, err, best_err)
        lo = torch.where(active & (zeros < want), mid, lo)
        hi = torch.where(active & (zeros > want), mid, hi)
        active = active & (best_err > slack) & (hi - lo > 1e-7 * hi)
    return best._replace(hvps=hvps), best_lam


def _check_radius(radius: RadiusType, like: Tensor, argument: str = "radius") -> Tensor:
    """Radius as a ``(B,)`` tensor of positive finite values (:func:`_per_example`)."""
    return _per_example(radius, argument, like, positive=True)


def solve_trust_region(
    gradient: Tensor,
    hessian: Tensor,
    radius: RadiusType,
    max_iter: int = 100,
    rtol: Optional[float] = None,
) -> Tensor:
    r"""Exact minimiser of ``g^T d + 1/2 d^T H d`` over the ball ``|d|_2 <= r``, batched.

    The global minimiser ``d*`` satisfies ``(H + mu I) d* = -g``,
    ``H + mu I`` positive semi-definite, ``mu >= 0`` and ``mu (|d*| - r) = 0``
    (Moré and Sorensen). With ``H = Q diag(lam) Q^T``:

    * if ``H`` is positive definite and ``|H^{-1} g| <= r``, ``d* = -H^{-1} g``
      (interior; ``mu = 0``); a singular positive semi-definite ``H`` with
      ``g`` in its range gives the minimum-norm interior solution;
    * otherwise ``mu > max(0, -lam_min)`` solves ``1/|d(mu)| = 1/r``, found
      by Newton's method on this concave, increasing function, safeguarded by
      bisection on a bracket that always contains the root;
    * in the hard case (``g`` orthogonal to the eigenspace of ``lam_min < 0``
      and ``|d(-lam_min)| <= r``) ``mu = -lam_min`` and
      ``d* = d(-lam_min) + tau q_min`` with ``tau`` bringing ``d*`` to the
      boundary.

    Computed in float64 (cast back to the input dtype) on the problem
    rescaled to the unit ball and unit size, so ``(c g, c H)`` has the
    minimiser of ``(g, H)`` for any ``c > 0``, however large or small. The
    Hessian is symmetrised first.

    Args:
        gradient: ``(B, d)`` (or ``(d,)`` for one problem).
        hessian: ``(B, d, d)`` (or ``(d, d)``).
        radius: ``r`` > 0: a number, or a tensor with one value per problem.
        max_iter: Iteration cap of the secular-equation solve (each iteration
            at least halves the bracket, so 100 reaches float64 resolution).
            With a small cap the result may be approximate: its norm may miss
            ``r`` by more than ``rtol``, even slightly outside the ball.
        rtol: Relative tolerance on ``|d*| = r``; default ``1e-10``. It also
            decides the hard case: ``g``'s component on the ``lam_min``
            eigenspace counts as zero below ``sqrt(rtol) * |g|``.

    Returns:
        The minimisers ``d*``, shaped like ``gradient``.

    Raises:
        ValueError: Shapes that do not match, no feature, NaN/Inf values, or a
            ``radius`` that is not positive and finite.
        TypeError: A ``gradient`` or ``hessian`` that is not a floating-point
            tensor, an ``rtol`` that is not a number.

    Examples:
        >>> import torch
        >>> from captum_smoothhess.solvers import solve_trust_region
        >>> H = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> solve_trust_region(torch.tensor([3.0, 0.0]), H, 0.5)  # Newton step (-3, 0) is outside
        tensor([-0.5000,  0.0000])
        >>> H = torch.tensor([[1.0, 0.0], [0.0, -2.0]])
        >>> solve_trust_region(torch.tensor([1.0, 0.0]), H, 0.5).abs()  # hard case: mu = 2
        tensor([0.3333, 0.3727])
    """
    if not isinstance(gradient, Tensor) or not isinstance(hessian, Tensor):
        raise TypeError("gradient, hessian: expected tensors")
    single = gradient.dim() == 1
    g = gradient[None] if single else gradient
    h = hessian[None] if hessian.dim() == 2 else hessian
    if g.dim() != 2 or h.dim() != 3 or h.shape != (g.shape[0], g.shape[1], g.shape[1]):
        raise ValueError(
            f"hessian: shape {tuple(hessian.shape)} does not match gradient of shape "
            f"{tuple(gradient.shape)}; expected (B, d, d) for gradient (B, d)"
        )
    for name, t in (("gradient", g), ("hessian", h)):
        if not t.is_floating_point():
            raise TypeError(f"{name}: expected a real floating-point tensor, got dtype {t.dtype}")
    if g.shape[1] == 0:
        raise ValueError("gradient: the problem needs at least one feature, got shape (B, 0)")
    if not bool(torch.isfinite(g).all()):
        raise ValueError("gradient: contains NaN or Inf values")
    if not bool(torch.isfinite(h).all()):
        raise ValueError("hessian: contains NaN or Inf values")
    max_iter = _check_positive_int(max_iter, "max_iter")
    if rtol is not None and (isinstance(rtol, bool) or not isinstance(rtol, numbers.Real)):
        raise TypeError(f"rtol: expected a number in (0, 1), got {rtol!r}")
    tol = 1e-10 if rtol is None else float(rtol)
    if not 0 < tol < 1:
        raise ValueError(f"rtol: must be in (0, 1), got {rtol}")
    out_dtype = g.dtype
    g = g.detach().to(torch.float64)
    h = h.detach().to(torch.float64)
    radius_out = _check_radius(radius, g)

    # The scale-free problem: with d = r e, minimise (g / s)^T e + 1/2 e^T (r H / s) e over |e| <= 1,
    # s = max(max |g|, r max |H|) (the objective over r s). Every quantity is then of order one, so
    # no square of g or cube of an eigenvalue overflows or underflows, whatever the problem's scale.
    size = torch.maximum(g.abs().amax(1), h.abs().amax((1, 2)) * radius_out)
    size = torch.where(size > 0, size, torch.ones_like(size))
    g = g / size[:, None]
    h = h / size[:, None, None] * radius_out[:, None, None]
    r = torch.ones_like(radius_out)

    h = 0.5 * (h + h.transpose(1, 2))
    lam, q = torch.linalg.eigh(h)  # ascending
    gt = torch.einsum("bji,bj->bi", q, g)  # Q^T g
    gnorm = g.norm(dim=1)
    lam_min = lam[:, 0]
    # Relative to the problem's own scale, so (c g, c H) gives the answer of (g, H) for any c > 0;
    # at H = 0 exactly every eigenvalue is 0 and counts as singular with any tolerance >= 0.
    scale = lam.abs().amax(dim=1)
    eig_tol = 1e3 * torch.finfo(torch.float64).eps * scale
    mu_lo = (-lam_min).clamp_min(0.0)

    # Solution at mu = mu_lo, ignoring the (numerically) singular directions.
    shifted = lam + mu_lo[:, None]
    singular = shifted <= eig_tol[:, None]
    coef_lo = torch.where(singular, torch.zeros_like(gt), -gt / torch.where(singular, 1.0, shifted))
    norm_lo = coef_lo.norm(dim=1)
    g_sing = torch.where(singular, gt, torch.zeros_like(gt)).norm(dim=1)
    at_lo = (g_sing <= tol**0.5 * gnorm) & (norm_lo <= r * (1 + tol))
    coef = coef_lo.clone()
    hard = at_lo & (lam_min < 0)
    if bool(hard.any()):
        # tau along q_min with the sign that makes its product with g non-positive (either sign
        # gives the same curvature term): the near-hard case, whose small component of g on q_min
        # was set aside, then loses nothing to g^T d.
        tau = (r.pow(2) - norm_lo.pow(2)).clamp_min(0.0).sqrt()
        tau = torch.where(gt[:, 0] > 0, -tau, tau)
        coef[:, 0] = torch.where(hard, coef[:, 0] + tau, coef[:, 0])

    easy = ~at_lo
    if bool(easy.any()):
        # The root of phi(mu) = 1/|d(mu)| - 1/r lies in (mu_lo, mu_hi]:
        # |d(mu)| <= |g| / (mu + lam_min) <= r for mu >= mu_hi.
        lo = mu_lo.clone()
        hi = torch.maximum(mu_lo, gnorm / r - lam_min) * (1 + tol) + tol * gnorm / r
        mu = hi.clone()
        for _ in range(max_iter):
            den = (lam + mu[:, None]).clamp_min(torch.finfo(torch.float64).tiny)
            norm = (gt / den).norm(dim=1)
            phi = 1.0 / norm.clamp_min(torch.finfo(torch.float64).tiny) - 1.0 / r
            done = (norm - r).abs() <= tol * r
            if bool((done | ~easy).all()):
                break
            low_side = phi < 0  # |d| > r: mu too small
            lo = torch.where(low_side, torch.maximum(lo, mu), lo)
            hi = torch.where(low_side, hi, torch.minimum(hi, mu))
            dphi = (gt.pow(2) / den.pow(3)).sum(1) / norm.pow(3)
            newton = mu - phi / dphi.clamp_min(torch.finfo(torch.float64).tiny)
            inside = (newton > lo) & (newton < hi) & torch.isfinite(newton)
            mu = torch.where(done, mu, torch.where(inside, newton, 0.5 * (lo + hi)))
        den = (lam + mu[:, None]).clamp_min(torch.finfo(torch.float64).tiny)
        coef = torch.where(easy[:, None], -gt / den, coef)
    d = (torch.einsum("bij,bj->bi", q, coef) * radius_out[:, None]).to(out_dtype)
    return d[0] if single else d
