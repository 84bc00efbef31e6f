"""The one place where Captum's private helpers are imported.

Captum does not promise stability for the names below. Every module of this
package that needs them imports them from here, so that a change in Captum
breaks (and is fixed in) this file only.
"""

from __future__ import annotations

from captum._utils.common import (
    ExpansionTypes,
    _expand_additional_forward_args,
    _expand_target,
    _format_additional_forward_args,
    _format_output,
    _format_tensor_into_tuples,
    _is_tuple,
    _run_forward,
    _select_targets,
    _verify_select_neuron,
)
from captum._utils.progress import progress
from captum._utils.typing import TargetType, TensorOrTupleOfTensorsGeneric
from captum.log import log_usage

__all__ = [
    "ExpansionTypes",
    "TargetType",
    "TensorOrTupleOfTensorsGeneric",
    "_expand_additional_forward_args",
    "_expand_target",
    "_format_additional_forward_args",
    "_format_output",
    "_format_tensor_into_tuples",
    "_is_tuple",
    "_run_forward",
    "_select_targets",
    "_verify_select_neuron",
    "log_usage",
    "progress",
]
