"""CASO and CAFO: second- and first-order sparse saliency (Singla et al., ICML 2019).

For a per-example loss ``l`` (by default the cross-entropy of the logits
against the target class) with input gradient ``g`` and input Hessian ``H`` at
``x``, CASO returns the perturbation that most increases the quadratic model
of the loss under an elastic-net penalty::

    delta* = argmax_d  g^T d + 1/2 d^T H d - lambda1 |d|_1 - (lambda2_eff / 2) |d|^2,

    lambda2_eff = lambda2 + max(0, lambda_max(H)),

which makes the problem strongly concave (modulus ``lambda2``), so the
maximiser exists and is unique. ``lambda_max`` comes from power iteration on
Hessian-vector products; the problem is solved by FISTA (accelerated proximal
gradient with backtracking, soft-thresholding prox, adaptive momentum restart)
from ``d = 0`` until the proximal-gradient residual falls below ``tol``.
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
import warnings
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from captum.attr import GradientAttribution
from torch import Tensor

from ._captum import (
    TargetType,
    _format_additional_forward_args,
    _format_tensor_into_tuples,
    _is_tuple,
    _run_forward,
    log_usage,
)
from ._validation import (
    StdevsType,
    _check_generator,
    _check_inputs,
    _check_number,
    _check_positive_int,
    _flatten,
    _unflatten,
)
from .kernels import Gaussian, Kernel, get_kernel

__all__ = ["CAFO", "CASO"]

TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]
LossFunc = Callable[[Tensor, Tensor], Tensor]
HVP = Callable[[Tensor], Tensor]

_CURVATURES = ("autograd", "smoothhess")
# Power iteration: relative change of the Rayleigh quotient at which it stops, and a cap.
_POWER_TOL = 1e-5
_POWER_MAX_ITER = 500
# Doublings of the FISTA step constant L allowed in one iteration before giving up.
_MAX_BACKTRACK = 60
# Bisection steps of lambda1 for `sparsity`, and the accepted error in zeros (fraction of d).
_BISECT_STEPS = 40
_SPARSITY_SLACK = 0.005


def _default_loss(outputs: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of the logits ``(B, C)`` against class indices ``(B,)``, per example."""
    return F.cross_entropy(outputs, target, reduction="none")


def _soft(v: Tensor, tau: Tensor) -> Tensor:
    """Soft-thresholding ``sign(v) max(|v| - tau, 0)``, ``tau`` broadcast per example."""
    return torch.sign(v) * (v.abs() - tau).clamp_min(0)


class _LossForward:
    """``(*inputs, target, *additional_forward_args) -> per-example loss (B,)``.

    The forward function SmoothHess is applied to for the ``"smoothhess"``
    curvature: the target travels as the first additional forward argument,
    so the sampling engine expands it per perturbed copy.
    """

    def __init__(self, forward_func: Callable[..., Any], loss_func: LossFunc, n_inputs: int) -> None:
        self.forward_func = forward_func
        self.loss_func = loss_func
        self.n_inputs = n_inputs

    def __call__(self, *args: Any) -> Tensor:
        inputs, target, rest = args[: self.n_inputs], args[self.n_inputs], args[self.n_inputs + 1 :]
        out = self.forward_func(*inputs, *rest)
        return _check_losses(self.loss_func(out, target), inputs[0].shape[0])


def _check_losses(losses: Any, batch: int) -> Tensor:
    if not isinstance(losses, Tensor):
        raise TypeError(f"loss_func: expected a Tensor of per-example losses, got {type(losses).__name__}")
    if losses.dim() == 2 and losses.shape[1] == 1:
        losses = losses[:, 0]
    if losses.shape != (batch,):
        raise ValueError(
            f"loss_func: must return one loss per example, shape ({batch},) (e.g. "
            f"reduction='none'), got shape {tuple(losses.shape)}"
        )
    return losses


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


class _Quadratic(NamedTuple):
    """The quadratic model of the loss: gradient ``g`` ``(B, d)`` and ``v -> H v``."""

    g: Tensor
    hvp: HVP


class _Solution(NamedTuple):
    delta: Tensor
    objective: Tensor
    residual: Tensor
    iterations: Tensor
    hvps: Tensor
    lambda2: Tensor


def _residual(
    quad: _Quadratic, x: Tensor, hx: Tensor, lam1: Tensor, lam2: Tensor, step: Tensor, scale: Tensor
) -> Tensor:
    """Norm of the gradient mapping ``L (x - prox(x - grad/L))``, relative to ``|g|``."""
    grad = lam2[:, None] * x - quad.g - hx
    inv = 1.0 / step[:, None]
    mapped = _soft(x - grad * inv, lam1[:, None] * inv)
    return (x - mapped).norm(dim=1) * step / scale


def _objective(quad: _Quadratic, x: Tensor, hx: Tensor, lam1: Tensor, lam2: Tensor) -> Tensor:
    """``g^T x + 1/2 x^T H x - lambda1 |x|_1 - lambda2/2 |x|^2`` per example."""
    return (quad.g * x).sum(1) + 0.5 * (x * hx).sum(1) - lam1 * x.abs().sum(1) - 0.5 * lam2 * (x * x).sum(1)


def _checked_hvp(hvp: HVP, v: Tensor) -> Tensor:
    hv = hvp(v)
    if not bool(torch.isfinite(hv).all()):
        raise ValueError(
            "forward_func: the Hessian-vector product of the loss is NaN or Inf (the model or "
            "loss is not twice differentiable at these inputs, or overflows)"
        )
    return hv


def _top_eigenvalue(quad: _Quadratic) -> Tuple[Tensor, Tensor]:
    """``max(0, lambda_max(H))`` per example by power iteration; also the HVPs used.

    Power iteration finds the eigenvalue of largest magnitude; where it is
    negative, a second run on ``H + |mu| I`` (whose top eigenvalue is
    ``lambda_max + |mu|``) finds the largest one.
    """
    g = quad.g
    batch = g.shape[0]
    gen = torch.Generator(device=g.device)
    gen.manual_seed(0)
    noise = torch.randn(1, g.shape[1], generator=gen, device=g.device, dtype=g.dtype)
    tiny = torch.finfo(g.dtype).tiny
    # Start from the gradient (nearly the top eigenvector in the high-confidence regime)
    # plus a fixed random direction, so no eigenvector is missed; the same direction for
    # every example, so that an example's result does not depend on its batch.
    v0 = g / g.norm(dim=1, keepdim=True).clamp_min(tiny) + noise / noise.norm(dim=1, keepdim=True)
    hvps = torch.zeros(batch, dtype=torch.long, device=g.device)

    def power(shift: Tensor, active: Tensor) -> Tensor:
        v = v0 / v0.norm(dim=1, keepdim=True).clamp_min(tiny)
        mu = torch.zeros(batch, dtype=g.dtype, device=g.device)
        for it in range(_POWER_MAX_ITER):
            w = _checked_hvp(quad.hvp, v) + shift[:, None] * v
            hvps.add_(active.long())
            mu_new = (v * w).sum(1)
            norm = w.norm(dim=1)
            done = (norm <= tiny) | ((mu_new - mu).abs() <= _POWER_TOL * mu_new.abs())
            mu = torch.where(active, mu_new, mu)
            v = torch.where(active[:, None], w / norm.clamp_min(tiny)[:, None], v)
            if it > 0:
                active = active & ~done
            if not bool(active.any()):
                break
        return mu

    everyone = torch.ones(batch, dtype=torch.bool, device=g.device)
    mu = power(torch.zeros_like(hvps, dtype=g.dtype), everyone)
    negative = mu < 0
    if bool(negative.any()):
        shift = torch.where(negative, -mu, torch.zeros_like(mu))
        top = power(shift, negative) - shift
        mu = torch.where(negative, top, mu)
    return mu.clamp_min(0), hvps


def _fista(
    quad: _Quadratic,
    lam1: Tensor,
    lam2: Tensor,
    lam2_eff: Tensor,
    tol: float,
    max_iter: int,
    active: Tensor,
) -> _Solution:
    """FISTA with backtracking and adaptive restart for every active example at once.

    Minimises ``-(objective)``; its smooth part has gradient
    ``lambda2_eff x - g - H x``. One Hessian-vector product per iteration (plus
    one per rejected step): ``H`` of the candidate gives both the
    backtracking test and the next gradient, and ``H y`` follows from ``H x``
    by linearity. Should the solved problem turn out non-concave (a step
    with ``d^T H d > lambda2_eff |d|^2``, i.e. power iteration
    underestimated ``lambda_max``), ``lambda2_eff`` is raised to
    ``lambda2 + d^T H d / |d|^2`` and that example restarts from zero.
    Examples whose residual falls below ``tol`` are frozen.
    """
    g = quad.g
    batch = g.shape[0]
    eps = torch.finfo(g.dtype).eps
    scale = g.norm(dim=1).clamp_min(torch.finfo(g.dtype).tiny)
    lam2_eff = lam2_eff.clone()
    x = torch.zeros_like(g)
    x_prev, hx, hx_prev = x.clone(), x.clone(), x.clone()
    t = torch.ones_like(scale)
    step = lam2_eff.clone()
    iters = torch.zeros(batch, dtype=torch.long, device=g.device)
    hvps = torch.zeros_like(iters)
    res = _residual(quad, x, hx, lam1, lam2_eff, step, scale)
    active = active & (res > tol)
    while bool(active.any()):
        t_next = 0.5 * (1 + torch.sqrt(1 + 4 * t * t))
        beta = ((t - 1) / t_next)[:, None]
        y = x + beta * (x - x_prev)
        hy = hx + beta * (hx - hx_prev)
        grad_y = lam2_eff[:, None] * y - g - hy
        z, hz = y.clone(), hy.clone()
        pending = active.clone()
        reset = torch.zeros_like(active)
        for _ in range(_MAX_BACKTRACK):
            inv = 1.0 / step[:, None]
            z = torch.where(pending[:, None], _soft(y - grad_y * inv, lam1[:, None] * inv), z)
            hz = torch.where(pending[:, None], _checked_hvp(quad.hvp, z), hz)
            hvps.add_(pending.long())
            d = z - y
            dd = (d * d).sum(1)
            dhd = (d * (hz - hy)).sum(1)
            # Rounding of d^T (Hz - Hy) and of lambda2 |d|^2: a few ulps of the terms.
            slack = 16 * eps * (d.norm(dim=1) * (hz.norm(dim=1) + hy.norm(dim=1)) + lam2_eff * dd)
            bad = pending & (dhd > lam2_eff * dd + slack) & (dd > 0)
            if bool(bad.any()):
                lam2_eff = torch.where(bad, lam2 + dhd / dd.clamp_min(eps), lam2_eff)
                step = torch.where(bad, torch.maximum(step, lam2_eff), step)
                reset |= bad
                pending &= ~bad
            accept = lam2_eff * dd - dhd <= step * dd + slack
            pending &= ~accept
            if not bool(pending.any()):
                break
            step = torch.where(pending, 2 * step, step)
        else:
            raise RuntimeError("CASO: the step-size search failed; the Hessian-vector products look wrong")
        upd = active & ~reset
        restart = ((y - z) * (z - x)).sum(1) > 0
        x_prev = torch.where(upd[:, None], x, x_prev)
        hx_prev = torch.where(upd[:, None], hx, hx_prev)
        x = torch.where(upd[:, None], z, x)
        hx = torch.where(upd[:, None], hz, hx)
        t = torch.where(upd, torch.where(restart, torch.ones_like(t), t_next), t)
        iters += upd.long()
        if bool(reset.any()):
            zero = reset[:, None]
            x, x_prev = x.masked_fill(zero, 0), x_prev.masked_fill(zero, 0)
            hx, hx_prev = hx.masked_fill(zero, 0), hx_prev.masked_fill(zero, 0)
            t = t.masked_fill(reset, 1.0)
        res = torch.where(active, _residual(quad, x, hx, lam1, lam2_eff, step, scale), res)
        active = active & (res > tol) & (iters < max_iter)
    objective = _objective(quad, x, hx, lam1, lam2_eff)
    return _Solution(x, objective, res, iters, hvps, lam2_eff)


def _merge(keep: Tensor, new: _Solution, old: _Solution) -> _Solution:
    """Per example: ``new`` where ``keep``, else ``old``."""
    return _Solution(*(torch.where(keep[:, None] if a.dim() == 2 else keep, a, b) for a, b in zip(new, old)))


def _sparsity_solve(
    quad: _Quadratic, lam2: Tensor, lam2_eff: Tensor, eta: float, tol: float, max_iter: int
) -> Tuple[_Solution, Tensor]:
    """Bisect ``lambda1`` per example so that a fraction ``eta`` of ``delta`` is exactly 0.

    At ``lambda1 >= |g|_inf`` the solution is 0; the number of zeros grows
    with ``lambda1``. Each step solves all unfinished examples at once.
    Returns the solution closest to the target count, and its ``lambda1``.
    """
    g = quad.g
    batch, dim = g.shape
    want = round(eta * dim)
    slack = int(_SPARSITY_SLACK * dim)
    lo = torch.zeros(batch, dtype=g.dtype, device=g.device)
    hi = g.abs().amax(1)
    best_lam = hi.clone()
    zero = torch.zeros(batch, dtype=g.dtype, device=g.device)
    count = torch.zeros(batch, dtype=torch.long, device=g.device)
    best = _Solution(torch.zeros_like(g), zero, zero, count, count, lam2_eff)
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


def _check_lambdas(
    lambda1: Optional[float], lambda2: float, sparsity: Optional[float]
) -> Tuple[float, float]:
    lam2 = _check_number(lambda2, "lambda2", allow_zero=True)
    if lam2 == 0:
        raise ValueError(
            "lambda2: must be > 0; with lambda2 = 0 the problem made concave with "
            "lambda2 + lambda_max(H) may have no bounded maximiser"
        )
    if sparsity is not None:
        if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
            raise TypeError(f"sparsity: expected a number in [0, 1), got {sparsity!r}")
        if not 0 <= float(sparsity) < 1:
            raise ValueError(f"sparsity: must lie in [0, 1), got {sparsity}")
        if lambda1 is not None:
            raise ValueError("lambda1: give either lambda1 or sparsity (which chooses lambda1), not both")
        return 0.0, lam2
    return (0.0 if lambda1 is None else _check_number(lambda1, "lambda1", allow_zero=True)), lam2


class _LossModel:
    """Evaluates the loss of ``forward_func`` at the inputs and its derivatives."""

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
        self.target_arg = target

    def _forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        out = _run_forward(self.forward_func, _unflatten(x, self.inputs), None, self.afa)
        if not isinstance(out, Tensor):
            raise TypeError(f"forward_func: expected a Tensor output, got {type(out).__name__}")
        self.target = _format_target(self.target_arg, out, self.default_loss)
        losses = _check_losses(self.loss_func(out, self.target), x.shape[0])
        if not bool(torch.isfinite(losses).all()):
            raise ValueError("loss_func: the loss is NaN or Inf at these inputs")
        return out, losses

    def autograd(self, second_order: bool) -> _Quadratic:
        """Exact gradient, and Hessian-vector products by double backprop on one graph."""
        x = _flatten(self.inputs).clone().requires_grad_(True)
        with torch.enable_grad():
            _, losses = self._forward(x)
            (g,) = torch.autograd.grad(losses.sum(), x, create_graph=second_order, allow_unused=True)
        if g is None:
            g = torch.zeros_like(x)
        if not bool(torch.isfinite(g).all()):
            raise ValueError("forward_func: the gradient of the loss is NaN or Inf at these inputs")
        if not (second_order and g.requires_grad):
            # The loss is (at most) linear in the inputs here: H = 0.
            return _Quadratic(g.detach(), torch.zeros_like)

        def hvp(v: Tensor) -> Tensor:
            with torch.enable_grad():
                (hv,) = torch.autograd.grad(g, x, grad_outputs=v, retain_graph=True, allow_unused=True)
            return torch.zeros_like(v) if hv is None else hv

        return _Quadratic(g.detach(), hvp)

    def smoothhess(
        self,
        kernel: Kernel,
        stdevs: StdevsType,
        n_samples: int,
        n_samples_batch_size: Optional[int],
        generator: Optional[torch.Generator],
    ) -> _Quadratic:
        """SmoothHess of the loss, held as sample factors, and the smoothed gradient."""
        from .smoothhess import SmoothHess

        with torch.no_grad():
            self._forward(_flatten(self.inputs))
        loss_forward = _LossForward(self.forward_func, self.loss_func, len(self.inputs))
        factors = SmoothHess(loss_forward, kernel=kernel).attribute(
            self.inputs,
            target=None,
            additional_forward_args=(self.target, *(self.afa or ())),
            stdevs=stdevs,
            n_samples=n_samples,
            n_samples_batch_size=n_samples_batch_size,
            generator=generator,
            output="factors",
        )
        grad = factors.gradient
        g = _flatten(grad if isinstance(grad, tuple) else (grad,))
        inputs = self.inputs

        def hvp(v: Tensor) -> Tensor:
            hv = factors.matvec(_unflatten(v, inputs))
            return _flatten(hv if isinstance(hv, tuple) else (hv,))

        return _Quadratic(g, hvp)


def _format_result(delta: Tensor, inputs: Tuple[Tensor, ...], is_tuple: bool) -> TensorOrTuple:
    parts = _unflatten(delta, inputs)
    return parts if is_tuple else parts[0]


def _info(sol: _Solution, lam1: Tensor) -> Dict[str, Tensor]:
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

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
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
    ) -> Union[TensorOrTuple, Tuple[TensorOrTuple, Dict[str, Tensor]]]:
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
                solve) and ``hvps`` (Hessian-vector products used, power
                iteration and all bisection steps included).
            kernel: Kernel of the ``"smoothhess"`` curvature (instance or name).
            stdevs: Bandwidth of the ``"smoothhess"`` curvature.
            n_samples: Gradient samples of the ``"smoothhess"`` curvature.
            n_samples_batch_size: Samples per pass for ``"smoothhess"``.
            generator: ``torch.Generator`` for the ``"smoothhess"`` noise.

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
                NaN/Inf loss, gradient or Hessian-vector product.
            TypeError: Arguments of the wrong type.

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
        is_tuple = _is_tuple(inputs)
        inps = _format_tensor_into_tuples(inputs)
        _check_inputs(inps)
        lam1_value, lam2_value = _check_lambdas(lambda1, lambda2, sparsity)
        if curvature not in _CURVATURES:
            raise ValueError(f"curvature: expected one of {_CURVATURES}, got {curvature!r}")
        max_iter = _check_positive_int(max_iter, "max_iter")
        tol = _check_number(tol, "tol", allow_zero=False)
        _check_generator(generator)

        model = _LossModel(self.forward_func, self.loss_func, inps, target, additional_forward_args)
        if curvature == "autograd":
            quad = model.autograd(second_order=True)
        else:
            kern = get_kernel(kernel)
            n = _check_positive_int(n_samples, "n_samples")
            quad = model.smoothhess(kern, stdevs, n, n_samples_batch_size, generator)

        g = quad.g
        top, power_hvps = _top_eigenvalue(quad)
        lam2 = torch.full_like(top, lam2_value)
        lam2_eff = lam2 + top
        if sparsity is not None and round(float(sparsity) * g.shape[1]) > 0:
            sol, lam1 = _sparsity_solve(quad, lam2, lam2_eff, float(sparsity), tol, max_iter)
        else:
            lam1 = torch.full_like(top, lam1_value)
            everyone = torch.ones(g.shape[0], dtype=torch.bool, device=g.device)
            sol = _fista(quad, lam1, lam2, lam2_eff, tol, max_iter, everyone)
        sol = sol._replace(hvps=sol.hvps + power_hvps)
        missed = int((sol.residual > tol).sum())
        if missed:
            warnings.warn(
                f"CASO: {missed} example(s) stopped at max_iter={max_iter} before reaching "
                f"tol={tol:g} (largest residual {float(sol.residual.max()):.3g}); raise max_iter",
                RuntimeWarning,
                stacklevel=3,
            )
        delta = _format_result(sol.delta.to(inps[0].dtype), inps, is_tuple)
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

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        lambda1: Optional[float] = None,
        lambda2: float = 1.0,
        sparsity: Optional[float] = None,
        return_info: bool = False,
    ) -> Union[TensorOrTuple, Tuple[TensorOrTuple, Dict[str, Tensor]]]:
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
        is_tuple = _is_tuple(inputs)
        inps = _format_tensor_into_tuples(inputs)
        _check_inputs(inps)
        lam1_value, lam2_value = _check_lambdas(lambda1, lambda2, sparsity)
        model = _LossModel(self.forward_func, self.loss_func, inps, target, additional_forward_args)
        g = model.autograd(second_order=False).g
        batch, dim = g.shape
        if sparsity is not None and round(float(sparsity) * dim) > 0:
            k = round(float(sparsity) * dim)
            lam1 = g.abs().kthvalue(k, dim=1).values
        else:
            lam1 = torch.full((batch,), lam1_value, dtype=g.dtype, device=g.device)
        soft = _soft(g, lam1[:, None])
        delta = soft / lam2_value
        zero = torch.zeros(batch, dtype=torch.long, device=g.device)
        sol = _Solution(
            delta,
            (soft * soft).sum(1) / (2 * lam2_value),
            torch.zeros_like(lam1),
            zero,
            zero,
            torch.full_like(lam1, lam2_value),
        )
        result = _format_result(delta, inps, is_tuple)
        return (result, _info(sol, lam1)) if return_info else result
