"""Second-order adversarial attacks from a quadratic model of the class probability.

Given the gradient ``g`` and Hessian ``H`` of the predicted class's probability
at ``x`` (SmoothHess by default, or any source with the same interface), the
second-order attack takes the step that minimises the quadratic model ::

    m(d) = g^T d + 1/2 d^T H d   subject to   |d|_2 <= r ,

a trust-region subproblem. :func:`solve_trust_region` solves it exactly,
batched: an eigendecomposition ``H = Q diag(lam) Q^T`` and a safeguarded
Newton solve of the secular equation ``1/|d(mu)| = 1/r`` for the multiplier
``mu >= max(0, -lam_min)``, with ``d(mu) = -(H + mu I)^{-1} g``, including the
"hard case" in which ``g`` is orthogonal to the eigenspace of ``lam_min`` and
the solution is completed along an eigenvector of ``lam_min``. The first-order
attack ``x - r g / |g|`` is the special case ``H = 0``.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ._captum import TargetType, _format_additional_forward_args
from ._dtypes import widened
from ._evaluators import selected_outputs
from ._layout import _flat_gradient, _flat_hessian, _flatten, _format_flat
from ._model import guarded, hides_models, needs_private_copy, private_copy, warn_if_training
from ._validation import _check_flags, _check_inputs, _check_positive_int, _tupled
from .smoothhess import SmoothHess
from .solvers import RadiusType, _check_radius, solve_trust_region

__all__ = ["ClassProbability", "SecondOrderAttack", "solve_trust_region"]


class ClassProbability(nn.Module):
    """Wrap a classifier so that it returns softmax probabilities.

    The second-order attack lowers the probability of the predicted class, so
    its gradient/Hessian source must differentiate the probability, not the
    logit. ``ClassProbability(model)`` holds a reference to ``model`` (nothing
    is copied or modified) and returns ``softmax(model(*args), dim)``. The
    model is not registered as a submodule (the wrapper's ``train()``,
    ``eval()`` and ``to()`` leave it alone), but the package still sees its
    layers: a batch norm in training mode inside it gets the same warning and
    the same protection of its running statistics as without the wrapper.

    Args:
        model: A callable returning logits, classes along ``dim``.
        dim: The class dimension. Default: 1.

    Raises:
        TypeError: ``model`` not callable or ``dim`` not an integer.

    Examples:
        >>> import torch
        >>> from captum_smoothhess.robust import ClassProbability
        >>> prob = ClassProbability(torch.nn.Linear(3, 4))
        >>> p = prob(torch.randn(2, 3))
        >>> p.shape, bool(torch.allclose(p.sum(1), torch.ones(2)))
        (torch.Size([2, 4]), True)
    """

    model: Callable[..., Any]  # (set in __init__, outside the module registry)
    dim: int

    def __init__(self, model: Callable[..., Any], dim: int = 1) -> None:
        if not callable(model):
            raise TypeError(f"model: expected a model or a callable, got {type(model).__name__}")
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
            raise TypeError(f"dim: expected an integer, got {dim!r}")
        super().__init__()
        # Stored outside the module registry: wrapping must not change `model`
        # (no re-parenting, no shared `train()`/`eval()` switches).
        object.__setattr__(self, "model", model)
        self.dim = int(dim)

    # Lets the package's model inspection (batch-norm layers in training
    # mode, see `_model.reachable_modules`) see through the wrapper.
    _held_outside_registry = ("model",)

    def forward(self, *args: Any) -> Tensor:
        return torch.softmax(self.model(*args), dim=self.dim)


class SecondOrderAttack:
    r"""Adversarial step from a quadratic model of the predicted class's probability.

    For each example, with ``p`` the probability of class ``target`` (default:
    the class the model predicts), ``g`` and ``H`` its gradient and Hessian
    from ``source``, :meth:`perturb` returns ``x + d*`` with ``d*`` the exact
    minimiser of ``g^T d + 1/2 d^T H d`` over ``|d|_2 <= radius``
    (:func:`solve_trust_region`). With ``order=1`` it returns the first-order
    attack ``x - radius g / |g|`` from the same source, for comparison.

    For large inputs, ``top_k`` restricts the step to the span of the
    gradient and the ``k`` eigenvectors of ``H`` of largest absolute
    eigenvalue (the best rank-``k`` approximation of ``H``). The gradient is
    kept in the subspace, so the model's predicted decrease is never worse than
    the first-order step's.

    Args:
        forward_func: The classifier, returning logits ``(B, C)`` (or
            probabilities with ``apply_softmax=False``).
        source: Where ``(hessian, gradient)`` come from: any object with
            ``attribute(inputs, target=..., additional_forward_args=...,
            return_gradient=True, **kwargs)`` returning them in SmoothHess's
            layout and built on the *probability* (e.g.
            ``SmoothHess(ClassProbability(model))`` or
            ``ExactHessian(ClassProbability(softplus_surrogate(model, beta)))``).
            Default: ``SmoothHess`` with a Gaussian kernel on the softmax of
            ``forward_func``.
        apply_softmax: Whether ``forward_func`` returns logits to be turned
            into probabilities (for choosing the default target and the
            default source). Default: ``True``.

    Raises:
        TypeError: ``forward_func`` not callable, ``source`` without an
            ``attribute`` method (or a class instead of an instance),
            ``apply_softmax`` not a bool.

    A model in training mode with batch-norm layers gets a warning, and
    :meth:`perturb` runs all its forward passes (the predicted class, the
    default source) on a private copy, so the running statistics are left as
    found.

    Examples:
        >>> import torch
        >>> from captum_smoothhess.robust import SecondOrderAttack
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        >>> attack = SecondOrderAttack(net)
        >>> x = torch.randn(5, 4)
        >>> adv = attack.perturb(x, radius=0.5, stdevs=0.2, n_samples=200,
        ...                      generator=torch.Generator().manual_seed(0))
        >>> bool(((adv - x).norm(dim=1) <= 0.5 + 1e-5).all())
        True
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        source: Optional[Any] = None,
        apply_softmax: bool = True,
    ) -> None:
        if not callable(forward_func):
            raise TypeError(
                f"forward_func: expected a model or a callable, got {type(forward_func).__name__}"
            )
        _check_flags(apply_softmax=apply_softmax)
        if isinstance(source, type):
            raise TypeError(
                f"source: expected an instance such as SmoothHess(ClassProbability(model)), got the class "
                f"{source.__name__}"
            )
        self.forward_func = forward_func
        self.probability: Callable[..., Any] = (
            ClassProbability(forward_func) if apply_softmax else forward_func
        )
        self._default_source: Optional[SmoothHess] = SmoothHess(self.probability) if source is None else None
        self.source: Any = self._default_source if source is None else source
        if not callable(getattr(self.source, "attribute", None)):
            raise TypeError("source: expected an object with an `attribute` method, such as SmoothHess")

    def perturb(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        radius: RadiusType,
        target: TargetType = None,
        additional_forward_args: Any = None,
        order: int = 2,
        top_k: Optional[int] = None,
        **source_kwargs: Any,
    ) -> Union[Tensor, Tuple[Tensor, ...]]:
        """Perturbed inputs ``x + d`` with ``|d|_2 <= radius`` lowering the class probability.

        Args:
            inputs: A tensor ``(B, *S)`` or a tuple of tensors ``(B, *S_i)``;
                the ball is over all features of one example.
            radius: ``r`` > 0: a number (NumPy scalars included), or a tensor
                with one value per example.
            target: The class whose probability is lowered; default (``None``)
                the class ``forward_func`` predicts at ``inputs``.
            additional_forward_args: Extra arguments for ``forward_func``.
            order: 2 for the trust-region step (default), 1 for the
                normalised-gradient step ``-r g / |g|`` (no Hessian is
                computed when the source accepts ``return_gradient`` only;
                it is still requested, so prefer a cheap source).
            top_k: Solve within the span of the gradient and the top-``k``
                eigenvectors of ``H`` (by absolute eigenvalue); ``None`` uses
                the full space.
            **source_kwargs: Passed to ``source.attribute`` (e.g. ``stdevs``,
                ``n_samples``, ``generator`` for SmoothHess).

        Returns:
            The perturbed inputs, shaped like ``inputs`` and detached. An
            example whose gradient and Hessian are both zero is left in place.

        Raises:
            ValueError: ``radius`` not positive and finite, ``order`` not 1 or
                2, ``top_k`` < 1, NaN/Inf inputs, a bad ``target``, or a
                training-mode norm layer that a function hides from the
                private copy (as for SmoothHess).
            TypeError: ``inputs`` not a tensor or a tuple of tensors.

        Examples:
            >>> import torch
            >>> from captum_smoothhess.robust import SecondOrderAttack
            >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
            >>> attack = SecondOrderAttack(net)
            >>> adv = attack.perturb(torch.randn(3, 4), radius=0.1, order=1, n_samples=20)
            >>> adv.shape
            torch.Size([3, 4])
        """
        inps, is_tuple = _tupled(inputs)
        _check_inputs(inps)
        if order not in (1, 2) or isinstance(order, bool):
            raise ValueError(f"order: expected 1 or 2, got {order!r}")
        if top_k is not None:
            top_k = _check_positive_int(top_k, "top_k")
        x = _flatten(inps)
        batch, dim = x.shape
        r = _check_radius(radius, x)
        # One private copy per call for a model whose forward passes update its buffers (batch
        # norm or spectral norm in training mode); the default source (SmoothHess) warns by itself.
        probability = self.probability
        if needs_private_copy(probability):
            if self.source is not self._default_source:
                warn_if_training(probability, "SecondOrderAttack")
            probability = private_copy(probability)
        forward_func = probability.model if isinstance(probability, ClassProbability) else probability
        # A function hiding its model: this method's own forward passes refuse a layer that would update
        # its buffers (the source guards its own).
        if hides_models(forward_func):
            forward_func = guarded(forward_func, "SecondOrderAttack")
        if hides_models(probability):
            probability = guarded(probability, "SecondOrderAttack")
        if target is None:
            extra = _format_additional_forward_args(additional_forward_args) or ()
            with torch.no_grad():
                out = forward_func(*inps, *extra)
            if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != batch:
                raise ValueError(
                    "target: None needs forward_func to return scores (B, C) to take the predicted class"
                )
            target = out.argmax(dim=1)
        else:
            with torch.no_grad():
                selected_outputs(probability, inps, target, additional_forward_args)
        hess, grad = self.source.attribute(
            inputs,
            target=target,
            additional_forward_args=additional_forward_args,
            return_gradient=True,
            **source_kwargs,
        )
        g = _flat_gradient(grad, inps)
        if order == 1:
            step = _normalised_step(g, r)
        else:
            h = _flat_hessian(hess, inps)
            if top_k is not None and top_k + 1 < dim:
                step = _subspace_step(g, h, r, top_k)
            else:
                step = solve_trust_region(g, h, r)
        return _format_flat(x + step.to(x.dtype), inps, is_tuple)


def _normalised_step(g: Tensor, r: Tensor) -> Tensor:
    """The first-order step ``-r g / |g|`` (zero where ``g = 0``), exact in norm for any scale of ``g``.

    ``g`` is first divided by its largest entry (in float32 at least; no float64, which MPS lacks): the
    gradient of a confident classifier's probability can be so small (1e-25 in float32) that ``|g|``
    underflows to zero and the plain quotient would be a step of norm ``r |g| / tiny``, far outside the
    ball. The scaled entries lie in ``[-1, 1]``, their norm in ``[1, sqrt(d)]``.
    """
    wide = widened(g)
    size = wide.abs().amax(dim=1, keepdim=True)
    unit = torch.where(
        size > 0, wide / torch.where(size > 0, size, torch.ones_like(size)), torch.zeros_like(wide)
    )
    norm = unit.norm(dim=1, keepdim=True)
    unit = torch.where(norm > 0, unit / torch.where(norm > 0, norm, torch.ones_like(norm)), unit)
    return (-r.to(wide.dtype)[:, None] * unit).to(g.dtype)


def _subspace_step(g: Tensor, h: Tensor, r: Tensor, k: int) -> Tensor:
    """Trust-region step within span(g, top-k |eigen| vectors of h)."""
    hs = 0.5 * (h + h.transpose(1, 2)).to(torch.float64)
    lam, vec = torch.linalg.eigh(hs)
    idx = lam.abs().topk(k, dim=1).indices  # (B, k)
    top = torch.gather(vec, 2, idx[:, None, :].expand(-1, vec.shape[1], -1))
    basis, _ = torch.linalg.qr(torch.cat([g.to(torch.float64)[:, :, None], top], dim=2))  # (B, d, k+1)
    g_red = torch.einsum("bdk,bd->bk", basis, g.to(torch.float64))
    h_red = basis.transpose(1, 2) @ hs @ basis
    d_red = solve_trust_region(g_red, h_red, r.to(torch.float64))
    return torch.einsum("bdk,bk->bd", basis, d_red).to(g.dtype)
