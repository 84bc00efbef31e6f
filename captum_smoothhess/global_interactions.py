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
batches (their order and sizes: the noise of a SmoothHess call depends on the batch it explains)
and the method's settings, not on ``show_progress`` nor on the number of processes.

Processes: when a ``torch.distributed`` default process group of several ranks is initialised,
the ranks take the batches round-robin (rank ``r`` explains batches ``r, r + W, ...``) and
all-reduce the sums, so every rank returns the one-process result. Every rank must call with the
same batches in the same order (not a ``DistributedSampler``).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
from captum.attr import Attribution, LayerAttribution
from torch import Tensor

from ._captum import TargetType, _format_tensor_into_tuples, progress
from ._layout import _flat_hessian, _sizes
from ._sampling import _mix, seed_from
from ._stein import distributed_seed, ranks_raise_together, resolve_group
from ._validation import _check_generator, _check_inputs, _check_positive_int

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


def _count(inputs: Tuple[Tensor, ...]) -> int:
    return int(inputs[0].shape[0])


def _batches(
    inputs: InputsType, batch_size: int, allow_integer: bool = False
) -> Tuple[Iterable[Any], Optional[int], Optional[int]]:
    """The batches to explain, their number and the number of examples where known.

    A tensor or a tuple of tensors is split here into ``(x,)`` batches.
    """
    if isinstance(inputs, Tensor) or (
        isinstance(inputs, tuple) and len(inputs) > 0 and all(isinstance(t, Tensor) for t in inputs)
    ):
        inps = _format_tensor_into_tuples(inputs)
        _check_inputs(inps, allow_integer=allow_integer)
        n = _count(inps)
        parts = [tuple(t[s : s + batch_size] for t in inps) for s in range(0, n, batch_size)]
        batches = [(p[0] if isinstance(inputs, Tensor) else p,) for p in parts]
        return batches, len(batches), n
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Iterable):
        raise TypeError(
            "inputs: expected a tensor, a tuple of tensors or an iterable of batches (e.g. a "
            f"DataLoader), got {type(inputs).__name__}"
        )
    try:
        total: Optional[int] = len(inputs)  # type: ignore[arg-type]
    except TypeError:
        total = None
    return inputs, total, None


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
    raise TypeError(
        f"inputs: batch {index} is a {type(batch).__name__}; expected a tensor x, (x,) or (x, y), "
        "x a tensor or a tuple of tensors (for several model inputs, yield ((x1, x2), y))"
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


def _labels_as_target(labels: Any) -> Any:
    """A batch's labels as its target: class indices are, real-valued labels (regression) are not."""
    if isinstance(labels, Tensor) and (labels.is_floating_point() or labels.is_complex()):
        return None
    return labels


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
        if self.total is None:
            # A mean of integer interactions is not an integer: those are summarised in float64.
            self.total, self.dtype = part, (h.dtype if h.dtype in _DTYPES else torch.float64)
        elif part.shape != self.total.shape:
            raise ValueError(
                f"inputs: batch {index} gives {tuple(h.shape[1:])} interactions, earlier batches "
                f"{tuple(self.total.shape[1:])}"
            )
        else:
            self.total += part
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
            raise ValueError("inputs: no examples (an empty tensor or an iterable without batches)")
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
            interactions are over its activation (e.g. ``(B, *L, *L)``).
        inputs: The examples, in one of three forms:

            * a tensor ``(N, *S)``, split into batches of ``batch_size``;
            * a tuple of tensors ``(N, *S_i)`` (the inputs of a model with
              several inputs), split the same way;
            * any other iterable of batches, e.g. a ``torch.utils.data.DataLoader``
              or a list, each batch a tensor ``x``, ``(x,)`` or a pair ``(x, y)``,
              ``x`` a tensor or a tuple of tensors (so a two-input model's
              batches are ``((x1, x2), y)``). The labels ``y`` are the targets
              when ``target`` is ``None`` and are ignored otherwise; real-valued
              labels (regression) are never targets, so such batches are
              explained without one. Read once, batch by batch.

            Integer tensors (token ids) are accepted where the method takes
            them: a Captum layer method such as
            :class:`~captum_smoothhess.LayerSmoothHess` on an embedding (with
            :func:`~captum_smoothhess.tokens.token_feature_mask`, token x token
            interactions), or an object that is not a Captum attribution
            (it checks its inputs itself). SmoothHess and NeuronSmoothHess
            need floating-point inputs.
        target: Captum target. An int, a tuple or a one-element tensor applies
            to every example; a list or a tensor of ``N`` entries (one per
            example, in order) is sliced with the batches. NumPy integers and
            integer arrays are taken as ints and tensors. ``None``: the
            batches' labels if they carry any, else none (a model with one
            output per example).
        batch_size: Examples per ``attribute`` call when ``inputs`` is a tensor
            or a tuple of tensors. Default: 32.
        show_progress: Show a progress bar over the batches.
        generator: ``torch.Generator`` from which the run's seed is drawn (the
            global RNG when ``None``); batch ``i`` is explained with a
            generator seeded by a hash of ``(seed, i)``. The same seed and the
            same batches give the same result, also across process counts.
        **attribute_kwargs: Passed to every ``method.attribute`` call, e.g.
            ``stdevs``, ``n_samples``, ``feature_mask``,
            ``additional_forward_args`` (passed unchanged to every batch, so
            without a batch dimension).

    Returns:
        A :class:`GlobalInteractions` with ``mean``, ``mean_abs`` and
        ``stderr`` (``(D, D)``, in the dtype of the method's results, float64
        for integer ones) and
        ``n_examples``.

    Raises:
        TypeError: ``method`` has no ``attribute`` method or returns something
            other than interactions (or complex ones); ``inputs`` is of an unknown kind or a
            batch is not ``x``, ``(x,)`` or ``(x, y)``; integer inputs for a
            method that needs floating-point ones (SmoothHess).
        ValueError: ``batch_size`` < 1; ``inputs`` holds no examples; a
            per-example ``target`` does not have one entry per example;
            ``method`` returns NaN or Inf interactions; ``process_group``,
            ``return_gradient``, ``return_error``, a ``tolerance`` or a
            non-dense ``output`` in ``attribute_kwargs`` (the
            per-batch calls run in one process and return the dense
            interactions alone; the standard errors are computed here, over
            the examples).

    Examples:
        >>> import torch
        >>> from captum_smoothhess import SmoothHess, global_interactions
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
        ...                           torch.nn.Linear(8, 3))
        >>> x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
        >>> gi = global_interactions(SmoothHess(net), x, target=y, batch_size=8,
        ...                          stdevs=0.5, n_samples=100,
        ...                          generator=torch.Generator().manual_seed(0))
        >>> gi.n_examples, gi.mean.shape, gi.stderr.shape
        (20, torch.Size([4, 4]), torch.Size([4, 4]))
        >>> loader = torch.utils.data.DataLoader(
        ...     torch.utils.data.TensorDataset(x, y), batch_size=8)
        >>> same = global_interactions(SmoothHess(net), loader, stdevs=0.5, n_samples=100,
        ...                            generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(same.mean, gi.mean)
        True
        >>> len(gi.top_pairs(3).values)
        3
    """
    if not callable(getattr(method, "attribute", None)):
        raise TypeError(
            "method: expected an interaction method with an attribute(inputs, target=...) method, "
            f"such as SmoothHess; got {type(method).__name__}"
        )
    batch_size = _check_positive_int(batch_size, "batch_size")
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
    target = _format_target(target)
    per_example = _per_example(target)
    allow_integer = _takes_integer(method)
    batches, total, n_known = _batches(inputs, batch_size, allow_integer)
    if per_example and n_known is not None and len(target) != n_known:
        raise ValueError(f"target: has {len(target)} entries for {n_known} examples (one per example)")

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
    loop: Iterator[Any] = iter(batches)
    if show_progress:
        loop = iter(progress(batches, desc="global_interactions", total=total))
    with ranks_raise_together(group, device, "explaining its batches"):
        for index, batch in enumerate(loop):
            x, labels = _split_batch(batch, index)
            inps = _format_tensor_into_tuples(x)
            start, offset = offset, offset + _count(inps)
            if index % world != rank:
                continue
            _check_inputs(inps, argument=f"inputs (batch {index})", allow_integer=allow_integer)
            if per_example:
                assert isinstance(target, (list, Tensor))
                if offset > len(target):
                    raise ValueError(
                        f"target: has {len(target)} entries, fewer than the examples (batch {index} "
                        f"ends at example {offset})"
                    )
                batch_target: Any = target[start:offset]
            else:
                batch_target = _labels_as_target(labels) if target is None else target
            kwargs = dict(attribute_kwargs)
            if pass_generator:
                kwargs["generator"] = _batch_generator(seed, index)
            if pass_group:
                kwargs["process_group"] = False
            result = method.attribute(x, target=batch_target, **kwargs)
            sums.add(_flat_result(result, inps), index)
        if per_example:
            assert isinstance(target, (list, Tensor))
            if offset != len(target):
                raise ValueError(f"target: has {len(target)} entries for {offset} examples (one per example)")
    if group is not None:
        sums.all_reduce(group)
    return sums.result()
