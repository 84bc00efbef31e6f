"""NoiseGrad and FusionGrad: attributions smoothed in weight space.

NoiseGrad averages an attribution over perturbed copies of the model's
weights, ``theta -> theta * (1 + eps u)`` (multiplicative, the NoiseGrad
paper's ``N(1, sigma^2)`` for the Gaussian kernel) or ``theta + eps u``
(additive), ``u`` drawn from a kernel. FusionGrad perturbs the weights and the
inputs together, each with its own kernel and bandwidth.

How the perturbed weights reach the wrapped method without touching the
user's model:

* each ``attribute`` call makes a *private copy* of the module once
  (:class:`_PrivateModel`): every submodule shallow-copied, with its own
  parameters (clones), buffers and hook tables; other attributes are shared.
  The user's module is only read, so another thread running it at the same
  time sees nothing, and a forward that updates buffers (batch norm in
  training mode) updates the copy's. Hooks registered on the user's model
  are carried over and run on the copy (their module argument is the copy's
  submodule). A module parametrized with ``torch.nn.utils.parametrize``
  (``weight_norm``, ``spectral_norm``, ``orthogonal``, ...) is copied too: its
  original tensors live in its ``parametrizations`` submodules, which are
  copied like any other, and the copy's parametrized attributes are
  recomputed from the copy's originals on every access.
* the wrapped method is shallow-copied per call too, its references to the
  user's modules (``forward_func``, DeepLift's ``model``, ...) pointing to
  the copy's; the user's method object is not changed.
* NoiseTunnel's own loop is reused: it repeats every example once per weight
  draw (Captum's ``repeat_interleave`` order) and expands ``target``,
  ``baselines``, ``additional_forward_args`` and ``feature_mask`` alike.

The draws of one partition run in one of two ways, chosen per call from the
model (the numbers for a seed do not depend on the choice beyond float
rounding):

* *batched*: all draws of the partition in one call of the wrapped method,
  whose ``forward_func`` is a proxy that evaluates the copy with
  ``torch.func.functional_call`` under ``torch.func.vmap`` over the draws. An
  extra additional forward argument, the draw index of each row, travels
  with the rows through whatever the wrapped method does with them. This
  pays for small dense models (many draws of a cheap forward,
  ``benchmarks/mollify.py``); it is used when every module with parameters is
  a dense layer, the model has at most ``_BATCHED_MAX_WEIGHTS`` weights, no
  hooks, no module in training mode with buffers, and the wrapped method
  reaches the model through ``forward_func`` only. When ``vmap`` cannot run
  the model (data-dependent control flow, ``.item()``, ...) the call goes on
  draw by draw; any other exception of the model reaches the user as raised.
* *draw by draw*: the weights of one draw are loaded into the private copy
  and the wrapped method runs on it, once per draw. Convolutional networks
  take this path: on CPU, batching a convolution over weight draws is slower
  than running the draws one after another. It also serves methods that
  register hooks on the model (DeepLift, LRP, GuidedBackprop).

With ``nt_samples_batch_size=None`` the draws are split into partitions of
at most ``_DRAW_ELEMENTS`` weights and input elements, so memory does not grow
with the number of draws; the result does not depend on the split.
Layer and neuron methods are refused.
"""

from __future__ import annotations

import copy
import inspect
import re
import types
from dataclasses import dataclass
from typing import Any, Callable, Collection, Dict, List, Optional, Tuple, Union

import torch
from captum.attr import Attribution, LayerAttribution, NeuronAttribution
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn.utils import parametrize

from ._captum import _format_additional_forward_args, log_usage
from ._evaluators import autograd_allowed
from ._model import module_of, refusing_hidden_writers, warn_if_training
from ._sampling import _BLOCK_ELEMENTS, NoiseStream, seed_from
from ._validation import (
    StdevsType,
    _check_flags,
    _check_generator,
    _check_inputs,
    _check_number,
    _format_stdevs,
    _refuse_meta,
)
from .kernels import Gaussian, Kernel, get_kernel
from .noise_tunnel import (
    AttributionOutput,
    _CallState,
    _check_nt_args,
    _check_tolerance,
    _current_state,
    _error_tracking,
    _format_attributions,
    _GeneratorNoiseTunnel,
    _InputNoise,
    _normal_tensors,
    _tolerance_partition,
)

__all__ = ["FusionGrad", "NoiseGrad"]

ParamFilter = Union[None, str, Callable[[str], bool], Collection[str]]
NOISE_TYPES = ("multiplicative", "additive")

# Partitions chosen when nt_samples_batch_size is None: draws x (weights + input
# elements of the batch) stays under this many elements (64 MiB in float32).
_DRAW_ELEMENTS = 1 << 24
# Largest model whose draws are batched through vmap (benchmarks/mollify.py:
# batching pays for small dense models; conv nets and large models run draw by draw).
_BATCHED_MAX_WEIGHTS = 1 << 20
# Layers with batching rules over weight draws (nn.Bilinear has none: vmap loops over it).
_DENSE = (
    nn.Linear,
    nn.Embedding,
    nn.LayerNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.PReLU,
)
# What torch.func raises when vmap cannot run a model (unsupported operations,
# data-dependent control flow, .item(), in-place updates of unbatched tensors,
# autograd.Functions without vmap support, tensors without storage).
_VMAP_UNSUPPORTED = re.compile(
    r"vmap|functorch|batched tensor|BatchedTensor|batching rule|setup_context|doesn't have storage",
    re.IGNORECASE,
)


class _Unbatchable(Exception):
    """vmap cannot run the model: go on draw by draw."""


def _module_of(forward_func: Any) -> nn.Module:
    """The ``nn.Module`` whose weights get noise (itself, or the owner of its bound forward)."""
    module = module_of(forward_func)
    # Another bound method of a module may not run its forward: its weights are not the model's.
    if module is forward_func or getattr(forward_func, "__name__", "") in ("forward", "__call__"):
        if module is not None:
            return module
    raise TypeError(
        "attribution_method: weight-space smoothing needs the wrapped method's "
        "forward_func to be a torch.nn.Module (or its bound forward), got "
        f"{type(forward_func).__name__}; wrap the function in an nn.Module"
    )


def _check_param_filter(param_filter: object) -> ParamFilter:
    """``param_filter`` checked: ``None``, a valid regular expression, a predicate, or names."""
    if param_filter is None or callable(param_filter):
        return param_filter
    if isinstance(param_filter, str):
        try:
            re.compile(param_filter)
        except re.error as err:
            raise ValueError(
                f"param_filter: {param_filter!r} is not a valid regular expression ({err})"
            ) from err
        return param_filter
    if isinstance(param_filter, (bytes, bytearray)) or not isinstance(param_filter, Collection):
        raise TypeError(
            "param_filter: expected None, a regular expression, a predicate on the parameter name or a "
            f"collection of parameter names, got {type(param_filter).__name__}"
        )
    odd = [n for n in param_filter if not isinstance(n, str)]
    if odd:
        raise TypeError(f"param_filter: parameter names must be strings, got {odd!r}")
    return param_filter


def _select_names(module: nn.Module, param_filter: ParamFilter) -> List[str]:
    """The canonical names (``named_parameters()``) of the floating parameters ``param_filter`` selects.

    A parameter registered under several names (tied weights, a submodule
    held twice) is selected when any of its names is.
    """
    canonical = {id(p): n for n, p in module.named_parameters() if p.is_floating_point()}
    aliases: Dict[str, List[str]] = {n: [] for n in canonical.values()}
    for n, p in module.named_parameters(remove_duplicate=False):
        if id(p) in canonical:
            aliases[canonical[id(p)]].append(n)
    names = list(aliases)
    if param_filter is None:
        chosen = names
    elif isinstance(param_filter, str):
        pattern = re.compile(param_filter)
        chosen = [n for n in names if any(pattern.search(a) for a in aliases[n])]
    elif callable(param_filter):
        chosen = [n for n in names if any(param_filter(a) for a in aliases[n])]
    else:
        wanted = set(param_filter)
        known = {a for n in names for a in aliases[n]}
        unknown = sorted(wanted - known)
        if unknown:
            raise ValueError(f"param_filter: the model has no floating parameter(s) named {unknown}")
        chosen = [n for n in names if wanted.intersection(aliases[n])]
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
        draws: Optional[int] = None,
    ) -> None:
        params = dict(module.named_parameters())
        self.base = {n: params[n].detach() for n in names}
        first = self.base[names[0]]
        dtype = first.dtype
        for t in self.base.values():
            dtype = torch.promote_types(dtype, t.dtype)
        self.sizes = [t.numel() for t in self.base.values()]
        dim = sum(self.sizes)
        # A model this large has one draw per noise block whatever the count; knowing the
        # count lets the stream draw the next blocks in other threads (the numbers are the same).
        total = draws if 2 * dim > _BLOCK_ELEMENTS else None
        self.stream = NoiseStream(kernel, 1, dim, seed, first.device, dtype, total)
        self.eps = eps
        self.multiplicative = multiplicative
        self.offset = 0

    def take(self, n: int, out: Optional[Dict[str, Tensor]] = None) -> Dict[str, Tensor]:
        """The next ``n`` draws: ``{name: (n, *shape)}``, written into ``out`` when it fits.

        Reusing the tensors of the previous draw (``out``) spares a fresh
        allocation of every weight per draw; the numbers are the same.
        """
        u = self.stream.take(self.offset, self.offset + n)[0]  # (n, d_w)
        self.offset += n
        drawn = {}
        for (name, base), part in zip(self.base.items(), torch.split(u, self.sizes, dim=1)):
            # A (1, k) slice keeps the row stride of u, on which CPU kernels are many
            # times slower: take one draw as a plain view.
            part = part[0].view(1, *base.shape) if n == 1 else part.reshape(n, *base.shape)
            w = None if out is None else out.get(name)
            if w is not None and w.shape == part.shape and w.dtype == part.dtype == base.dtype:
                w = torch.mul(part, self.eps, out=w)
            else:
                w = (part * self.eps).to(base.device, base.dtype)
            # In place: the same numbers as base * (1 + eps u) (or base + eps u).
            drawn[name] = w.add_(1).mul_(base) if self.multiplicative else w.add_(base)
        return drawn


def _own_containers(obj: object, keys: Optional[Collection[str]] = None) -> None:
    """Give a shallow copy its own dicts, lists and sets (all, or those named in ``keys``)."""
    state = vars(obj)
    for key, value in list(state.items()):
        if isinstance(value, (dict, list, set)) and (keys is None or key in keys):
            state[key] = copy.copy(value)


# The tables every nn.Module owns (parameters, buffers, submodules, hooks): a private
# copy has its own. Other attributes, containers included, are the user's and shared.
_MODULE_TABLES = frozenset(k for k, v in vars(nn.Module()).items() if isinstance(v, (dict, list, set)))


def _recomputed(name: str) -> property:
    """The parametrized attribute ``name``, computed from the module's own originals at each access."""

    def get(self: nn.Module) -> Tensor:
        parametrizations: Any = self.parametrizations
        return parametrizations[name]()

    def set_original(self: nn.Module, value: Tensor) -> None:
        parametrizations: Any = self.parametrizations
        parametrizations[name].right_inverse(value)

    return property(get, set_original)


def _parametrized_copy(module: nn.Module) -> nn.Module:
    """A shallow copy of a module parametrized with ``torch.nn.utils.parametrize``.

    ``copy.copy`` cannot copy it (its class forbids ``__getstate__``), so the
    copy is built from ``__new__`` and the module's ``__dict__``. It gets a
    class of its own, a sibling of the user's (same base class and namespace)
    whose parametrized attributes do not use ``parametrize.cached()``'s cache:
    that cache is keyed by the *user's* module, so the copy would read the
    user's unperturbed weight from it, or leave its perturbed one there.
    """
    cls = type(module)
    namespace = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    for name in module.parametrizations:  # type: ignore[union-attr]
        namespace[name] = _recomputed(name)
    private: Any = type(cls.__name__, cls.__bases__, namespace)
    new: nn.Module = private.__new__(private)
    vars(new).update(vars(module))
    return new


class _PrivateModel:
    """A copy of the user's module for one ``attribute`` call.

    Every submodule is copied with ``copy.copy`` (code and plain attributes
    shared) and given its own ``_parameters`` (clones that do not require
    grad), ``_buffers`` and hook tables, so nothing done to the copy (weights
    loaded, hooks registered by the wrapped method, buffers updated by a
    forward) reaches the user's module. Shared submodules and tied parameters
    stay shared and tied. Every forward call of the copy starts from fresh
    clones of the user's buffers and is counted in :attr:`calls`.
    """

    def __init__(self, model: nn.Module, noisy: Collection[str]) -> None:
        self.twin: Dict[int, nn.Module] = {}  # id(user's module) -> its copy
        self._params: Dict[int, nn.Parameter] = {}
        self.root = self._copy(model)
        for twin in self.twin.values():
            # Bound methods of the user's modules (in attributes or hook tables) move to the copy.
            state = vars(twin)
            for key, value in list(state.items()):
                if key in _MODULE_TABLES and isinstance(value, dict):  # the copy's own hook tables
                    for k, v in list(value.items()):
                        value[k] = _retargeted(v, self.twin)
                else:
                    state[key] = _retargeted(value, self.twin)
        canonical = {id(p): n for n, p in model.named_parameters()}
        wanted = set(noisy)
        # Where each noisy parameter lives in the copy, and each buffer with its original.
        self._slots: Dict[str, List[Tuple[nn.Module, str]]] = {n: [] for n in noisy}
        self._buffers: List[Tuple[nn.Module, str, Tensor]] = []
        for module in model.modules():
            twin = self.twin[id(module)]
            for key, p in module._parameters.items():
                if p is not None and canonical.get(id(p)) in wanted:
                    self._slots[canonical[id(p)]].append((twin, key))
            for key, b in module._buffers.items():
                if b is not None:
                    self._buffers.append((twin, key, b))
        self.calls = 0
        forward = self.root.forward

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            for module, key, original in self._buffers:
                module._buffers[key] = original.detach().clone()
            return forward(*args, **kwargs)

        # The copy's own forward (what Module.__call__ and the copied bound forward run).
        self.forward: Callable[..., Any] = counted
        vars(self.root)["forward"] = counted

    def _copy(self, module: nn.Module) -> nn.Module:
        if id(module) in self.twin:
            return self.twin[id(module)]
        new = _parametrized_copy(module) if parametrize.is_parametrized(module) else copy.copy(module)
        self.twin[id(module)] = new
        _own_containers(new, _MODULE_TABLES)
        state = vars(new)
        state["_modules"] = {k: None if m is None else self._copy(m) for k, m in module._modules.items()}
        state["_buffers"] = {k: None if b is None else b.detach().clone() for k, b in module._buffers.items()}
        for key, p in module._parameters.items():
            if p is not None and id(p) not in self._params:
                self._params[id(p)] = nn.Parameter(p.detach().clone(), requires_grad=False)
            setattr(new, key, None if p is None else self._params[id(p)])
        if isinstance(new, nn.RNNBase):
            # Its own list of flat weights, which RNNBase.__setattr__ keeps up to date on load.
            new._init_flat_weights()
        return new

    def load(self, weights: Dict[str, Tensor]) -> None:
        """Make ``weights`` (one draw, ``{name: tensor}``) the copy's parameters."""
        for name, value in weights.items():
            param = nn.Parameter(value, requires_grad=False)
            for module, key in self._slots[name]:
                setattr(module, key, param)


def _refers_to(value: Any, modules: Dict[int, nn.Module]) -> bool:
    if isinstance(value, nn.Module):
        return id(value) in modules
    if inspect.ismethod(value):
        return id(value.__self__) in modules
    if isinstance(value, (list, tuple)):
        return any(_refers_to(v, modules) for v in value)
    return False


def _retargeted(value: Any, twin: Dict[int, nn.Module]) -> Any:
    """``value`` with references to the user's modules replaced by the copy's."""
    if isinstance(value, nn.Module):
        return twin.get(id(value), value)
    if inspect.ismethod(value) and id(value.__self__) in twin:
        return types.MethodType(value.__func__, twin[id(value.__self__)])
    if isinstance(value, (list, tuple)) and _refers_to(value, twin):
        return type(value)(_retargeted(v, twin) for v in value)
    return value


def _method_copy(method: Attribution, twin: Dict[int, nn.Module], forward: Callable[..., Any]) -> Attribution:
    """A shallow copy of ``method`` (and of attribution objects it holds) on the private model.

    ``forward`` replaces the ``forward_func`` of ``method`` and of the
    attribution objects that share it; other references to the user's
    modules (DeepLift's ``model``, ...) point to the copy's.
    """
    original = method.forward_func

    def swap(obj: Attribution) -> Attribution:
        new = copy.copy(obj)
        _own_containers(new)
        state = vars(new)
        for key, value in list(state.items()):
            if isinstance(value, Attribution):
                state[key] = swap(value)
            elif key == "forward_func" and value is original:
                state[key] = forward
            else:
                state[key] = _retargeted(value, twin)
        return new

    return swap(method)


def _holds_modules(method: Attribution, modules: Dict[int, nn.Module]) -> bool:
    """Whether ``method`` reaches the model other than through ``forward_func`` (hooks, ...)."""
    for key, value in vars(method).items():
        if isinstance(value, Attribution):
            if _holds_modules(value, modules):
                return True
        elif key != "forward_func" and _refers_to(value, modules):
            return True
    return False


def _every_kth(value: Any, j: int, k: int, rows: int, lists: bool = False) -> Any:
    """Rows ``j, j + k, ...`` (draw ``j`` of every example) of an expanded argument."""
    if isinstance(value, Tensor):
        return value[j::k] if value.dim() > 0 and value.shape[0] == rows else value
    if isinstance(value, tuple):
        return tuple(_every_kth(v, j, k, rows) for v in value)
    if lists and isinstance(value, list) and len(value) == rows:
        return value[j::k]
    return value


# The arguments NoiseTunnel expands per sample (``target`` may be a list).
_PER_ROW = ("target", "baselines", "additional_forward_args", "feature_mask")


@dataclass(kw_only=True)
class _WeightCallState(_CallState):
    """What one NoiseGrad ``attribute`` call needs inside NoiseTunnel's hooks."""

    weights: _WeightNoise
    model: _PrivateModel
    method: Attribution  # the wrapped method on the private model, run once per draw
    proxy: Optional[Attribution] = None  # the wrapped method on the batched proxy forward
    draws: int = 0  # draws of the current partition
    params: Optional[Dict[str, Tensor]] = None  # the partition's draws, taken for the batched path
    scratch: Optional[Dict[str, Tensor]] = None  # the current draw, draw by draw


class NoiseGrad(_GeneratorNoiseTunnel):
    """Attributions averaged over kernel noise on the model's weights (NoiseGrad).

    For an attribution method ``A`` of a model with weights ``theta``,
    ``nt_type="smoothgrad"`` estimates ``E_u[A(x; theta * (1 + eps u))]``
    (or ``theta + eps u`` with ``noise="additive"``), ``u`` drawn from
    ``kernel`` independently per draw, from ``nt_samples`` weight draws shared
    by all examples of the batch; ``"smoothgrad_sq"`` and ``"vargrad"`` give
    the mean square and the variance. By default every floating parameter
    gets noise; ``param_filter`` narrows the set. Noise goes to the
    parameters as ``named_parameters()`` lists them: for a weight
    parametrized with ``torch.nn.utils.parametrize`` (``weight_norm``,
    ``spectral_norm``, ``orthogonal``, ...), to its original tensors
    (``...parametrizations.weight.original``, or ``original0`` and
    ``original1``), from which the weight is then computed (multiplicative
    noise leaves zero entries at zero: ``orthogonal``'s original is ``-I``,
    whose diagonal the map ignores, so it needs ``noise="additive"``). The
    user's model is never modified nor swapped, not even transiently: each
    call works on a private copy (batched over draws with ``vmap`` for small
    dense models, draw by draw otherwise), see the module documentation.

    Args:
        attribution_method: A Captum attribution method whose ``forward_func``
            is an ``nn.Module`` (or its bound ``forward``), e.g.
            ``Saliency(model)``, ``IntegratedGradients(model)`` or
            ``DeepLift(model)``.
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
        self.param_filter = _check_param_filter(param_filter)
        modules = {id(m): m for m in self.model.modules()}
        # Methods that reach the model other than through forward_func (DeepLift's
        # hooks, ...) run draw by draw on the private copy.
        self._hooking = _holds_modules(attribution_method, modules)
        # Set once vmap has failed on this model: later calls go draw by draw at once.
        self._unbatchable = False

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
        return_error: bool = False,
        tolerance: Optional[float] = None,
        **kwargs: Any,
    ) -> AttributionOutput:
        """Average the wrapped attribution over weight draws.

        Args:
            inputs: Tensor or tuple of tensors, batch dimension first.
            nt_type: ``"smoothgrad"``, ``"smoothgrad_sq"`` or ``"vargrad"``.
            nt_samples: Number of weight draws. Default: 10.
            nt_samples_batch_size: Weight draws per partition (evaluated in
                one batched call where the draws are batched); ``None``
                chooses partitions whose memory does not grow with
                ``nt_samples``. The result does not depend on it beyond float
                rounding.
            stdevs: Bandwidth ``eps`` of the weight noise (relative with
                multiplicative noise). 0 gives the wrapped method. Default: 0.2,
                the NoiseGrad paper's.
            draw_baseline_from_distrib: As in NoiseTunnel: each draw gets
                its own baseline, which depends on the seed and the draw's
                index only, not on ``nt_samples_batch_size``.
            generator: ``torch.Generator`` for the noise; ``None`` uses the
                global RNG.
            return_error: Also return the estimated accuracy of the result, a
                :class:`~captum_smoothhess.SmoothingError` from the spread of
                the draws (independent), at no extra call. Needs
                ``nt_samples >= 2`` (6 for ``"vargrad"``). Taken by this
                method, not passed to the wrapped one. Default: False.
            tolerance: Draw until every example's estimated relative error
                is at most ``tolerance`` (``nt_samples`` the cap), as in
                :meth:`KernelNoiseTunnel.attribute
                <captum_smoothhess.KernelNoiseTunnel.attribute>`. Default: None.
            **kwargs: Passed to the wrapped method (``target``,
                ``additional_forward_args``, ``baselines``, ...).

        Returns:
            The smoothed attributions shaped like the wrapped method's, and,
            when ``return_convergence_delta=True`` and the wrapped method
            supports it, the convergence delta of every sample (row
            ``b * nt_samples + j`` for example ``b`` and draw ``j``); with
            ``return_error=True`` a :class:`~captum_smoothhess.SmoothingError`
            last.

        Raises:
            ValueError: bad ``nt_type``, ``nt_samples`` (< 2 with
                ``return_error``, < 6 for its VarGrad), ``tolerance``,
                ``nt_samples_batch_size``, ``stdevs``, ``inputs`` or
                ``param_filter``; a ``target`` the output does not have; NaN
                attributions (``forward_func`` NaN at perturbed weights).
            TypeError: ``generator`` is not a ``torch.Generator``;
                ``return_error`` is not a bool.
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
            return_error,
            tolerance,
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
        return_error: object = False,
        tolerance: object = None,
    ) -> AttributionOutput:
        _check_nt_args(nt_type, nt_samples, nt_samples_batch_size)
        _check_generator(generator)
        _check_flags(return_error=return_error)
        checked = _check_tolerance(tolerance, kwargs)
        errors = _error_tracking(bool(return_error), int(nt_samples), None, nt_type, checked)
        eps = _check_number(stdevs, "stdevs", allow_zero=True)
        tupled = inputs if isinstance(inputs, tuple) else (inputs,)
        _check_inputs(tupled)
        _refuse_meta(kwargs.get("target"), "target")
        names = _select_names(self.model, self.param_filter)
        # Buffers are safe (every forward of the private copy starts from clones of them).
        warn_if_training(self.model, type(self).__name__)
        with autograd_allowed():
            inputs, kwargs = _normal_tensors((inputs, kwargs))
            tupled = inputs if isinstance(inputs, tuple) else (inputs,)
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
                int(nt_samples),
            )
            private = _PrivateModel(self.model, names)
            own = self.attribution_method.forward_func
            state = _WeightCallState(
                generator=generator,
                weights=weights,
                model=private,
                method=_method_copy(
                    self.attribution_method,
                    private.twin,
                    private.root if isinstance(own, nn.Module) else private.forward,
                ),
                errors=errors,
            )
            if self._batch_draws(sum(weights.sizes)):
                state.proxy = _method_copy(self.attribution_method, private.twin, self._forward)
            if in_std is not None and bool((in_std > 0).any()):
                state.input_noise = _InputNoise(self._input_kernel(), tupled, in_std, seed_from(generator))
            if errors is not None:  # no noise at all: samples that agree are exact
                errors.noiseless = (eps == 0 or not names) and state.input_noise is None
            size = nt_samples_batch_size
            if size is None:
                elements = sum(weights.sizes) + sum(t.numel() for t in tupled)
                size = max(1, min(nt_samples, _DRAW_ELEMENTS // elements))
                size = min(size, _tolerance_partition(errors, None, int(nt_samples)) or size)
            # A model that hides another behind a callable attribute: its training-mode norm layers would
            # update the user's buffers from the private copy too (refused before they change anything).
            with refusing_hidden_writers([self.model], type(self).__name__, private=private.twin.values()):
                out = self._run_tunnel(
                    state,
                    inputs,
                    kwargs,
                    nt_type=nt_type,
                    nt_samples=nt_samples,
                    nt_samples_batch_size=size,
                    draw_baseline_from_distrib=draw_baseline_from_distrib,
                )
        return out

    def _batch_draws(self, n_weights: int) -> bool:
        """Whether this call batches the draws through vmap (see the module documentation)."""
        if self._unbatchable or self._hooking or n_weights > _BATCHED_MAX_WEIGHTS:
            return False
        for m in self.model.modules():
            if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
                return False  # hooked tensors must not escape vmap
            if m.training and any(b is not None for b in m._buffers.values()):
                return False  # in-place buffer updates (batch norm statistics) do not batch
            if any(p is not None for p in m._parameters.values()) and not isinstance(m, _DENSE):
                return False
            if parametrize.is_parametrized(m):
                return False  # its weight is computed by its parametrizations: draw by draw
        return True

    def _input_kernel(self) -> Kernel:
        return Gaussian()

    def _state(self) -> _WeightCallState:
        state = _current_state(self)
        assert isinstance(state, _WeightCallState)
        return state

    # -- NoiseTunnel hooks -------------------------------------------------

    def _add_noise_to_inputs(
        self,
        nt_samples_partition: int,
        inputs: Tuple[Tensor, ...],
        stdevs: Any,
    ) -> Tuple[Tensor, ...]:
        state = self._state()
        state.draws = nt_samples_partition
        # The batched path needs the partition's draws at once; draw by draw takes them one at a time.
        state.params = state.weights.take(nt_samples_partition) if state.proxy is not None else None
        if state.input_noise is not None:
            rows = state.input_noise.add(inputs, nt_samples_partition)
        else:
            rows = tuple(inp.detach().repeat_interleave(nt_samples_partition, dim=0) for inp in inputs)
        if self.is_gradient_method:
            return tuple(t.requires_grad_() for t in rows)
        return rows

    def _attribute_partition(
        self,
        inputs_with_noise_partition: Tuple[Tensor, ...],
        kwargs_partition: object,
        is_inputs_tuple: bool,
        return_convergence_delta: bool,
    ) -> Tuple[Tuple[Tensor, ...], bool, Optional[Tensor]]:
        state = self._state()
        kwargs = dict(kwargs_partition)  # type: ignore[call-overload]
        calls = state.model.calls
        result = None
        if state.proxy is not None:
            try:
                result = self._batched(state, inputs_with_noise_partition, kwargs, is_inputs_tuple)
            except _Unbatchable:
                self._unbatchable = True
                state.proxy = None
        if result is None:
            result = self._draw_by_draw(state, inputs_with_noise_partition, kwargs, is_inputs_tuple)
        if state.model.calls == calls:
            raise RuntimeError(
                f"attribution_method: {type(self.attribution_method).__name__} never called "
                "its forward_func, so the weight noise could not reach the model"
            )
        return _format_attributions(result, self.is_delta_supported, return_convergence_delta)

    def _batched(
        self, state: _WeightCallState, rows: Tuple[Tensor, ...], kwargs: Dict[str, Any], is_tuple: bool
    ) -> Any:
        """All draws of the partition in one call of the wrapped method, on the vmap proxy."""
        assert state.proxy is not None
        # Row b * draws + k of the expanded batch uses weight draw k.
        ids = torch.arange(state.draws, device=rows[0].device).repeat(rows[0].shape[0] // state.draws)
        afa = _format_additional_forward_args(kwargs.get("additional_forward_args"))
        kwargs = {**kwargs, "additional_forward_args": (*(afa or ()), ids)}
        return state.proxy.attribute.__wrapped__(state.proxy, rows if is_tuple else rows[0], **kwargs)

    def _draw_by_draw(
        self, state: _WeightCallState, rows: Tuple[Tensor, ...], kwargs: Dict[str, Any], is_tuple: bool
    ) -> Any:
        """The wrapped method once per draw on the private copy; results in the partition's row order."""
        k, total = state.draws, rows[0].shape[0]
        results = []
        for j in range(k):
            if state.params is None:
                # The previous draw's tensors are free again (its attribution is done): reuse them.
                state.scratch = state.weights.take(1, out=state.scratch)
                draw = {n: p[0] for n, p in state.scratch.items()}
            else:
                draw = {n: p[j] for n, p in state.params.items()}
            state.model.load(draw)
            inputs = tuple(t[j::k].detach().requires_grad_(t.requires_grad) for t in rows) if k > 1 else rows
            kw = {
                key: _every_kth(value, j, k, total, lists=key == "target") if key in _PER_ROW else value
                for key, value in kwargs.items()
            }
            method = state.method
            results.append(method.attribute.__wrapped__(method, inputs if is_tuple else inputs[0], **kw))
        return results[0] if k == 1 else _interleave(results)

    # -- the batched proxy forward -------------------------------------------

    def _forward(self, *args: Any) -> Tensor:
        """The private model on the partition's draws; the last argument gives each row's draw."""
        state = self._state()
        *rest, ids = args
        assert state.params is not None
        draws = state.draws
        rows = ids.shape[0]
        per_draw = rows // draws
        counts = torch.bincount(ids, minlength=draws)
        if rows % draws or not bool((counts == per_draw).all()):
            raise _Unbatchable  # rows not evenly spread over the draws
        perm = torch.argsort(ids, stable=True)
        batched = [isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == rows for a in rest]
        grouped = [
            a.index_select(0, perm).reshape(draws, per_draw, *a.shape[1:]) if b else a
            for a, b in zip(rest, batched)
        ]
        root = state.model.root

        def one(p: Dict[str, Tensor], *a: Any) -> Tensor:
            return functional_call(root, p, tuple(a))

        try:
            out = vmap(one, in_dims=(0, *[0 if b else None for b in batched]), randomness="different")(
                state.params, *grouped
            )
        except (RuntimeError, NotImplementedError) as err:
            if _VMAP_UNSUPPORTED.search(str(err)):
                raise _Unbatchable from err
            raise
        if not isinstance(out, Tensor):
            raise TypeError(f"forward_func: expected a Tensor output, got {type(out).__name__}")
        out_sorted = out.reshape(-1, *out.shape[2:])
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(rows, device=perm.device)
        return out_sorted.index_select(0, inverse)


def _interleave(results: List[Any]) -> Any:
    """Per-draw results (attributions, or ``(attributions, delta)``) merged in row order ``b * k + j``."""

    def merge(parts: List[Tensor]) -> Tensor:
        stacked = torch.stack(parts, dim=1)
        return stacked.reshape(-1, *stacked.shape[2:])

    first = results[0]
    if isinstance(first, Tensor):
        return merge(results)
    return type(first)(_interleave([r[i] for r in results]) for i in range(len(first)))


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
        return_error: bool = False,
        tolerance: Optional[float] = None,
        **kwargs: Any,
    ) -> AttributionOutput:
        """Average the wrapped attribution over joint weight and input draws.

        Args:
            inputs: Tensor or tuple of tensors, batch dimension first.
            nt_type: ``"smoothgrad"``, ``"smoothgrad_sq"`` or ``"vargrad"``.
            nt_samples: Number of joint (weight, input) draws. Default: 10.
            nt_samples_batch_size: Draws per partition; ``None`` chooses
                partitions whose memory does not grow with ``nt_samples``.
            stdevs: Bandwidth of the weight noise. Default: 0.2.
            input_stdevs: Bandwidth of the input noise, in input units: a
                number, one per input tensor, or per-feature tensors. 0 means
                none (NoiseGrad). Default: 0.1.
            draw_baseline_from_distrib: As in NoiseTunnel.
            generator: ``torch.Generator`` for the noise; ``None`` uses the
                global RNG.
            return_error: Also return a
                :class:`~captum_smoothhess.SmoothingError` (as NoiseGrad).
                Default: False.
            tolerance: As NoiseGrad's. Default: None.
            **kwargs: Passed to the wrapped method.

        Returns:
            The smoothed attributions shaped like the wrapped method's, the
            convergence delta of every sample when requested and supported,
            and a :class:`~captum_smoothhess.SmoothingError` last with
            ``return_error=True``.

        Raises:
            ValueError: bad ``nt_type``, ``nt_samples``,
                ``nt_samples_batch_size``, ``stdevs``, ``input_stdevs``,
                ``inputs`` or ``param_filter``; a ``target`` the output does
                not have; NaN attributions.
            TypeError: ``generator`` is not a ``torch.Generator``;
                ``return_error`` is not a bool.
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
            return_error,
            tolerance,
        )
