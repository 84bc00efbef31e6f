"""Perturbation mean-squared error: how well a Taylor model predicts the network.

The SmoothHess paper measures the local fidelity of a (gradient, Hessian) pair
by the error of the second-order Taylor model it defines, averaged over random
perturbations of the input,

    PMSE(x) = mean_j [ f(x + delta_j) - f(x) - g^T delta_j - 1/2 delta_j^T H delta_j ]^2 ,

with ``delta_j = rho_j v_j``, ``v_j`` uniform on the unit sphere of all features
of one example and ``rho_j`` uniform on ``[0, r]`` (the paper's choice) or
distributed so that ``delta_j`` is uniform in the ball of radius ``r``. Without
a Hessian the first-order error is measured. ``f(x)`` is the network's own
value, not a smoothed one.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional, Tuple, Union, overload

import torch
from torch import Tensor

from ._captum import (
    ExpansionTypes,
    TargetType,
    _expand_additional_forward_args,
    _expand_target,
    _format_additional_forward_args,
)
from ._dtypes import refuse_half_overflow, working_dtype
from ._errors import AttributionMoments
from ._evaluators import selected_outputs
from ._layout import GradientLike, HessianLike, _flat_gradient, _flat_hessian, _flatten, _unflatten
from ._model import private_if_training
from ._sampling import NoiseStream, chunks, default_chunk, seed_from
from ._validation import (
    _check_flags,
    _check_generator,
    _check_inputs,
    _check_number,
    _check_positive_int,
    _tupled,
)
from .kernels import Gaussian

__all__ = ["perturbation_mse"]


_RADIUS_DISTRIBUTIONS = ("uniform", "ball")


@overload
def perturbation_mse(
    forward_func: Callable[..., Any],
    inputs: Union[Tensor, Tuple[Tensor, ...]],
    gradient: GradientLike,
    hessian: Optional[HessianLike] = None,
    radius: float = 1.0,
    n_perturbations: int = 1000,
    target: TargetType = None,
    additional_forward_args: Any = None,
    radius_distribution: str = "uniform",
    n_perturbations_batch_size: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    return_error: Literal[False] = False,
) -> Tensor: ...


@overload
def perturbation_mse(
    forward_func: Callable[..., Any],
    inputs: Union[Tensor, Tuple[Tensor, ...]],
    gradient: GradientLike,
    hessian: Optional[HessianLike] = None,
    radius: float = 1.0,
    n_perturbations: int = 1000,
    target: TargetType = None,
    additional_forward_args: Any = None,
    radius_distribution: str = "uniform",
    n_perturbations_batch_size: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    *,
    return_error: Literal[True],
) -> Tuple[Tensor, Tensor]: ...


@overload
def perturbation_mse(
    forward_func: Callable[..., Any],
    inputs: Union[Tensor, Tuple[Tensor, ...]],
    gradient: GradientLike,
    hessian: Optional[HessianLike] = None,
    radius: float = 1.0,
    n_perturbations: int = 1000,
    target: TargetType = None,
    additional_forward_args: Any = None,
    radius_distribution: str = "uniform",
    n_perturbations_batch_size: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    return_error: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]: ...


def perturbation_mse(
    forward_func: Callable[..., Any],
    inputs: Union[Tensor, Tuple[Tensor, ...]],
    gradient: GradientLike,
    hessian: Optional[HessianLike] = None,
    radius: float = 1.0,
    n_perturbations: int = 1000,
    target: TargetType = None,
    additional_forward_args: Any = None,
    radius_distribution: str = "uniform",
    n_perturbations_batch_size: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    return_error: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    r"""Mean squared error of the Taylor model ``(gradient, hessian)`` around ``inputs``.

    For each example, draws ``n_perturbations`` perturbations
    ``delta = rho v`` (``v`` uniform on the unit sphere over all features of the
    example, across the tensors of a tuple input) and returns

    ``mean_j [f(x + delta_j) - f(x) - g^T delta_j - 1/2 delta_j^T H delta_j]^2``,

    ``f`` the output of ``forward_func`` selected by ``target``. Perturbed
    points are evaluated in batched forward passes, chunked so that memory
    does not grow with ``n_perturbations``. A model in training mode with
    batch-norm layers gets a warning (each batch of points is normalised with
    its own statistics) and is evaluated on a private copy, so its running
    statistics are left as found.

    Args:
        forward_func: The model or function, as given to the attribution method.
        inputs: A tensor ``(B, *S)`` or a tuple of tensors ``(B, *S_i)``.
        gradient: The gradient at ``inputs``, shaped like ``inputs`` (e.g. the
            smoothed gradient SmoothHess returns with ``return_gradient=True``).
        hessian: The Hessian at ``inputs`` in SmoothHess's layout: a tensor
            ``(B, *S, *S)``, or for tuple inputs the nested tuple of blocks
            ``(B, *S_i, *S_j)``. ``None`` measures the first-order model.
        radius: Largest perturbation norm ``r`` > 0. Default: 1.0.
        n_perturbations: Perturbations per example (at least 1). Default: 1000.
        target: Captum target selecting one scalar output per example.
        additional_forward_args: Extra arguments for ``forward_func``. As in
            Captum, every tensor of one dimension or more is repeated along
            its first dimension (the batch), once per perturbation.
        radius_distribution: ``"uniform"`` for ``rho ~ U[0, r]`` (the
            SmoothHess paper's choice) or ``"ball"`` for ``delta`` uniform in
            the ball of radius ``r`` (``rho = r U^(1/d)``).
        n_perturbations_batch_size: Perturbations evaluated per forward pass
            (per example); ``None`` picks as many as fit a fixed budget. The
            result does not depend on it.
        generator: ``torch.Generator`` for the perturbations; the same seed
            gives the same perturbations, so two Taylor models compared with
            the same seed are evaluated on the same points.
        return_error: Also return the standard error of each example's
            perturbation MSE, from the spread of its squared errors (the
            perturbations are independent). Two Taylor models compared on the
            same points (the same seed) differ by less noise than their
            standard errors suggest. Needs ``n_perturbations >= 2``.
            Default: False.

    Returns:
        Tensor ``(B,)``: the perturbation MSE of each example, in the inputs'
        dtype. For float16/bfloat16 inputs the model runs in that dtype but
        the perturbations, the Taylor model and the average are computed in
        float32 (on the points as rounded to the inputs' dtype). With
        ``return_error=True``, ``(mse, stderr)``, both ``(B,)``.

    Raises:
        ValueError: ``radius`` not positive and finite, ``n_perturbations`` < 1
            (< 2 with ``return_error``),
            an unknown ``radius_distribution``, a ``gradient`` or ``hessian``
            that does not fit ``inputs``, NaN/Inf values, a ``target`` that
            does not select one output per example, or a training-mode norm
            layer that a function hides from the private copy (as for
            SmoothHess).
        TypeError: Arguments of the wrong type.

    Examples:
        >>> import torch
        >>> from captum_smoothhess.metrics import perturbation_mse
        >>> A = torch.tensor([[2.0, 1.0], [1.0, -1.0]])
        >>> f = lambda x: 0.5 * ((x @ A) * x).sum(1)
        >>> x = torch.zeros(1, 2)
        >>> grad, hess = torch.zeros(1, 2), A[None]
        >>> float(perturbation_mse(f, x, grad, hess, radius=0.5, n_perturbations=100)) < 1e-12
        True
        >>> perturbation_mse(f, x, grad, radius=0.5, n_perturbations=100,
        ...                  generator=torch.Generator().manual_seed(0)).shape
        torch.Size([1])
        >>> mse, stderr = perturbation_mse(f, x, grad, radius=0.5, n_perturbations=100,
        ...                                return_error=True)
        >>> bool(stderr < mse)
        True
    """
    inps, _ = _tupled(inputs)
    _check_inputs(inps)
    r = _check_number(radius, "radius", allow_zero=False)
    _check_flags(return_error=return_error)
    n = _check_positive_int(n_perturbations, "n_perturbations", minimum=2 if return_error else 1)
    if radius_distribution not in _RADIUS_DISTRIBUTIONS:
        raise ValueError(
            f"radius_distribution: expected one of {_RADIUS_DISTRIBUTIONS}, got {radius_distribution!r}"
        )
    _check_generator(generator)
    x_in = _flatten(inps)
    batch, dim = x_in.shape
    # Half-precision inputs: the forward passes run in their dtype, but the perturbations, the Taylor
    # model and the sum of squared errors are computed in float32 (a float16 sum of 1000 squared
    # errors overflows at 65504 and the Taylor terms would lose most of their digits).
    work = working_dtype(x_in.dtype)
    x = x_in.to(work)
    g = _flat_gradient(gradient, inps).to(x.device, work)
    h = None if hessian is None else _flat_hessian(hessian, inps).to(x.device, work)

    afa = _format_additional_forward_args(additional_forward_args)
    # Batch norm in training mode: a warning, and the forward passes run on a
    # private copy so that the running statistics are left as found.
    forward_func = private_if_training(forward_func, "perturbation_mse")
    with torch.no_grad():
        f0 = selected_outputs(forward_func, inps, target, afa).to(x.dtype)
        if not bool(torch.isfinite(f0).all()):
            raise ValueError("forward_func: produced NaN or Inf at inputs; the perturbation MSE is undefined")
        if n_perturbations_batch_size is None:
            chunk = default_chunk(n, batch, dim, device=x.device)
        else:
            chunk = _check_positive_int(n_perturbations_batch_size, "n_perturbations_batch_size")
        # One Gaussian vector of d + 1 coordinates per perturbation: the first d
        # give the direction, the last (through the normal CDF) the radius.
        # Drawing from the shared stream makes the points independent of `chunk`.
        stream = NoiseStream(Gaussian(), batch, dim + 1, seed_from(generator), x.device, x.dtype)
        total = torch.zeros(batch, device=x.device, dtype=x.dtype)
        moments = AttributionMoments(1, n) if return_error else None
        expanded: dict[int, Tuple[TargetType, Any]] = {}
        for start, stop in chunks(n, chunk):
            c = stop - start
            z = stream.take(start, stop)
            u = torch.special.ndtr(z[..., -1])
            rho = r * (u if radius_distribution == "uniform" else u.pow(1.0 / dim))
            v = z[..., :dim]
            v = v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
            delta = rho[..., None] * v  # (B, c, d)
            if c not in expanded:
                kind = ExpansionTypes.repeat_interleave
                expanded[c] = (_expand_target(target, c, kind), _expand_additional_forward_args(afa, c, kind))
            tgt, args = expanded[c]
            flat_points = (x[:, None, :] + delta).to(x_in.dtype)
            if work != x_in.dtype:  # the step the model actually sees, after rounding to the inputs' dtype
                delta = flat_points.to(work) - x[:, None, :]
            points = _unflatten(flat_points.reshape(batch * c, dim), inps)
            f = selected_outputs(forward_func, points, tgt, args).to(x.dtype).reshape(batch, c)
            if not bool(torch.isfinite(f).all()):
                raise ValueError(
                    "forward_func: produced NaN or Inf at perturbed points; the perturbation MSE is undefined"
                )
            model = f0[:, None] + torch.einsum("bcd,bd->bc", delta, g)
            if h is not None:
                model = model + 0.5 * torch.einsum("bcd,bde,bce->bc", delta, h, delta)
            squared = (f - model).pow(2)
            total += squared.sum(1)
            if moments is not None:
                moments.add(squared)
    out = total / n
    if not bool(torch.isfinite(out).all()):
        raise ValueError(
            "forward_func: the squared errors of the Taylor model overflow "
            f"{work} (the model and the Taylor terms are too far apart); the perturbation MSE is undefined"
        )
    result = out.to(x_in.dtype)
    if not bool(torch.isfinite(result).all()):
        raise ValueError(
            f"inputs: the perturbation MSE ({float(out.max()):.4g}) overflows the inputs' dtype "
            f"{x_in.dtype}; pass float32 inputs"
        )
    if moments is None:
        return result
    return result, refuse_half_overflow(
        moments.variance("smoothgrad").sqrt().to(x_in.dtype), "standard error"
    )
