"""Argument checks and input flattening shared by every method of the package.

Every check raises an exception whose message starts with the name of the
offending argument, so users can tell at a glance what to fix.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ._captum import _format_tensor_into_tuples, _is_tuple

StdevsType = Union[float, Tensor, Sequence[Union[float, Tensor]]]
MaskType = Union[Tensor, Tuple[Tensor, ...], None]


def _tupled(inputs: object, argument: str = "inputs") -> Tuple[Tuple[Tensor, ...], bool]:
    """``(inputs as a tuple, whether they came as one)``; anything but a tensor or a tuple is refused
    with a ``TypeError`` naming ``argument`` (Captum's helper asserts, which ``python -O`` removes)."""
    if not isinstance(inputs, (Tensor, tuple)):
        raise TypeError(
            f"{argument}: expected a tensor or a tuple of tensors, got {type(inputs).__name__}"
            + (" (pass a tuple instead of a list)" if isinstance(inputs, list) else "")
        )
    return _format_tensor_into_tuples(inputs), _is_tuple(inputs)


def _refuse_meta(value: object, argument: str) -> None:
    """A tensor on the meta device (a shape with no values) is refused, naming ``argument``; PyTorch's own
    errors name none, and a meta ``target`` selected outputs of no example at all."""
    if isinstance(value, Tensor) and value.device.type == "meta":
        raise ValueError(f"{argument}: a meta tensor holds no values; give it on a real device such as 'cpu'")


def _check_inputs(inputs: Tuple[Tensor, ...], argument: str = "inputs", allow_integer: bool = False) -> None:
    """Inputs must be non-empty floating tensors with a shared batch size and no NaN/Inf.

    With ``allow_integer`` integer tensors (e.g. token ids) are accepted too.
    """
    if len(inputs) == 0:
        raise ValueError(f"{argument}: expected a tensor or a non-empty tuple of tensors")
    batch = None
    for i, inp in enumerate(inputs):
        where = argument if len(inputs) == 1 else f"{argument}[{i}]"
        if not isinstance(inp, Tensor):
            raise TypeError(f"{where}: expected a torch.Tensor, got {type(inp).__name__}")
        if inp.device.type == "meta":
            raise ValueError(
                f"{where}: a meta tensor has no values to attribute; move the inputs (and the "
                "model) to a real device such as 'cpu' or 'cuda' first"
            )
        if not inp.is_floating_point() and not (allow_integer and not inp.is_complex()):
            raise TypeError(f"{where}: expected a floating-point tensor, got dtype {inp.dtype}")
        if inp.dim() == 0:
            raise ValueError(f"{where}: expected a batch dimension first, got a 0-d tensor")
        if batch is None:
            batch = inp.shape[0]
        elif inp.shape[0] != batch:
            raise ValueError(
                f"{argument}: all tensors must share the batch size, got {batch} and "
                f"{inp.shape[0]} (tensor {i})"
            )
        if inp.is_floating_point() and not bool(torch.isfinite(inp).all()):
            raise ValueError(f"{where}: contains NaN or Inf values")
    if batch == 0:
        raise ValueError(f"{argument}: the batch is empty")


def _check_flags(**flags: object) -> None:
    """Each flag must be a bool (numpy's included): ``antithetic=None`` or ``return_error="no"`` would
    otherwise be taken for their truth value."""
    for name, value in flags.items():
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name}: expected True or False, got {value!r}")


def _check_positive_int(value: object, argument: str, minimum: int = 1) -> int:
    """An integer of at least ``minimum``: a Python or NumPy int, or a 0-d integer tensor (not a bool);
    ``TypeError`` for another type, ``ValueError`` below ``minimum``, both naming ``argument``."""
    if isinstance(value, Tensor) and value.dim() == 0 and value.device.type != "meta":
        if not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
            value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{argument}: expected an integer, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{argument}: must be at least {minimum}, got {value}")
    return int(value)


# Largest number of samples: gradient-call counts are reported as int64.
_MAX_SAMPLES = 2**62


def _check_n_samples(n_samples: object, antithetic: bool, argument: str = "n_samples") -> int:
    n = _check_positive_int(n_samples, argument)
    if n > _MAX_SAMPLES:
        raise ValueError(f"{argument}: must be at most {_MAX_SAMPLES} (counts are int64), got {n}")
    if antithetic and n % 2:
        raise ValueError(
            f"{argument}: must be even with antithetic=True (samples come in pairs u, -u), got {n}"
        )
    return n


def _check_number(value: object, argument: str, *, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{argument}: expected a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{argument}: must be finite and {bound}, got {value}")
    return v


def _format_stdevs(
    stdevs: StdevsType,
    inputs: Tuple[Tensor, ...],
    *,
    allow_zero: bool = False,
    argument: str = "stdevs",
) -> Tensor:
    """Bandwidths as one flat vector over the features of one example.

    ``stdevs`` may be a number (all features), one number or tensor per input
    tensor, or (for a single input) a tensor of per-feature bandwidths
    broadcastable to one example's shape. Returns a tensor of shape ``(d,)``
    on the inputs' device and dtype, ``d`` the total number of features.
    """
    n_in = len(inputs)
    if isinstance(stdevs, (tuple, list)):
        if len(stdevs) != n_in:
            raise ValueError(
                f"{argument}: got {len(stdevs)} values for {n_in} input tensor(s); give one "
                "per input tensor, or a single value"
            )
        per_input: Sequence[Union[float, Tensor]] = stdevs
    else:
        per_input = [stdevs] * n_in  # type: ignore[list-item]
    parts = []
    for i, (s, inp) in enumerate(zip(per_input, inputs)):
        where = argument if n_in == 1 else f"{argument}[{i}]"
        shape = inp.shape[1:]
        # Integer inputs (noise tunnels take them, as Captum's) get floating bandwidths: 0.3 is not 0.
        dtype = inp.dtype if inp.is_floating_point() else torch.get_default_dtype()
        if isinstance(s, Tensor):
            _refuse_meta(s, where)
            if s.is_complex() or s.dtype == torch.bool:
                raise TypeError(f"{where}: expected real bandwidths, got a tensor of dtype {s.dtype}")
            t = s.detach().to(device=inp.device, dtype=dtype)
            if t.dim() == len(shape) + 1 and t.shape[0] == 1:
                t = t[0]
            try:
                t = t.expand(shape)
            except RuntimeError:
                raise ValueError(
                    f"{where}: per-feature bandwidths of shape {tuple(s.shape)} do not "
                    f"broadcast to one example's shape {tuple(shape)}"
                ) from None
            if (
                not bool(torch.isfinite(t).all())
                or bool((t < 0).any())
                or (not allow_zero and bool((t == 0).any()))
            ):
                bound = ">= 0" if allow_zero else "> 0"
                raise ValueError(f"{where}: every bandwidth must be finite and {bound}")
            parts.append(t.reshape(-1))
        else:
            v = _check_number(s, where, allow_zero=allow_zero)
            if inp.is_floating_point() and v > torch.finfo(inp.dtype).max:
                raise ValueError(f"{where}: {v} exceeds the largest {inp.dtype} value")
            parts.append(torch.full((math.prod(shape),), v, device=inp.device, dtype=dtype))
    return torch.cat(parts)


def _format_feature_mask(
    feature_mask: Union[Tensor, Tuple[Tensor, ...]],
    inputs: Tuple[Tensor, ...],
    argument: str = "feature_mask",
    what: str = "input",
) -> Tuple[Tensor, int]:
    """Flatten a Captum-style feature mask.

    Returns ``(mask, G)`` with ``mask`` of shape ``(1, d)`` or ``(B, d)``
    (int64, on the inputs' device) and ``G = max id + 1`` groups, the Captum
    convention (ids are ``0 .. G-1``; an unused id gives a zero row).
    ``what`` names the tensors masked in messages (a layer's activation, say).
    """
    masks = (feature_mask,) if isinstance(feature_mask, Tensor) else tuple(feature_mask)
    if len(masks) != len(inputs):
        raise ValueError(f"{argument}: got {len(masks)} mask(s) for {len(inputs)} {what} tensor(s)")
    batch = inputs[0].shape[0]
    flat = []
    lead = 1
    for i, (m, inp) in enumerate(zip(masks, inputs)):
        where = argument if len(inputs) == 1 else f"{argument}[{i}]"
        if not isinstance(m, Tensor):
            raise TypeError(f"{where}: expected an integer tensor, got {type(m).__name__}")
        if m.is_floating_point() or m.is_complex() or m.dtype == torch.bool:
            raise TypeError(f"{where}: expected integer group ids, got dtype {m.dtype}")
        _refuse_meta(m, where)
        if m.dim() == inp.dim() - 1:
            m = m.unsqueeze(0)
        if m.dim() != inp.dim() or m.shape[0] not in (1, batch):
            raise ValueError(
                f"{where}: shape {tuple(m.shape)} does not fit {what} of shape "
                f"{tuple(inp.shape)} (expected (1 or {batch}, ...) broadcastable to it)"
            )
        try:
            m = m.expand(m.shape[0], *inp.shape[1:])
        except RuntimeError:
            raise ValueError(
                f"{where}: shape {tuple(m.shape)} does not broadcast to {what} of shape {tuple(inp.shape)}"
            ) from None
        if m.numel() and int(m.min()) < 0:
            raise ValueError(f"{where}: group ids must be non-negative")
        lead = max(lead, m.shape[0])
        flat.append(m)
    out = torch.cat([m.expand(lead, *m.shape[1:]).reshape(lead, -1) for m in flat], dim=1).to(
        device=inputs[0].device, dtype=torch.long
    )
    groups = int(out.max()) + 1
    if groups > out.shape[1]:  # (B, G, G) results: an id far out of range would allocate G^2 entries
        raise ValueError(
            f"{argument}: group ids must be below the number of features, {out.shape[1]} (Captum's "
            f"convention: ids 0 .. G-1 with G groups at most), got {groups - 1}"
        )
    return out, groups


def _check_generator(generator: Optional[torch.Generator], argument: str = "generator") -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{argument}: expected a torch.Generator or None, got {type(generator).__name__}")


BaselinesType = Union[None, int, float, Tensor, Sequence[Union[int, float, Tensor]]]


def _format_baselines(
    baselines: BaselinesType, inputs: Tuple[Tensor, ...], argument: str = "baselines"
) -> Tuple[Tensor, ...]:
    """Captum-style baselines as one tensor per input, shaped (and typed) like it.

    ``baselines`` may be a number (all inputs), a tensor broadcastable to the
    (single) input, or a tuple with one number or tensor per input tensor,
    each broadcastable to its input (a batch of 1 is shared by all examples).
    """
    if baselines is None:
        raise ValueError(f"{argument}: expected a number, a tensor or a tuple, got None")
    per_input = tuple(baselines) if isinstance(baselines, (tuple, list)) else (baselines,) * len(inputs)
    if len(per_input) != len(inputs):
        raise ValueError(f"{argument}: got {len(per_input)} baseline(s) for {len(inputs)} input tensor(s)")
    out = []
    for i, (b, inp) in enumerate(zip(per_input, inputs)):
        where = argument if len(inputs) == 1 else f"{argument}[{i}]"
        if isinstance(b, bool) or not isinstance(b, (numbers.Real, Tensor)):
            raise TypeError(f"{where}: expected a number or a tensor, got {type(b).__name__}")
        _refuse_meta(b, where)
        t = torch.as_tensor(b)
        if not inp.is_floating_point() and t.is_floating_point() and not bool((t == t.trunc()).all()):
            raise ValueError(
                f"{where}: input {i} holds integers (e.g. token ids), so its baseline must be "
                "integer-valued (e.g. a pad-token id), got a fractional or NaN value"
            )
        t = t.to(device=inp.device, dtype=inp.dtype)
        try:
            t = t.expand(inp.shape)
        except RuntimeError:
            raise ValueError(
                f"{where}: shape {tuple(t.shape)} does not broadcast to input of shape {tuple(inp.shape)}"
            ) from None
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{where}: contains NaN or Inf values")
        out.append(t.detach().contiguous())
    return tuple(out)


def _check_output_mode(output: object, mask: Optional[Tensor], group: object) -> None:
    """``output`` is ``"dense"`` or ``"factors"``; factors are one-process and ungrouped."""
    if output not in ("dense", "factors"):
        raise ValueError(f"output: expected 'dense' or 'factors', got {output!r}")
    if output == "factors" and (mask is not None or group is not None):
        raise ValueError(
            "output: 'factors' is computed in one process and without feature_mask; "
            "group the factors afterwards with SmoothHessFactors.group(feature_mask)"
        )
