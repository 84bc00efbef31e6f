"""What the package may need to know about the user's model, found without changing it."""

from __future__ import annotations

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
