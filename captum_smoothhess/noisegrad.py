"""NoiseGrad and FusionGrad: attributions smoothed in weight space.

NoiseGrad averages an attribution over perturbed copies of the model's
weights, ``theta -> theta * (1 + eps u)`` (multiplicative, the NoiseGrad
paper's ``N(1, sigma^2)`` for the Gaussian kernel) or ``theta + eps u``
(additive), ``u`` drawn from a kernel. FusionGrad perturbs the weights and the
inputs together, each with its own kernel and bandwidth.

How the perturbed weights reach the wrapped method without touching the
user's model:

* the wrapped method is shallow-copied once, and the copy's ``forward_func``
  is replaced by a proxy; the user's method object is not changed;
* NoiseTunnel's own loop is reused: it repeats every example once per weight
  draw (Captum's ``repeat_interleave`` order) and expands ``target``,
  ``baselines``, ``additional_forward_args`` and ``feature_mask`` alike;
* one extra additional forward argument, the draw index of each row, travels
  with the rows through whatever the wrapped method does with them (scaled
  copies in IntegratedGradients, internal batches, ...), since Captum keeps
  additional forward args aligned with the inputs;
* the proxy groups the rows by draw and evaluates the model with
  ``torch.func.functional_call`` on the perturbed weights, all draws in one
  ``torch.func.vmap`` call where the model allows it, else in a loop over the
  draws (also whenever a module has forward hooks, since hooked tensors
  must not escape ``vmap``). Buffers are passed as copies, so even a model
  in training mode with batch norm leaves its running statistics untouched.
  Layer and neuron methods are refused: their hooks would see one forward
  call per draw rather than the whole batch. No parameter or
  buffer of the user's model is edited, and ``functional_call`` restores the
  module's attributes when a call raises.
"""

from __future__ import annotations

import copy
import itertools
import re
from typing import Any, Callable, Collection, Dict, List, Optional, Tuple, Union

import torch
from captum.attr import Attribution, LayerAttribution, NeuronAttribution, NoiseTunnel
from torch import Tensor, nn
from torch.func import functional_call, vmap

from ._captum import _format_additional_forward_args, log_usage
from ._sampling import NoiseStream, seed_from
from ._validation import (
    StdevsType,
    _check_generator,
    _check_inputs,
    _check_number,
    _format_stdevs,
)
from .kernels import Gaussian, Kernel, get_kernel
from .noise_tunnel import (
    AttributionOutput,
    _call_state,
    _CallState,
    _check_nt_args,
    _current_state,
    _GeneratorNoiseTunnel,
    _InputNoise,
)

__all__ = ["FusionGrad", "NoiseGrad"]

ParamFilter = Union[None, str, Callable[[str], bool], Collection[str]]
NOISE_TYPES = ("multiplicative", "additive")


def _module_of(forward_func: Any) -> nn.Module:
    """The ``nn.Module`` whose weights get noise, or a clear ``TypeError``."""
    if isinstance(forward_func, nn.Module):
        return forward_func
    owner = getattr(forward_func, "__self__", None)
    if isinstance(owner, nn.Module) and getattr(forward_func, "__name__", "") in (
        "forward",
        "__call__",
    ):
        return owner
    raise TypeError(
        "attribution_method: weight-space smoothing needs the wrapped method's "
        "forward_func to be a torch.nn.Module (or its bound forward), got "
        f"{type(forward_func).__name__}; wrap the function in an nn.Module"
    )


def _select_names(module: nn.Module, param_filter: ParamFilter) -> List[str]:
    names = [n for n, p in module.named_parameters() if p.is_floating_point()]
    if param_filter is None:
        chosen = names
    elif isinstance(param_filter, str):
        pattern = re.compile(param_filter)
        chosen = [n for n in names if pattern.search(n)]
    elif callable(param_filter):
        chosen = [n for n in names if param_filter(n)]
    else:
        wanted = set(param_filter)
        unknown = sorted(wanted - set(names))
        if unknown:
            raise ValueError(f"param_filter: the model has no floating parameter(s) named {unknown}")
        chosen = [n for n in names if n in wanted]
    if not chosen:
        raise ValueError(f"param_filter: {param_filter!r} selects no floating parameter of the model")
    return chosen


class _WeightNoise:
    """Perturbed copies of the selected parameters, addressable by draw index."""

    def __init__(
        self,
        module: nn.Module,
        names: List[str],
        kernel: Kernel,
        eps: float,
        multiplicative: bool,
        seed: int,
    ) -> None:
        params = dict(module.named_parameters())
        self.base = {n: params[n].detach() for n in names}
        first = self.base[names[0]]
        dtype = first.dtype
        for t in self.base.values():
            dtype = torch.promote_types(dtype, t.dtype)
        self.sizes = [t.numel() for t in self.base.values()]
        self.stream = NoiseStream(kernel, 1, sum(self.sizes), seed, first.device, dtype)
        self.eps = eps
        self.multiplicative = multiplicative
        self.offset = 0

    def take(self, n: int) -> Dict[str, Tensor]:
        """The next ``n`` draws: ``{name: (n, *shape)}``."""
        u = self.stream.take(self.offset, self.offset + n)[0]  # (n, d_w)
        self.offset += n
        out = {}
        for (name, base), part in zip(self.base.items(), torch.split(u, self.sizes, dim=1)):
            noise = (self.eps * part).reshape(n, *base.shape).to(base.device, base.dtype)
            out[name] = base * (1 + noise) if self.multiplicative else base + noise
        return out


class NoiseGrad(_GeneratorNoiseTunnel):
    """Attributions averaged over kernel noise on the model's weights (NoiseGrad).

    For an attribution method ``A`` of a model with weights ``theta``,
    ``nt_type="smoothgrad"`` estimates ``E_u[A(x; theta * (1 + eps u))]``
    (or ``theta + eps u`` with ``noise="additive"``), ``u`` drawn from
    ``kernel`` independently per draw, from ``nt_samples`` weight draws shared
    by all examples of the batch; ``"smoothgrad_sq"`` and ``"vargrad"`` give
    the mean square and the variance. By default every floating parameter
    gets noise; ``param_filter`` narrows the set. The user's model is never
    modified: the perturbed weights are passed through
    ``torch.func.functional_call`` (batched over draws with ``vmap`` where
    the model allows it), see the module documentation.

    Args:
        attribution_method: A Captum attribution method whose ``forward_func``
            is an ``nn.Module`` (or its bound ``forward``), e.g.
            ``Saliency(model)`` or ``IntegratedGradients(model)``.
        kernel: Kernel of the weight noise, or its name. The radial Poisson
            kernel treats all perturbed weights of one draw as one point.
        noise: ``"multiplicative"`` (default) or ``"additive"``.
        param_filter: Which parameters get noise: ``None`` (all), a regular
            expression searched in the parameter names, a predicate on the
            name, or a collection of names.

    Raises:
        TypeError: ``attribution_method`` is not a Captum ``Attribution``, is a
            layer or neuron method, or its ``forward_func`` holds no ``nn.Module``.
        ValueError: ``noise`` or ``kernel`` unknown.

    Examples:
        >>> import torch
        >>> from captum.attr import Saliency
        >>> from captum_smoothhess.noisegrad import NoiseGrad
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
        ...                           torch.nn.Linear(8, 3))
        >>> ng = NoiseGrad(Saliency(net), param_filter=r"weight")
        >>> x = torch.randn(2, 4)
        >>> attr = ng.attribute(x, nt_samples=8, stdevs=0.2, target=0, abs=False,
        ...                     generator=torch.Generator().manual_seed(0))
        >>> attr.shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        attribution_method: Attribution,
        kernel: Union[Kernel, str] = Gaussian(),
        noise: str = "multiplicative",
        param_filter: ParamFilter = None,
    ) -> None:
        if not isinstance(attribution_method, Attribution):
            raise TypeError(
                "attribution_method: expected a Captum Attribution instance (e.g. "
                f"Saliency(model)), got {type(attribution_method).__name__}"
            )
        if isinstance(attribution_method, (LayerAttribution, NeuronAttribution)):
            raise TypeError(
                "attribution_method: layer and neuron methods are not supported: their "
                "hooks see one forward call per weight draw, not the whole batch"
            )
        if noise not in NOISE_TYPES:
            raise ValueError(f"noise: must be one of {', '.join(NOISE_TYPES)}, got {noise!r}")
        self.model = _module_of(attribution_method.forward_func)
        super().__init__(attribution_method)
        self.kernel = get_kernel(kernel)
        self.noise = noise
        self.param_filter = param_filter
        self._proxy = self._make_proxy(attribution_method)

    def _make_proxy(self, method: Attribution) -> Attribution:
        """A shallow copy of ``method`` (and of attribution objects it holds) on the proxy forward."""
        original = method.forward_func
        proxy = copy.copy(method)
        proxy.forward_func = self._forward
        for key, value in list(vars(proxy).items()):
            if isinstance(value, Attribution) and value.forward_func is original:
                inner = copy.copy(value)
                inner.forward_func = self._forward
                setattr(proxy, key, inner)
        return proxy

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        nt_type: str = "smoothgrad",
        nt_samples: int = 10,
        nt_samples_batch_size: Optional[int] = None,
        stdevs: float = 0.2,
        draw_baseline_from_distrib: bool = False,
        generator: Optional[torch.Generator] = None,
        **kwargs: Any,
    ) -> AttributionOutput:
        """Average the wrapped attribution over weight draws.

        Args:
            inputs: Tensor or tuple of tensors, batch dimension first.
            nt_type: ``"smoothgrad"``, ``"smoothgrad_sq"`` or ``"vargrad"``.
            nt_samples: Number of weight draws. Default: 10.
            nt_samples_batch_size: Weight draws evaluated together (one
                batched call); ``None`` means all. The result does not depend
                on it beyond float rounding.
            stdevs: Bandwidth ``eps`` of the weight noise (relative with
                multiplicative noise). 0 gives the wrapped method. Default: 0.2,
                the NoiseGrad paper's.
            draw_baseline_from_distrib: As in NoiseTunnel.
            generator: ``torch.Generator`` for the noise; ``None`` uses the
                global RNG.
            **kwargs: Passed to the wrapped method (``target``,
                ``additional_forward_args``, ``baselines``, ...).

        Returns:
            The smoothed attributions shaped like the wrapped method's, and the
            mean convergence delta when ``return_convergence_delta=True`` and
            the wrapped method supports it.

        Raises:
            ValueError: bad ``nt_type``, ``nt_samples``,
                ``nt_samples_batch_size``, ``stdevs``, ``inputs`` or
                ``param_filter``.
            TypeError: ``generator`` is not a ``torch.Generator``.
            RuntimeError: the wrapped method never calls its ``forward_func``
                (so weight noise cannot reach it).
        """
        return self._attribute(
            inputs,
            nt_type,
            nt_samples,
            nt_samples_batch_size,
            stdevs,
            None,
            draw_baseline_from_distrib,
            generator,
            kwargs,
        )

    def _attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        nt_type: str,
        nt_samples: int,
        nt_samples_batch_size: Optional[int],
        stdevs: float,
        input_stdevs: Optional[StdevsType],
        draw_baseline_from_distrib: bool,
        generator: Optional[torch.Generator],
        kwargs: Dict[str, Any],
    ) -> AttributionOutput:
        _check_nt_args(nt_type, nt_samples, nt_samples_batch_size)
        _check_generator(generator)
        eps = _check_number(stdevs, "stdevs", allow_zero=True)
        tupled = inputs if isinstance(inputs, tuple) else (inputs,)
        _check_inputs(tupled)
        names = _select_names(self.model, self.param_filter)
        in_std = None
        if input_stdevs is not None:
            in_std = _format_stdevs(input_stdevs, tupled, allow_zero=True, argument="input_stdevs")
        weights = _WeightNoise(
            self.model,
            names,
            self.kernel,
            eps,
            self.noise == "multiplicative",
            seed_from(generator),
        )
        state = _CallState(generator=generator)
        state.extra.update(weights=weights, vmap=True)
        if in_std is not None and bool((in_std > 0).any()):
            state.input_noise = _InputNoise(self._input_kernel(), tupled, in_std, seed_from(generator))
        with _call_state(self, state):
            return NoiseTunnel.attribute.__wrapped__(
                self,
                inputs,
                nt_type=nt_type,
                nt_samples=nt_samples,
                nt_samples_batch_size=nt_samples_batch_size,
                draw_baseline_from_distrib=draw_baseline_from_distrib,
                **kwargs,
            )

    def _input_kernel(self) -> Kernel:
        return Gaussian()

    # -- NoiseTunnel hooks -------------------------------------------------

    def _add_noise_to_inputs(
        self,
        nt_samples_partition: int,
        inputs: Tuple[Tensor, ...],
        stdevs: Any,
    ) -> Tuple[Tensor, ...]:
        state = _current_state(self)
        state.extra["params"] = state.extra["weights"].take(nt_samples_partition)
        state.extra["draws"] = nt_samples_partition
        if state.input_noise is not None:
            rows = state.input_noise.add(inputs, nt_samples_partition)
        else:
            rows = tuple(inp.detach().repeat_interleave(nt_samples_partition, dim=0) for inp in inputs)
        if self.is_gradient_method:
            return tuple(t.requires_grad_() for t in rows)
        return rows

    def _compute_partial_attribution(
        self,
        inputs_with_noise_partition: Tuple[Tensor, ...],
        kwargs_partition: object,
        is_inputs_tuple: bool,
        return_convergence_delta: bool,
    ) -> Tuple[Tuple[Tensor, ...], bool, Optional[Tensor]]:
        state = _current_state(self)
        draws = int(state.extra["draws"])
        rows = inputs_with_noise_partition[0].shape[0]
        device = inputs_with_noise_partition[0].device
        # Row b * draws + k of the expanded batch uses weight draw k.
        ids = torch.arange(draws, device=device).repeat(rows // draws)
        kwargs = dict(kwargs_partition)  # type: ignore[call-overload]
        afa = _format_additional_forward_args(kwargs.get("additional_forward_args"))
        kwargs["additional_forward_args"] = (*(afa or ()), ids)
        state.extra["calls"] = 0
        attributions = self._proxy.attribute.__wrapped__(
            self._proxy,
            inputs_with_noise_partition if is_inputs_tuple else inputs_with_noise_partition[0],
            **kwargs,
        )
        if state.extra["calls"] == 0:
            raise RuntimeError(
                f"attribution_method: {type(self.attribution_method).__name__} never called "
                "its forward_func, so the weight noise could not reach the model"
            )
        delta = None
        if self.is_delta_supported and return_convergence_delta:
            attributions, delta = attributions
        is_tuple = isinstance(attributions, tuple)
        attrs = attributions if is_tuple else (attributions,)
        return attrs, is_tuple, delta

    # -- the proxy forward -------------------------------------------------

    def _forward(self, *args: Any) -> Tensor:
        """The model on perturbed weights; the last argument gives each row's draw."""
        state = _current_state(self)
        state.extra["calls"] += 1
        *rest, ids = args
        params: Dict[str, Tensor] = state.extra["params"]
        draws = int(state.extra["draws"])
        rows = ids.shape[0]
        perm = torch.argsort(ids, stable=True)
        counts = torch.bincount(ids, minlength=draws)
        batched = [isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == rows for a in rest]
        grouped = [a.index_select(0, perm) if b else a for a, b in zip(rest, batched)]
        out_sorted = None
        per_draw = rows // draws
        if (
            state.extra["vmap"]
            and not self._hooked()
            and rows % draws == 0
            and bool((counts == per_draw).all())
        ):
            try:
                out_sorted = self._forward_vmap(params, grouped, batched, draws)
            except Exception:  # any failure: the loop below is exact, and re-raises real errors
                state.extra["vmap"] = False
        if out_sorted is None:
            out_sorted = self._forward_loop(params, grouped, batched, counts.tolist())
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(rows, device=perm.device)
        return out_sorted.index_select(0, inverse)

    def _hooked(self) -> bool:
        # Forward hooks (layer and neuron methods register them) would capture
        # tensors from inside vmap, which must not escape it: use the loop.
        return any(m._forward_hooks or m._forward_pre_hooks for m in self.model.modules())

    def _buffers(self) -> Dict[str, Tensor]:
        # Copies: a forward that updates buffers (batch norm in training mode)
        # updates these, not the user's model.
        return {n: b.clone() for n, b in self.model.named_buffers()}

    def _forward_vmap(
        self, params: Dict[str, Tensor], grouped: List[Any], batched: List[bool], draws: int
    ) -> Tensor:
        buffers = self._buffers()
        model = self.model

        def one(p: Dict[str, Tensor], *a: Any) -> Tensor:
            return functional_call(model, (p, buffers), tuple(a))

        args = [
            a.reshape(draws, a.shape[0] // draws, *a.shape[1:]) if b else a for a, b in zip(grouped, batched)
        ]
        in_dims = (0, *[0 if b else None for b in batched])
        out = vmap(one, in_dims=in_dims, randomness="different")(params, *args)
        if not isinstance(out, Tensor):
            raise TypeError("forward_func: expected a Tensor output")
        return out.reshape(-1, *out.shape[2:])

    def _forward_loop(
        self, params: Dict[str, Tensor], grouped: List[Any], batched: List[bool], counts: List[int]
    ) -> Tensor:
        buffers = self._buffers()
        starts = [0]
        for c in counts:
            starts.append(starts[-1] + c)
        outs = []
        for k, (lo, hi) in enumerate(itertools.pairwise(starts)):
            if hi == lo:
                continue
            args = tuple(a[lo:hi] if b else a for a, b in zip(grouped, batched))
            out = functional_call(self.model, ({n: p[k] for n, p in params.items()}, buffers), args)
            if not isinstance(out, Tensor):
                raise TypeError(f"forward_func: expected a Tensor output, got {type(out).__name__}")
            outs.append(out)
        return torch.cat(outs) if len(outs) > 1 else outs[0]


class FusionGrad(NoiseGrad):
    """Attributions averaged over noise on the weights and the inputs (FusionGrad).

    Each sample draws perturbed weights (as :class:`NoiseGrad`) and, with it,
    input noise from ``input_kernel`` (as :class:`KernelNoiseTunnel`), so
    ``nt_type="smoothgrad"`` estimates ``E_{u,v}[A(x + eps_x v; theta (1 + eps u))]``.

    Args:
        attribution_method: A Captum attribution method whose ``forward_func``
            is an ``nn.Module``.
        kernel: Kernel of the weight noise, or its name.
        input_kernel: Kernel of the input noise, or its name. The radial
            Poisson kernel spans all features of one example.
        noise: ``"multiplicative"`` (default) or ``"additive"`` weight noise.
        param_filter: Which parameters get noise (see :class:`NoiseGrad`).

    Raises:
        TypeError: ``attribution_method`` is not a Captum ``Attribution`` or
            its ``forward_func`` holds no ``nn.Module``.
        ValueError: ``noise``, ``kernel`` or ``input_kernel`` unknown.

    Examples:
        >>> import torch
        >>> from captum.attr import Saliency
        >>> from captum_smoothhess.noisegrad import FusionGrad
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
        ...                           torch.nn.Linear(8, 3))
        >>> fg = FusionGrad(Saliency(net), input_kernel="sigmoid")
        >>> x = torch.randn(2, 4)
        >>> attr = fg.attribute(x, nt_samples=8, stdevs=0.2, input_stdevs=0.1,
        ...                     target=0, generator=torch.Generator().manual_seed(0))
        >>> attr.shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        attribution_method: Attribution,
        kernel: Union[Kernel, str] = Gaussian(),
        input_kernel: Union[Kernel, str] = Gaussian(),
        noise: str = "multiplicative",
        param_filter: ParamFilter = None,
    ) -> None:
        super().__init__(attribution_method, kernel, noise, param_filter)
        self.input_kernel = get_kernel(input_kernel, "input_kernel")

    def _input_kernel(self) -> Kernel:
        return self.input_kernel

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        nt_type: str = "smoothgrad",
        nt_samples: int = 10,
        nt_samples_batch_size: Optional[int] = None,
        stdevs: float = 0.2,
        input_stdevs: StdevsType = 0.1,
        draw_baseline_from_distrib: bool = False,
        generator: Optional[torch.Generator] = None,
        **kwargs: Any,
    ) -> AttributionOutput:
        """Average the wrapped attribution over joint weight and input draws.

        Args:
            inputs: Tensor or tuple of tensors, batch dimension first.
            nt_type: ``"smoothgrad"``, ``"smoothgrad_sq"`` or ``"vargrad"``.
            nt_samples: Number of joint (weight, input) draws. Default: 10.
            nt_samples_batch_size: Draws evaluated together; ``None`` means all.
            stdevs: Bandwidth of the weight noise. Default: 0.2.
            input_stdevs: Bandwidth of the input noise, in input units: a
                number, one per input tensor, or per-feature tensors. 0 means
                none (NoiseGrad). Default: 0.1.
            draw_baseline_from_distrib: As in NoiseTunnel.
            generator: ``torch.Generator`` for the noise; ``None`` uses the
                global RNG.
            **kwargs: Passed to the wrapped method.

        Returns:
            The smoothed attributions shaped like the wrapped method's, and the
            mean convergence delta when requested and supported.

        Raises:
            ValueError: bad ``nt_type``, ``nt_samples``,
                ``nt_samples_batch_size``, ``stdevs``, ``input_stdevs``,
                ``inputs`` or ``param_filter``.
            TypeError: ``generator`` is not a ``torch.Generator``.
            RuntimeError: the wrapped method never calls its ``forward_func``.
        """
        return self._attribute(
            inputs,
            nt_type,
            nt_samples,
            nt_samples_batch_size,
            stdevs,
            input_stdevs,
            draw_baseline_from_distrib,
            generator,
            kwargs,
        )
