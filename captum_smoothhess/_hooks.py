"""Forward hooks that read or replace one layer's activation, seen only by the calling thread.

The layer methods reach inside the model through a forward hook on the layer
(a forward-pre-hook for the layer's input): :func:`capture` records the
activation of one forward, :func:`replace` substitutes a given activation for
it. The hook acts only in the thread that registered it, so another thread
running the same model meanwhile sees the model as it is (a ``DataParallel``
model, whose replicas run in worker threads, is served on every thread, by
device). The hook is removed on exit, also when the model raises.

An activation is a tensor, or a nested tuple/list/mapping of values (e.g. an
LSTM's ``(out, (h, c))``, a dict of outputs); its floating-point tensors are
the attributed parts, depth first in order, and anything else passes through
unchanged. A layer's input is its positional arguments, followed by its
keyword arguments when those hold floating-point tensors (a layer called with
one tensor, positionally or by keyword, has that tensor as its input). Both
hooks hand the model copies, so that in-place operations after the layer
(``ReLU(inplace=True)``) change neither the recorded activation nor the
substituted one.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import threading
from collections.abc import Mapping
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

Parts = Tuple[Tensor, ...]


def _is_part(value: Any) -> bool:
    return isinstance(value, Tensor) and value.is_floating_point()


def _parts_of(value: Any, out: List[Tensor]) -> None:
    """Append the floating-point tensors of a nested tuple/list/mapping, depth first, in order."""
    if _is_part(value):
        out.append(value)
    elif isinstance(value, (tuple, list)):
        for v in value:
            _parts_of(v, out)
    elif isinstance(value, Mapping):
        for v in value.values():
            _parts_of(v, out)


def _parts(value: Any) -> Parts:
    """The attributed tensors of an activation: itself if a tensor, else its floating-point leaves."""
    if isinstance(value, Tensor):
        return (value,)
    out: List[Tensor] = []
    _parts_of(value, out)
    return tuple(out)


def _rebuilt(value: Any, parts: Iterator[Tensor]) -> Any:
    if _is_part(value):
        return next(parts)
    if isinstance(value, (tuple, list)):
        items = [_rebuilt(v, parts) for v in value]
        if isinstance(value, list):
            return items
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, Mapping):
        new = {k: _rebuilt(v, parts) for k, v in value.items()}
        if type(value) is dict:
            return new
        if type(value) is collections.OrderedDict:
            return collections.OrderedDict(new)
        out = copy.copy(value)  # e.g. a ModelOutput: keep its type and fields
        for k, v in new.items():
            out[k] = v  # type: ignore[index]
        return out
    return value


def _rebuild(value: Any, parts: Sequence[Tensor]) -> Any:
    """``value`` with its attributed tensors replaced by ``parts`` (same order as :func:`_parts`)."""
    if isinstance(value, Tensor):
        return parts[0]
    return _rebuilt(value, iter(parts))


def _device_of(parts: Parts) -> torch.device:
    return parts[0].device


class _Hook:
    """One registration of a forward (or pre-) hook on ``layer``, filtered by thread."""

    def __init__(self, layer: nn.Module, to_input: bool, all_threads: bool) -> None:
        self.layer = layer
        self.to_input = to_input
        self.thread = None if all_threads else threading.get_ident()
        self.seen: Dict[torch.device, int] = {}

    def mine(self) -> bool:
        return self.thread is None or threading.get_ident() == self.thread

    def once(self, parts: Parts) -> None:
        """Refuse a second call of the layer in the one forward a registration serves."""
        device = _device_of(parts)
        self.seen[device] = self.seen.get(device, 0) + 1
        if self.seen[device] > 1:
            raise ValueError(
                "layer: it is called more than once in one forward of forward_func, so its activation "
                "is not one tensor per example; choose a layer called once (e.g. a wrapper module)"
            )

    @contextlib.contextmanager
    def registered(self) -> Iterator[None]:
        if self.to_input:
            handle = self.layer.register_forward_pre_hook(self._pre, with_kwargs=True)
        else:
            handle = self.layer.register_forward_hook(self._post)
        try:
            yield
        finally:
            handle.remove()

    def _pre(
        self, module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]
    ) -> Optional[Tuple[Tuple[Any, ...], Dict[str, Any]]]:
        if not self.mine():
            return None
        if len(args) + len(kwargs) == 1 and isinstance((*args, *kwargs.values())[0], Tensor):
            # The layer's one argument, positional or by keyword: a tensor layout.
            value = (*args, *kwargs.values())[0]
            out = self.act(value)
            if out is None:
                return None
            return ((out,), kwargs) if args else ((), {k: out for k in kwargs})
        keyword = bool(_parts(kwargs))
        value = (*args, kwargs) if keyword else args
        out = self.act(value)
        if out is None:
            return None
        return (tuple(out[:-1]), out[-1]) if keyword else (tuple(out), kwargs)

    def _post(self, module: nn.Module, args: Tuple[Any, ...], output: Any) -> Any:
        if not self.mine():
            return None
        return self.act(output)

    def act(self, value: Any) -> Any:
        """Called with the activation; a non-``None`` return replaces it."""
        raise NotImplementedError


class _Capture(_Hook):
    def __init__(self, layer: nn.Module, to_input: bool, all_threads: bool) -> None:
        super().__init__(layer, to_input, all_threads)
        self.saved: Dict[torch.device, Parts] = {}
        self.is_tuple = False
        self.lock = threading.Lock()

    def act(self, value: Any) -> Any:
        parts = _parts(value)
        if not parts:
            return None
        self.once(parts)
        # A copy: the model may overwrite the activation in place later (e.g. ReLU(inplace=True)).
        parts = tuple(p.clone() for p in parts)
        with self.lock:
            self.saved[_device_of(parts)] = parts
            self.is_tuple = not isinstance(value, Tensor)
        return None


class _Replace(_Hook):
    def __init__(
        self, layer: nn.Module, to_input: bool, all_threads: bool, by_device: Dict[torch.device, Parts]
    ) -> None:
        super().__init__(layer, to_input, all_threads)
        self.by_device = by_device

    def act(self, value: Any) -> Any:
        parts = _parts(value)
        if not parts:
            return None
        self.once(parts)
        new = self.by_device[_device_of(parts)]
        for p, q in zip(parts, new):
            if p.shape != q.shape:
                raise ValueError(
                    f"layer: its activation has shape {tuple(p.shape)} here but {tuple(q.shape)} was "
                    "expected (its shape depends on the batch size); choose a layer whose activation "
                    "has one row per example"
                )
        # Copies (not views of the core's leaf tensor), which the model may then change in place.
        return _rebuild(value, [q.clone() for q in new])


def _devices(device_ids: Optional[List[int]]) -> List[torch.device]:
    return [torch.device("cuda", i) for i in device_ids or []]


def gather(saved: Dict[torch.device, Parts], device_ids: Optional[List[int]]) -> Parts:
    """The activation of the whole batch from per-device pieces (one piece without ``device_ids``)."""
    if not device_ids or len(saved) == 1:
        (parts,) = saved.values()
        return parts
    pieces = [saved[d] for d in _devices(device_ids) if d in saved]
    target = pieces[0][0].device
    return tuple(torch.cat([p[k].to(target) for p in pieces]) for k in range(len(pieces[0])))


def scatter(parts: Parts, device_ids: Optional[List[int]]) -> Dict[torch.device, Parts]:
    """The activation to substitute, by device (split as ``DataParallel`` splits its inputs)."""
    if not device_ids:
        return {_device_of(parts): parts}
    from torch.nn.parallel.scatter_gather import scatter as _scatter

    pieces = _scatter(parts, target_gpus=device_ids)
    return {_device_of(p): tuple(p) for p in pieces}


@contextlib.contextmanager
def capture(layer: nn.Module, to_input: bool, device_ids: Optional[List[int]]) -> Iterator[_Capture]:
    """Record ``layer``'s output (or input) during the forward run inside the block."""
    hook = _Capture(layer, to_input, all_threads=bool(device_ids))
    with hook.registered():
        yield hook


@contextlib.contextmanager
def replace(
    layer: nn.Module, to_input: bool, device_ids: Optional[List[int]], parts: Parts
) -> Iterator[None]:
    """Substitute ``parts`` for ``layer``'s output (or input) in the forward run inside the block."""
    hook = _Replace(layer, to_input, bool(device_ids), scatter(parts, device_ids))
    with hook.registered():
        yield
