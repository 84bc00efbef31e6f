"""SmoothHess inside the model: interactions of a layer's units, and of one hidden unit.

:class:`LayerSmoothHess` smooths the model as a function of one layer's
activation: the kernel noise is added to the layer's output (or input) by a
forward hook that replaces the activation with the perturbed one, and the
gradient is taken with respect to it, so the model's inputs may be token ids.
For the same seed the result equals :class:`~captum_smoothhess.SmoothHess` on
the function that maps the layer's activation to the model's output.

:class:`NeuronSmoothHess` is the SmoothHess of one hidden unit (Captum's
``neuron_selector``) with respect to the inputs.

Both are shells around the estimator core: each adds one
:class:`~captum_smoothhess._evaluators.Evaluator`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Literal, Optional, Tuple, Union, cast

import torch
from captum.attr import GradientAttribution, LayerAttribution, NeuronAttribution
from torch import Tensor, nn

from . import _hooks
from ._captum import (
    ExpansionTypes,
    TargetType,
    _expand_target,
    _format_additional_forward_args,
    _run_forward,
    _verify_select_neuron,
    log_usage,
)
from ._evaluators import Evaluator, _subset_rows, select_output
from ._layout import HessianType, TensorOrTuple, _flatten
from ._model import counterpart, module_of, private_if_training
from ._stein import ranks_fail_together
from ._validation import (
    BaselinesType,
    MaskType,
    StdevsType,
    _check_generator,
    _check_inputs,
    _check_n_samples,
    _format_baselines,
    _tupled,
)
from .factors import SmoothHessFactors
from .kernels import Gaussian, Kernel
from .smoothhess import SmoothHess, _baseline_weight

__all__ = ["LayerSmoothHess", "NeuronSmoothHess"]

NeuronSelector = Union[int, Tuple[Union[int, slice], ...], Callable[..., Tensor]]


def _device_ids(forward_func: Any, device_ids: Optional[List[int]]) -> Optional[List[int]]:
    return device_ids if device_ids is not None else getattr(forward_func, "device_ids", None)


def _repeat(inputs: Tuple[Tensor, ...], copies: int) -> Tuple[Tensor, ...]:
    return tuple(inp.repeat_interleave(copies, dim=0) for inp in inputs)


def _check_output(out: Any) -> Tensor:
    if not isinstance(out, Tensor):
        raise TypeError(f"forward_func: expected a Tensor output, got {type(out).__name__}")
    return out


def _why_not(layer: nn.Module, forward_func: Any, to_input: bool) -> str:
    """The likely reason a hook on ``layer`` saw no activation, for the error message."""
    root = module_of(forward_func)
    if isinstance(layer, torch.jit.ScriptModule) or isinstance(root, torch.jit.ScriptModule):
        return (
            ": TorchScript runs the submodules of a scripted model without Python hooks; attribute "
            "on the model before torch.jit.script / torch.jit.trace"
        )
    return f" (or its {'input' if to_input else 'output'} has no floating-point tensor)"


def _check_layer(layer: Any) -> None:
    if not isinstance(layer, nn.Module):
        raise TypeError(f"layer: expected an nn.Module inside forward_func, got {type(layer).__name__}")


def layer_activation(
    forward_func: Callable[..., Any],
    layer: nn.Module,
    inputs: Tuple[Tensor, ...],
    additional_forward_args: Any,
    to_input: bool,
    device_ids: Optional[List[int]],
) -> Tuple[Tuple[Tensor, ...], bool, Tensor]:
    """One plain forward: ``(activation parts, is_tuple, model output)`` of ``layer`` at ``inputs``.

    (A batch norm in training mode that the method could not copy privately is refused before it updates
    its running statistics: ``forward_func`` comes from
    :func:`~captum_smoothhess._model.private_if_training`.)
    """
    afa = _format_additional_forward_args(additional_forward_args)
    with torch.no_grad(), _hooks.capture(layer, to_input, device_ids) as hook:
        out = _check_output(_run_forward(forward_func, inputs, None, afa))
    if not hook.saved:
        why = _why_not(layer, forward_func, to_input)
        raise ValueError(f"layer: {type(layer).__name__} was not called by forward_func{why}")
    parts = tuple(p.detach() for p in _hooks.gather(hook.saved, device_ids))
    batch = inputs[0].shape[0]
    for i, p in enumerate(parts):
        if p.dim() == 0 or p.shape[0] != batch:
            raise ValueError(
                f"layer: activation {i} has shape {tuple(p.shape)}, expected the batch ({batch}) first"
            )
    return parts, hook.is_tuple, out


def _constant_in(out: Tensor, parts: Tuple[Tensor, ...]) -> Tensor:
    """``out``, kept in the autograd graph of ``parts`` when it does not depend on them (zero gradient).

    A floating-point scalar that autograd does not connect to the perturbed
    points (the layer's activation is unused, or the unit is constant) has a
    zero gradient and Hessian; without this its ``requires_grad`` would come
    from the model's parameters, so a frozen model would be refused where a
    trainable one gives zeros. Integer outputs are left to the core's error.
    """
    if out.requires_grad or not out.is_floating_point():
        return out
    anchor = parts[0].reshape(parts[0].shape[0], -1)[:, 0]
    return out + (anchor * 0).to(out.dtype)


class _LayerEvaluator(Evaluator):
    """The selected output as a function of ``layer``'s activation, substituted by a hook.

    Points are perturbed activations in the flat layout of ``activation``;
    the model runs on the inputs repeated per copy (Captum's
    ``repeat_interleave`` order) with the layer's activation replaced by them.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: nn.Module,
        inputs: Tuple[Tensor, ...],
        activation: Tuple[Tensor, ...],
        target: TargetType,
        additional_forward_args: Any,
        to_input: bool,
        device_ids: Optional[List[int]],
    ) -> None:
        super().__init__(forward_func, activation, additional_forward_args)
        self.layer = layer
        self.model_inputs = inputs
        self.target = target
        self.to_input = to_input
        self.device_ids = device_ids
        self._copies: Dict[int, Tuple[Tuple[Tensor, ...], TargetType]] = {}

    def _subset_fields(self, index: Tensor, rows: list, batch: int) -> None:
        # The model's inputs share the batch size (_check_inputs); a tuple
        # target is one multi-index for all examples, a list or tensor is per example.
        self.model_inputs = tuple(inp[index.to(inp.device)] for inp in self.model_inputs)
        if not isinstance(self.target, tuple):
            self.target = _subset_rows(self.target, index, rows, batch)
        self._copies = {}  # a new cache: the copy shares the original's dict

    def _scalars(self, parts: Tuple[Tensor, ...], copies: int) -> Tensor:
        if copies not in self._copies:
            target = _expand_target(self.target, copies, ExpansionTypes.repeat_interleave)
            self._copies[copies] = (_repeat(self.model_inputs, copies), target)
        inputs, target = self._copies[copies]
        with _hooks.replace(self.layer, self.to_input, self.device_ids, parts):
            out = _run_forward(self.forward_func, inputs, None, self._expanded_afa(copies))
        return _constant_in(select_output(out, target, parts[0].shape[0]), parts)


class _NeuronEvaluator(Evaluator):
    """One hidden unit (Captum's ``neuron_selector``) as a function of the inputs."""

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: nn.Module,
        inputs: Tuple[Tensor, ...],
        neuron_selector: NeuronSelector,
        additional_forward_args: Any,
        to_input: bool,
        device_ids: Optional[List[int]],
    ) -> None:
        super().__init__(forward_func, inputs, additional_forward_args)
        self.layer = layer
        self.selector = neuron_selector
        self.to_input = to_input
        self.device_ids = device_ids

    def _scalars(self, parts: Tuple[Tensor, ...], copies: int) -> Tensor:
        with _hooks.capture(self.layer, self.to_input, self.device_ids) as hook:
            _run_forward(self.forward_func, parts, None, self._expanded_afa(copies))
        if not hook.saved:
            raise ValueError(f"layer: {type(self.layer).__name__} was not called by forward_func")
        unit = select_neuron(_hooks.gather(hook.saved, self.device_ids), self.selector, parts[0].shape[0])
        return _constant_in(unit, parts)


def select_neuron(activation: Tuple[Tensor, ...], selector: NeuronSelector, rows: int) -> Tensor:
    """The selected unit, one value per example ``(rows,)``, or an error naming ``neuron_selector``."""
    shapes = [tuple(a.shape) for a in activation]
    try:
        sel = _verify_select_neuron(activation, selector)
    except (IndexError, AssertionError, RuntimeError, TypeError) as err:
        raise ValueError(
            f"neuron_selector: {selector!r} does not select one unit per example of the layer's "
            f"activation of shape(s) {shapes} ({err})"
        ) from err
    if not isinstance(sel, Tensor):
        raise TypeError(
            f"neuron_selector: the callable must return a tensor with one value per example, "
            f"got {type(sel).__name__} from the layer's activation of shape(s) {shapes}"
        )
    if sel.dim() == 2 and sel.shape[1] == 1:
        sel = sel[:, 0]
    if sel.shape != (rows,):
        raise ValueError(
            f"neuron_selector: {selector!r} selects values of shape {tuple(sel.shape)} from the layer's "
            f"activation of shape(s) {shapes}, not one unit per example ({rows},); give one index per "
            "dimension of an example's activation (slices are summed), or a callable returning "
            "one value per example"
        )
    return sel


def _weight(
    forward_func: Callable[..., Any],
    layer: nn.Module,
    inputs: Tuple[Tensor, ...],
    activation: Tuple[Tensor, ...],
    baselines: BaselinesType,
    additional_forward_args: Any,
    to_input: bool,
    device_ids: Optional[List[int]],
) -> Optional[Tensor]:
    """``a - b`` in the flat layout: the layer's activation at the inputs minus at the baselines."""
    if baselines is None:
        return None
    base_inputs = _format_baselines(baselines, inputs)
    base_act, _, _ = layer_activation(
        forward_func, layer, base_inputs, additional_forward_args, to_input, device_ids
    )
    if len(base_act) != len(activation) or any(b.shape != a.shape for b, a in zip(base_act, activation)):
        raise ValueError(
            "baselines: the layer's activation at the baselines has shape(s) "
            f"{[tuple(b.shape) for b in base_act]}, not the inputs' {[tuple(a.shape) for a in activation]}"
        )
    return _flatten(activation) - _flatten(base_act)


class LayerSmoothHess(LayerAttribution, GradientAttribution):
    """SmoothHess with respect to one layer's activation: interactions of its units.

    The kernel noise is added to ``layer``'s output (or its input, with
    ``attribute_to_layer_input=True``) through a forward hook, and the model's
    output is differentiated with respect to that activation, one forward and
    one backward pass per chunk of samples. The model's ``inputs`` are never
    perturbed, so they may be integer token ids (attribute to the embedding
    layer). For the same seed the result is exactly what
    :class:`~captum_smoothhess.SmoothHess` returns on the function from the
    layer's activation to the model's output.

    A layer whose output (or input) is a tuple is attributed as a tuple
    layout: all its floating-point tensors, in order (other entries, e.g.
    ``None``, pass through), giving nested blocks as for tuple inputs. Nested
    tuples, lists and dicts (an LSTM's ``(out, (h, c))``, a dict of outputs)
    are flattened depth first, dicts in key order; a layer's input is its
    positional arguments, then its keyword arguments when these hold
    floating-point tensors. Every attributed tensor must have the batch
    first. In-place operations of the model after the layer (e.g.
    ``ReLU(inplace=True)``) are allowed.

    Args:
        forward_func: The model or any function of the inputs.
        layer: The ``nn.Module`` inside ``forward_func`` whose activation is
            smoothed; called once per forward.
        kernel: A kernel with a score, or its name. Default: Gaussian.
        device_ids: The device ids of a ``DataParallel`` model, when
            ``forward_func`` wraps one without exposing them (as in Captum).

    Examples:
        >>> import torch
        >>> from captum_smoothhess import LayerSmoothHess
        >>> net = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Flatten(),
        ...                           torch.nn.Linear(12, 8), torch.nn.ReLU(),
        ...                           torch.nn.Linear(8, 2))
        >>> ids = torch.tensor([[1, 2, 3], [4, 5, 0]])
        >>> lsh = LayerSmoothHess(net, net[0])
        >>> lsh.attribute(ids, target=0, stdevs=0.3, n_samples=100).shape
        torch.Size([2, 3, 4, 3, 4])
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: nn.Module,
        kernel: Union[Kernel, str] = Gaussian(),
        device_ids: Optional[List[int]] = None,
    ) -> None:
        _check_layer(layer)
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        GradientAttribution.__init__(self, forward_func)
        self._core = SmoothHess(forward_func, kernel)
        self.kernel = self._core.kernel

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        baselines: BaselinesType = None,
        stdevs: StdevsType = 0.1,
        n_samples: int = 1000,
        n_samples_batch_size: Optional[int] = None,
        antithetic: bool = True,
        feature_mask: MaskType = None,
        attribute_to_layer_input: bool = False,
        return_gradient: bool = False,
        generator: Optional[torch.Generator] = None,
        show_progress: bool = False,
        output: Literal["dense", "factors"] = "dense",
        process_group: Optional[Any] = None,
        sampling: Optional[str] = None,
        return_error: bool = False,
        tolerance: Optional[float] = None,
    ) -> Union[HessianType, Tuple[HessianType, TensorOrTuple], SmoothHessFactors]:
        r"""Estimate the smoothed Hessian of the output with respect to the layer's activation.

        Args:
            inputs: The model's inputs: a tensor or a tuple of tensors with
                the batch first; integer tensors (token ids) are allowed.
            target: Captum target selecting one scalar output per example.
            additional_forward_args: Extra arguments for ``forward_func``,
                expanded per sample as in Captum.
            baselines: Baselines in input space (a number such as a pad-token
                id, a tensor broadcastable to the inputs, or one per input),
                mapped to the layer by the model as in Captum's
                ``LayerIntegratedGradients``. Each unit is then weighted by
                ``(a - b)``, ``a``/``b`` the layer's activation at the inputs
                and at the baselines: with ``feature_mask`` the group value is
                ``sum_{k in g, l in h} (a-b)_k H_kl (a-b)_l``. ``None``: no
                weighting.
            stdevs: Bandwidth of the kernel in the layer's units (a float,
                one per tensor of a tuple activation, or per-unit tensors).
            n_samples: Gradient calls per example (even with antithetic pairs).
            n_samples_batch_size: Samples per forward/backward pass.
            antithetic: Use antithetic pairs ``(u, -u)`` (default).
            feature_mask: Captum-style integer group ids over the layer's
                activation (e.g. :func:`~captum_smoothhess.tokens.token_feature_mask`
                for a ``(B, T, E)`` embedding): the result is ``(B, G, G)``.
            attribute_to_layer_input: Smooth the layer's input instead of its
                output.
            return_gradient: Also return the smoothed gradient at the layer
                (times ``a - b`` with baselines).
            generator: ``torch.Generator`` for the noise (same seed, same result).
            show_progress: Show a progress bar over sample chunks.
            output: ``"dense"`` or ``"factors"`` (as in SmoothHess).
            process_group: As in :meth:`SmoothHess.attribute`.
            sampling: As in :meth:`SmoothHess.attribute` (by default
                ``"orthogonal"`` for the Gaussian and Poisson kernels where a
                full rotation is drawn, else ``"iid"``).
            return_error: As in :meth:`SmoothHess.attribute`: append a
                :class:`~captum_smoothhess.SmoothHessError`.
            tolerance: As in :meth:`SmoothHess.attribute`.

        Returns:
            A layer activation ``(B, *L)`` gives ``(B, *L, *L)``; a tuple
            activation a nested tuple of blocks; with ``feature_mask``
            ``(B, G, G)``; with ``return_gradient`` the pair
            ``(hessian, gradient)``, the gradient shaped like the activation.

        Raises:
            ValueError: As SmoothHess, naming the argument; ``layer`` when it
                is not called (or called inside TorchScript), called twice
                per forward, or its activation is not batch first;
                ``baselines`` that do not fit the inputs, or fractional for
                integer inputs; ``forward_func`` when it is a plain function
                running a norm layer that would update its running statistics
                (training mode), since no private copy of its model can be made.
            TypeError: ``layer`` that is not an ``nn.Module``, or whose
                activation is not floating-point.

        Examples:
            >>> import torch
            >>> from captum_smoothhess import LayerSmoothHess
            >>> from captum_smoothhess.tokens import token_feature_mask
            >>> emb = torch.nn.Embedding(10, 4)
            >>> net = torch.nn.Sequential(emb, torch.nn.Flatten(), torch.nn.Linear(12, 2))
            >>> ids = torch.tensor([[1, 2, 3]])
            >>> tokens = LayerSmoothHess(net, emb).attribute(
            ...     ids, target=1, baselines=0, feature_mask=token_feature_mask(3, 4),
            ...     stdevs=0.3, n_samples=50)
            >>> tokens.shape
            torch.Size([1, 3, 3])
        """
        with ranks_fail_together(process_group):
            inps, _ = _tupled(inputs)
            _check_inputs(inps, allow_integer=True)
            n = _check_n_samples(n_samples, antithetic)
            _check_generator(generator)
            device_ids = _device_ids(self.forward_func, self.device_ids)
            forward = private_if_training(self.forward_func, "LayerSmoothHess")
            layer = counterpart(cast(nn.Module, self.layer), self.forward_func, forward)
            activation, is_tuple, out = layer_activation(
                forward,
                layer,
                inps,
                additional_forward_args,
                attribute_to_layer_input,
                device_ids,
            )
            _check_inputs(activation, "layer")
            select_output(out, target, inps[0].shape[0])
            weight = _weight(
                forward,
                layer,
                inps,
                activation,
                baselines,
                additional_forward_args,
                attribute_to_layer_input,
                device_ids,
            )
            evaluate = _LayerEvaluator(
                forward,
                layer,
                inps,
                activation,
                target,
                additional_forward_args,
                attribute_to_layer_input,
                device_ids,
            )
            return self._core._estimate(
                activation,
                is_tuple,
                lambda: (evaluate, weight),
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
                layout_name="layer input" if attribute_to_layer_input else "layer activation",
            )


class NeuronSmoothHess(NeuronAttribution, GradientAttribution):
    """SmoothHess of one hidden unit with respect to the inputs.

    The unit is chosen as in Captum's neuron methods: ``neuron_selector`` is
    an int or a tuple indexing one example's activation of ``layer`` (slices
    are summed), or a callable from the layer's activation to one value per
    example. The inputs are perturbed as in
    :class:`~captum_smoothhess.SmoothHess`, and for the same seed the result
    equals SmoothHess of the function that returns that unit.

    Args:
        forward_func: The model or any function of the inputs.
        layer: The ``nn.Module`` inside ``forward_func`` holding the unit.
        kernel: A kernel with a score, or its name. Default: Gaussian.
        device_ids: The device ids of a ``DataParallel`` model, as in Captum.

    Examples:
        >>> import torch
        >>> from captum_smoothhess import NeuronSmoothHess
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
        ...                           torch.nn.Linear(8, 2))
        >>> nsh = NeuronSmoothHess(net, net[1])
        >>> nsh.attribute(torch.randn(3, 4), neuron_selector=5, stdevs=0.3,
        ...               n_samples=100).shape
        torch.Size([3, 4, 4])
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: nn.Module,
        kernel: Union[Kernel, str] = Gaussian(),
        device_ids: Optional[List[int]] = None,
    ) -> None:
        _check_layer(layer)
        NeuronAttribution.__init__(self, forward_func, layer, device_ids)
        GradientAttribution.__init__(self, forward_func)
        self._core = SmoothHess(forward_func, kernel)
        self.kernel = self._core.kernel

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        neuron_selector: NeuronSelector,
        additional_forward_args: Any = None,
        baselines: BaselinesType = None,
        stdevs: StdevsType = 0.1,
        n_samples: int = 1000,
        n_samples_batch_size: Optional[int] = None,
        antithetic: bool = True,
        feature_mask: MaskType = None,
        attribute_to_neuron_input: bool = False,
        return_gradient: bool = False,
        generator: Optional[torch.Generator] = None,
        show_progress: bool = False,
        output: Literal["dense", "factors"] = "dense",
        process_group: Optional[Any] = None,
        sampling: Optional[str] = None,
        return_error: bool = False,
        tolerance: Optional[float] = None,
    ) -> Union[HessianType, Tuple[HessianType, TensorOrTuple], SmoothHessFactors]:
        r"""Estimate the smoothed Hessian of the selected unit with respect to the inputs.

        Args:
            inputs: A tensor or a tuple of floating-point tensors, batch first.
            neuron_selector: An int, a tuple of ints or slices (into one
                example's activation; slices are summed), or a callable from
                the activation to one value per example (Captum's forms).
            additional_forward_args: Extra arguments for ``forward_func``.
            baselines: As in :meth:`SmoothHess.attribute` (input space).
            stdevs: Bandwidth of the kernel in input units.
            n_samples: Gradient calls per example.
            n_samples_batch_size: Samples per forward/backward pass.
            antithetic: Use antithetic pairs ``(u, -u)`` (default).
            feature_mask: Captum-style group ids over the inputs.
            attribute_to_neuron_input: Select the unit from the layer's input
                instead of its output.
            return_gradient: Also return the unit's smoothed gradient.
            generator: ``torch.Generator`` for the noise.
            show_progress: Show a progress bar over sample chunks.
            output: ``"dense"`` or ``"factors"``.
            process_group: As in :meth:`SmoothHess.attribute`.
            sampling: As in :meth:`SmoothHess.attribute` (by default
                ``"orthogonal"`` for the Gaussian and Poisson kernels where a
                full rotation is drawn, else ``"iid"``).
            return_error: As in :meth:`SmoothHess.attribute`: append a
                :class:`~captum_smoothhess.SmoothHessError`.
            tolerance: As in :meth:`SmoothHess.attribute`.

        Returns:
            As :meth:`SmoothHess.attribute`: ``(B, *S, *S)`` for a tensor
            input, nested blocks for a tuple, ``(B, G, G)`` with a mask.

        Raises:
            ValueError: As SmoothHess; ``neuron_selector`` when it does not
                select one unit per example; ``layer`` and ``forward_func`` as
                in :meth:`LayerSmoothHess.attribute`.
            TypeError: ``layer`` that is not an ``nn.Module``; a
                ``neuron_selector`` callable that does not return a tensor.

        Examples:
            >>> import torch
            >>> from captum_smoothhess import NeuronSmoothHess
            >>> net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.ReLU())
            >>> pick = lambda act: act[:, 0] * act[:, 1]
            >>> NeuronSmoothHess(net, net[1]).attribute(
            ...     torch.randn(2, 3), neuron_selector=pick, n_samples=20).shape
            torch.Size([2, 3, 3])
        """
        with ranks_fail_together(process_group):
            inps, is_tuple = _tupled(inputs)
            _check_inputs(inps)
            n = _check_n_samples(n_samples, antithetic)
            _check_generator(generator)
            device_ids = _device_ids(self.forward_func, self.device_ids)
            forward = private_if_training(self.forward_func, "NeuronSmoothHess")
            layer = counterpart(cast(nn.Module, self.layer), self.forward_func, forward)
            activation, _, _ = layer_activation(
                forward,
                layer,
                inps,
                additional_forward_args,
                attribute_to_neuron_input,
                device_ids,
            )
            select_neuron(activation, neuron_selector, inps[0].shape[0])
            weight = _baseline_weight(baselines, inps)
            evaluate = _NeuronEvaluator(
                forward,
                layer,
                inps,
                neuron_selector,
                additional_forward_args,
                attribute_to_neuron_input,
                device_ids,
            )
            return self._core._estimate(
                inps,
                is_tuple,
                lambda: (evaluate, weight),
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
