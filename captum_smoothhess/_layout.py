"""The one home of the flat layout: tuple inputs as ``(B, d)``, results back in the inputs' shapes.

Every method works on one flat vector of ``d`` features per example, the
tensors of a tuple input concatenated in order. These helpers go from the
user's layout to the flat one (:func:`_flatten`, :func:`_flat_gradient`,
:func:`_flat_hessian`) and back (:func:`_unflatten`, :func:`_format_flat`,
:func:`_split_hessian`), with Captum's own ``_format_output`` for the
"tensor in, tensor out; tuple in, tuple out" rule.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, TypeVar, Union

import torch
from torch import Tensor

from ._captum import _format_output, _format_tensor_into_tuples

HessianType = Union[Tensor, Tuple[Tuple[Tensor, ...], ...]]
TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]
# Inputs and results shaped like them: a tensor gives a tensor, a tuple a tuple.
InputsT = TypeVar("InputsT", Tensor, Tuple[Tensor, ...])
HessianLike = Union[Tensor, Sequence[Sequence[Tensor]]]
GradientLike = Union[Tensor, Sequence[Tensor]]


def _flatten(inputs: Tuple[Tensor, ...]) -> Tensor:
    """(B, d) view/copy of a tuple of (B, *S_i) tensors, detached."""
    batch = inputs[0].shape[0]
    flat = [inp.detach().reshape(batch, -1) for inp in inputs]
    return flat[0] if len(flat) == 1 else torch.cat(flat, dim=1)


def _sizes(inputs: Tuple[Tensor, ...]) -> list[int]:
    return [math.prod(inp.shape[1:]) for inp in inputs]


def _unflatten(flat: Tensor, inputs: Tuple[Tensor, ...], lead: int = 1) -> Tuple[Tensor, ...]:
    """Split the last dim of ``flat`` (..., d) back into the inputs' shapes."""
    head = flat.shape[:lead]
    if len(inputs) == 1:
        # A view: no split, so autograd does not copy the gradient back through a cat.
        return (flat.reshape(*head, *inputs[0].shape[1:]),)
    parts = torch.split(flat, _sizes(inputs), dim=lead)
    return tuple(p.reshape(*head, *inp.shape[1:]) for p, inp in zip(parts, inputs))


def _format_flat(flat: Tensor, inputs: Tuple[Tensor, ...], is_tuple: bool) -> TensorOrTuple:
    """``(B, d)`` -> a tensor shaped like the single input, or a tuple shaped like the inputs."""
    return _format_output(is_tuple, _unflatten(flat, inputs))


def _split_hessian(hess: Tensor, inputs: Tuple[Tensor, ...], is_tuple: bool) -> HessianType:
    """(B, d, d) -> (B, *S, *S), or the k x k nested tuple of blocks for tuple inputs."""
    batch = hess.shape[0]
    if not is_tuple:
        shape = inputs[0].shape[1:]
        return hess.reshape(batch, *shape, *shape)
    sizes = _sizes(inputs)
    return tuple(
        tuple(
            blk.reshape(batch, *a.shape[1:], *b.shape[1:])
            for blk, b in zip(torch.split(row, sizes, dim=2), inputs)
        )
        for row, a in zip(torch.split(hess, sizes, dim=1), inputs)
    )


def _flat_gradient(gradient: GradientLike, inputs: Tuple[Tensor, ...], argument: str = "gradient") -> Tensor:
    """A gradient shaped like ``inputs`` (tensor or tuple) as a ``(B, d)`` tensor."""
    if not isinstance(gradient, (Tensor, tuple)):
        raise TypeError(f"{argument}: expected a tensor or a tuple of tensors, got {type(gradient).__name__}")
    grads = _format_tensor_into_tuples(gradient)
    if len(grads) != len(inputs):
        raise ValueError(f"{argument}: got {len(grads)} tensor(s) for {len(inputs)} input tensor(s)")
    for i, (g, inp) in enumerate(zip(grads, inputs)):
        if not isinstance(g, Tensor) or g.shape != inp.shape:
            shape = tuple(g.shape) if isinstance(g, Tensor) else type(g).__name__
            raise ValueError(
                f"{argument}: tensor {i} has shape {shape}, expected the input's shape {tuple(inp.shape)}"
            )
    flat = _flatten(grads).to(dtype=inputs[0].dtype)
    if not bool(torch.isfinite(flat).all()):
        raise ValueError(f"{argument}: contains NaN or Inf values")
    return flat


def _flat_hessian(
    hessian: HessianLike,
    inputs: Tuple[Tensor, ...],
    argument: str = "hessian",
    shapes: Optional[List[Tuple[int, ...]]] = None,
) -> Tensor:
    """A Hessian in SmoothHess's output layout as a ``(B, d, d)`` tensor.

    Accepts a tensor ``(B, *S, *S)`` (or already ``(B, d, d)``) for one input,
    or the ``k x k`` nested tuple of blocks ``(B, *S_i, *S_j)`` for ``k`` inputs.
    ``shapes`` gives the ``S_i`` where they are not the inputs' (a layer
    method's blocks are over its activation's tensors).
    """
    if not isinstance(hessian, (Tensor, tuple)):
        raise TypeError(f"{argument}: expected a tensor or a tuple of tensors, got {type(hessian).__name__}")
    batch = inputs[0].shape[0]
    shapes = [tuple(t.shape[1:]) for t in inputs] if shapes is None else shapes
    sizes = [math.prod(shape) for shape in shapes]
    dim = sum(sizes)
    if isinstance(hessian, Tensor):
        if hessian.numel() != batch * dim * dim or hessian.shape[0] != batch:
            raise ValueError(
                f"{argument}: shape {tuple(hessian.shape)} does not fit inputs with {batch} example(s) "
                f"of {dim} feature(s); expected (B, *S, *S) as SmoothHess returns (a grouped "
                "(B, G, G) Hessian from feature_mask cannot be used here)"
            )
        flat = hessian.reshape(batch, dim, dim)
    else:
        rows = list(hessian)
        k = len(shapes)
        if len(rows) != k or any(len(list(r)) != k for r in rows):
            raise ValueError(
                f"{argument}: expected a {k} x {k} nested tuple of blocks, one per pair of input tensors"
            )
        blocks = []
        for i, row in enumerate(rows):
            line = []
            for j, blk in enumerate(row):
                if not isinstance(blk, Tensor) or blk.numel() != batch * sizes[i] * sizes[j]:
                    raise ValueError(
                        f"{argument}: block [{i}][{j}] does not have shape (B, *S_{i}, *S_{j}) = "
                        f"({batch}, {shapes[i]}, {shapes[j]})"
                    )
                line.append(blk.reshape(batch, sizes[i], sizes[j]))
            blocks.append(torch.cat(line, dim=2))
        flat = torch.cat(blocks, dim=1)
    flat = flat.detach()
    if inputs[0].is_floating_point():  # (not for token ids: the Hessian is over an activation)
        flat = flat.to(dtype=inputs[0].dtype)
    if not bool(torch.isfinite(flat).all()):
        raise ValueError(f"{argument}: contains NaN or Inf values")
    return flat
