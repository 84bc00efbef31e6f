"""What the package may need to know about the user's model, found without changing it."""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import sys
import threading
import types
import warnings
from typing import Any, Callable, Dict, FrozenSet, Iterable, Iterator, List, Optional, Set, Tuple

import captum
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.nn.utils.spectral_norm import SpectralNorm


def module_of(forward_func: Any) -> Optional[nn.Module]:
    """The ``nn.Module`` behind ``forward_func`` (itself, the owner of a bound method, or that of a
    :func:`guarded` function), if any."""
    if isinstance(forward_func, _Guarded):
        return module_of(forward_func.__wrapped__)
    if isinstance(forward_func, nn.Module):
        return forward_func
    owner = getattr(forward_func, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def reachable_modules(module: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """``module.named_modules()``, also through models held outside the module registry.

    A wrapper that must not register the model it calls (e.g.
    :class:`~captum_smoothhess.robust.ClassProbability`, so that its
    ``train()``/``eval()``/``to()`` leave the model alone) names the attributes
    holding it in a class attribute ``_held_outside_registry``; their modules
    are listed under ``"<attribute>.<name>"``. A ``copy.deepcopy`` of the
    wrapper copies them too.
    """
    seen: Set[int] = set()

    def walk(root: nn.Module, prefix: str) -> Iterator[Tuple[str, nn.Module]]:
        for name, m in root.named_modules(prefix=prefix):
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield name, m
            for attr in getattr(type(m), "_held_outside_registry", ()):
                held = module_of(m.__dict__.get(attr))
                if held is not None:
                    yield from walk(held, f"{name}.{attr}" if name else attr)

    return walk(module, "")


def _layers_where(forward_func: Any, test: Callable[[nn.Module], bool]) -> List[str]:
    """Names of the layers of ``forward_func``'s module (:func:`reachable_modules`) that pass ``test``."""
    module = module_of(forward_func)
    if module is None:
        return []
    return [name or type(m).__name__ for name, m in reachable_modules(module) if test(m)]


def batch_dependent_layers(forward_func: Any) -> List[str]:
    """Names of the layers whose output for one example depends on the others of the batch.

    These are the batch-norm layers in training mode: they normalise with the
    statistics of the batch (and update their running statistics).
    """
    return _layers_where(forward_func, lambda m: isinstance(m, _BatchNorm) and m.training)


def _updates_buffers(module: nn.Module) -> bool:
    """Whether a forward pass of ``module`` writes its buffers, in training mode: a norm layer tracking
    running statistics (batch or instance norm), or spectral norm's power iteration (the parametrization
    ``_SpectralNorm``, or the older ``nn.utils.spectral_norm`` hook on its module). Only these known
    writers make a call copy the model: a deep copy per call of every training-mode model holding a
    constant buffer would double its memory."""
    if not module.training:
        return False
    if isinstance(module, _NormBase):
        return module.track_running_stats
    if type(module).__name__ == "_SpectralNorm":
        return True
    return any(isinstance(hook, SpectralNorm) for hook in module._forward_pre_hooks.values())


def buffer_updating_layers(forward_func: Any) -> List[str]:
    """Names of the layers whose forward pass updates their buffers (training mode)."""
    return _layers_where(forward_func, _updates_buffers)


def needs_private_copy(forward_func: Any) -> bool:
    """Whether a call must run on a private copy of ``forward_func``'s model: batch norm in training mode
    (its statistics and the batch's), or any other layer writing its buffers."""
    return bool(batch_dependent_layers(forward_func) or buffer_updating_layers(forward_func))


def random_layers(forward_func: Any) -> List[str]:
    """Names of the layers that draw from the global RNG in training mode (dropout)."""
    return _layers_where(
        forward_func,
        lambda m: (
            m.training
            and (
                (isinstance(m, _DropoutNd) and m.p > 0)
                or (isinstance(m, nn.MultiheadAttention) and m.dropout > 0)
            )
        ),
    )


def _shown(layers: List[str]) -> str:
    return ", ".join(layers[:3]) + (f" and {len(layers) - 3} more" if len(layers) > 3 else "")


# Code that is not the user's: a warning points past its frames (Python 3.12's skip_file_prefixes).
_LIBRARY_DIRS = tuple(
    os.path.dirname(os.path.abspath(path)) + os.sep
    for path in (__file__, captum.__file__, torch.__file__)
    if path is not None
)


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a ``warnings.warn`` made by the caller of this function at the first
    frame outside this package, Captum and PyTorch: the user's call, however deep the package called
    itself (``global_interactions`` running a method, Captum's logging wrapper, a noise tunnel)."""
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(_LIBRARY_DIRS):
        frame = frame.f_back
        level += 1
    return level


def warn_if_training(forward_func: Any, method: str) -> bool:
    """Warn when the model has batch-dependent layers in training mode; whether it has.

    Dropout in training mode gets a warning of its own (the result is then random
    beyond the method's ``generator``), and needs no private copy. The warnings point at the user's
    call (:func:`_user_stacklevel`).
    """
    random = random_layers(forward_func)
    if random:
        warnings.warn(
            f"{method}: {_shown(random)} in training mode drop(s) units at random (PyTorch's global "
            "RNG), so the result is random beyond `generator` and the same seed does not repeat it; "
            "call model.eval() for reproducible attributions.",
            RuntimeWarning,
            stacklevel=_user_stacklevel(),
        )
    layers = batch_dependent_layers(forward_func)
    if not layers:
        return False
    warnings.warn(
        f"{method}: {_shown(layers)} in training mode normalise(s) with the statistics of each batch of "
        "perturbed samples, so the result mixes examples and samples; call model.eval() for "
        "per-example attributions. The running statistics are left as found (the forward passes "
        "run on a private copy of the model).",
        RuntimeWarning,
        stacklevel=_user_stacklevel(),
    )
    return True


def private_if_training(forward_func: Any, method: str) -> Any:
    """``forward_func``, or the same on a private copy of its module when a forward updates buffers.

    Batch norm in training mode updates its running statistics at every
    forward pass and normalises each batch of perturbed samples with that
    batch's statistics; instance norm with ``track_running_stats=True`` and
    spectral norm update their buffers too. The copy (made once per call) leaves the user's buffers
    exactly as found, also as seen from another thread; for batch norm a
    warning (pointing at the user's call) says that the result then mixes examples and samples.

    A function that may call a model this package cannot see (:func:`hides_models`) comes back
    wrapped by :func:`guarded`: such a layer is refused before it updates anything.
    """
    warn_if_training(forward_func, method)
    return private_forward(forward_func, method)


def private_forward(forward_func: Any, method: str) -> Any:
    """:func:`private_if_training` without its warning: ``forward_func`` on a private copy where a forward
    updates buffers, guarded where it may run a model that cannot be copied (see there)."""
    forward = private_copy(forward_func) if needs_private_copy(forward_func) else forward_func
    return guarded(forward, method) if hides_models(forward) else forward


def hides_models(forward_func: Any) -> bool:
    """Whether ``forward_func`` may run modules that :func:`reachable_modules` cannot list.

    It is not a module (nor a bound method of one), or one of its modules holds, outside the module
    registry, a callable that may run other modules (:func:`_may_run_modules`): a function, a lambda,
    a module stored with ``object.__setattr__`` (e.g. ``ClassProbability(lambda x: net(x))``), or a
    plain list, tuple or dict of such. Such a callable may run a model whose layers no private copy
    would include. A harmless one (a user's activation function) only makes the first forward pass
    of a call run guarded (:func:`guarded`).
    """
    if isinstance(forward_func, _Guarded):
        return False
    module = module_of(forward_func)
    if module is None:
        return True
    listed = {id(m): m for _, m in reachable_modules(module)}
    for m in listed.values():
        if isinstance(m, torch.jit.ScriptModule):  # compiled: it calls no Python callable it holds
            continue
        for name, value in vars(m).items():
            if name in _REGISTRY:  # parameters, buffers and submodules: listed already
                continue
            # A plain container (a hook table too) is looked into one level down
            # (`self.extra = [nn.BatchNorm1d(6)]`, a forward hook calling another model), up to
            # _CONTAINER_ITEMS items (a vocabulary list holds no callable).
            if isinstance(value, dict):
                held: Iterable[Any] = value.values() if len(value) <= _CONTAINER_ITEMS else ()
            elif isinstance(value, (list, tuple)):
                held = value if len(value) <= _CONTAINER_ITEMS else ()
            else:
                held = (value,)
            if any(_may_run_modules(v, listed) for v in held):
                return True
    return False


# A module's tables of parameters, buffers and submodules, which reachable_modules lists.
_REGISTRY = frozenset(("_parameters", "_buffers", "_modules"))
# Most items of a plain container attribute looked into for callables.
_CONTAINER_ITEMS = 1024


def _may_run_modules(value: Any, listed: Dict[int, nn.Module]) -> bool:
    """Whether ``value``, held in a module's attributes, is a callable that may run modules not in
    ``listed``: not one of them or a method of one, and not PyTorch's own (``torch.nn.functional.relu``
    in an ``activation`` attribute, or the machinery that ``torch.compile`` keeps on its module)."""
    if not callable(value) or isinstance(value, type):
        return False
    if isinstance(value, functools.partial):  # e.g. timm's norm_layer = partial(nn.LayerNorm, eps=1e-6)
        bound = (value.func, *value.args, *value.keywords.values())
        return any(_may_run_modules(v, listed) for v in bound)
    owner = module_of(value)
    if owner is not None:
        return id(owner) not in listed
    if isinstance(value, types.BuiltinFunctionType):
        return False
    source = str(getattr(value, "__module__", None) or getattr(type(value), "__module__", None) or "")
    return not (source == "torch" or source.startswith("torch."))


class _Guarded:
    """``forward_func`` with its first call run inside :func:`_refuse_hidden_writers` (see :func:`guarded`).

    Other attributes are those of ``forward_func`` (e.g. a ``DataParallel``'s ``device_ids``).
    """

    def __init__(self, forward_func: Any, method: str) -> None:
        self.__wrapped__ = forward_func  # inspect.signature (Captum's _run_forward) reads the wrapped one
        self.method = method
        self.allowed = _allowed([forward_func])
        self.checked: Set[Any] = set()  # the signatures of the calls made under the hook

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # A model may run other layers with gradients on or off, or for other shapes: each such kind of
        # call runs under the hook once (a call runs two or three kinds); later ones of a kind do not.
        kind = (
            torch.is_grad_enabled(),
            tuple((a.shape, a.dtype) for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)),
        )
        if kind in self.checked:
            return self.__wrapped__(*args, **kwargs)
        with _refuse_hidden_writers(self.allowed, self.method):
            out = self.__wrapped__(*args, **kwargs)
        self.checked.add(kind)
        return out

    def __getattr__(self, name: str) -> Any:
        wrapped = self.__dict__.get("__wrapped__")
        if wrapped is None or name.startswith("__"):  # (copy, pickle and the like: not the wrapped one's)
            raise AttributeError(name)
        return getattr(wrapped, name)


def _allowed(roots: Iterable[Any]) -> FrozenSet[int]:
    """The ids of the modules reachable from ``roots`` (models, bound methods, functions): a model's (or
    its private copy's) own layers are its to update."""
    ids: Set[int] = set()
    for root in roots:
        module = module_of(root)
        if module is not None:
            ids.update(id(m) for _, m in reachable_modules(module))
    return frozenset(ids)


@contextlib.contextmanager
def refusing_hidden_writers(
    roots: Iterable[Any], method: str, private: Optional[Iterable[nn.Module]] = None
) -> Iterator[None]:
    """While the block runs, refuse a layer updating its buffers that none of ``roots`` lists, if one of
    ``roots`` hides models (:func:`hides_models`); nothing otherwise.

    For a method that runs the model other than through its ``forward_func`` (Captum's DeepLift runs
    its ``model``), where :func:`guarded` cannot reach. With ``private`` (NoiseGrad: the modules of a
    private copy of ``roots``, the only ones that may run), only those are allowed, and a module of
    ``roots`` that runs at all is refused: the copy reaches the user's model through a callable.
    """
    roots = [root for root in roots if root is not None]
    if not any(hides_models(root) for root in roots):
        yield
        return
    if private is None:
        with _refuse_hidden_writers(_allowed(roots), method):
            yield
        return
    with _refuse_hidden_writers(frozenset(id(m) for m in private), method, forbidden=_allowed(roots)):
        yield


def guarded(forward_func: Any, method: str) -> Any:
    """``forward_func`` refusing, before it changes anything, a hidden layer that updates its buffers.

    :func:`private_if_training` copies only the modules it can list; a
    function (or a lambda) calling a model hides it (:func:`hides_models`), and
    a batch norm (or instance or spectral norm) in training mode would then
    update the user's buffers at every forward pass. The first call of the
    result (and the first of each other kind: with gradients on or off, for
    other input shapes or dtypes) runs inside :func:`_refuse_hidden_writers`,
    so every method that runs the model through it raises a ``ValueError``
    naming ``forward_func`` before anything changes; the layers of
    ``forward_func``'s own module (a private copy where one was needed) run
    as usual. Later calls of a kind run the same layers, so they run
    unhooked (a global hook slows every module call of the process, and
    ``torch.compile`` cannot trace it). A model that picks its layers by the
    values of its inputs is checked on the layers its first calls pick.
    """
    return _Guarded(forward_func, method)


def private_copy(forward_func: Any) -> Any:
    """``forward_func`` on a ``copy.deepcopy`` of its module (itself when it has none)."""
    module = module_of(forward_func)
    if module is None:
        return forward_func
    private = copy.deepcopy(module)
    return private if forward_func is module else getattr(private, forward_func.__name__)


def counterpart(layer: nn.Module, original: Any, private: Any) -> nn.Module:
    """``layer`` of ``original``'s module, found at the same name in ``private``'s module (a copy)."""
    private = private.__wrapped__ if isinstance(private, _Guarded) else private  # a guard of the copy
    if private is original:
        return layer
    root, copy_root = module_of(original), module_of(private)
    assert root is not None and copy_root is not None
    # reachable_modules: also a layer of a model that a wrapper holds outside its registry
    # (the copy's walk gives the same names, in the same order).
    for name, module in reachable_modules(root):
        if module is layer:
            return dict(reachable_modules(copy_root))[name]
    raise ValueError(
        f"layer: {type(layer).__name__} is not a submodule of the model, so it cannot be found in the "
        "private copy made for a model in training mode; call model.eval() first"
    )


@contextlib.contextmanager
def _refuse_hidden_writers(
    allowed: FrozenSet[int], method: str, forbidden: FrozenSet[int] = frozenset()
) -> Iterator[None]:
    """While the block runs, refuse (before it runs) a layer updating its buffers that is not ``allowed``.

    A global forward-pre-hook, acting only in the calling thread, raises a
    ``ValueError`` naming ``forward_func`` before such a layer changes
    anything; ``allowed`` holds the ids of the modules that may run
    (:class:`_Guarded`).
    """
    thread = threading.get_ident()

    def check(layer: nn.Module, args: Any) -> None:
        if threading.get_ident() != thread or id(layer) in allowed:
            return
        if id(layer) in forbidden:
            raise ValueError(
                f"forward_func: its private copy runs {type(layer).__name__}, a layer of the user's model "
                "itself, through a callable the model holds (e.g. a lambda closing over self): "
                f"{method} cannot redirect it to the copy (its weight noise would not reach it, and "
                "its buffers would change); make the layer a submodule called in forward"
            )
        # DataParallel runs its replicas in other threads (replica 0 shares the model's buffers).
        inner = layer.module.modules() if isinstance(layer, nn.DataParallel) else ()
        writer = layer if _updates_buffers(layer) else next((m for m in inner if _updates_buffers(m)), None)
        if writer is not None:
            raise ValueError(
                f"forward_func: it runs a {type(writer).__name__} in training mode, whose buffers "
                f"every forward pass would update, of a model that {method} cannot copy "
                "privately: forward_func reaches it through a function, or through a callable or "
                "container that a module holds outside its registry, so no private copy includes it; "
                "pass the model itself (or a bound method) with its layers as submodules, or call "
                "model.eval() first"
            )

    handle = register_module_forward_pre_hook(check)
    try:
        yield
    finally:
        handle.remove()
