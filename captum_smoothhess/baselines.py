"""The SoftPlus baseline: exact derivatives of a smooth surrogate of a ReLU network.

The SmoothHess paper compares against the "SoftPlus Hessian": replace every
ReLU of the network by ``SoftPlus(beta)(t) = log(1 + exp(beta t)) / beta``,
which tends to the ReLU as ``beta -> inf``, and take the exact Hessian of the
surrogate. :func:`softplus_surrogate` builds the surrogate (a copy; the
original model is untouched) and :func:`exact_hessian` /
:class:`ExactHessian` give exact gradients and Hessians of any twice
differentiable function by double backprop, in the same shapes as
:class:`~captum_smoothhess.SmoothHess`, so either can feed the metrics and the
attacks. Unlike SmoothHess, the smoothing scale ``beta`` acts on each neuron's
pre-activation, not on the input, so it has no direct meaning in input space.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Callable, List, Literal, Optional, Tuple, Union, overload

import torch
from captum.attr import GradientAttribution
from torch import Tensor, nn

from ._captum import TargetType, log_usage
from ._evaluators import autograd_allowed, selected_outputs
from ._layout import HessianType, TensorOrTuple, _flatten, _format_flat, _split_hessian, _unflatten
from ._model import private_if_training
from ._validation import _check_inputs, _check_number, _check_positive_int, _tupled

__all__ = ["ExactHessian", "exact_hessian", "softplus_surrogate"]


def softplus_surrogate(model: nn.Module, beta: float, threshold: float = 20.0) -> nn.Module:
    """A copy of ``model`` with every ``nn.ReLU`` module replaced by ``nn.Softplus(beta)``.

    The copy is a ``copy.deepcopy`` (same parameters, buffers, ``training``
    flag), so the original model is never modified. Only ReLUs that are
    *modules* are replaced: functional calls such as ``torch.relu`` or
    ``F.relu`` inside a ``forward`` method are not seen and stay ReLUs; so do
    other activations (``LeakyReLU``, ``GELU``...). A warning is issued when
    the model contains no ``nn.ReLU`` module at all.

    Args:
        model: The ReLU network.
        beta: Sharpness ``beta`` > 0 of ``SoftPlus(t) = log(1 + exp(beta t)) / beta``;
            larger is closer to the ReLU.
        threshold: ``nn.Softplus``'s switch to the identity for
            ``beta t > threshold`` (numerical stability). Default: 20.

    Returns:
        The surrogate module.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``beta`` or ``threshold`` is not positive and finite.

    Examples:
        >>> import torch
        >>> from captum_smoothhess.baselines import softplus_surrogate
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        >>> smooth = softplus_surrogate(net, beta=10.0)
        >>> smooth[1]
        Softplus(beta=10.0, threshold=20.0)
        >>> net[1]
        ReLU()
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    b = _check_number(beta, "beta", allow_zero=False)
    t = _check_number(threshold, "threshold", allow_zero=False)
    if isinstance(model, nn.ReLU):
        return nn.Softplus(beta=b, threshold=t)
    surrogate = copy.deepcopy(model)
    replaced = 0
    # Every slot that holds a ReLU, also where one ReLU instance sits in several
    # (``modules()`` and ``named_children()`` list a shared module only once).
    for module in list(surrogate.modules()):
        for name, child in list(module._modules.items()):
            if isinstance(child, nn.ReLU):
                setattr(module, name, nn.Softplus(beta=b, threshold=t))
                replaced += 1
    if replaced == 0:
        warnings.warn(
            "model: no nn.ReLU module found, so the surrogate computes the same function "
            "(functional relu calls inside forward are not replaced)",
            UserWarning,
            stacklevel=2,
        )
    return surrogate


@overload
def exact_hessian(
    forward_func: Callable[..., Any],
    inputs: Union[Tensor, Tuple[Tensor, ...]],
    target: TargetType = None,
    additional_forward_args: Any = None,
    return_gradient: Literal[False] = False,
    chunk_size: Optional[int] = None,
) -> HessianType: ...


@overload
def exact_hessian(
    forward_func: Callable[..., Any],
    inputs: Union[Tensor, Tuple[Tensor, ...]],
    target: TargetType = None,
    additional_forward_args: Any = None,
    *,
    return_gradient: Literal[True],
    chunk_size: Optional[int] = None,
) -> Tuple[HessianType, TensorOrTuple]: ...


@overload
def exact_hessian(
    forward_func: Callable[..., Any],
    inputs: Union[Tensor, Tuple[Tensor, ...]],
    target: TargetType = None,
    additional_forward_args: Any = None,
    return_gradient: bool = False,
    chunk_size: Optional[int] = None,
) -> Union[HessianType, Tuple[HessianType, TensorOrTuple]]: ...


def exact_hessian(
    forward_func: Callable[..., Any],
    inputs: Union[Tensor, Tuple[Tensor, ...]],
    target: TargetType = None,
    additional_forward_args: Any = None,
    return_gradient: bool = False,
    chunk_size: Optional[int] = None,
) -> Union[HessianType, Tuple[HessianType, TensorOrTuple]]:
    """Exact input Hessian (and gradient) of the selected output, by double backprop.

    One forward pass and a gradient with its graph kept; then one
    Hessian-vector product per feature, batched (``is_grads_batched``) and
    applied to all examples at once. This assumes, as Captum does, that examples do not interact in
    ``forward_func`` (no batch statistics); then the Hessian of the batch sum
    is block diagonal and each product gives one row of every example's
    Hessian. For a ReLU network the result is zero almost everywhere; apply it
    to a smooth surrogate (:func:`softplus_surrogate`) for the paper's
    "SoftPlus Hessian" baseline.

    A model in training mode with batch-norm layers breaks that assumption: it
    gets a warning (the result mixes the examples), and the derivatives are
    those of the function it computes in training mode (normalising with the
    statistics of ``inputs``), taken on a private copy, so the model's buffers
    are left as found. Dropout in training mode draws one mask (one forward
    pass), so the gradient and the Hessian are those of the same function.
    Calls from several threads at once do not interfere (plain autograd, no
    process-wide forward-mode state).

    Args:
        forward_func: A twice differentiable model or function.
        inputs: A tensor ``(B, *S)`` or a tuple of tensors ``(B, *S_i)``.
        target: Captum target selecting one scalar output per example.
        additional_forward_args: Extra arguments for ``forward_func``.
        return_gradient: Also return the gradient, shaped like ``inputs``.
        chunk_size: Hessian-vector products evaluated together in one
            batched backward pass; ``None`` evaluates all ``d`` at once. Lower
            it to save memory for large inputs.

    Returns:
        The Hessian in SmoothHess's layout: ``(B, *S, *S)`` for a tensor input,
        the nested tuple of blocks ``(B, *S_i, *S_j)`` for a tuple input; with
        ``return_gradient=True`` the pair ``(hessian, gradient)``.

    Raises:
        ValueError: NaN/Inf inputs, a ``target`` that does not select one output
            per example, a non-positive ``chunk_size``, or a NaN/Inf output,
            gradient or Hessian of ``forward_func`` at ``inputs``; a
            training-mode norm layer that a function hides from the private
            copy (as for SmoothHess).

    Examples:
        >>> import torch
        >>> from captum_smoothhess.baselines import exact_hessian
        >>> f = lambda x: (x[:, 0] * x[:, 1]) ** 2
        >>> hess, grad = exact_hessian(f, torch.tensor([[1.0, 2.0]]), return_gradient=True)
        >>> hess
        tensor([[[8., 8.],
                 [8., 2.]]])
        >>> grad
        tensor([[8., 4.]])
    """
    return _exact_hessian(
        forward_func,
        inputs,
        target,
        additional_forward_args,
        return_gradient,
        chunk_size,
        method="exact_hessian",
    )


def _exact_hessian(
    forward_func: Callable[..., Any],
    inputs: Union[Tensor, Tuple[Tensor, ...]],
    target: TargetType,
    additional_forward_args: Any,
    return_gradient: bool,
    chunk_size: Optional[int],
    method: str,
) -> Union[HessianType, Tuple[HessianType, TensorOrTuple]]:
    """:func:`exact_hessian`, with the method's name for a training-mode warning."""
    inps, is_tuple = _tupled(inputs)
    _check_inputs(inps)
    if chunk_size is not None:
        chunk_size = _check_positive_int(chunk_size, "chunk_size")
    forward_func = private_if_training(forward_func, method)
    with autograd_allowed():
        x = _flatten(inps).detach().clone()
        batch, dim = x.shape
        with torch.enable_grad():
            x.requires_grad_(True)
            out = selected_outputs(forward_func, _unflatten(x, inps), target, additional_forward_args)
            if not bool(torch.isfinite(out.detach()).all()):
                raise ValueError("forward_func: the selected output is NaN or Inf at these inputs")
            grad: Optional[Tensor] = None
            if out.requires_grad:  # (an output that does not depend on the inputs has no graph)
                (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True, allow_unused=True)
        if grad is None or not grad.requires_grad:  # at most linear in the inputs: H = 0
            hess = x.new_zeros(batch, dim, dim)
        else:
            hess = _hessian_rows(grad, x, chunk_size or dim).permute(1, 0, 2)
        gradient = torch.zeros_like(x) if grad is None else grad.detach()
    if not bool(torch.isfinite(hess).all() & torch.isfinite(gradient).all()):
        raise ValueError(
            "forward_func: its gradient or Hessian is NaN or Inf at these inputs (not twice "
            "differentiable there, or it overflows)"
        )
    hess = 0.5 * (hess + hess.transpose(1, 2))
    result = _split_hessian(hess, inps, is_tuple)
    if not return_gradient:
        return result
    return result, _format_flat(gradient, inps, is_tuple)


def _hessian_rows(grad: Tensor, x: Tensor, chunk: int) -> Tensor:
    """Rows ``H[:, j]`` of every example's Hessian, ``(d, B, d)``, by double backprop of ``grad``.

    The gradient of the batch sum with respect to ``x`` ``(B, d)``: the product of its
    graph with the ``j``-th unit vector in every example gives row ``j`` of each
    example's Hessian (examples do not interact). ``chunk`` products share one
    backward pass with batched gradient outputs; where an operation has no batching
    rule, one product per pass. Plain autograd (no forward-mode levels, which are
    process-wide) keeps concurrent calls from several threads apart, and a model
    with dropout in training mode gives the derivatives of its one forward pass.
    """
    batch, dim = x.shape
    eye = torch.eye(dim, device=x.device, dtype=x.dtype)
    rows: List[Tensor] = []
    for start in range(0, dim, chunk):
        part = eye[start : start + chunk, None, :].expand(-1, batch, dim)
        with torch.enable_grad():
            try:
                (hv,) = torch.autograd.grad(
                    grad, x, grad_outputs=part, retain_graph=True, is_grads_batched=True, allow_unused=True
                )
            except RuntimeError as err:  # an operation without a batching rule: one product at a time
                if isinstance(err, torch.OutOfMemoryError):
                    raise  # (lower chunk_size)
                hv = torch.stack([_one_row(grad, x, v) for v in part])
        rows.append(torch.zeros_like(part) if hv is None else hv.detach())
    return rows[0] if len(rows) == 1 else torch.cat(rows)


def _one_row(grad: Tensor, x: Tensor, v: Tensor) -> Tensor:
    (hv,) = torch.autograd.grad(grad, x, grad_outputs=v, retain_graph=True, allow_unused=True)
    return torch.zeros_like(v) if hv is None else hv


class ExactHessian(GradientAttribution):
    """Exact Hessian of a smooth model, with the interface of :class:`~captum_smoothhess.SmoothHess`.

    A drop-in second-order source wherever SmoothHess is accepted (the
    perturbation MSE, :class:`~captum_smoothhess.robust.SecondOrderAttack`),
    e.g. on a :func:`softplus_surrogate` of a ReLU network.

    Args:
        forward_func: A twice differentiable model or function.

    Examples:
        >>> import torch
        >>> from captum_smoothhess.baselines import ExactHessian, softplus_surrogate
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> explainer = ExactHessian(softplus_surrogate(net, beta=5.0))
        >>> explainer.attribute(torch.randn(4, 3), target=1).shape
        torch.Size([4, 3, 3])
    """

    def __init__(self, forward_func: Callable[..., Any]) -> None:
        super().__init__(forward_func)

    @overload
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_gradient: Literal[False] = False,
        chunk_size: Optional[int] = None,
    ) -> HessianType: ...

    @overload
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        return_gradient: Literal[True],
        chunk_size: Optional[int] = None,
    ) -> Tuple[HessianType, TensorOrTuple]: ...

    @overload
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_gradient: bool = False,
        chunk_size: Optional[int] = None,
    ) -> Union[HessianType, Tuple[HessianType, TensorOrTuple]]: ...

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_gradient: bool = False,
        chunk_size: Optional[int] = None,
    ) -> Union[HessianType, Tuple[HessianType, TensorOrTuple]]:
        """Exact Hessian (and gradient) at ``inputs``; see :func:`exact_hessian`.

        Args:
            inputs: A tensor ``(B, *S)`` or a tuple of tensors ``(B, *S_i)``.
            target: Captum target selecting one scalar output per example.
            additional_forward_args: Extra arguments for ``forward_func``.
            return_gradient: Also return the gradient, shaped like ``inputs``.
            chunk_size: Hessian-vector products evaluated together.

        Returns:
            The Hessian in SmoothHess's layout, or ``(hessian, gradient)``.

        Raises:
            ValueError: As :func:`exact_hessian`.

        Examples:
            >>> import torch
            >>> from captum_smoothhess.baselines import ExactHessian
            >>> ExactHessian(lambda x: (x ** 3).sum(1)).attribute(torch.ones(1, 2))
            tensor([[[6., 0.],
                     [0., 6.]]])
        """
        return _exact_hessian(
            self.forward_func,
            inputs,
            target,
            additional_forward_args,
            return_gradient,
            chunk_size,
            method="ExactHessian",
        )
