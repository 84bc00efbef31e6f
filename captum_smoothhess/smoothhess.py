"""SmoothHess: pairwise feature interactions of ReLU networks via Stein's lemma.

The Hessian of a ReLU network is zero almost everywhere. SmoothHess instead
returns the Hessian of the network smoothed by a kernel,
``g(x) = E_u[f(x + eps u)]``, which by the generalised Stein identity is

    hess g(x) = (1/eps) E[ s(u) grad f(x + eps u)^T ],   s = -grad log k,

estimated from gradient calls alone. With antithetic pairs ``(u, -u)`` and
``m = n/2`` pairs,

    H_hat = 1/(2 m eps) sum_i s(u_i) (grad f(x + eps u_i) - grad f(x - eps u_i))^T,

symmetrised as ``(H_hat + H_hat^T)/2``. The smoothed gradient (SmoothGrad for
the Gaussian kernel) comes from the same samples.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Literal, Optional, Tuple, Union, overload

import torch
from captum.attr import GradientAttribution
from torch import Tensor

from ._captum import TargetType, log_usage
from ._dtypes import FULL, refuse_half_overflow
from ._errors import MIN_GROUPS, SmoothHessError, group_length
from ._evaluators import Evaluator, GradientEvaluator, autograd_allowed, selected_outputs
from ._layout import HessianType, TensorOrTuple, _flatten, _format_flat, _split_hessian
from ._model import private_if_training
from ._sampling import resolve_sampling, sampler_class, seed_from
from ._stein import (
    Tracking,
    agree_across_ranks,
    agreed_chunk,
    checksum,
    chunk_size,
    distributed_seed,
    ranks_fail_together,
    resolve_group,
    stein_estimate,
)
from ._validation import (
    BaselinesType,
    MaskType,
    StdevsType,
    _check_flags,
    _check_generator,
    _check_inputs,
    _check_n_samples,
    _check_number,
    _check_output_mode,
    _format_baselines,
    _format_feature_mask,
    _format_stdevs,
    _tupled,
)
from .factors import SmoothHessFactors, _HessianSums, _KeptFactors, _RotatedSums, _Weighted
from .kernels import Gaussian, Kernel, get_kernel

__all__ = ["SmoothHess", "SmoothHessError"]

OutputType = Literal["dense", "factors"]


class SmoothHess(GradientAttribution):
    """Hessian of the kernel-smoothed network, from gradient calls alone.

    SmoothHess gives pairwise feature interactions for ReLU networks, whose
    exact Hessian is zero almost everywhere. It estimates the Hessian of
    ``g(x) = E_u[f(x + stdevs * u)]``, ``u`` drawn from ``kernel``, by the
    generalised Stein identity, using antithetic pairs of samples. The
    bandwidth ``stdevs`` sets the scale of the interactions explicitly.

    Args:
        forward_func: The model or any function returning, for a batch, one
            output per example (or a tensor from which ``target`` selects one).
        kernel: A :class:`~captum_smoothhess.kernels.Kernel` with a score, or
            its name (``"gaussian"``, ``"poisson"``, ``"hyperbolic"``,
            ``"sigmoid"``). Default: the Gaussian kernel, which gives the
            estimator of the SmoothHess paper.

    Raises:
        ValueError: ``kernel`` has no score (e.g. ``Rect``), or is unknown.

    Examples:
        >>> import torch
        >>> from captum_smoothhess import SmoothHess
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
        ...                           torch.nn.Linear(8, 3))
        >>> sh = SmoothHess(net)
        >>> x = torch.randn(2, 4)
        >>> hess = sh.attribute(x, target=0, stdevs=0.5, n_samples=200,
        ...                     generator=torch.Generator().manual_seed(0))
        >>> hess.shape
        torch.Size([2, 4, 4])
    """

    def __init__(self, forward_func: Callable[..., Any], kernel: Union[Kernel, str] = Gaussian()) -> None:
        super().__init__(forward_func)
        self.kernel = get_kernel(kernel)
        if not self.kernel.has_score:
            raise ValueError(
                f"kernel: {self.kernel!r} has no score (its density is not differentiable), "
                "so Stein's identity cannot turn its gradient samples into a Hessian; "
                "choose Gaussian(), Poisson(), Hyperbolic() or Sigmoid()"
            )

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        stdevs: StdevsType = 0.1,
        n_samples: int = 1000,
        n_samples_batch_size: Optional[int] = None,
        antithetic: bool = True,
        feature_mask: Union[Tensor, Tuple[Tensor, ...], None] = None,
        return_gradient: Literal[False] = False,
        generator: Optional[torch.Generator] = None,
        show_progress: bool = False,
        output: Literal["dense"] = "dense",
        process_group: Optional[Any] = None,
        baselines: BaselinesType = None,
        sampling: Optional[str] = None,
        return_error: Literal[False] = False,
        tolerance: None = None,
    ) -> HessianType: ...

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        stdevs: StdevsType = 0.1,
        n_samples: int = 1000,
        n_samples_batch_size: Optional[int] = None,
        antithetic: bool = True,
        feature_mask: Union[Tensor, Tuple[Tensor, ...], None] = None,
        *,
        return_gradient: Literal[True],
        generator: Optional[torch.Generator] = None,
        show_progress: bool = False,
        output: Literal["dense"] = "dense",
        process_group: Optional[Any] = None,
        baselines: BaselinesType = None,
        sampling: Optional[str] = None,
        return_error: Literal[False] = False,
        tolerance: None = None,
    ) -> Tuple[HessianType, TensorOrTuple]: ...

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        stdevs: StdevsType = 0.1,
        n_samples: int = 1000,
        n_samples_batch_size: Optional[int] = None,
        antithetic: bool = True,
        feature_mask: Union[Tensor, Tuple[Tensor, ...], None] = None,
        return_gradient: bool = False,
        generator: Optional[torch.Generator] = None,
        show_progress: bool = False,
        *,
        output: Literal["factors"],
        process_group: Optional[Any] = None,
        baselines: BaselinesType = None,
        sampling: Optional[str] = None,
        return_error: bool = False,
        tolerance: Optional[float] = None,
    ) -> SmoothHessFactors: ...

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        stdevs: StdevsType = 0.1,
        n_samples: int = 1000,
        n_samples_batch_size: Optional[int] = None,
        antithetic: bool = True,
        feature_mask: Union[Tensor, Tuple[Tensor, ...], None] = None,
        return_gradient: bool = False,
        generator: Optional[torch.Generator] = None,
        show_progress: bool = False,
        output: str = "dense",
        process_group: Optional[Any] = None,
        baselines: BaselinesType = None,
        sampling: Optional[str] = None,
        return_error: bool = False,
        tolerance: Optional[float] = None,
    ) -> Any: ...

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        stdevs: StdevsType = 0.1,
        n_samples: int = 1000,
        n_samples_batch_size: Optional[int] = None,
        antithetic: bool = True,
        feature_mask: Union[Tensor, Tuple[Tensor, ...], None] = None,
        return_gradient: bool = False,
        generator: Optional[torch.Generator] = None,
        show_progress: bool = False,
        output: OutputType = "dense",
        process_group: Optional[Any] = None,
        baselines: BaselinesType = None,
        sampling: Optional[str] = None,
        return_error: bool = False,
        tolerance: Optional[float] = None,
    ) -> Any:
        r"""Estimate the smoothed Hessian (feature interactions) at ``inputs``.

        Args:
            inputs: A tensor ``(B, *S)`` or a tuple of tensors ``(B, *S_i)``
                sharing the batch dimension. Left untouched (including
                ``requires_grad``).
            target: Captum target selecting one scalar output per example: an
                int, a tuple, a tensor or a list (one per example). May be
                ``None`` when the output is already one scalar per example.
            additional_forward_args: Extra arguments for ``forward_func``,
                passed after the inputs. As in Captum, every tensor of one
                dimension or more is repeated along its first dimension, once
                per sample (so that dimension must be the batch); other values
                are passed as they are.
            stdevs: Bandwidth ``eps`` of the kernel (a standard deviation for
                the unit-variance kernels; the scale for Poisson): a positive
                float, one per input tensor, or a tensor of per-feature
                bandwidths (diagonal covariance) broadcastable to one
                example's shape. Default: 0.1.
            n_samples: Number of gradient calls per example; even with
                ``antithetic=True``. Default: 1000. The error shrinks like
                ``n_samples ** -0.5``.
            n_samples_batch_size: Samples evaluated per forward/backward pass
                (per example). ``None`` picks as many as fit a fixed memory
                budget (``2^20`` perturbed input elements on CPU, where smaller
                batches run faster, ``2^24`` on accelerators). Memory does not
                grow with ``n_samples``; the result
                does not depend on this value beyond float rounding.
            antithetic: Use antithetic pairs ``(u, -u)`` (default), which
                cancels the odd part of the estimator's noise.
            feature_mask: Captum-style integer group ids (a tensor, or one per
                input tensor; shared ids across tensors allowed), each
                broadcastable to its input. The result is then the ``(B, G, G)``
                group interaction ``M^T H M``, ``G = max id + 1``, estimated
                directly from grouped scores and gradients.
            return_gradient: Also return the smoothed gradient (SmoothGrad for
                the Gaussian kernel) from the same samples. With
                ``output="factors"`` it is the factors object's ``gradient``
                instead, always there.
            generator: ``torch.Generator`` for the noise; the global RNG when
                ``None``. The same seed gives the same result.
            show_progress: Show a progress bar over sample chunks.
            output: ``"dense"`` (default) for the matrix, or ``"factors"`` for
                a :class:`~captum_smoothhess.factors.SmoothHessFactors` that
                keeps the ``O(n d)`` sample factors (``matvec``, ``diagonal``,
                ``group``, ``top_pairs``, ``to_dense``, ``gradient``) and never
                forms a ``d x d`` matrix; ``to_dense()`` equals the dense
                result for the same seed.
            process_group: ``torch.distributed`` process group over which to
                split the samples. By default, when a default process group
                is initialised, its ranks split the samples (every rank must
                call with the same inputs) and all-reduce the sums: each rank
                gets the single-process result for rank 0's seed, up to float
                rounding of the sums. Before sampling the ranks compare their
                calls (inputs, ``n_samples``, batch size, ``stdevs``, mask,
                tolerance, outputs asked): a difference, or a rank whose
                argument checks fail, raises on every rank instead of leaving
                the others waiting or giving a wrong result. An exception
                raised on one rank while it samples (the model failing on its
                points, say) makes the others raise once they have sampled
                their own share, before they would wait for it.
                ``False`` keeps the call in this process even then, e.g. for
                each rank to explain its own inputs.
            baselines: Captum's baselines (a number, a tensor broadcastable to
                the input, or one per input tensor). Each feature is then
                weighted by ``(x - b)``: the dense result is
                ``diag(x - b) H diag(x - b)`` and a ``feature_mask`` group value
                ``sum_{k in g, l in h} (x-b)_k H_kl (x-b)_l``, the second-order
                Taylor term of moving both groups from the baseline to the
                input (estimated from weighted grouped factors, never through
                ``d x d``); the smoothed gradient is returned as
                ``(x - b) * gradient``, the first-order term. ``None``
                (default): no weighting.
            sampling: ``"orthogonal"``: the canonical noise comes in blocks
                of ``d`` mutually orthogonal directions (a Haar-random
                rotation per example and block) with independent radii, so
                the estimate stays unbiased and the error variance at equal
                ``n_samples`` is several times smaller once there are at
                least ``d`` pairs. The Gaussian's radii (from 5 to 255 features)
                are drawn from ``chi_{d+1}`` and importance-weighted back to
                ``chi_d`` (so the Stein score has a constant length), the
                Poisson kernel's from its own law. From 256 features on,
                groups of 8 blocks share one rotation, each block mixed by a
                cheap random orthogonal matrix of its own (still exactly
                Haar; 0.5-1.8% more error variance on the ReLU oracle, for a
                fraction of the cost of independent rotations).
                ``"iid"`` (the only choice for the product kernels) is the
                paper's estimator. ``None`` (default): ``"orthogonal"`` for the
                rotation-invariant kernels (Gaussian, Poisson) when the call
                draws at least one full rotation (``d`` directions, with
                ``d <= 5792``), else ``"iid"``: fewer directions than ``d``
                gain little (1.05-1.5x) for the same cost per direction.
                Antithetic pairs apply on top of either.
            return_error: Append a
                :class:`~captum_smoothhess.SmoothHessError` to the result:
                per-entry standard errors, the estimated relative Frobenius
                error and the gradient calls per example, and the smoothed
                gradient's standard errors, from batch means over blocks of
                the samples (no extra gradient call). The error is
                calibrated when the draws fill at least 4 blocks of ``d``
                (``n_samples >= 8 d`` with antithetic pairs); with fewer, the
                blocks are split and the error, if orthogonal, is
                conservative (the directions of a block cancel each other's
                error). The blocks that share a rotation (from 256 features
                on) are not independent, but so nearly that the error stays
                calibrated with a group per block (measured on the ReLU
                oracle at d = 256 and 784). Each standard error rests
                on as many groups as there are: with 4, ``+-2 stderr`` covers
                an entry about 86% of the time (Student's t with 3 degrees of
                freedom), with 16 or more about 95%; ``relative`` is an
                estimate of the actual error, not a bound. With
                ``output="factors"``, use :meth:`SmoothHessFactors.error`
                instead.
            tolerance: Draw blocks of samples until every example's estimated
                relative Frobenius error is at most ``tolerance`` (after at
                least 8 blocks), ``n_samples`` being the cap; an example that is
                done leaves the batch and costs no more gradient calls. The
                estimate, not the actual error, meets it: on the ReLU oracle
                the actual error was at most ``tolerance`` in about half of
                the runs and at most twice it in all of them. The
                progress bar shows the current largest estimated error. Not
                with ``output="factors"``. Across processes the ranks take
                one block each per round and stop the examples after the same
                blocks as one process would.

        Returns:
            The symmetric Hessian: for a tensor input a tensor ``(B, *S, *S)``;
            for a tuple of ``k`` inputs a ``k x k`` nested tuple of blocks
            ``H[i][j]`` of shape ``(B, *S_i, *S_j)``; with ``feature_mask`` a
            tensor ``(B, G, G)``. With ``return_gradient=True``, a pair
            ``(hessian, gradient)``, the gradient shaped like ``inputs``. With
            ``return_error=True`` (or a ``tolerance``) a last element, the
            :class:`~captum_smoothhess.SmoothHessError`.

        Raises:
            ValueError: Non-positive ``stdevs``; ``n_samples`` < 1 or odd with
                antithetic pairs; NaN/Inf inputs; a ``target`` the output does
                not have or a non-scalar output without ``target``; a
                ``feature_mask`` that does not fit the inputs; an unknown
                ``sampling``, or ``"orthogonal"`` with a product kernel; a
                non-positive ``tolerance``; ``stdevs`` out of the inputs'
                dtype's range (0, subnormal or infinite there, or with an
                infinite reciprocal); a result whose sums overflow the dtype;
                ``n_samples`` beyond ``2**62``; a meta tensor as ``target``,
                ``stdevs``, ``feature_mask`` or ``baselines``; a
                ``forward_func`` that reaches a norm layer in training mode
                through a function or an attribute outside the module
                registry (its statistics would change, and no private copy
                of its model can be made).
            TypeError: A flag (``antithetic``, ``return_gradient``,
                ``return_error``, ``show_progress``) that is not a bool;
                ``inputs`` that are not a tensor or a tuple of tensors;
                complex or bool ``stdevs``.

        Warns:
            UserWarning: ``stdevs`` below the resolution of the inputs' dtype
                at the inputs (e.g. ``1e-3`` in float16 at ``|x| ~ 1``): the
                perturbed points round back to the inputs.

        Examples:
            >>> import torch
            >>> from captum_smoothhess import SmoothHess
            >>> net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(),
            ...                           torch.nn.Linear(16, 2))
            >>> x = torch.randn(3, 6)
            >>> sh = SmoothHess(net, kernel="poisson")
            >>> hess, grad = sh.attribute(x, target=1, stdevs=0.3, n_samples=400,
            ...                           return_gradient=True)
            >>> hess.shape, grad.shape
            (torch.Size([3, 6, 6]), torch.Size([3, 6]))
            >>> groups = torch.tensor([0, 0, 1, 1, 2, 2])
            >>> sh.attribute(x, target=1, feature_mask=groups).shape
            torch.Size([3, 3, 3])
            >>> hess, err = sh.attribute(x, target=1, stdevs=0.3, n_samples=100_000,
            ...                          tolerance=0.1)
            >>> bool((err.relative <= 0.1).all()), err.stderr.shape
            (True, torch.Size([3, 6, 6]))
        """
        with ranks_fail_together(process_group):
            _check_flags(
                antithetic=antithetic,
                return_gradient=return_gradient,
                return_error=return_error,
                show_progress=show_progress,
            )
            inps, is_tuple = _tupled(inputs)
            _check_inputs(inps)
            n = _check_n_samples(n_samples, antithetic)
            _check_generator(generator)
            forward = private_if_training(self.forward_func, "SmoothHess")

            def evaluator() -> Tuple[Evaluator, Optional[Tensor]]:
                # One plain forward checks `target` and the output's shape up front (and refuses a
                # training-mode norm layer of a model that a function hides from the private copy: the
                # forward is then guarded, see private_if_training).
                with torch.no_grad():
                    selected_outputs(forward, inps, target, additional_forward_args)
                weight = _baseline_weight(baselines, inps)
                return GradientEvaluator(forward, inps, target, additional_forward_args), weight

            return self._estimate(
                inps,
                is_tuple,
                evaluator,
                stdevs=stdevs,
                n=n,
                n_samples_batch_size=n_samples_batch_size,
                antithetic=antithetic,
                feature_mask=feature_mask,
                return_gradient=return_gradient,
                generator=generator,
                show_progress=show_progress,
                output=output,
                process_group=process_group,
                sampling=sampling,
                return_error=return_error,
                tolerance=tolerance,
            )

    def _estimate(
        self,
        layout: Tuple[Tensor, ...],
        is_tuple: bool,
        evaluator: Callable[[], Tuple[Evaluator, Optional[Tensor]]],
        *,
        stdevs: StdevsType,
        n: int,
        n_samples_batch_size: Optional[int],
        antithetic: bool,
        feature_mask: MaskType,
        return_gradient: bool,
        generator: Optional[torch.Generator],
        show_progress: bool,
        output: str,
        process_group: Optional[Any],
        sampling: Optional[str],
        return_error: bool,
        tolerance: Optional[float],
        layout_name: str = "input",
    ) -> Any:
        """The user's sampling arguments checked on ``layout``, then :meth:`_attribute`.

        The shared tail of SmoothHess and the layer methods: ``evaluator()``
        builds the evaluator and the baseline weight (or ``None``) once the
        arguments are known to be valid, with autograd allowed. ``layout_name``
        names the layout's tensors in messages (``"layer activation"``, say).
        """
        group = resolve_group(process_group)
        # Called inside `ranks_fail_together` (each attribute method): a check failing here still
        # takes part in the ranks' exchange below.
        _check_flags(
            antithetic=antithetic,
            return_gradient=return_gradient,
            return_error=return_error,
            show_progress=show_progress,
        )
        eps = _check_bandwidths(stdevs, layout)
        mask, n_groups = (None, 0)
        if feature_mask is not None:
            mask, n_groups = _format_feature_mask(feature_mask, layout, what=layout_name)
        _check_output_mode(output, mask, group)
        dim = sum(t[0].numel() for t in layout)
        draws = n // sampler_class(antithetic).copies
        scheme, tolerance = _check_sampling(
            self.kernel, sampling, tolerance, output, dim, draws, return_error, n // max(1, draws)
        )
        with autograd_allowed():
            evaluate, weight = evaluator()
        if group is not None:
            fields = (
                layout[0].shape[0],
                dim,
                n,
                -1 if n_samples_batch_size is None else n_samples_batch_size,
                antithetic,
                -1 if tolerance is None else tolerance,
                return_error,
                return_gradient,
                output == "factors",
                scheme == "orthogonal",
                checksum(mask),
                checksum(eps),
                sum(checksum(t) for t in layout),
            )
            agree_across_ranks(group, tuple(float(f) for f in fields), layout[0].device)
        with autograd_allowed():
            return self._attribute(
                layout,
                is_tuple,
                evaluate,
                eps,
                n,
                n_samples_batch_size,
                antithetic,
                mask,
                n_groups,
                return_gradient,
                seed_from(generator),
                show_progress,
                output,
                group,
                weight=weight,
                sampling=scheme,
                return_error=return_error or tolerance is not None,
                tolerance=tolerance,
            )

    def _attribute(
        self,
        inputs: Tuple[Tensor, ...],
        is_tuple: bool,
        evaluate: Evaluator,
        eps: Tensor,
        n: int,
        n_samples_batch_size: Optional[int],
        antithetic: bool,
        mask: Optional[Tensor],
        n_groups: int,
        return_gradient: bool,
        seed: int,
        show_progress: bool,
        output: str,
        group: Optional[Any],
        weight: Optional[Tensor] = None,
        sampling: str = "iid",
        return_error: bool = False,
        tolerance: Optional[float] = None,
    ) -> Any:
        """The estimate at the validated, tuple-formatted ``inputs``, differentiated by ``evaluate``.

        ``inputs`` give the flat layout (the evaluator's points and the
        result's shapes); the evaluator says which scalar is differentiated
        and how the points reach the model, so layer and loss variants reuse
        everything else. ``weight`` ``(B, d)`` (input minus baseline) weights
        every feature of the scores and gradient terms before any grouping.
        """
        x = _flatten(inputs)
        batch, dim = x.shape
        sampler_type = sampler_class(antithetic)
        draws = n // sampler_type.copies
        if group is not None:
            seed = distributed_seed(seed, group, x.device)
        sampler = sampler_type(self.kernel, batch, dim, seed, x.device, x.dtype, draws, sampling)
        chunk = chunk_size(n_samples_batch_size, draws, sampler, x.device)
        if group is not None and n_samples_batch_size is None:
            # At least one chunk per rank (the ranks take turns), and the same on every rank.
            chunk = min(chunk, max(1, -(-draws // torch.distributed.get_world_size(group))))
            chunk = agreed_chunk(chunk, group, x.device)
        inv_eps = 1.0 / eps
        copies = sampler_type.copies if return_error else None
        sums: Any = (
            _KeptFactors()
            if output == "factors"
            else _HessianSums(batch, dim, inv_eps, mask, n_groups, copies)
        )
        reduction: Any = sums if weight is None else _Weighted(sums, weight)
        if (
            isinstance(sums, _HessianSums)
            and weight is None
            and mask is None
            and not return_error
            and sampler.shares_rotations
            and x.dtype in FULL
        ):
            reduction = _RotatedSums(sums, sampler)
        tracking = None
        if return_error:
            block = sampler.block_length or dim
            tracking = Tracking(group_length(block, draws), tolerance, min_groups=2 * MIN_GROUPS)
            if tolerance is not None and n_samples_batch_size is None:
                # Small chunks, so that examples stop soon after reaching the tolerance.
                chunk = min(chunk, max(tracking.group, 128 // sampler_type.copies))
        grad_sum = stein_estimate(
            x, eps, evaluate, sampler, draws, chunk, reduction, group, show_progress, tracking=tracking
        )
        if weight is not None:
            grad_sum = grad_sum * weight
        calls = torch.full((batch,), n, dtype=torch.long, device=x.device)
        grad_stderr: Optional[TensorOrTuple] = None
        if tracking is not None:
            assert tracking.gradient is not None and tracking.draws is not None
            calls = (tracking.draws * sampler_type.copies).round().long()
            spread = tracking.gradient.variance().sqrt()
            spread = spread if weight is None else spread * weight.abs()
            grad_stderr = _format_flat(spread.to(x.dtype), inputs, is_tuple)
        # (Summed in float32 for half-precision inputs: rounded back here.)
        gradient = _format_flat((grad_sum / calls[:, None].to(grad_sum.dtype)).to(x.dtype), inputs, is_tuple)
        if isinstance(sums, _KeptFactors):
            return SmoothHessFactors(
                sums.scores,
                sums.diffs,
                inv_eps,
                n,
                gradient,
                inputs,
                is_tuple,
                None if tracking is None else tracking.group,
                sampler_type.copies,
                grad_stderr,
            )
        hess = sums.result(n)
        refuse_half_overflow(hess, "estimate")
        out_h: HessianType = hess if mask is not None else _split_hessian(hess, inputs, is_tuple)
        result: Tuple[Any, ...] = (out_h, gradient) if return_gradient else (out_h,)
        if tracking is not None:
            stderr = sums.stderr()
            refuse_half_overflow(stderr, "standard error")
            out_e: HessianType = stderr if mask is not None else _split_hessian(stderr, inputs, is_tuple)
            result += (SmoothHessError(out_e, sums.relative(), calls, grad_stderr),)
        return result if len(result) > 1 else result[0]


def _check_bandwidths(stdevs: StdevsType, layout: Tuple[Tensor, ...]) -> Tensor:
    """The flat bandwidths (:func:`_format_stdevs`), also checked against the inputs' dtype.

    ``stdevs`` that are positive numbers may still be 0 or infinite in the inputs' dtype, or have an
    infinite reciprocal (the scores are divided by them): the estimate would be NaN or Inf. Bandwidths
    below the dtype's resolution at the inputs round the perturbed points back to the inputs (the
    estimate then vanishes, with no spread to report): a warning says so.
    """
    eps = _format_stdevs(stdevs, layout)  # (numbers beyond the dtype's range are refused there)
    if eps.numel() == 0 or not eps.is_floating_point():
        return eps
    if not bool(torch.isfinite(eps.reciprocal()).all()):
        raise ValueError(
            f"stdevs: the smallest bandwidth, {float(eps.min()):.3g}, is 0 or subnormal in {eps.dtype}, "
            "whose 1/stdevs is then infinite; use a larger stdevs or float32/float64 inputs"
        )
    x = _flatten(layout)
    if x.is_floating_point():
        spacing = x.detach().abs().amax(0) * torch.finfo(x.dtype).eps
        lost = int((eps <= spacing).sum())
        if lost:
            warnings.warn(
                f"stdevs: the bandwidth of {lost} feature(s) is below the resolution of {x.dtype} at the "
                "inputs, so the perturbed points round back to the inputs and their interactions come out "
                "as 0; use a larger stdevs or a wider dtype",
                UserWarning,
                stacklevel=5,
            )
    return eps


def _baseline_weight(baselines: BaselinesType, inputs: Tuple[Tensor, ...]) -> Optional[Tensor]:
    """``(B, d)`` input minus baseline, flat (``None`` without baselines): the features' weights."""
    if baselines is None:
        return None
    return _flatten(inputs) - _flatten(_format_baselines(baselines, inputs))


def _check_sampling(
    kernel: Kernel,
    sampling: Optional[str],
    tolerance: Optional[float],
    output: str,
    dim: int,
    draws: int,
    return_error: bool = False,
    copies: int = 1,
) -> Tuple[str, Optional[float]]:
    """The sampling scheme for ``kernel`` (``dim`` features, ``draws`` noise draws) and a checked
    ``tolerance`` (dense output only). An error estimate (``return_error`` or a ``tolerance``) needs
    two draws at least: the spread of one group is unknown (its standard errors would be NaN)."""
    if (return_error or tolerance is not None) and draws < 2:
        raise ValueError(
            f"n_samples: estimating the error (return_error or tolerance) needs at least 2 independent "
            f"draws, i.e. n_samples >= {2 * copies}; got {draws * copies}"
        )
    if tolerance is not None:
        tolerance = _check_number(tolerance, "tolerance", allow_zero=False)
        if output == "factors":
            raise ValueError(
                "tolerance: examples leave the batch at different sample counts, which needs "
                "output='dense' (the factors keep every sample of every example)"
            )
    return resolve_sampling(sampling, kernel, dim, draws), tolerance
