"""Evaluators: gradients of one scalar per example at many perturbed copies of a batch.

An evaluator is what the estimator core differentiates: called with points
``(B, r, d)`` in the flat layout, it returns the gradients ``(B, r, d)`` of
the selected scalar at those points, with one forward and one backward pass.
:class:`GradientEvaluator` differentiates the model's output that Captum's
``target`` selects, with respect to the inputs (SmoothHess);
:class:`LossGradientEvaluator` a per-example loss of the outputs (CASO's
SmoothHess curvature). Targets and additional forward arguments are expanded
per copy the way Captum does (``repeat_interleave``: the copies of one
example are contiguous).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Dict, Iterator, Tuple

import torch
from torch import Tensor

from ._captum import (
    ExpansionTypes,
    TargetType,
    _expand_additional_forward_args,
    _expand_target,
    _format_additional_forward_args,
    _run_forward,
    _select_targets,
)
from ._layout import _unflatten
from ._validation import _refuse_meta

LossFunc = Callable[[Tensor, Tensor], Tensor]


@contextlib.contextmanager
def autograd_allowed() -> Iterator[None]:
    """Leave ``torch.inference_mode()`` for the block, if it is on: every method needs autograd.

    Tensors made inside the block are ordinary tensors; the user's inference
    tensors are only read (flattened, copied into perturbed points).
    """
    if not torch.is_inference_mode_enabled():
        yield
        return
    with torch.inference_mode(False):
        yield


def _scalar_per_row(out: Tensor, rows: int, argument: str = "target") -> Tensor:
    if out.dim() == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if out.dim() != 1 or out.shape[0] != rows:
        raise ValueError(
            f"{argument}: forward_func must give one scalar per example after target "
            f"selection, got an output of shape {tuple(out.shape)} for {rows} example(s); "
            "pass a `target` that selects one output per example"
        )
    return out


def selected_outputs(
    forward_func: Callable[..., Any],
    inputs: Tuple[Tensor, ...],
    target: TargetType = None,
    additional_forward_args: Any = None,
) -> Tensor:
    """The scalar output that ``target`` selects, one per example: shape ``(B,)``.

    Raises a ``ValueError`` naming ``target`` when the target does not exist
    in the output, or when the output is not one scalar per example.
    """
    afa = _format_additional_forward_args(additional_forward_args)
    return select_output(_run_forward(forward_func, inputs, None, afa), target, inputs[0].shape[0])


def select_output(out: Any, target: TargetType, rows: int) -> Tensor:
    """The scalar that ``target`` selects from a model output ``out``, one per row: ``(rows,)``."""
    if not isinstance(out, Tensor):
        raise TypeError(f"forward_func: expected a Tensor output, got {type(out).__name__}")
    _refuse_meta(target, "target")
    try:
        sel = _select_targets(out, target)
    except (IndexError, AssertionError, RuntimeError, TypeError) as err:
        raise ValueError(
            f"target: {target!r} does not select an output of forward_func, whose output "
            f"has shape {tuple(out.shape)} ({err})"
        ) from err
    return _scalar_per_row(sel, rows)


class Evaluator:
    """Gradients of one scalar per example at perturbed copies of a batch (the core's seam).

    Subclasses say what the scalar is (:meth:`_scalars`); this class does the
    rest: the flat points become leaf tensors in the inputs' layout, one
    forward and one backward pass give their gradients. (The core refuses a
    NaN or Inf gradient, from the sum of all of them: :func:`check_gradient_sum`.)

    Args:
        forward_func: The model or function, as given to the attribution method.
        inputs: The original inputs (their shapes define the flat layout).
        additional_forward_args: Captum additional forward args for the batch.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        inputs: Tuple[Tensor, ...],
        additional_forward_args: Any,
    ) -> None:
        self.forward_func = forward_func
        self.inputs = inputs
        self.afa = _format_additional_forward_args(additional_forward_args)
        self._expanded: Dict[int, Any] = {}

    def _expanded_afa(self, copies: int) -> Any:
        if copies not in self._expanded:
            kind = ExpansionTypes.repeat_interleave
            self._expanded[copies] = _expand_additional_forward_args(self.afa, copies, kind)
        return self._expanded[copies]

    def _scalars(self, parts: Tuple[Tensor, ...], copies: int) -> Tensor:
        """The scalar of every row of ``parts`` (``B * copies`` rows), shape ``(B * copies,)``."""
        raise NotImplementedError

    def subset(self, index: Tensor) -> Evaluator:
        """This evaluator for the examples ``index`` of the batch only (their rows of every argument).

        Used when examples leave the batch (``tolerance``): the inputs, the
        per-example targets and the batch-first additional forward arguments
        keep the rows ``index``; everything else is shared.
        """
        out = copy.copy(self)
        rows = index.tolist()
        batch = self.inputs[0].shape[0]
        out.inputs = tuple(inp[index] for inp in self.inputs)
        if self.afa is not None:
            out.afa = tuple(
                a[index.to(a.device)] if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == batch else a
                for a in self.afa
            )
        out._expanded = {}
        out._subset_fields(index, rows, batch)
        return out

    def _subset_fields(self, index: Tensor, rows: list, batch: int) -> None:
        """Subclasses subset their own per-example fields (e.g. the target)."""

    def __call__(self, points: Tensor) -> Tensor:
        """Gradients at ``points`` of shape ``(B, r, d)``; returns ``(B, r, d)``."""
        batch, copies, dim = points.shape
        x = points.detach().reshape(batch * copies, dim).requires_grad_(True)
        with torch.enable_grad():
            out = self._scalars(_unflatten(x, self.inputs), copies)
            if not out.requires_grad:
                raise ValueError(
                    f"forward_func: its output (dtype {out.dtype}) does not depend on the inputs through "
                    "autograd, so it has no gradient to smooth (a detached, integer or constant output?)"
                )
            (grad,) = torch.autograd.grad(out.sum(), x, allow_unused=True)
        if grad is None:
            grad = torch.zeros_like(x)
        return grad.reshape(batch, copies, dim)


def check_gradient_sum(grad_sum: Tensor) -> None:
    """Refuse NaN or Inf gradients: any of them makes the sum of all gradients non-finite."""
    if not bool(torch.isfinite(grad_sum).all()):
        raise ValueError(
            "forward_func: its gradient is NaN or Inf at perturbed inputs (the function is not "
            "defined or overflows within the kernel's reach of the inputs; lower `stdevs`, or "
            "check the function's domain and dtype)"
        )


def _subset_rows(value: Any, index: Tensor, rows: list, batch: int) -> Any:
    """Rows ``index`` of a per-example value (a batch-first tensor or a list of ``batch``), else as is."""
    if isinstance(value, Tensor):
        return value[index.to(value.device)] if value.dim() > 0 and value.shape[0] == batch else value
    if isinstance(value, list) and len(value) == batch:
        return [value[i] for i in rows]
    return value


class GradientEvaluator(Evaluator):
    """The model's output that Captum's ``target`` selects, differentiated by the inputs.

    Args:
        forward_func: The model or function, as given to the attribution method.
        inputs: The original inputs (their shapes define the flat layout).
        target: Captum target for the original batch.
        additional_forward_args: Captum additional forward args for the batch.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        inputs: Tuple[Tensor, ...],
        target: TargetType,
        additional_forward_args: Any,
    ) -> None:
        super().__init__(forward_func, inputs, additional_forward_args)
        self.target = target
        self._targets: Dict[int, TargetType] = {}

    def _subset_fields(self, index: Tensor, rows: list, batch: int) -> None:
        # A tuple target is one multi-index for all examples; a list or tensor is per example.
        if not isinstance(self.target, tuple):
            self.target = _subset_rows(self.target, index, rows, batch)
        self._targets = {}

    def _scalars(self, parts: Tuple[Tensor, ...], copies: int) -> Tensor:
        if copies not in self._targets:
            self._targets[copies] = _expand_target(self.target, copies, ExpansionTypes.repeat_interleave)
        out = _run_forward(self.forward_func, parts, self._targets[copies], self._expanded_afa(copies))
        if not isinstance(out, Tensor):
            raise TypeError(f"forward_func: expected a Tensor output, got {type(out).__name__}")
        return _scalar_per_row(out, parts[0].shape[0])


class LossGradientEvaluator(Evaluator):
    """A per-example loss of the model's outputs, differentiated by the inputs.

    Args:
        forward_func: The model.
        loss_func: ``loss_func(outputs, target) -> (rows,)`` per-row losses.
        inputs: The original inputs (their shapes define the flat layout).
        target: A tensor with the batch first (class indices or any tensor
            ``loss_func`` takes), repeated per copy with the rows.
        additional_forward_args: Captum additional forward args for the batch.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        loss_func: LossFunc,
        inputs: Tuple[Tensor, ...],
        target: Tensor,
        additional_forward_args: Any,
    ) -> None:
        super().__init__(forward_func, inputs, additional_forward_args)
        self.loss_func = loss_func
        self.target = target

    def _subset_fields(self, index: Tensor, rows: list, batch: int) -> None:
        self.target = self.target[index.to(self.target.device)]

    def _scalars(self, parts: Tuple[Tensor, ...], copies: int) -> Tensor:
        out = _run_forward(self.forward_func, parts, None, self._expanded_afa(copies))
        losses = self.loss_func(out, self.target.repeat_interleave(copies, dim=0))
        return check_losses(losses, parts[0].shape[0])


def check_losses(losses: Any, rows: int) -> Tensor:
    """Per-row losses as a ``(rows,)`` tensor, or an error naming ``loss_func``."""
    if not isinstance(losses, Tensor):
        raise TypeError(f"loss_func: expected a Tensor of per-example losses, got {type(losses).__name__}")
    if losses.dim() == 2 and losses.shape[1] == 1:
        losses = losses[:, 0]
    if losses.shape != (rows,):
        raise ValueError(
            f"loss_func: must return one loss per example, shape ({rows},) (e.g. "
            f"reduction='none'), got shape {tuple(losses.shape)}"
        )
    return losses
