"""CASO and CAFO: second- and first-order sparse saliency (Singla et al., ICML 2019).

For a per-example loss ``l`` (by default the cross-entropy of the logits
against the target class) with input gradient ``g`` and input Hessian ``H`` at
``x``, CASO returns the perturbation that most increases the quadratic model
of the loss under an elastic-net penalty::

    delta* = argmax_d  g^T d + 1/2 d^T H d - lambda1 |d|_1 - (lambda2_eff / 2) |d|^2,

    lambda2_eff = lambda2 + max(0, lambda_max(H)),

which makes the problem strongly concave (modulus ``lambda2``), so the
maximiser exists and is unique. ``lambda_max`` comes from the Lanczos method on
Hessian-vector products (:func:`~captum_smoothhess.solvers.lanczos`); the
problem is solved by FISTA (accelerated proximal gradient with backtracking,
soft-thresholding prox, adaptive momentum restart) from ``d = 0`` until the
proximal-gradient residual falls below ``tol``. For a ReLU network the loss
Hessian has rank at most ``C`` (the model's outputs): one batched product of
``C + 3`` fixed random directions finds its range and ``H = Q T Q^T`` (one held-out
direction certifies it), which also gives ``lambda_max``, and FISTA takes its
products from that form without calling the model. Where the check fails (a
smooth network) Lanczos and the model's products take over.
Nothing of size ``d x d`` is formed. CAFO is the first-order problem
(``H = 0``), solved in closed form: ``soft(g, lambda1) / lambda2``.

Every example of the batch is solved at once: the loss of the batch is the sum
of the per-example losses, so one double-backward pass gives the
Hessian-vector products of all examples. This assumes that the model does not
mix examples (true in eval mode; not for ``BatchNorm`` in training mode, which
also updates its running statistics: call ``model.eval()`` first).
"""

from __future__ import annotations

import numbers
import time
import warnings
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple, Union, overload

import torch
import torch.nn.functional as F
from captum.attr import GradientAttribution
from torch import Tensor
from torch.overrides import TorchFunctionMode

from ._captum import (
    TargetType,
    _format_additional_forward_args,
    _run_forward,
    log_usage,
)
from ._dtypes import HALF
from ._evaluators import LossFunc, LossGradientEvaluator, autograd_allowed, check_losses
from ._layout import InputsT, _flatten, _format_flat, _unflatten
from ._model import batch_dependent_layers, private_if_training
from ._sampling import resolve_sampling, seed_from
from ._validation import (
    StdevsType,
    _check_generator,
    _check_inputs,
    _check_n_samples,
    _check_number,
    _check_positive_int,
    _format_stdevs,
    _refuse_meta,
    _tupled,
)
from .factors import _matvec
from .kernels import Gaussian, Kernel, get_kernel
from .solvers import DenseQuadratic, Quadratic, Solution, _soft, fista, lanczos, sparsity_solve

__all__ = ["CAFO", "CASO"]

Curvature = Literal["autograd", "smoothhess"]
_CURVATURES = ("autograd", "smoothhess")
# Bytes one batched Hessian-vector product call may hold (vectors x the forward's activations).
_BATCHED_HVP_BYTES = 1 << 30


def _default_loss(outputs: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of the logits ``(B, C)`` against class indices ``(B,)``, per example."""
    return F.cross_entropy(outputs, target, reduction="none")


def _format_target(target: TargetType, outputs: Tensor, default_loss: bool) -> Tensor:
    """The target as a tensor with the batch first; ``None`` -> the predicted class."""
    batch = outputs.shape[0]
    if default_loss and outputs.dim() != 2:
        raise ValueError(
            "forward_func: the default cross-entropy loss needs logits of shape (B, C), got "
            f"{tuple(outputs.shape)}; pass a loss_func for other outputs"
        )
    if target is None:
        if outputs.dim() < 2:
            raise ValueError("target: None means the predicted class, which needs outputs of shape (B, C)")
        return outputs.detach().argmax(dim=1)
    if isinstance(target, bool) or isinstance(target, tuple):
        raise ValueError(f"target: expected class indices (int, list or tensor), got {target!r}")
    if isinstance(target, numbers.Integral):
        t = torch.full((batch,), int(target), dtype=torch.long, device=outputs.device)
    elif isinstance(target, list):
        try:
            t = torch.as_tensor(target, device=outputs.device)
        except (TypeError, ValueError) as err:
            raise ValueError(f"target: cannot make a tensor from {target!r} ({err})") from err
    elif isinstance(target, Tensor):
        _refuse_meta(target, "target")
        t = target.detach().to(outputs.device)
    else:
        raise ValueError(f"target: expected an int, a list or a tensor, got {type(target).__name__}")
    if t.dim() == 0 or (t.dim() == 1 and t.shape[0] == 1 and batch != 1):
        t = t.reshape(1).expand(batch)
    if t.shape[0] != batch:
        raise ValueError(f"target: expected one target per example ({batch}), got shape {tuple(t.shape)}")
    if default_loss:
        if t.dim() != 1 or t.is_floating_point() or t.dtype == torch.bool:
            raise ValueError(f"target: expected integer class indices of shape ({batch},)")
        n_classes = outputs.shape[1]
        if bool(((t < 0) | (t >= n_classes)).any()):
            raise ValueError(
                f"target: class indices must lie in [0, {n_classes}) for an output with "
                f"{n_classes} classes, got {t.tolist()}"
            )
        t = t.long()
    return t


def _check_lambdas_fit(lam1: float, lam2: float, dtype: torch.dtype) -> None:
    """Both weights must be finite in the inputs' dtype, and ``lambda2`` stay positive there
    (a tiny value rounds to the refused 0)."""
    largest = torch.finfo(dtype).max
    for name, value in (("lambda1", lam1), ("lambda2", lam2)):
        if value > largest:
            raise ValueError(f"{name}: {value} overflows {dtype} (largest value {largest:g})")
    if float(torch.tensor(lam2, dtype=dtype)) == 0:
        raise ValueError(f"lambda2: {lam2} rounds to 0 in {dtype}, and lambda2 must be > 0")


def _check_lambdas(
    lambda1: Optional[float], lambda2: float, sparsity: Optional[float]
) -> Tuple[float, float]:
    if isinstance(lambda2, numbers.Real) and not isinstance(lambda2, bool) and lambda2 == 0:
        raise ValueError(
            "lambda2: must be > 0; with lambda2 = 0 the problem made concave with "
            "lambda2 + lambda_max(H) may have no bounded maximiser"
        )
    lam2 = _check_number(lambda2, "lambda2", allow_zero=False)
    if sparsity is not None:
        if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
            raise TypeError(f"sparsity: expected a number in [0, 1), got {sparsity!r}")
        if not 0 <= float(sparsity) < 1:
            raise ValueError(f"sparsity: must lie in [0, 1), got {sparsity}")
        if lambda1 is not None:
            raise ValueError("lambda1: give either lambda1 or sparsity (which chooses lambda1), not both")
        return 0.0, lam2
    return (0.0 if lambda1 is None else _check_number(lambda1, "lambda1", allow_zero=True)), lam2


def _rows(args: Any, index: Tensor, batch: int) -> Any:
    """The rows ``index`` of every tensor in ``args`` whose first dimension is the batch."""
    if args is None:
        return None
    return tuple(
        a.index_select(0, index) if isinstance(a, Tensor) and a.dim() and a.shape[0] == batch else a
        for a in args
    )


class _ActivationBytes(TorchFunctionMode):
    """Counts the bytes of the new tensors in the graph that a forward pass under it creates.

    A vmapped Hessian-vector product holds intermediates of about these sizes per vector. A
    function mode only watches (it stacks with the user's modes and leaves saved-tensor hooks,
    e.g. ``torch.autograd.graph.save_on_cpu``, to the user).
    """

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: Tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, Tensor) and t.requires_grad and t._base is None:  # views share storage
                self.bytes += t.numel() * t.element_size()
        return out


class _AutogradQuadratic(Quadratic):
    """Exact gradient of the loss and its Hessian-vector products by double backprop.

    The graph of the first backward pass is kept, so each product is one more
    backward pass; :meth:`subset` builds the graph of fewer examples, so that
    finished examples stop costing anything. Where batch norm in training mode
    couples the examples, each example keeps the Hessian block of its own
    inputs (one product per example) and the graph is never rebuilt on fewer
    rows (that would change the batch statistics).
    """

    def __init__(self, model: _LossModel, x: Tensor, target: Tensor, afa: Any) -> None:
        self.model, self.target, self.afa = model, target, afa
        start = time.perf_counter()
        self.x = x.detach().clone().requires_grad_(True)
        activations = _ActivationBytes()
        with torch.enable_grad():
            with activations:
                losses = model.losses(self.x, target, afa)
            (grad,) = torch.autograd.grad(losses.sum(), self.x, create_graph=True, allow_unused=True)
        self._activation_bytes = activations.bytes
        g = torch.zeros_like(self.x) if grad is None else grad
        if not bool(torch.isfinite(g).all()):
            raise ValueError("forward_func: the gradient of the loss is NaN or Inf at these inputs")
        super().__init__(g.detach())
        # The loss is (at most) linear in the inputs where the gradient has no graph: H = 0.
        self._graph = g if g.requires_grad else None
        self._build_seconds = time.perf_counter() - start

    @property
    def subset_seconds(self) -> float:
        # A subset is one more forward pass and first backward pass, like this one.
        return 0.0 if self.model.mixes_examples else self._build_seconds

    @property
    def rank_hint(self) -> Optional[int]:
        # A loss of C outputs of a piecewise-linear model: H = J^T (d2 loss / d out2) J, rank <= C
        # (C - 1 for the cross-entropy; C keeps a direction to spare for its tiny eigenvalues).
        return None if self.model.mixes_examples else self.model.n_outputs

    def _product(self, v: Tensor) -> Tensor:
        assert self._graph is not None
        with torch.enable_grad():
            (hv,) = torch.autograd.grad(
                self._graph, self.x, grad_outputs=v, retain_graph=True, allow_unused=True
            )
        return torch.zeros_like(v) if hv is None else hv

    def hvp_many(self, vs: Tensor) -> Tensor:
        if self._graph is None or self.model.mixes_examples:
            return super().hvp_many(vs)
        # A vmapped backward holds about one forward's activations per vector: as many vectors
        # at once as fit _BATCHED_HVP_BYTES (all of them for small models).
        per_call = max(1, _BATCHED_HVP_BYTES // max(1, self._activation_bytes))
        out: List[Tensor] = []
        for part in vs.split(per_call):
            try:  # one backward pass with a batch of gradient outputs (vmapped)
                with torch.enable_grad():
                    (hv,) = torch.autograd.grad(
                        self._graph, self.x, grad_outputs=part, retain_graph=True, is_grads_batched=True
                    )
            except RuntimeError:  # an operation without a batching rule: one product at a time
                return torch.cat([*out, super().hvp_many(vs[len(out) * per_call :])])
            out.append(hv)
        return out[0] if len(out) == 1 else torch.cat(out)

    def hvp(self, v: Tensor) -> Tensor:
        if self._graph is None:
            return torch.zeros_like(v)
        if not self.model.mixes_examples:
            return self._product(v)
        # Batch norm in training mode couples the examples. Each one's problem keeps the
        # Hessian of the loss in its own inputs (the others held fixed): one product per row
        # (a vmapped product over the rows would need B x B x d grad_outputs).
        out = torch.zeros_like(v)
        for k in v.abs().sum(1).nonzero()[:, 0].tolist():
            one = torch.zeros_like(v)
            one[k] = v[k]
            out[k] = self._product(one)[k]
        return out

    def subset(self, index: Tensor) -> Quadratic:
        if self.model.mixes_examples:  # fewer rows would change the batch statistics
            return super().subset(index)
        if self._graph is None:
            return DenseQuadratic(
                self.g.index_select(0, index),
                self.g.new_zeros(len(index), 1, 1).expand(-1, self.g.shape[1], self.g.shape[1]),
            )
        batch = self.x.shape[0]
        return _AutogradQuadratic(
            self.model,
            self.x.index_select(0, index),
            self.target.index_select(0, index),
            _rows(self.afa, index, batch),
        )


class _FactorsQuadratic(Quadratic):
    """The smoothed gradient and the SmoothHess factors of the loss: ``O(n d)`` products."""

    def __init__(
        self, g: Tensor, scores: List[Tensor], diffs: List[Tensor], row_scale: Tensor, count: int
    ) -> None:
        super().__init__(g)
        self.scores, self.diffs, self.row_scale, self.count = scores, diffs, row_scale, count

    def hvp(self, v: Tensor) -> Tensor:
        return _matvec(self.scores, self.diffs, self.row_scale, self.count, v)

    def subset(self, index: Tensor) -> Quadratic:
        pick = [t.index_select(0, index) for t in self.scores], [t.index_select(0, index) for t in self.diffs]
        return _FactorsQuadratic(self.g.index_select(0, index), *pick, self.row_scale, self.count)


class _LossModel:
    """The per-example loss of ``forward_func`` at the inputs, and its quadratic models."""

    def __init__(
        self,
        forward_func: Callable[..., Any],
        loss_func: Optional[LossFunc],
        inputs: Tuple[Tensor, ...],
        target: TargetType,
        additional_forward_args: Any,
    ) -> None:
        self.forward_func = forward_func
        self.default_loss = loss_func is None
        self.loss_func: LossFunc = _default_loss if loss_func is None else loss_func
        self.inputs = inputs
        self.afa = _format_additional_forward_args(additional_forward_args)
        self.mixes_examples = bool(batch_dependent_layers(forward_func))
        with torch.no_grad():
            out = self._outputs(_flatten(inputs), self.afa)
            self.target = _format_target(target, out, self.default_loss)
            self.n_outputs = out[0].numel() if out.dim() else 1
            self._check(self.loss_func(out, self.target), inputs[0].shape[0])

    def _outputs(self, x: Tensor, afa: Any) -> Tensor:
        out = _run_forward(self.forward_func, _unflatten(x, self.inputs), None, afa)
        if not isinstance(out, Tensor):
            raise TypeError(f"forward_func: expected a Tensor output, got {type(out).__name__}")
        return out

    @staticmethod
    def _check(losses: Any, rows: int) -> Tensor:
        losses = check_losses(losses, rows)
        if not bool(torch.isfinite(losses).all()):
            raise ValueError("loss_func: the loss is NaN or Inf at these inputs")
        return losses

    def losses(self, x: Tensor, target: Tensor, afa: Any) -> Tensor:
        """Per-example losses at flat points ``x`` for the rows' ``target`` and forward args."""
        return self._check(self.loss_func(self._outputs(x, afa), target), x.shape[0])

    def gradient(self) -> Tensor:
        """The exact gradient of the loss, ``(B, d)`` (first order only)."""
        x = _flatten(self.inputs).clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.losses(x, self.target, self.afa).sum(), x, allow_unused=True)
        g = torch.zeros_like(x) if g is None else g
        if not bool(torch.isfinite(g).all()):
            raise ValueError("forward_func: the gradient of the loss is NaN or Inf at these inputs")
        return g

    def autograd(self) -> Quadratic:
        """Exact gradient and Hessian-vector products by double backprop."""
        return _AutogradQuadratic(self, _flatten(self.inputs), self.target, self.afa)

    def smoothhess(
        self,
        kernel: Kernel,
        stdevs: StdevsType,
        n_samples: int,
        n_samples_batch_size: Optional[int],
        generator: Optional[torch.Generator],
        sampling: Optional[str] = None,
    ) -> Quadratic:
        """The SmoothHess estimate of the loss, held as sample factors, and the smoothed gradient."""
        from .smoothhess import SmoothHess

        evaluate = LossGradientEvaluator(
            self.forward_func, self.loss_func, self.inputs, self.target, self.afa
        )
        n = _check_n_samples(n_samples, antithetic=True)
        factors = SmoothHess(self.forward_func, kernel=kernel)._attribute(
            self.inputs,
            is_tuple=True,
            evaluate=evaluate,
            eps=_format_stdevs(stdevs, self.inputs),
            n=n,
            n_samples_batch_size=n_samples_batch_size,
            antithetic=True,
            mask=None,
            n_groups=0,
            return_gradient=False,
            seed=seed_from(generator),
            show_progress=False,
            output="factors",
            group=None,
            sampling=resolve_sampling(sampling, kernel, sum(t[0].numel() for t in self.inputs), n // 2),
        )
        g = _flatten(factors.gradient)
        return _FactorsQuadratic(g, factors._scores, factors._diffs, factors._row_scale, factors.count)


def _info(sol: Solution, lam1: Tensor) -> Dict[str, Tensor]:
    return {
        "lambda1": lam1,
        "lambda2_effective": sol.lambda2,
        "objective": sol.objective,
        "residual": sol.residual,
        "iterations": sol.iterations,
        "hvps": sol.hvps,
    }


class _LossSaliency(GradientAttribution):
    """Shared constructor of CASO and CAFO: a model and an optional per-example loss."""

    def __init__(self, forward_func: Callable[..., Any], loss_func: Optional[LossFunc] = None) -> None:
        super().__init__(forward_func)
        if loss_func is not None and not callable(loss_func):
            raise TypeError(f"loss_func: expected a callable or None, got {type(loss_func).__name__}")
        self.loss_func = loss_func


class CASO(_LossSaliency):
    r"""Second-order, sparse saliency: the loss-maximising perturbation of a quadratic model.

    CASO solves, per example,

    .. math::

        \delta^* = \arg\max_\delta\; g^\top\delta + \tfrac12 \delta^\top H \delta
        - \lambda_1 \|\delta\|_1 - \tfrac{\lambda_2^{\rm eff}}{2}\|\delta\|_2^2,
        \qquad \lambda_2^{\rm eff} = \lambda_2 + \max(0, \lambda_{\max}(H)),

    with ``g`` and ``H`` the input gradient and Hessian of the loss, by FISTA
    from zero to a tolerance on the proximal-gradient residual. The ``L1``
    term makes whole groups of features stand out; ``sparsity`` picks
    ``lambda1`` for a given fraction of exact zeros. The signed ``delta`` is
    returned, shaped like the inputs.

    Two curvature sources: ``"autograd"`` gives exact Hessian-vector products
    by double backprop (for a ReLU network and the cross-entropy loss
    ``H = J^T (diag(p) - p p^T) J``, ``J`` the input-logit Jacobian);
    ``"smoothhess"`` uses the SmoothHess estimate of the loss's Hessian and
    the smoothed gradient, which also see the curvature of the ReLUs.

    All examples of the batch are solved together with one
    Hessian-vector product per step for the whole batch: the model must not
    mix examples (use ``model.eval()`` for ``BatchNorm``).

    Args:
        forward_func: The model, returning logits ``(B, C)`` for the default
            loss, or any output ``loss_func`` accepts.
        loss_func: ``loss_func(outputs, target) -> (B,)`` per-example losses.
            ``target`` is a tensor with the batch first: the class indices
            (``target=None``: the predicted class) or the tensor given.
            Default: cross-entropy of the logits against the class.

    Examples:
        >>> import torch
        >>> from captum_smoothhess.caso import CASO
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
        ...                           torch.nn.Linear(16, 3))
        >>> delta, info = CASO(net).attribute(torch.randn(2, 8), sparsity=0.75,
        ...                                    return_info=True)
        >>> (delta == 0).sum(1)
        tensor([6, 6])
        >>> bool((info["residual"] <= 1e-4).all())
        True
    """

    @overload
    def attribute(
        self,
        inputs: InputsT,
        target: TargetType = None,
        additional_forward_args: Any = None,
        lambda1: Optional[float] = None,
        lambda2: float = 1.0,
        sparsity: Optional[float] = None,
        curvature: Curvature = "autograd",
        max_iter: int = 1000,
        tol: float = 1e-4,
        return_info: Literal[False] = False,
        kernel: Union[Kernel, str] = Gaussian(),
        stdevs: StdevsType = 0.1,
        n_samples: int = 1000,
        n_samples_batch_size: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        sampling: Optional[str] = None,
    ) -> InputsT: ...

    @overload
    def attribute(
        self,
        inputs: InputsT,
        target: TargetType = None,
        additional_forward_args: Any = None,
        lambda1: Optional[float] = None,
        lambda2: float = 1.0,
        sparsity: Optional[float] = None,
        curvature: Curvature = "autograd",
        max_iter: int = 1000,
        tol: float = 1e-4,
        *,
        return_info: Literal[True],
        kernel: Union[Kernel, str] = Gaussian(),
        stdevs: StdevsType = 0.1,
        n_samples: int = 1000,
        n_samples_batch_size: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        sampling: Optional[str] = None,
    ) -> Tuple[InputsT, Dict[str, Tensor]]: ...

    @overload
    def attribute(
        self,
        inputs: InputsT,
        target: TargetType = None,
        additional_forward_args: Any = None,
        lambda1: Optional[float] = None,
        lambda2: float = 1.0,
        sparsity: Optional[float] = None,
        curvature: str = "autograd",
        max_iter: int = 1000,
        tol: float = 1e-4,
        return_info: bool = False,
        kernel: Union[Kernel, str] = Gaussian(),
        stdevs: StdevsType = 0.1,
        n_samples: int = 1000,
        n_samples_batch_size: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        sampling: Optional[str] = None,
    ) -> Union[InputsT, Tuple[InputsT, Dict[str, Tensor]]]: ...

    @log_usage()
    def attribute(
        self,
        inputs: InputsT,
        target: TargetType = None,
        additional_forward_args: Any = None,
        lambda1: Optional[float] = None,
        lambda2: float = 1.0,
        sparsity: Optional[float] = None,
        curvature: Curvature = "autograd",
        max_iter: int = 1000,
        tol: float = 1e-4,
        return_info: bool = False,
        kernel: Union[Kernel, str] = Gaussian(),
        stdevs: StdevsType = 0.1,
        n_samples: int = 1000,
        n_samples_batch_size: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        sampling: Optional[str] = None,
    ) -> Any:
        r"""The CASO perturbation of every example of ``inputs``.

        Args:
            inputs: A tensor ``(B, *S)`` or a tuple of tensors sharing the
                batch dimension. Left untouched (including ``requires_grad``).
            target: Class index per example for the default cross-entropy
                loss (an int, a list or a tensor ``(B,)``); ``None`` means the
                predicted class. With a custom ``loss_func``, any tensor with
                the batch first.
            additional_forward_args: Extra arguments for ``forward_func``,
                passed after the inputs.
            lambda1: Weight of the ``L1`` penalty, ``>= 0``. Default 0 (no
                sparsity). Exclusive with ``sparsity``.
            lambda2: Weight of the ``L2`` penalty, ``> 0``; the solved problem
                uses ``lambda2 + max(0, lambda_max(H))``. Default 1.
            sparsity: Fraction ``eta`` in ``[0, 1)`` of exactly-zero entries
                (over all features of one example); ``lambda1`` is found per
                example by bisection (to within 0.5% of the features).
            curvature: ``"autograd"`` (exact Hessian-vector products) or
                ``"smoothhess"`` (the SmoothHess estimate of the loss's
                Hessian and the smoothed gradient).
            max_iter: Cap on FISTA iterations per solve (a safeguard; the
                solver stops at ``tol``). A warning tells when it is hit.
                Iterations grow like ``sqrt(lambda2_eff / lambda2)`` (the
                condition number of the solved problem), so a ``lambda2``
                far below ``lambda_max(H)`` needs more of them.
            tol: Tolerance on the norm of the proximal-gradient residual
                (gradient mapping), relative to ``|g|``.
            return_info: Also return a dict of per-example tensors
                ``lambda1``, ``lambda2_effective``, ``objective`` (of the
                solved problem), ``residual``, ``iterations`` (of the final
                solve) and ``hvps`` (Hessian-vector products with the model,
                the Lanczos steps and all bisection steps included; products
                from a certified low-rank basis are free and not counted).
            kernel: Kernel of the ``"smoothhess"`` curvature (instance or name).
            stdevs: Bandwidth of the ``"smoothhess"`` curvature.
            n_samples: Gradient samples of the ``"smoothhess"`` curvature.
            n_samples_batch_size: Samples per pass for ``"smoothhess"``.
            generator: ``torch.Generator`` for the ``"smoothhess"`` noise.
            sampling: Sampling of the ``"smoothhess"`` curvature, as in
                :meth:`SmoothHess.attribute <captum_smoothhess.SmoothHess.attribute>`:
                ``"orthogonal"`` or ``"iid"`` (by default orthogonal for Gaussian
                and Poisson where the draws hold a full rotation).

        Returns:
            The signed perturbation ``delta`` shaped like ``inputs`` (a tensor
            or a tuple), and with ``return_info=True`` the pair
            ``(delta, info)``.

        Raises:
            ValueError: Negative ``lambda1``, non-positive ``lambda2``,
                ``sparsity`` outside ``[0, 1)`` or given with ``lambda1``, an
                unknown ``curvature``, non-positive ``tol`` or ``max_iter``,
                NaN/Inf inputs, a ``target`` the output does not have, a
                ``loss_func`` that does not return one loss per example, or a
                NaN/Inf loss, gradient or Hessian-vector product; a
                ``lambda2`` that rounds to 0 in the inputs' dtype, or a
                ``lambda1`` or ``lambda2`` beyond its largest value; a
                training-mode norm layer hidden from the private copy, as
                for SmoothHess.
            TypeError: Arguments of the wrong type; half-precision inputs.

        Examples:
            >>> import torch
            >>> from captum_smoothhess.caso import CASO
            >>> net = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(),
            ...                           torch.nn.Linear(12, 4))
            >>> x = torch.randn(3, 6)
            >>> delta = CASO(net).attribute(x, target=2, lambda1=0.01)
            >>> delta.shape
            torch.Size([3, 6])
            >>> delta = CASO(net).attribute(x, curvature="smoothhess", stdevs=0.2,
            ...                             n_samples=200,
            ...                             generator=torch.Generator().manual_seed(0))
            >>> delta.shape
            torch.Size([3, 6])
        """
        inps, is_tuple = _tupled(inputs)
        _check_inputs(inps)
        lam1_value, lam2_value = _check_lambdas(lambda1, lambda2, sparsity)
        if inps[0].dtype in HALF:
            raise TypeError(
                f"inputs: CASO needs float32 or float64 inputs, got {inps[0].dtype} (its eigenvalue "
                "bound and Lanczos steps have no half-precision kernels); CAFO takes half precision"
            )
        _check_lambdas_fit(lam1_value, lam2_value, inps[0].dtype)
        if curvature not in _CURVATURES:
            raise ValueError(f"curvature: expected one of {_CURVATURES}, got {curvature!r}")
        max_iter = _check_positive_int(max_iter, "max_iter")
        tol = _check_number(tol, "tol", allow_zero=False)
        _check_generator(generator)

        with autograd_allowed():
            forward = private_if_training(self.forward_func, "CASO")
            model = _LossModel(forward, self.loss_func, inps, target, additional_forward_args)
            if curvature == "autograd":
                quad = model.autograd()
            else:
                quad = model.smoothhess(
                    get_kernel(kernel), stdevs, n_samples, n_samples_batch_size, generator, sampling
                )

            g = quad.g
            top, eig_hvps, quad = lanczos(quad, certify=True)
            lam2 = torch.full_like(top, lam2_value)
            lam2_eff = lam2 + top
            if sparsity is not None and round(float(sparsity) * g.shape[1]) > 0:
                sol, lam1 = sparsity_solve(quad, lam2, lam2_eff, float(sparsity), tol, max_iter)
            else:
                lam1 = torch.full_like(top, lam1_value)
                sol = fista(quad, lam1, lam2, lam2_eff, tol, max_iter)
            sol = sol._replace(hvps=sol.hvps + eig_hvps)
            missed = int((sol.residual > tol).sum())
            if missed:
                warnings.warn(
                    f"CASO: {missed} example(s) stopped at max_iter={max_iter} before reaching "
                    f"tol={tol:g} (largest residual {float(sol.residual.max()):.3g}); raise max_iter",
                    RuntimeWarning,
                    stacklevel=3,
                )
            delta = _format_flat(sol.delta.to(inps[0].dtype), inps, is_tuple)
            return (delta, _info(sol, lam1)) if return_info else delta


class CAFO(_LossSaliency):
    r"""First-order, sparse saliency: CASO with ``H = 0``, in closed form.

    .. math::

        \delta^* = \arg\max_\delta\; g^\top\delta - \lambda_1 \|\delta\|_1
        - \tfrac{\lambda_2}{2}\|\delta\|_2^2
        = \operatorname{soft}(g, \lambda_1) / \lambda_2,

    ``g`` the input gradient of the loss. With ``sparsity=eta``, ``lambda1``
    is the ``k``-th smallest ``|g_i|``, ``k = round(eta d)``, which zeroes
    exactly ``k`` entries (more only where ``|g|`` has ties).

    Args:
        forward_func: The model (logits for the default loss).
        loss_func: Per-example loss ``loss_func(outputs, target) -> (B,)``;
            default cross-entropy, as in :class:`CASO`.

    Examples:
        >>> import torch
        >>> from captum_smoothhess.caso import CAFO
        >>> net = torch.nn.Sequential(torch.nn.Linear(10, 3))
        >>> delta = CAFO(net).attribute(torch.randn(2, 10), sparsity=0.8)
        >>> (delta == 0).sum(1)
        tensor([8, 8])
    """

    @overload
    def attribute(
        self,
        inputs: InputsT,
        target: TargetType = None,
        additional_forward_args: Any = None,
        lambda1: Optional[float] = None,
        lambda2: float = 1.0,
        sparsity: Optional[float] = None,
        return_info: Literal[False] = False,
    ) -> InputsT: ...

    @overload
    def attribute(
        self,
        inputs: InputsT,
        target: TargetType = None,
        additional_forward_args: Any = None,
        lambda1: Optional[float] = None,
        lambda2: float = 1.0,
        sparsity: Optional[float] = None,
        *,
        return_info: Literal[True],
    ) -> Tuple[InputsT, Dict[str, Tensor]]: ...

    @overload
    def attribute(
        self,
        inputs: InputsT,
        target: TargetType = None,
        additional_forward_args: Any = None,
        lambda1: Optional[float] = None,
        lambda2: float = 1.0,
        sparsity: Optional[float] = None,
        return_info: bool = False,
    ) -> Union[InputsT, Tuple[InputsT, Dict[str, Tensor]]]: ...

    @log_usage()
    def attribute(
        self,
        inputs: InputsT,
        target: TargetType = None,
        additional_forward_args: Any = None,
        lambda1: Optional[float] = None,
        lambda2: float = 1.0,
        sparsity: Optional[float] = None,
        return_info: bool = False,
    ) -> Any:
        r"""The CAFO perturbation ``soft(g, lambda1) / lambda2`` of every example.

        Args:
            inputs: A tensor ``(B, *S)`` or a tuple of tensors sharing the
                batch dimension. Left untouched.
            target: Class index per example (int, list or tensor);
                ``None`` means the predicted class. As in :class:`CASO`.
            additional_forward_args: Extra arguments for ``forward_func``.
            lambda1: ``L1`` weight, ``>= 0``; default 0. Exclusive with
                ``sparsity``.
            lambda2: ``L2`` weight, ``> 0``; default 1.
            sparsity: Fraction in ``[0, 1)`` of exactly-zero entries per
                example; sets ``lambda1`` per example.
            return_info: Also return the dict of :class:`CASO`
                (``lambda2_effective`` is ``lambda2``; ``residual``,
                ``iterations`` and ``hvps`` are 0).

        Returns:
            ``delta`` shaped like ``inputs``, and the info dict with
            ``return_info=True``.

        Raises:
            ValueError: As :meth:`CASO.attribute`, for the arguments that apply.

        Examples:
            >>> import torch
            >>> from captum_smoothhess.caso import CAFO
            >>> net = torch.nn.Linear(4, 2)
            >>> delta, info = CAFO(net).attribute(torch.randn(3, 4), target=0,
            ...                                    lambda1=0.1, return_info=True)
            >>> delta.shape, info["objective"].shape
            (torch.Size([3, 4]), torch.Size([3]))
        """
        inps, is_tuple = _tupled(inputs)
        _check_inputs(inps)
        lam1_value, lam2_value = _check_lambdas(lambda1, lambda2, sparsity)
        _check_lambdas_fit(lam1_value, lam2_value, inps[0].dtype)
        with autograd_allowed():
            forward = private_if_training(self.forward_func, "CAFO")
            model = _LossModel(forward, self.loss_func, inps, target, additional_forward_args)
            g = model.gradient()
            batch, dim = g.shape
            if sparsity is not None and round(float(sparsity) * dim) > 0:
                k = round(float(sparsity) * dim)
                lam1 = g.abs().kthvalue(k, dim=1).values
            else:
                lam1 = torch.full((batch,), lam1_value, dtype=g.dtype, device=g.device)
            soft = _soft(g, lam1[:, None])
            delta = soft / lam2_value
            objective = (soft * soft).sum(1) / (2 * lam2_value)
            if not bool(torch.isfinite(delta).all() & torch.isfinite(objective).all()):
                raise ValueError(
                    f"lambda2: {lam2_value} is too small for {delta.dtype}: the perturbation "
                    "soft(g, lambda1) / lambda2 or its objective overflows"
                )
            zero = torch.zeros(batch, dtype=torch.long, device=g.device)
            sol = Solution(
                delta,
                objective,
                torch.zeros_like(lam1),
                zero,
                zero,
                torch.full_like(lam1, lam2_value),
            )
            result = _format_flat(delta, inps, is_tuple)
            return (result, _info(sol, lam1)) if return_info else result
