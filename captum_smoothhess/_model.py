"""What the package may need to know about the user's model, found without changing it."""

from __future__ import annotations

import copy
import warnings
from typing import Any, List, Optional

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def module_of(forward_func: Any) -> Optional[nn.Module]:
    """The ``nn.Module`` behind ``forward_func`` (itself, or the owner of a bound method), if any."""
    if isinstance(forward_func, nn.Module):
        return forward_func
    owner = getattr(forward_func, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def batch_dependent_layers(forward_func: Any) -> List[str]:
    """Names of the layers whose output for one example depends on the others of the batch.

    These are the batch-norm layers in training mode: they normalise with the
    statistics of the batch (and update their running statistics).
    """
    module = module_of(forward_func)
    if module is None:
        return []
    return [
        name or type(m).__name__
        for name, m in module.named_modules()
        if isinstance(m, _BatchNorm) and m.training
    ]


def private_if_training(forward_func: Any, method: str) -> Any:
    """``forward_func``, or the same on a private copy of its module when a forward updates buffers.

    Batch norm in training mode updates its running statistics at every
    forward pass and normalises each batch of perturbed samples with that
    batch's statistics. The copy (made once per call) leaves the user's buffers
    exactly as found, also as seen from another thread; a warning says that
    the result then mixes examples and samples.
    """
    layers = batch_dependent_layers(forward_func)
    if not layers:
        return forward_func
    shown = ", ".join(layers[:3]) + (f" and {len(layers) - 3} more" if len(layers) > 3 else "")
    warnings.warn(
        f"{method}: {shown} in training mode normalise(s) with the statistics of each batch of "
        "perturbed samples, so the result mixes examples and samples; call model.eval() for "
        "per-example attributions. The running statistics are left as found (the forward passes "
        "run on a private copy of the model).",
        RuntimeWarning,
        stacklevel=4,
    )
    module = module_of(forward_func)
    assert module is not None
    private = copy.deepcopy(module)
    return private if forward_func is module else getattr(private, forward_func.__name__)
