"""Dataset-level interactions: the mean of per-example interactions over many examples.

:func:`global_interactions` runs an interaction method (:class:`~captum_smoothhess.SmoothHess`,
or any object whose ``attribute`` returns per-example interaction matrices) batch by batch over
a tensor, a tuple of tensors or an iterable of batches (e.g. a ``DataLoader``), and streams the
sums of ``H``, ``H ** 2`` and ``|H|`` over the examples in float64, so memory does not grow with
the number of examples. The result, a :class:`GlobalInteractions`, holds the mean interaction,
the mean absolute interaction and the standard error of the mean, and ranks the strongest pairs
with their standard errors (:meth:`GlobalInteractions.top_pairs`).

Seeds: one seed is drawn from ``generator``; batch ``i`` is explained with a fresh
``torch.Generator`` seeded by a hash of ``(seed, i)``. A run therefore depends on the seed, the
batches (their order and sizes: the noise of a SmoothHess call depends on the batch it explains,
so another ``batch_size`` gives another estimate, within the standard errors) and the method's
settings, not on ``show_progress`` nor on the number of processes.

Processes: when a ``torch.distributed`` default process group of several ranks is initialised,
the ranks take the batches round-robin (rank ``r`` explains batches ``r, r + W, ...``) and
all-reduce the sums, so every rank returns the one-process result. Every rank must call with the
same batches in the same order (not a ``DistributedSampler``).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
from captum.attr import Attribution, LayerAttribution
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    RandomSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

from ._captum import (
    TargetType,
    _format_additional_forward_args,
    _format_tensor_into_tuples,
    _run_forward,
    progress,
)
from ._layout import _flat_hessian, _sizes
from ._model import private_forward
from ._sampling import _mix, seed_from
from ._stein import distributed_seed, ranks_raise_together, resolve_group
from ._validation import _check_flags, _check_generator, _check_inputs, _check_positive_int

__all__ = ["GlobalInteractions", "GlobalTopPairs", "global_interactions"]

InputsType = Union[Tensor, Tuple[Tensor, ...], Iterable[Any]]

# Floating dtypes a result may have, by code (0: this rank explained no batch).
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class GlobalTopPairs(NamedTuple):
    """The ``k`` strongest mean interactions ``mean[i, j]``, ``i < j``, strongest first.

    All four are tensors ``(k,)``: the mean interaction, its standard error
    and the flat feature (or group) indices of the pair.
    """

    values: Tensor
    stderr: Tensor
    index_i: Tensor
    index_j: Tensor


@dataclass(frozen=True)
class GlobalInteractions:
    """Interactions summarised over a set of examples (see :func:`global_interactions`).

    Attributes:
        mean: ``(d, d)`` (or ``(G, G)`` with a ``feature_mask``) mean over the
            examples of their interaction matrices, flattened over the
            concatenated features of the inputs in row-major order.
        mean_abs: Mean of the absolute interactions (large where pairs
            interact strongly but with signs that cancel in ``mean``).
        stderr: Standard error of ``mean``: the sample standard deviation over
            the examples (``N - 1`` in the denominator) over ``sqrt(N)``. It
            includes the Monte-Carlo noise of each example's estimate; NaN
            when ``N = 1``.
        n_examples: Number of examples ``N``.
    """

    mean: Tensor
    mean_abs: Tensor
    stderr: Tensor
    n_examples: int

    def top_pairs(self, k: int = 10) -> GlobalTopPairs:
        """The ``k`` pairs ``i < j`` with the largest ``|mean[i, j]|``, with their standard errors.

        Ties keep the row-major order of the pairs; ``k`` larger than the
        ``d (d - 1) / 2`` pairs returns all of them.

        Args:
            k: Number of pairs, at least 1.

        Returns:
            A :class:`GlobalTopPairs` of ``(k,)`` tensors, strongest first.

        Raises:
            ValueError: ``k`` < 1, or there is a single feature (no pair).

        Examples:
            >>> import torch
            >>> from captum_smoothhess import GlobalInteractions
            >>> mean = torch.tensor([[0.0, -3.0, 1.0], [-3.0, 0.0, 2.0], [1.0, 2.0, 0.0]])
            >>> gi = GlobalInteractions(mean, mean.abs(), torch.full((3, 3), 0.1), 10)
            >>> top = gi.top_pairs(2)
            >>> top.values.tolist(), top.index_i.tolist(), top.index_j.tolist()
            ([-3.0, 2.0], [0, 1], [1, 2])
        """
        k = _check_positive_int(k, "k")
        d = self.mean.shape[0]
        if d < 2:
            raise ValueError(f"k: the interactions have {d} feature(s), so no pair i < j")
        rows, cols = torch.triu_indices(d, d, offset=1, device=self.mean.device)
        vals = self.mean[rows, cols]
        order = torch.sort(vals.abs(), descending=True, stable=True).indices[:k]
        return GlobalTopPairs(vals[order], self.stderr[rows, cols][order], rows[order], cols[order])


def _accepts(method: Any, name: str) -> bool:
    """Whether ``method.attribute`` takes a keyword ``name`` (or any keyword)."""
    try:
        params = inspect.signature(method.attribute).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _takes_integer(method: Any) -> bool:
    """Whether ``method`` may be given integer inputs (token ids).

    Captum layer methods such as :class:`~captum_smoothhess.LayerSmoothHess`
    take them (the noise goes to a floating-point activation inside the model);
    other Captum attributions (:class:`~captum_smoothhess.SmoothHess`,
    :class:`~captum_smoothhess.NeuronSmoothHess`) differentiate with respect to
    the inputs and need floating-point ones. Any other object checks its inputs
    itself.
    """
    return isinstance(method, LayerAttribution) or not isinstance(method, Attribution)


def _count(inputs: Tuple[Tensor, ...], argument: str = "inputs") -> int:
    """The number of examples of a batch: its first tensor's first size (a 0-d tensor has none)."""
    first = inputs[0] if len(inputs) else None
    if not isinstance(first, Tensor) or first.dim() == 0:
        got = "no tensor" if first is None else "a 0-d tensor"
        raise ValueError(f"{argument}: expected batch-first tensors (B, ...), got {got}")
    return int(first.shape[0])


# Samplers that give the examples in an order the caller cannot know (or a subset of them per rank):
# arguments holding one entry per example cannot be matched to the examples of such a DataLoader.
_REORDERING = (RandomSampler, SubsetRandomSampler, WeightedRandomSampler, DistributedSampler)


class _Source(NamedTuple):
    """The batches to explain and what is known of them before the run."""

    batches: Iterable[Any]
    total: Optional[int]  # number of batches (for the progress bar)
    n_examples: Optional[int]  # number of examples, where known before the run
    exact: bool  # n_examples counted from the batches themselves (not from a DataLoader's sampler)
    reordered_by: Optional[str]  # the sampler of a DataLoader that shuffles (or splits) the examples


def _loader_examples(loader: DataLoader) -> Tuple[Optional[int], Optional[str]]:
    """The number of examples a DataLoader yields, where its batch sampler says, and a reordering sampler."""
    sampler = loader.sampler
    reordered_by = type(sampler).__name__ if isinstance(sampler, _REORDERING) else None
    batch_sampler = loader.batch_sampler
    if type(batch_sampler) is not BatchSampler:  # no batching, or the user's own batch sampler
        return None, reordered_by
    try:
        n = len(sampler)  # type: ignore[arg-type]
    except TypeError:  # an IterableDataset
        return None, reordered_by
    if batch_sampler.drop_last:
        n -= n % batch_sampler.batch_size
    return n, reordered_by


def _batches(inputs: InputsType, batch_size: int, allow_integer: bool = False) -> _Source:
    """The batches to explain, their number and the number of examples where known.

    A tensor or a tuple of tensors is split here into ``(x,)`` batches; a list or
    a tuple of batches is counted; a DataLoader's count comes from its sampler.
    """
    if isinstance(inputs, Tensor) or (
        isinstance(inputs, tuple) and len(inputs) > 0 and all(isinstance(t, Tensor) for t in inputs)
    ):
        inps = _format_tensor_into_tuples(inputs)
        _check_inputs(inps, allow_integer=allow_integer)
        n = _count(inps)
        parts = [tuple(t[s : s + batch_size] for t in inps) for s in range(0, n, batch_size)]
        batches = [(p[0] if isinstance(inputs, Tensor) else p,) for p in parts]
        return _Source(batches, len(batches), n, True, None)
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Iterable):
        raise TypeError(
            "inputs: expected a tensor, a tuple of tensors or an iterable of batches (e.g. a "
            f"DataLoader), got {type(inputs).__name__}"
        )
    if isinstance(inputs, (list, tuple)):
        n = 0
        for index, batch in enumerate(inputs):
            x, _ = _split_batch(batch, index)
            n += _count(_format_tensor_into_tuples(x), f"inputs (batch {index})")
        return _Source(inputs, len(inputs), n, True, None)
    try:
        total: Optional[int] = len(inputs)  # type: ignore[arg-type]
    except TypeError:
        total = None
    if isinstance(inputs, DataLoader):
        n_loader, reordered_by = _loader_examples(inputs)
        return _Source(inputs, total, n_loader, False, reordered_by)
    return _Source(inputs, total, None, False, None)


def _split_batch(batch: Any, index: int) -> Tuple[Union[Tensor, Tuple[Tensor, ...]], Any]:
    """``x``, ``(x,)`` or ``(x, y)`` -> (inputs, labels or None)."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
        x = batch[0]
        if isinstance(x, list):
            x = tuple(x)
        if isinstance(x, Tensor) or (isinstance(x, tuple) and all(isinstance(t, Tensor) for t in x)):
            return x, (batch[1] if len(batch) == 2 else None)
    hint = (
        "; map batches of dicts to pairs, e.g. ((b['input_ids'], b['label']) for b in loader)"
        if isinstance(batch, dict)
        else ""
    )
    raise TypeError(
        f"inputs: batch {index} is a {type(batch).__name__}; expected a tensor x, (x,) or (x, y), "
        "x a tensor or a tuple of tensors (for several model inputs, yield ((x1, x2), y))" + hint
    )


def _per_example(target: TargetType) -> bool:
    """Whether ``target`` holds one entry per example (and is sliced with the batches)."""
    return isinstance(target, list) or (isinstance(target, Tensor) and target.numel() > 1)


def _format_target(target: Any) -> TargetType:
    """NumPy targets as Captum takes them: an integer scalar as an ``int``, an array as a tensor."""
    if isinstance(target, np.integer):
        return int(target)
    if isinstance(target, np.ndarray):
        if not np.issubdtype(target.dtype, np.integer):
            raise TypeError(f"target: expected integer class indices, got an array of dtype {target.dtype}")
        return torch.from_numpy(target.astype(np.int64))
    if isinstance(target, list):
        return [int(t) if isinstance(t, np.integer) else t for t in target]
    return target


def _is_index(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _class_indices(labels: Any, rows: int) -> Any:
    """A batch's labels as class indices (its target), or ``None`` where they are none.

    Class indices are integer or bool labels, one per example (``(B,)`` or ``(B, 1)``, as int64) or one
    for the whole batch, or a list of ``B`` ints. Real-valued labels (regression), several labels per
    example (multi-label) and anything else (strings) are not.
    """
    if isinstance(labels, Tensor):
        if labels.is_floating_point() or labels.is_complex():
            return None
        if labels.dim() == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.numel() == 1 or (labels.dim() == 1 and labels.shape[0] == rows):
            return labels.long()
        return None
    if _is_index(labels):
        return int(labels)
    if isinstance(labels, list) and len(labels) == rows and all(_is_index(v) for v in labels):
        return [int(v) for v in labels]
    return None


def _one_output_per_example(method: Any, inputs: Tuple[Tensor, ...], afa: Any) -> Optional[bool]:
    """Whether the model behind a Captum ``method`` gives one output per example, ``(B,)`` or ``(B, 1)``.

    One plain forward pass on the batch, as SmoothHess makes before sampling: on a private copy of the
    model where a forward would update its buffers (training mode), refusing a hidden such layer as
    SmoothHess does, so that the model is left as found. ``None`` where there is no ``forward_func`` to
    run (not a Captum attribution) or its output is not a tensor.
    """
    forward = getattr(method, "forward_func", None)
    if not isinstance(method, Attribution) or not callable(forward):
        return None
    forward = private_forward(forward, type(method).__name__)
    with torch.no_grad():
        out = _run_forward(forward, inputs, None, _format_additional_forward_args(afa))
    if not isinstance(out, Tensor) or out.dim() == 0 or out.shape[0] != _count(inputs):
        return None
    return out.dim() == 1 or (out.dim() == 2 and out.shape[1] == 1)


# The attribute arguments that may hold one row per example of the whole dataset.
_SLICED = ("feature_mask", "baselines", "additional_forward_args")


class _PerExample:
    """The ``attribute`` arguments holding one row per example of the dataset, sliced with the batches.

    A tensor is per example when its first size is the number of examples ``N`` (known before the
    run, ``N > 1``) and it has a batch dimension: a baseline or an input-space feature mask as many
    dimensions as its input, a layer method's mask (over the activation) at least 2, a tensor of
    ``additional_forward_args`` any (Captum's are batch first). Anything else is passed unchanged.
    """

    def __init__(self, kwargs: Dict[str, Any], n: Optional[int], layer: bool) -> None:
        self.kwargs = kwargs
        self.n = n
        self.layer = layer
        self.flags: Dict[str, Union[bool, Tuple[bool, ...]]] = {}
        self.names: List[str] = []
        self.groups: Optional[int] = None  # G of a per-example feature mask, over the whole dataset

    def _rows_of(self, value: Any, dims: Optional[int], name: str) -> bool:
        if not isinstance(value, Tensor) or self.n is None or self.n < 2:
            return False
        if value.dim() == 0 or value.shape[0] != self.n:
            return False
        if name == "additional_forward_args":
            return True
        if name == "feature_mask" and self.layer:
            return value.dim() >= 2
        return dims is not None and value.dim() == dims

    def find(self, inputs: Tuple[Tensor, ...]) -> None:
        """Decide, from the first batch's inputs, which arguments are per example."""
        dims = [t.dim() for t in inputs]
        for name in _SLICED:
            value = self.kwargs.get(name)
            if value is None:
                continue
            flags: Union[bool, Tuple[bool, ...]]
            if isinstance(value, Tensor):
                if name == "baselines":
                    common = dims[0] if len(set(dims)) == 1 else None
                    flags = self._rows_of(value, common, name)
                else:
                    flags = self._rows_of(value, dims[0] if len(dims) == 1 else None, name)
            elif isinstance(value, tuple) or (isinstance(value, list) and name != "additional_forward_args"):
                # one entry per input (or per activation tensor); a list in additional_forward_args is
                # one argument, as Captum takes it
                same = len(value) == len(dims)
                flags = tuple(self._rows_of(v, dims[i] if same else None, name) for i, v in enumerate(value))
            else:
                continue
            if flags is True or (isinstance(flags, tuple) and any(flags)):
                self.flags[name] = flags
                self.names.append(name)
        if "feature_mask" in self.flags:
            mask = self.kwargs["feature_mask"]
            parts = [mask] if isinstance(mask, Tensor) else list(mask)
            tops = [
                int(m.max()) for m in parts if isinstance(m, Tensor) and m.numel() and m.device.type != "meta"
            ]
            self.groups = max(tops) + 1 if tops else None

    def sliced(self, start: int, stop: int) -> Dict[str, Any]:
        """The arguments for the examples ``start:stop``."""
        out = dict(self.kwargs)
        for name, flags in self.flags.items():
            value = self.kwargs[name]
            if isinstance(flags, bool):
                out[name] = value[start:stop]
            else:
                rows = [v[start:stop] if f else v for v, f in zip(value, flags)]
                out[name] = tuple(rows) if isinstance(value, tuple) else rows
        return out

    def pad(self, h: Tensor) -> Tensor:
        """A batch's ``(B, g, g)`` group interactions as ``(B, G, G)``: the groups absent from the batch's
        rows of a per-example mask have zero interactions (Captum's convention for unused ids)."""
        if self.groups is None or h.shape[1] >= self.groups:
            return h
        extra = self.groups - h.shape[1]
        return torch.nn.functional.pad(h, (0, extra, 0, extra))


def _square_shape(shape: torch.Size) -> Optional[torch.Size]:
    """``L`` for a shape ``(B, *L, *L)``, else ``None``."""
    if len(shape) < 3 or len(shape) % 2 == 0:
        return None
    half = (len(shape) - 1) // 2
    return shape[1 : 1 + half] if shape[1 : 1 + half] == shape[1 + half :] else None


def _flat_blocks(result: Tuple[Any, ...], inputs: Tuple[Tensor, ...]) -> Tensor:
    """The ``k x k`` nested tuple of blocks ``(B, *L_i, *L_j)`` -> ``(B, D, D)``, the ``L_i`` read from the
    diagonal blocks (a layer method's blocks are over its activation's tensors, not over the inputs)."""
    shapes = []
    for i, row in enumerate(result):
        blk = row[i] if isinstance(row, (tuple, list)) and len(row) > i else None
        shape = _square_shape(blk.shape) if isinstance(blk, Tensor) else None
        if shape is None:
            raise ValueError(
                f"method: attribute returned a tuple whose block [{i}][{i}] is not a tensor (B, *L, *L); "
                "expected a k x k nested tuple of blocks"
            )
        shapes.append(tuple(shape))
    return _flat_hessian(result, inputs, argument="method", shapes=shapes)


def _flat_result(result: Any, inputs: Tuple[Tensor, ...]) -> Tensor:
    """``(B, *S, *S)``, ``(B, G, G)`` or the nested tuple of blocks -> ``(B, D, D)``.

    ``S`` need not be the inputs' shape: a layer method's interactions are over
    its activation ``(B, *L)``, e.g. ``(B, T, E, T, E)`` for an embedding.
    """
    batch = _count(inputs)
    if isinstance(result, tuple):
        return _flat_blocks(result, inputs)
    if not isinstance(result, Tensor):
        raise TypeError(
            f"method: attribute returned a {type(result).__name__}; expected interactions, a tensor "
            "(B, *S, *S) or (B, G, G), or a nested tuple of blocks for tuple inputs"
        )
    dim = sum(_sizes(inputs))
    square = _square_shape(result.shape)
    if square is not None and result.shape[0] == batch:
        # (B, d, d), grouped (B, G, G), or (B, *S, *S) over the inputs or a layer's activation
        size = math.prod(square)
        return result.detach().reshape(batch, size, size)
    if result.dim() == 0 or result.shape[0] != batch or result.numel() != batch * dim * dim:
        raise ValueError(
            f"method: attribute returned shape {tuple(result.shape)} for {batch} example(s) of {dim} "
            "feature(s); expected (B, *S, *S) or (B, G, G)"
        )
    return result.detach().reshape(batch, dim, dim)


class _Sums:
    """float64 sums of ``H``, ``H ** 2`` and ``|H|`` over the examples seen so far."""

    def __init__(self) -> None:
        self.count = 0
        self.total: Optional[Tensor] = None  # (3, D, D)
        self.dtype: Optional[torch.dtype] = None

    def add(self, h: Tensor, index: int) -> None:
        if h.is_complex():
            raise TypeError(
                f"method: attribute returned complex interactions (dtype {h.dtype}) for batch {index}; "
                "expected real ones"
            )
        device = torch.device("cpu") if h.device.type == "mps" else h.device  # MPS has no float64
        h64 = h.to(device=device, dtype=torch.float64)
        if not bool(torch.isfinite(h64).all()):
            raise ValueError(f"method: attribute returned NaN or Inf interactions for batch {index}")
        part = torch.stack([h64.sum(0), (h64 * h64).sum(0), h64.abs().sum(0)])
        # A mean of integer interactions is not an integer: those are summarised in float64. Batches of
        # several dtypes give their promoted dtype (not the first batch's).
        dtype = h.dtype if h.dtype in _DTYPES else torch.float64
        if self.total is None:
            self.total, self.dtype = part, dtype
        elif part.shape != self.total.shape:
            raise ValueError(
                f"inputs: batch {index} gives {tuple(h.shape[1:])} interactions, earlier batches "
                f"{tuple(self.total.shape[1:])}"
            )
        else:
            self.total += part
            assert self.dtype is not None
            self.dtype = torch.promote_types(self.dtype, dtype)
        self.count += h.shape[0]

    def all_reduce(self, group: Any) -> None:
        """Sum over the ranks of ``group``; ranks that explained no batch receive the shape too."""
        nccl = torch.distributed.get_backend(group) == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        dim = 0 if self.total is None else self.total.shape[1]
        code = 0 if self.dtype is None else _DTYPES.index(self.dtype) + 1
        # One MAX reduction gives every rank both the largest and (negated) the smallest size of the
        # ranks that explained a batch, so that on a mismatch all ranks raise, none waits in the sum.
        no_batch = torch.iinfo(torch.int64).max
        meta = torch.tensor([dim, -(dim or no_batch), code], dtype=torch.int64, device=device)
        torch.distributed.all_reduce(meta, op=torch.distributed.ReduceOp.MAX, group=group)
        dim_all, dim_min, code_all = int(meta[0]), -int(meta[1]), int(meta[2])
        if dim_all and dim_min != dim_all:
            raise ValueError(f"inputs: the ranks' batches give interactions of sizes {dim_min} and {dim_all}")
        local = (
            self.total if self.total is not None else torch.zeros(3, dim_all, dim_all, dtype=torch.float64)
        )
        out_device = local.device
        packed = torch.cat([local.reshape(-1), local.new_tensor([float(self.count)])]).to(device)
        torch.distributed.all_reduce(packed, group=group)
        packed = packed.to(out_device)
        self.total = packed[:-1].reshape(3, dim_all, dim_all)
        self.count = round(float(packed[-1]))
        self.dtype = _DTYPES[code_all - 1] if code_all else None

    def result(self) -> GlobalInteractions:
        if self.total is None or self.count == 0:
            raise ValueError(
                "inputs: no examples (an empty tensor, or an iterable without batches such as a "
                "generator or iterator already consumed by an earlier call)"
            )
        n = self.count
        s1, s2, sa = self.total
        mean = s1 / n
        if n > 1:
            var = ((s2 - s1 * mean) / (n - 1)).clamp_min(0.0)
            stderr = (var / n).sqrt()
        else:
            stderr = torch.full_like(mean, math.nan)
        dtype = self.dtype or torch.float64
        return GlobalInteractions(mean.to(dtype), (sa / n).to(dtype), stderr.to(dtype), n)


def _batch_generator(seed: int, index: int) -> torch.Generator:
    """The generator batch ``index`` is explained with, for the run seed ``seed``."""
    return torch.Generator().manual_seed(_mix(seed, index))


def global_interactions(
    method: Any,
    inputs: InputsType,
    target: TargetType = None,
    batch_size: int = 32,
    show_progress: bool = False,
    generator: Optional[torch.Generator] = None,
    **attribute_kwargs: Any,
) -> GlobalInteractions:
    r"""Mean, mean absolute value and standard error of per-example interactions over a dataset.

    ``method.attribute`` is called once per batch; its per-example results
    ``(B, *S, *S)`` (or ``(B, G, G)`` with a ``feature_mask``, or the nested
    tuple of blocks for tuple inputs) are flattened to ``(B, D, D)`` over the
    concatenated features and summed in float64. Memory holds one batch and
    three ``D x D`` sums, whatever the number of examples.

    Args:
        method: An interaction method such as :class:`~captum_smoothhess.SmoothHess`:
            any object whose ``attribute(inputs, target=..., **kwargs)`` returns
            per-example interactions as SmoothHess does. A layer method's
            interactions are over its activation (e.g. ``(B, *L, *L)``). A
            method whose ``attribute`` takes no ``target`` (such as
            :class:`~captum_smoothhess.NeuronSmoothHess`, with
            ``neuron_selector`` in ``attribute_kwargs``) is called without one.
        inputs: The examples, in one of three forms:

            * a tensor ``(N, *S)``, split into batches of ``batch_size``;
            * a tuple of tensors ``(N, *S_i)`` (the inputs of a model with
              several inputs), split the same way;
            * any other iterable of batches, e.g. a ``torch.utils.data.DataLoader``
              or a list, each batch a tensor ``x``, ``(x,)`` or a pair ``(x, y)``,
              ``x`` a batch-first tensor or a tuple of them (so a two-input
              model's batches are ``((x1, x2), y)``). Read once, batch by batch
              (a generator is empty the second time). An exception, the
              model's included, stops the run and releases the iterator: a
              DataLoader's worker processes stop as after a complete run.

            The labels ``y`` are the targets when ``target`` is ``None`` and
            when they are class indices: integer or bool, one per example
            (``(B,)`` or ``(B, 1)``), or one per batch. Other labels (real
            values of a regression, several per example, strings) are never
            targets. A model with one output per example (``(B,)`` or
            ``(B, 1)``: a binary classifier's logit, a regression) needs no
            target, so its labels are not used either: a Captum method's
            model is run once, without gradients, on the first labelled batch
            to see its output (on a private copy where a forward pass would
            update its buffers, as SmoothHess does).

            Integer tensors (token ids) are accepted where the method takes
            them: a Captum layer method such as
            :class:`~captum_smoothhess.LayerSmoothHess` on an embedding (with
            :func:`~captum_smoothhess.tokens.token_feature_mask`, token x token
            interactions), or an object that is not a Captum attribution
            (it checks its inputs itself). SmoothHess and NeuronSmoothHess
            need floating-point inputs.
        target: Captum target. An int, a tuple or a one-element tensor applies
            to every example; a list or a tensor of ``N`` entries (one per
            example, in the order the batches come) is sliced with the
            batches. NumPy integers and integer arrays are taken as ints and
            tensors. ``None``: the batches' labels where they are class
            indices of a model with several outputs (see ``inputs``), else
            none.
        batch_size: Examples per ``attribute`` call when ``inputs`` is a tensor
            or a tuple of tensors (a DataLoader's own batches are used as
            they come). The noise of a call depends on its batch, so another
            ``batch_size`` gives another estimate (within the standard
            errors), unlike Captum's ``internal_batch_size``. Default: 32.
        show_progress: Show a progress bar over the batches (True or False).
        generator: ``torch.Generator`` from which the run's seed is drawn (the
            global RNG when ``None``); batch ``i`` is explained with a
            generator seeded by a hash of ``(seed, i)``. The same seed and the
            same batches give the same result, also across process counts.
        **attribute_kwargs: Passed to every ``method.attribute`` call, e.g.
            ``stdevs``, ``n_samples``, ``feature_mask``, ``baselines``,
            ``additional_forward_args``. Where the number of examples ``N``
            is known before the run (a tensor or a tuple of tensors, a list of
            batches, a DataLoader whose batch sampler says it), a tensor of
            ``feature_mask``, ``baselines`` or ``additional_forward_args``
            whose first size is ``N`` (``N > 1``) holds one row per example and
            is sliced with the batches, as ``target`` is: a baseline or a
            feature mask over the inputs if it has as many dimensions as its
            input, a layer method's mask (over the activation) if it has at
            least 2 (so give a mask shared by all examples a leading size 1,
            as :func:`~captum_smoothhess.tokens.token_feature_mask` does), a
            tensor of ``additional_forward_args`` always (Captum's are batch
            first). With a per-example mask, ``G`` is one more than its
            largest id over all examples; a group absent from a batch has
            zero interactions there (Captum's convention for an unused id).
            Everything else is passed unchanged to every batch, also a
            per-batch ``(B, ...)`` tensor, which then fits only batches of
            ``B`` examples; where ``N`` is not known (a generator, an
            ``IterableDataset``), nothing is sliced.

    Returns:
        A :class:`GlobalInteractions` with ``mean``, ``mean_abs`` and
        ``stderr`` (``(D, D)``, in the dtype of the method's results, promoted
        over the batches, float64 for integer ones) and ``n_examples`` (an
        ``int``).

    Raises:
        TypeError: ``method`` has no ``attribute`` method or returns something
            other than interactions (or complex ones); ``inputs`` is of an unknown kind or a
            batch is not ``x``, ``(x,)`` or ``(x, y)``; integer inputs for a
            method that needs floating-point ones (SmoothHess);
            ``show_progress`` is not a bool.
        ValueError: ``batch_size`` < 1; ``inputs`` holds no examples or a
            batch has no batch dimension; a per-example ``target``,
            ``feature_mask``, ``baselines`` or ``additional_forward_args``
            does not have one entry per example, or is given for a
            DataLoader that shuffles (its sampler reorders the examples);
            ``target`` for a method that takes none; labels used as targets
            (``target=None``) that the model's output does not have;
            ``method`` returns NaN or Inf interactions; ``process_group``,
            ``return_gradient``, ``return_error``, a ``tolerance`` or a
            non-dense ``output`` in ``attribute_kwargs`` (the
            per-batch calls run in one process and return the dense
            interactions alone; the standard errors are computed here, over
            the examples).

    Examples:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from captum_smoothhess import SmoothHess, global_interactions
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
        ...                           torch.nn.Linear(8, 3))
        >>> x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
        >>> gi = global_interactions(SmoothHess(net), x, target=y, batch_size=8,
        ...                          stdevs=0.5, n_samples=100,
        ...                          generator=torch.Generator().manual_seed(0))
        >>> gi.n_examples, gi.mean.shape, gi.stderr.shape
        (20, torch.Size([4, 4]), torch.Size([4, 4]))
        >>> loader = DataLoader(TensorDataset(x, y), batch_size=8)
        >>> same = global_interactions(SmoothHess(net), loader, stdevs=0.5, n_samples=100,
        ...                            generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(same.mean, gi.mean)
        True
        >>> len(gi.top_pairs(3).values)
        3

        A binary classifier's single logit needs no target: the 0/1 labels
        are not taken as class indices. Per-example feature masks (here the
        first two features grouped for the first ten examples, the last two
        for the others) are sliced with the batches:

        >>> binary = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
        ...                              torch.nn.Linear(8, 1))
        >>> labels = torch.randint(0, 2, (20,))
        >>> masks = torch.tensor([[0, 0, 1, 2]] * 10 + [[0, 1, 2, 2]] * 10)
        >>> gi = global_interactions(SmoothHess(binary), DataLoader(TensorDataset(x, labels),
        ...                          batch_size=8), feature_mask=masks,
        ...                          stdevs=0.5, n_samples=100)
        >>> gi.mean.shape
        torch.Size([3, 3])
    """
    if not callable(getattr(method, "attribute", None)):
        raise TypeError(
            "method: expected an interaction method with an attribute(inputs, target=...) method, "
            f"such as SmoothHess; got {type(method).__name__}"
        )
    batch_size = _check_positive_int(batch_size, "batch_size")
    _check_flags(show_progress=show_progress)
    _check_generator(generator)
    if "process_group" in attribute_kwargs:
        raise ValueError(
            "process_group: global_interactions splits the batches over the default process group "
            "and explains each batch in one process"
        )
    if attribute_kwargs.get("return_gradient"):
        raise ValueError("return_gradient: global_interactions averages the interactions only")
    if attribute_kwargs.get("return_error"):
        raise ValueError(
            "return_error: global_interactions reports its own standard errors over the examples "
            "(GlobalInteractions.stderr, which include each example's Monte-Carlo noise)"
        )
    if attribute_kwargs.get("tolerance") is not None:
        raise ValueError(
            "tolerance: global_interactions reports its own standard errors over the examples "
            "(GlobalInteractions.stderr) and needs the interactions alone from every batch; set "
            "n_samples instead"
        )
    if attribute_kwargs.get("output", "dense") != "dense":
        raise ValueError(
            f"output: global_interactions needs dense results, got {attribute_kwargs['output']!r}"
        )
    takes_target = _accepts(method, "target")
    if target is not None and not takes_target:
        raise ValueError(
            f"target: {type(method).__name__}.attribute takes no target (e.g. NeuronSmoothHess explains "
            "the unit its neuron_selector selects); leave target=None"
        )
    target = _format_target(target)
    per_example = _per_example(target)
    allow_integer = _takes_integer(method)
    source = _batches(inputs, batch_size, allow_integer)
    n_known = source.n_examples if source.exact else None
    if per_example and n_known is not None and len(target) != n_known:
        raise ValueError(f"target: has {len(target)} entries for {n_known} examples (one per example)")
    if per_example and source.reordered_by is not None:
        raise ValueError(
            "target: one entry per example is matched to the examples in the order the batches come, "
            f"but the DataLoader's {source.reordered_by} reorders (or splits) them; yield the labels "
            "in the batches ((x, y)) or use shuffle=False"
        )
    rows = _PerExample(attribute_kwargs, source.n_examples, isinstance(method, LayerAttribution))

    seed = seed_from(generator)
    group = resolve_group(None)
    world, rank, device = 1, 0, torch.device("cpu")
    if group is not None:
        backend = torch.distributed.get_backend(group)
        device = (
            torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        )
        seed = distributed_seed(seed, group, device)
        world, rank = torch.distributed.get_world_size(group), torch.distributed.get_rank(group)
    # The ranks split the batches: each batch's call must not split its samples over them too.
    pass_group = group is not None and _accepts(method, "process_group")
    pass_generator = _accepts(method, "generator")

    sums = _Sums()
    offset = 0
    one_output: Optional[bool] = None  # decided once, at the first batch with class-index labels
    loop: Iterator[Any] = iter(
        progress(source.batches, desc="global_interactions", total=source.total)
        if show_progress
        else source.batches
    )
    try:
        with ranks_raise_together(group, device, "explaining its batches"):
            for index, batch in enumerate(loop):
                x, labels = _split_batch(batch, index)
                inps = _format_tensor_into_tuples(x)
                start, offset = offset, offset + _count(inps, f"inputs (batch {index})")
                if index == 0:
                    rows.find(inps)
                    if rows.names and source.reordered_by is not None:
                        raise ValueError(
                            f"{rows.names[0]}: one row per example is matched to the examples in the "
                            f"order the batches come, but the DataLoader's {source.reordered_by} reorders "
                            "(or splits) them; use shuffle=False"
                        )
                if rows.names and source.n_examples is not None and offset > source.n_examples:
                    raise ValueError(
                        f"{rows.names[0]}: has {source.n_examples} rows (one per example), fewer than the "
                        f"examples of the batches (batch {index} ends at example {offset})"
                    )
                if index % world != rank:
                    continue
                _check_inputs(inps, argument=f"inputs (batch {index})", allow_integer=allow_integer)
                kwargs = rows.sliced(start, offset) if rows.names else dict(attribute_kwargs)
                from_labels = False
                if per_example:
                    assert isinstance(target, (list, Tensor))
                    if offset > len(target):
                        raise ValueError(
                            f"target: has {len(target)} entries, fewer than the examples (batch {index} "
                            f"ends at example {offset})"
                        )
                    batch_target: Any = target[start:offset]
                elif target is None and takes_target:
                    batch_target = _class_indices(labels, offset - start)
                    if batch_target is not None and one_output is None:
                        afa = kwargs.get("additional_forward_args")
                        one_output = bool(_one_output_per_example(method, inps, afa))
                    if one_output:  # a single-output model needs no target: the labels are not one
                        batch_target = None
                    from_labels = batch_target is not None
                else:
                    batch_target = target
                if takes_target:
                    kwargs["target"] = batch_target
                if pass_generator:
                    kwargs["generator"] = _batch_generator(seed, index)
                if pass_group:
                    kwargs["process_group"] = False
                try:
                    result = method.attribute(x, **kwargs)
                except ValueError as err:
                    if not (from_labels and str(err).startswith("target:")):
                        raise
                    raise ValueError(
                        f"target: is None, so the labels of batch {index} were taken as class indices, "
                        f"but they do not select outputs of the model ({err}); pass a target, or batches "
                        "without labels"
                    ) from err
                sums.add(rows.pad(_flat_result(result, inps)), index)
            if per_example:
                assert isinstance(target, (list, Tensor))
                if offset != len(target):
                    raise ValueError(
                        f"target: has {len(target)} entries for {offset} examples (one per example)"
                    )
            if rows.names and offset != source.n_examples:
                raise ValueError(
                    f"{rows.names[0]}: has {source.n_examples} rows (one per example) for the "
                    f"{offset} examples of the batches"
                )
    finally:
        # An exception keeps this frame alive in its traceback: drop the iterator now, so that a
        # DataLoader's worker processes stop (and a progress bar closes) as after a complete run.
        del loop
    if group is not None:
        sums.all_reduce(group)
    return sums.result()
