"""KernelNoiseTunnel: Captum's NoiseTunnel with any smoothing kernel.

SmoothGrad is the Gaussian case of a general construction: the attribution
of the network convolved with a kernel, ``E_u[A(x + eps u)]`` with ``u`` drawn
from a kernel ``k`` and ``eps`` the bandwidth (``stdevs``), estimated by Monte
Carlo. :class:`KernelNoiseTunnel` subclasses :class:`captum.attr.NoiseTunnel`
and replaces only its noise-drawing hook, so everything else (sample
partitions, expansion of ``target``, ``baselines``, ``additional_forward_args``
and ``feature_mask``, the three ``nt_type`` reductions, convergence deltas) is
Captum's own code.

Noise is drawn in one of two ways:

* the *drop-in* path: the Gaussian kernel, ``generator=None`` and one number
  (or, in a tuple, one one-element tensor) per input tensor as ``stdevs``.
  The noise is drawn by NoiseTunnel's own routine, from the global RNG in
  NoiseTunnel's order and dtype, so results equal NoiseTunnel's under the
  same ``torch.manual_seed``.
* the *kernel* path, for every other case: canonical noise from
  :class:`~captum_smoothhess._sampling.NoiseStream`, addressed by sample index,
  so the result does not depend on ``nt_samples_batch_size`` and is
  reproducible from ``generator``. All features of one example (across the
  tensors of a tuple input) form one point, which is what the radial Poisson
  kernel needs.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import numbers
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from captum.attr import Attribution, NoiseTunnel
from torch import Tensor, nn

from ._captum import log_usage
from ._dtypes import HALF, refuse_half_overflow, working_dtype
from ._errors import MIN_GROUPS, AttributionMoments, SmoothingError, relative_error
from ._evaluators import autograd_allowed
from ._layout import _sizes
from ._model import (
    counterpart,
    hides_models,
    module_of,
    needs_private_copy,
    private_if_training,
    reachable_modules,
    refusing_hidden_writers,
    warn_if_training,
)
from ._sampling import (
    TUNNEL_SAMPLINGS,
    NoiseStream,
    OrthogonalStream,
    _AntitheticTake,
    noise_stream,
    seed_from,
)
from ._validation import (
    StdevsType,
    _check_flags,
    _check_generator,
    _check_inputs,
    _check_number,
    _check_positive_int,
    _format_stdevs,
    _refuse_meta,
)
from .kernels import Gaussian, Kernel, get_kernel

__all__ = ["KernelNoiseTunnel", "SmoothingError"]

NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")

AttributionOutput = Union[
    Tensor,
    Tuple[Tensor, Tensor],
    Tuple[Tensor, ...],
    Tuple[Tuple[Tensor, ...], Tensor],
    Tuple[Any, ...],  # with return_error: the above, then a SmoothingError
]


class _InputNoise:
    """Kernel noise for the inputs of one ``attribute`` call, by sample index.

    Successive calls of :meth:`add` take successive samples, so the noise of
    sample ``j`` does not depend on how the samples are partitioned.
    """

    def __init__(
        self, kernel: Kernel, inputs: Tuple[Tensor, ...], std: Tensor, seed: int, sampling: str = "iid"
    ) -> None:
        dtype = inputs[0].dtype
        for inp in inputs[1:]:
            dtype = torch.promote_types(dtype, inp.dtype)
        self.std = std.to(dtype)
        self.sizes = _sizes(inputs)
        batch, device = inputs[0].shape[0], inputs[0].device
        self.stream = noise_stream(kernel, batch, sum(self.sizes), seed, device, dtype, sampling)
        self.offset = 0

    def add(self, inputs: Tuple[Tensor, ...], n: int) -> Tuple[Tensor, ...]:
        """Inputs repeated ``n`` times per example (Captum's repeat_interleave order) plus noise."""
        u = self.stream.take(self.offset, self.offset + n)  # (B, n, d)
        self.offset += n
        noise = (u * self.std).reshape(-1, u.shape[-1])  # row b * n + j
        parts = torch.split(noise, self.sizes, dim=1)
        return tuple(
            inp.detach().repeat_interleave(n, dim=0) + p.reshape(-1, *inp.shape[1:]).to(inp.dtype)
            for inp, p in zip(inputs, parts)
        )


class _BaselineDraws:
    """Baselines drawn from a distribution (``draw_baseline_from_distrib``), by sample index.

    Every input tensor whose baseline is a tensor of reference rows gets one
    table of row indices, shape ``(batch, n_samples)``, drawn once per call
    from ``seed``; sample ``j`` of example ``b`` uses row ``table[b, j]``
    whatever the partitioning. (The table holds the rows ``np.random.choice``
    gives after ``np.random.seed(seed % 2**32)``, from a private RandomState.) NoiseTunnel
    expands the keyword arguments once for all full partitions and once for
    the remainder: :meth:`fill` writes the rows of the partition starting at
    ``start`` and :meth:`advance` moves to the next partition, rewriting the
    shared keyword arguments of the full partitions.
    """

    def __init__(self, seed: int, n_samples: int) -> None:
        self.seed = seed
        self.n_samples = n_samples
        self.start = 0  # first sample of the current partition
        self.source: Optional[Tuple[Any, ...]] = None  # the user's baselines, one per input
        self.tables: Tuple[Optional[Tensor], ...] = ()
        self.shared: Optional[Dict[str, Any]] = None  # kwargs of the full partitions
        self.size = 0  # samples per full partition

    def _bind(self, baselines: Any, batch: int) -> None:
        self.source = baselines if isinstance(baselines, tuple) else (baselines,)
        # A private legacy RandomState: numpy's global RNG is neither used nor moved.
        rng = np.random.RandomState(self.seed % (1 << 32))
        self.tables = tuple(
            torch.from_numpy(rng.choice(b.shape[0], self.n_samples * batch)).reshape(batch, self.n_samples)
            if isinstance(b, Tensor)
            else None
            for b in self.source
        )

    def fill(self, kwargs: Dict[str, Any], n: int, baselines: Any, batch: int, shared: bool) -> None:
        """Set ``kwargs["baselines"]`` to the draws of samples ``start .. start + n - 1``."""
        if self.source is None:
            self._bind(baselines, batch)
        if shared:
            self.shared, self.size = kwargs, n
        self._write(kwargs, n)

    def advance(self, n: int) -> None:
        """Partition of ``n`` samples done: the next full partition gets its own draws."""
        self.start += n
        if self.shared is not None and self.start + self.size <= self.n_samples:
            self._write(self.shared, self.size)

    def _write(self, kwargs: Dict[str, Any], n: int) -> None:
        assert self.source is not None
        stop = self.start + n
        kwargs["baselines"] = tuple(
            b.index_select(0, t[:, self.start : stop].reshape(-1).to(b.device)) if t is not None else b
            for b, t in zip(self.source, self.tables)
        )


@dataclass
class _CallState:
    """What one ``attribute`` call needs inside NoiseTunnel's hooks (subclassed by NoiseGrad)."""

    input_noise: Optional[_InputNoise] = None
    captum_stdevs: Optional[Tuple[Any, ...]] = None  # drop-in path: NoiseTunnel's stdevs, one per input
    round_back: FrozenSet[torch.dtype] = frozenset()  # input dtypes rounded back (_round_back_dtypes)
    generator: Optional[torch.Generator] = None
    baseline_draws: Optional[_BaselineDraws] = None
    errors: Optional[_ErrorTracking] = None  # return_error or tolerance: the samples' batch means
    attribution_tuple: bool = False  # whether the wrapped method returned a tuple (tolerance)


# Fewest independent groups for VarGrad's standard error: its delta method is degenerate with two (the
# standard error of iid samples comes out exactly 0) and biased low below about six (over 200 seeds on
# a tanh net, 0.66x the actual error with 3 groups, 0.79x with 4, 0.93x with 6).
_VARGRAD_GROUPS = 6
# Fewest groups before a tolerance may stop a call (as SmoothHess: the error of fewer is itself noisy).
_TOLERANCE_GROUPS = 2 * MIN_GROUPS
# Samples between two looks at the error of a call with a tolerance (and no nt_samples_batch_size).
_TOLERANCE_PARTITION = 16


class _ToleranceReached(Exception):
    """Raised inside NoiseTunnel's loop once every example's estimated error meets the tolerance."""


class _ErrorTracking:
    """``return_error`` and ``tolerance``: batch means of the sampled attributions, one
    :class:`AttributionMoments` per attribution tensor (made at the first partition, whose attributions
    give their number).

    Groups hold whole independent units of the noise (an antithetic pair); an orthogonal block is cut
    into sub-blocks where the call has fewer than ``MIN_GROUPS`` of them (as SmoothHess does: the
    error is then somewhat conservative), and into ``_VARGRAD_GROUPS`` at least for VarGrad.

    With a ``tolerance`` the call stops after the first partition from which every example's estimated
    relative error is at most ``tolerance`` (``_TOLERANCE_GROUPS`` groups at least). Its result is the
    statistic of the groups ended (a group the last partition left open is not in it, nor counted).
    An example whose groups all agree exactly is not done unless the call draws no noise
    (``noiseless``): a piecewise-constant attribution (a ReLU region) may agree on its first samples
    by chance, and its error is then unknown, not 0.
    """

    def __init__(
        self,
        independent: int,
        unit: int,
        total: int,
        nt_type: str,
        tolerance: Optional[float] = None,
        noiseless: bool = False,
    ) -> None:
        wanted = _VARGRAD_GROUPS if nt_type == "vargrad" else MIN_GROUPS
        self.group = unit * max(1, min(independent // unit, (total // unit) // wanted))
        self.total, self.nt_type, self.tolerance, self.noiseless = total, nt_type, tolerance, noiseless
        self.moments: Optional[List[AttributionMoments]] = None
        self.like: Tuple[torch.dtype, ...] = ()  # the dtypes of the attributions

    @property
    def groups(self) -> int:
        """Whole groups (a last, shorter one is not counted: it may hold half an antithetic pair)."""
        return self.total // self.group

    def add(self, attributions: Sequence[Tensor], samples: int) -> None:
        """The partition's attributions, rows ``b * samples + j`` (NoiseTunnel's order); with a
        tolerance, raises :class:`_ToleranceReached` once every example meets it."""
        if self.moments is None:
            self.moments = [AttributionMoments(self.group, self.total) for _ in attributions]
            self.like = tuple(a.dtype for a in attributions)
        for stats, attr in zip(self.moments, attributions):
            stats.add(attr.reshape(attr.shape[0] // samples, samples, *attr.shape[1:]))
        if self.tolerance is None or self.moments[0].groups < max(_TOLERANCE_GROUPS, _VARGRAD_GROUPS):
            return
        if self.moments[0].count >= self.total:
            return  # the last partition: NoiseTunnel ends the call
        relative, spread = self._relative([m.statistic(self.nt_type) for m in self.moments])
        done = (relative <= self.tolerance) & ((spread > 0) | self.noiseless)  # (NaN never is)
        if bool(done.all()):
            raise _ToleranceReached

    def _relative(self, stats: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
        """``(B,)`` relative errors of the statistics ``stats`` and the summed variances behind them."""
        assert self.moments is not None
        batch = stats[0].shape[0]
        flat = torch.cat([t.reshape(batch, -1) for t in stats], 1)
        variance = torch.cat([m.variance(self.nt_type).reshape(batch, -1) for m in self.moments], 1)
        return relative_error(flat, variance), variance.sum(1)

    def attributions(self) -> Tuple[Tensor, ...]:
        """The statistic of the groups ended, in the attributions' dtypes (a tolerance's result)."""
        assert self.moments is not None
        return tuple(m.statistic(self.nt_type).to(dtype) for m, dtype in zip(self.moments, self.like))

    def result(self, attributions: Tuple[Tensor, ...], is_tuple: bool) -> SmoothingError:
        assert self.moments is not None
        variances = [stats.variance(self.nt_type) for stats in self.moments]
        stderr = tuple(
            refuse_half_overflow(v.sqrt().to(a.dtype), "standard error")
            for v, a in zip(variances, attributions)
        )
        batch = attributions[0].shape[0]
        if self.tolerance is not None:  # the statistic the stopping rule saw, before any rounding
            relative, _ = self._relative([m.statistic(self.nt_type) for m in self.moments])
        else:
            flat = [a.detach().reshape(batch, -1).to(v.dtype) for a, v in zip(attributions, variances)]
            spread = [v.reshape(batch, -1) for v in variances]
            relative = relative_error(torch.cat(flat, 1), torch.cat(spread, 1))
        used = self.moments[0].samples
        n = torch.full((batch,), used, dtype=torch.long, device=attributions[0].device)
        return SmoothingError(
            stderr if is_tuple else stderr[0], relative.to(working_dtype(attributions[0].dtype)), n
        )


def _independent_samples(stream: Optional[NoiseStream]) -> Tuple[int, int]:
    """``(samples per independent group, samples a group may not split)`` of a tunnel's noise: 1 for iid
    draws (NoiseTunnel's own too), an orthogonal block, antithetic pairs."""
    if stream is None:
        return 1, 1
    unit = 2 if isinstance(stream, _AntitheticTake) else 1
    block = stream.block if isinstance(stream, OrthogonalStream) else 1
    return unit * block, unit


# Per-call state, keyed by the id of the tunnel object. A context variable
# (rather than attributes on the object) keeps concurrent calls in different
# threads apart and leaves nothing on the object after a call.
_CALLS: contextvars.ContextVar[Dict[int, _CallState]] = contextvars.ContextVar(
    "captum_smoothhess_noise_tunnel_calls"
)


@contextlib.contextmanager
def _call_state(owner: object, state: _CallState) -> Iterator[_CallState]:
    token = _CALLS.set({**_CALLS.get({}), id(owner): state})
    try:
        yield state
    finally:
        _CALLS.reset(token)


def _current_state(owner: object) -> _CallState:
    state = _CALLS.get({}).get(id(owner))
    if state is None:
        raise RuntimeError(f"{type(owner).__name__}: noise can only be drawn inside attribute()")
    return state


def _check_nt_args(nt_type: object, nt_samples: object, nt_samples_batch_size: object) -> None:
    if nt_type not in NT_TYPES:
        raise ValueError(f"nt_type: must be one of {', '.join(NT_TYPES)}, got {nt_type!r}")
    _check_positive_int(nt_samples, "nt_samples")
    if nt_samples_batch_size is not None:
        _check_positive_int(nt_samples_batch_size, "nt_samples_batch_size")


def _check_tolerance(tolerance: object, kwargs: Dict[str, Any]) -> Optional[float]:
    """A checked ``tolerance`` (``None``: none); it ends the call early, so no convergence delta."""
    if tolerance is None:
        return None
    value = _check_number(tolerance, "tolerance", allow_zero=False)
    if kwargs.get("return_convergence_delta"):
        raise ValueError(
            "tolerance: the call may stop before its last partition, so it returns no convergence "
            "deltas; pass return_convergence_delta=False, or nt_samples without a tolerance"
        )
    return value


def _tolerance_partition(
    tracking: Optional[_ErrorTracking], size: Optional[int], nt_samples: int
) -> Optional[int]:
    """The partition size of a call: a tolerance without ``nt_samples_batch_size`` checks its error after
    every ``_TOLERANCE_PARTITION`` samples (whole groups), rather than after all ``nt_samples``."""
    if tracking is None or tracking.tolerance is None or size is not None:
        return size
    return min(nt_samples, tracking.group * max(1, -(-_TOLERANCE_PARTITION // tracking.group)))


def _error_tracking(
    return_error: bool,
    nt_samples: int,
    stream: Optional[NoiseStream],
    nt_type: str,
    tolerance: Optional[float] = None,
    noiseless: bool = False,
) -> Optional[_ErrorTracking]:
    """The batch means of a call with ``return_error`` or a ``tolerance`` (``None`` without), grouped as
    ``stream``'s noise (``None``: iid draws) must be: antithetic pairs are never split, so they need two
    pairs at least, and VarGrad needs ``_VARGRAD_GROUPS`` groups."""
    if not return_error and tolerance is None:
        return None
    independent, unit = _independent_samples(stream)
    tracking = _ErrorTracking(independent, unit, nt_samples, nt_type, tolerance, noiseless)
    needed = _VARGRAD_GROUPS if nt_type == "vargrad" else 2
    if tracking.groups < needed:
        what = "antithetic pairs" if unit > 1 else "samples"
        raise ValueError(
            f"nt_samples: estimating the error (return_error=True or a tolerance) of {nt_type} needs at "
            f"least {needed} independent {what}, i.e. nt_samples >= {needed * unit}; got {nt_samples}"
        )
    return tracking


def _normal_tensors(value: Any) -> Any:
    """``value`` with every inference tensor (from ``torch.inference_mode``) cloned.

    Inference tensors cannot be saved for backward; clones made outside
    inference mode can, so the gradient methods run under
    ``torch.inference_mode()`` too. Tuples, lists and dicts are walked.
    """
    if isinstance(value, Tensor):
        return value.clone() if value.is_inference() else value
    if isinstance(value, tuple):
        return tuple(_normal_tensors(v) for v in value)
    if isinstance(value, list):
        return [_normal_tensors(v) for v in value]
    if isinstance(value, dict):
        return {k: _normal_tensors(v) for k, v in value.items()}
    return value


# Captum's functions that select the target output; an IndexError, AssertionError
# or RuntimeError raised inside them means the target does not fit the output.
_TARGET_SELECTION = frozenset({"_select_targets", "_verify_select_column"})


def _raised_selecting_target(err: BaseException) -> bool:
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name in _TARGET_SELECTION:
            return True
        tb = tb.tb_next
    return False


# Captum's assertion (in its gradient functions) when the output is not one scalar per example.
_NO_TARGET = "Target not provided when necessary"


def _captum_needs_target(err: BaseException) -> bool:
    """Whether ``err`` is Captum's own "Target not provided" assertion.

    Both its message and the frame that raised it (the innermost one) must
    be Captum's, so an ``AssertionError`` raised by the user's model, whatever
    its message, is never taken for it.
    """
    if not isinstance(err, AssertionError) or not str(err).startswith(_NO_TARGET):
        return False
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", ""))
    return module == "captum" or module.startswith("captum.")


@contextlib.contextmanager
def _naming_target(target: object) -> Iterator[None]:
    """Turn Captum's bare errors for a missing or unfit target into a ``ValueError`` naming it."""
    try:
        yield
    except (IndexError, AssertionError, RuntimeError) as err:
        if _captum_needs_target(err):
            raise ValueError(
                f"target: forward_func must give one scalar per example after target selection, "
                f"but target={target!r} leaves several outputs per example; pass a `target` that "
                f"selects one output per example (Captum: {err})"
            ) from err
        if not _raised_selecting_target(err):
            raise
        raise ValueError(
            f"target: {target!r} does not select an output of forward_func ({type(err).__name__}: {err})"
        ) from err


def _check_no_nan(output: Any, delta_returned: bool) -> None:
    """Refuse to return NaN attributions: the model or its gradient was NaN at some sample."""
    attributions = output[0] if delta_returned else output
    parts = attributions if isinstance(attributions, tuple) else (attributions,)
    if any(isinstance(a, Tensor) and bool(torch.isnan(a).any()) for a in parts):
        raise ValueError(
            "forward_func: NaN appeared in the attributions at the perturbed points (the model or "
            "its gradient is NaN there, e.g. sqrt or log of a negative value); use a smaller "
            "bandwidth, or a model that is defined on the whole support of the noise"
        )


def _captum_stdevs(stdevs: object, inputs: Tuple[Tensor, ...]) -> Optional[Tuple[Any, ...]]:
    """``stdevs`` as NoiseTunnel's noise routine takes them, one per input; ``None`` where it cannot.

    NoiseTunnel draws the noise of input ``i`` in the dtype of
    ``torch.tensor(stdevs[i])``: float32 (the default dtype) for a Python
    float, float64 for ``np.float64``, the tensor's own dtype for a one-element
    tensor in a tuple. Those are passed on as given, so that the noise (and
    the global RNG it consumes) is NoiseTunnel's. A list is taken for the
    tuple NoiseTunnel wants; other numbers NoiseTunnel refuses (an ``int``, a
    lone ``np.float32``) become Python floats. A per-feature tensor, or a
    tensor not in a tuple, is for the kernel path (``None``).
    """
    in_tuple = isinstance(stdevs, (tuple, list))
    values: Sequence[Any] = stdevs if isinstance(stdevs, (tuple, list)) else (stdevs,) * len(inputs)
    out: List[Any] = []
    for s, inp in zip(values, inputs):
        if isinstance(s, Tensor):
            if not (in_tuple and s.is_floating_point() and s.numel() == 1 and s.dim() <= inp.dim()):
                return None
            out.append(s)
        elif isinstance(s, float) or (in_tuple and isinstance(s, np.floating)):
            out.append(s)
        elif isinstance(s, numbers.Real) and not isinstance(s, bool):
            out.append(float(s))
        else:
            return None
    return tuple(out)


def _example_major(delta: Tensor, batch: int, n: int, size: int) -> Tensor:
    """Deltas of partitions of ``size`` samples in the order of one partition of all ``n``.

    NoiseTunnel concatenates each partition's deltas, example by example
    within a partition; this returns them example by example over all ``n``
    samples (row ``b * n + j``, or a block of rows per noisy sample where the
    method gives several, as GradientShap does). A layout that does not fit
    is returned unchanged.
    """
    if size >= n or delta.dim() == 0 or delta.shape[0] % (batch * n):
        return delta
    per = delta.shape[0] // (batch * n)  # deltas per noisy sample
    parts = []
    for start in range(0, n, size):
        k = min(size, n - start)
        rows = delta[batch * start * per : batch * (start + k) * per]
        parts.append(rows.reshape(batch, k * per, *delta.shape[1:]))
    return torch.cat(parts, dim=1).reshape(delta.shape)


def _round_back_dtypes(forward_func: Any) -> FrozenSet[torch.dtype]:
    """The input dtypes whose noisy inputs the drop-in path rounds back from NoiseTunnel's wider noise.

    For a model, the floating dtypes of its parameters: such a model refuses wider inputs (so does
    NoiseTunnel). For a function, whose model cannot be seen, the half-precision dtypes: a
    half-precision model behind it runs (NoiseTunnel fails there; a function that computes in float32
    gets its inputs rounded, where NoiseTunnel's would be float32).
    """
    module = module_of(forward_func)
    if module is None:
        return frozenset(HALF)
    return frozenset(
        p.dtype
        for _, m in reachable_modules(module)
        for p in m.parameters(recurse=False)
        if p.is_floating_point()
    )


def _as_floating(inputs: Any) -> Any:
    """``inputs`` with integer and bool tensors as floating ones of the default dtype.

    That is what Gaussian noise drawn as NoiseTunnel draws it (default dtype)
    makes of them; the kernel path adds its noise to these.
    """
    if isinstance(inputs, tuple):
        return tuple(_as_floating(t) for t in inputs)
    return inputs if inputs.is_floating_point() else inputs.to(torch.get_default_dtype())


@contextlib.contextmanager
def _naming_token_ids(inputs: Tuple[Tensor, ...]) -> Iterator[None]:
    """Turn an embedding's refusal of noisy (floating) token ids into a ``TypeError`` naming ``inputs``."""
    integer = [i for i, t in enumerate(inputs) if not t.is_floating_point()]
    try:
        yield
    except RuntimeError as err:
        # PyTorch's refusal of floating indices names them ('indices', expected Long or Int); any other
        # error (an index out of range, the model's own) reaches the user as it is.
        text = str(err)
        if not integer or "'indices'" not in text or "Long" not in text:
            raise
        where = "inputs" if len(inputs) == 1 else ", ".join(f"inputs[{i}]" for i in integer)
        raise TypeError(
            f"{where}: integer tensor (token ids?) given; noise added to it makes it floating point, as "
            "in Captum's NoiseTunnel (which fails here too), and the model's embedding refuses "
            "non-integer ids. To smooth a text model, add the noise to the embeddings: give the model "
            "embeddings as inputs (e.g. captum.attr.configure_interpretable_embedding_layer) "
            f"({type(err).__name__}: {err})"
        ) from err


@contextlib.contextmanager
def _numpy_rng_kept() -> Iterator[None]:
    """Restore numpy's global RNG after the block (Captum's baseline draw there is discarded)."""
    saved = np.random.get_state()  # noqa: NPY002 - Captum draws from numpy's global RNG
    try:
        yield
    finally:
        np.random.set_state(saved)  # noqa: NPY002


class _GeneratorNoiseTunnel(NoiseTunnel):
    """NoiseTunnel whose baseline draws (``draw_baseline_from_distrib``) follow ``generator``.

    The baseline of sample ``j`` of an example depends on one seed per call
    (from the generator, else from PyTorch's global RNG) and ``j`` only, not on
    ``nt_samples_batch_size`` (see :class:`_BaselineDraws`); numpy's global RNG
    is left as found. On the Gaussian drop-in path (no generator, scalar
    ``stdevs``) the draws are Captum's own (numpy's global RNG), as NoiseTunnel's.
    """

    def _run_tunnel(self, state: _CallState, inputs: Any, kwargs: Dict[str, Any], **tunnel: Any) -> Any:
        """NoiseTunnel's loop with ``state`` in place; a target error names ``target``; NaN raises."""
        # Per-sample baseline draws everywhere but on the Gaussian drop-in path (Captum's own draws, so
        # that its numbers stay NoiseTunnel's): seeded from the generator, else from PyTorch's global RNG.
        if tunnel.get("draw_baseline_from_distrib") and state.captum_stdevs is None and "baselines" in kwargs:
            state.baseline_draws = _BaselineDraws(seed_from(state.generator), int(tunnel["nt_samples"]))
        errors = state.errors
        try:
            with _call_state(self, state), _naming_target(kwargs.get("target")):
                out = NoiseTunnel.attribute.__wrapped__(self, inputs, **tunnel, **kwargs)
        except _ToleranceReached:
            out = None
        if errors is not None and errors.tolerance is not None:
            # The statistic of the whole groups taken, as NoiseTunnel forms it from its sums; tuple-ness as
            # the wrapped method's own result.
            is_tuple = isinstance(out, tuple) if out is not None else state.attribution_tuple
            stats = errors.attributions()
            out = stats if is_tuple else stats[0]
        with_delta = self.is_delta_supported and bool(kwargs.get("return_convergence_delta"))
        _check_no_nan(out, with_delta)
        if with_delta and state.captum_stdevs is None:
            # NoiseTunnel concatenates the deltas partition by partition; off the drop-in path (whose
            # order is NoiseTunnel's) the result must not depend on the partitions: one partition's order.
            n = int(tunnel["nt_samples"])
            size = tunnel.get("nt_samples_batch_size")
            batch = (inputs[0] if isinstance(inputs, tuple) else inputs).shape[0]
            attributions, delta = out
            out = (attributions, _example_major(delta, batch, n, n if size is None else int(size)))
        if errors is not None:
            attributions = out[0] if with_delta else out
            attrs, is_tuple, _ = _format_attributions(attributions, False, False)
            error = errors.result(attrs, is_tuple)
            out = (*out, error) if with_delta else (out, error)
        return out

    def _expand_partial(
        self,
        nt_samples_partition: int,
        kwargs_partial: Dict[str, Any],
        inputs: Tuple[Tensor, ...],
        draw_baseline_from_distrib: bool,
    ) -> None:
        draws = _current_state(self).baseline_draws if draw_baseline_from_distrib else None
        if draws is None or "baselines" not in kwargs_partial:
            NoiseTunnel._expand_partial(
                nt_samples_partition, kwargs_partial, inputs, draw_baseline_from_distrib
            )
            return
        baselines = kwargs_partial["baselines"]
        # Captum's expansion and checks; its baseline draw is replaced by the per-sample one.
        with _numpy_rng_kept():
            NoiseTunnel._expand_partial(nt_samples_partition, kwargs_partial, inputs, True)
        # The first expansion serves every full partition, a later one the remainder only.
        shared = draws.source is None
        draws.fill(kwargs_partial, nt_samples_partition, baselines, inputs[0].shape[0], shared)

    def _compute_partial_attribution(
        self,
        inputs_with_noise_partition: Tuple[Tensor, ...],
        kwargs_partition: object,
        is_inputs_tuple: bool,
        return_convergence_delta: bool,
    ) -> Tuple[Tuple[Tensor, ...], bool, Optional[Tensor]]:
        out = self._attribute_partition(
            inputs_with_noise_partition, kwargs_partition, is_inputs_tuple, return_convergence_delta
        )
        _current_state(self).attribution_tuple = out[1]  # (a tolerance may end the call before Captum does)
        return out

    def _attribute_partition(
        self,
        inputs_with_noise_partition: Tuple[Tensor, ...],
        kwargs_partition: object,
        is_inputs_tuple: bool,
        return_convergence_delta: bool,
    ) -> Tuple[Tuple[Tensor, ...], bool, Optional[Tensor]]:
        """One partition's ``(attributions, is_tuple, delta)``: Captum's own (NoiseGrad swaps weights)."""
        return NoiseTunnel._compute_partial_attribution(
            self, inputs_with_noise_partition, kwargs_partition, is_inputs_tuple, return_convergence_delta
        )

    def _update_partial_attribution_and_delta(
        self,
        attributions_partial: Tuple[Tensor, ...],
        delta_partial: Tensor,
        sum_attributions: List[Tensor],
        sum_attributions_sq: List[Tensor],
        delta_partial_list: List[Tensor],
        nt_samples_partial: int,
        return_convergence_delta: bool,
    ) -> None:
        super()._update_partial_attribution_and_delta(
            attributions_partial,
            delta_partial,
            sum_attributions,
            sum_attributions_sq,
            delta_partial_list,
            nt_samples_partial,
            return_convergence_delta,
        )
        state = _current_state(self)
        if state.baseline_draws is not None:
            state.baseline_draws.advance(nt_samples_partial)
        if state.errors is not None:
            state.errors.add(attributions_partial, nt_samples_partial)


class KernelNoiseTunnel(_GeneratorNoiseTunnel):
    """NoiseTunnel with any smoothing kernel: SmoothGrad, SmoothGrad² and VarGrad.

    For an attribution method ``A`` (Saliency, IntegratedGradients, ...), a
    kernel ``k`` and bandwidth ``eps`` (``stdevs``), ``nt_type="smoothgrad"``
    estimates ``E_u[A(x + eps u)]``, ``u ~ k``, from ``nt_samples`` draws per
    example; ``"smoothgrad_sq"`` the mean of ``A^2``; ``"vargrad"`` the
    variance. With Saliency (``abs=False``) this is the gradient of the
    network convolved with the kernel.

    It is a drop-in replacement for :class:`captum.attr.NoiseTunnel`: with the
    default Gaussian kernel and ``generator=None`` it draws the same noise as
    NoiseTunnel from the global RNG and returns the same numbers under the
    same ``torch.manual_seed``. Only the noise hook of NoiseTunnel is
    replaced; everything else is Captum's code. It departs from NoiseTunnel
    only where NoiseTunnel fails or returns NaN: errors name the argument,
    NaN/Inf inputs and NaN attributions are refused, noise wider than the
    inputs (float32 on half precision) is rounded back for a model with
    weights in the inputs' dtype, and a training-mode model whose forward
    updates buffers runs on a private copy.

    Args:
        attribution_method: Any Captum attribution method NoiseTunnel wraps.
        kernel: A :class:`~captum_smoothhess.kernels.Kernel` or its name
            (``"gaussian"``, ``"poisson"``, ``"hyperbolic"``, ``"sigmoid"``,
            ``"rect"``). The radial Poisson kernel treats all features of one
            example, across the tensors of a tuple input, as one point.
        sampling: ``"iid"`` (default; with the Gaussian kernel NoiseTunnel's
            exact numbers), or an opt-in on the kernel path:
            ``"orthogonal"`` (blocks of orthogonal directions with
            independent radii, rotation-invariant kernels only),
            ``"antithetic"`` (samples in pairs ``u, -u``) or
            ``"orthogonal_antithetic"``. Every sample keeps the kernel's law.

    Raises:
        TypeError: ``attribution_method`` is not a Captum ``Attribution``.
        ValueError: ``kernel`` is unknown; ``sampling`` unknown, or
            orthogonal with a product kernel.

    Examples:
        >>> import torch
        >>> from captum.attr import Saliency
        >>> from captum_smoothhess.noise_tunnel import KernelNoiseTunnel
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
        ...                           torch.nn.Linear(8, 3))
        >>> nt = KernelNoiseTunnel(Saliency(net), kernel="poisson")
        >>> x = torch.randn(2, 4)
        >>> attr = nt.attribute(x, nt_samples=8, stdevs=0.1, target=0, abs=False,
        ...                     generator=torch.Generator().manual_seed(0))
        >>> attr.shape
        torch.Size([2, 4])
        >>> attr, err = nt.attribute(x, nt_samples=8, stdevs=0.1, target=0, abs=False,
        ...                          generator=torch.Generator().manual_seed(0),
        ...                          return_error=True)
        >>> err.stderr.shape, err.relative.shape
        (torch.Size([2, 4]), torch.Size([2]))
    """

    def __init__(
        self, attribution_method: Attribution, kernel: Union[Kernel, str] = Gaussian(), sampling: str = "iid"
    ) -> None:
        if sampling not in TUNNEL_SAMPLINGS:
            raise ValueError(f"sampling: expected one of {TUNNEL_SAMPLINGS}, got {sampling!r}")
        if not isinstance(attribution_method, Attribution):
            raise TypeError(
                "attribution_method: expected a Captum Attribution instance (e.g. "
                f"Saliency(model)), got {type(attribution_method).__name__}"
            )
        super().__init__(attribution_method)
        self.kernel = get_kernel(kernel)
        self.sampling = sampling
        if sampling.startswith("orthogonal"):
            noise_stream(
                self.kernel, 1, 1, 0, torch.device("cpu"), torch.float32, sampling
            )  # checks the kernel

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        nt_type: str = "smoothgrad",
        nt_samples: int = 5,
        nt_samples_batch_size: Optional[int] = None,
        stdevs: StdevsType = 1.0,
        draw_baseline_from_distrib: bool = False,
        generator: Optional[torch.Generator] = None,
        return_error: bool = False,
        tolerance: Optional[float] = None,
        **kwargs: Any,
    ) -> AttributionOutput:
        """Average the wrapped attribution over kernel noise added to the inputs.

        Args:
            inputs: Tensor or tuple of tensors, batch dimension first.
                Integer tensors become floating point with the noise, as in
                NoiseTunnel.
            nt_type: ``"smoothgrad"`` (mean), ``"smoothgrad_sq"`` (mean of
                squares) or ``"vargrad"`` (variance) of the sampled attributions.
            nt_samples: Noisy samples per example. Default: 5.
            nt_samples_batch_size: Samples evaluated together; ``None`` means
                all. With the kernel path the result does not depend on it.
            stdevs: Bandwidth ``eps``: a number, one per input tensor, or
                per-feature tensors broadcastable to one example (kernel
                path). 0 means no noise. Default: 1.0, as NoiseTunnel. On
                the drop-in path the noise has NoiseTunnel's dtype: float64
                for ``np.float64`` or a float64 tensor in a tuple.
            draw_baseline_from_distrib: Draw each sample's baseline from the
                given ``baselines`` (as NoiseTunnel); with a ``generator`` the
                draws are reproducible from it and do not depend on
                ``nt_samples_batch_size``.
            generator: ``torch.Generator`` for the noise; ``None`` uses the
                global RNG.
            return_error: Also return the estimated accuracy of the result,
                a :class:`~captum_smoothhess.SmoothingError` (standard errors
                shaped like the attributions, ``relative`` and ``n_samples``
                per example), from the spread of independent groups of the
                samples, at no extra call of the wrapped method: an antithetic
                pair is never split, an orthogonal block only where the call
                has fewer than 4 of them (the error is then somewhat
                conservative). It does not change the attributions (on the
                drop-in path still NoiseTunnel's numbers). Needs 2 independent
                samples (pairs with antithetic sampling), 6 for
                ``"vargrad"``, whose delta-method error is biased low below
                that. The samples are taken as independent: a training-mode
                batch norm, which couples the samples of a partition, makes
                the error meaningless. Taken by the tunnel, not passed to the
                wrapped method. Default: False.
            tolerance: Draw partitions of samples until every example's
                estimated relative error (``SmoothingError.relative``) is at
                most ``tolerance``, ``nt_samples`` being the cap, and return
                ``(attributions, error)`` as with ``return_error``; its
                ``n_samples`` gives the samples taken. The error is looked at
                after each partition (of ``nt_samples_batch_size``, else 16
                samples or one error group) once 8 groups are in; the batch
                stops as a whole, when its last example is done; the result
                is the statistic of the whole groups taken (so on the drop-in
                path not NoiseTunnel's number for ``nt_samples``). An example
                whose samples all agree exactly is not done unless there is
                no noise. Not with ``return_convergence_delta``. Default: None.
            **kwargs: Passed to the wrapped method's ``attribute``
                (``target``, ``additional_forward_args``, ``baselines``,
                ``return_convergence_delta``, ...).

        Returns:
            The smoothed attributions, shaped like the wrapped method's
            (tensor in, tensor out; tuple in, tuple out), and, when
            ``return_convergence_delta=True`` and the wrapped method supports
            it, the convergence delta of every noisy sample (as NoiseTunnel:
            ``batch * nt_samples`` of them, not averaged). On the drop-in path
            they are in NoiseTunnel's order (partition by partition); on the
            kernel path row ``b * nt_samples + j`` is sample ``j`` of example
            ``b``, whatever ``nt_samples_batch_size``. With
            ``return_error=True`` or a ``tolerance`` a
            :class:`~captum_smoothhess.SmoothingError` comes last:
            ``(attributions, error)`` or ``(attributions, delta, error)``.

        Raises:
            ValueError: ``nt_type`` unknown, ``nt_samples`` or
                ``nt_samples_batch_size`` < 1 (with ``return_error``: fewer
                independent samples than it needs, or drawn baselines that
                NoiseTunnel's own path shares between partitions),
                ``tolerance`` not a positive number or given with
                ``return_convergence_delta``, ``stdevs`` negative or not
                finite or of the wrong length, ``inputs`` with NaN/Inf or on
                the meta device, a ``target`` the output does not have,
                NaN attributions (``forward_func`` NaN at perturbed points),
                or a training-mode norm layer that a function hides from the
                private copy (as for SmoothHess).
            TypeError: ``generator`` is not a ``torch.Generator``; integer
                ``inputs`` (token ids) that an embedding refuses once noisy;
                ``return_error`` is not a bool.

        Under ``torch.inference_mode()`` the call runs outside inference mode
        on clones of the inference tensors it is given.
        """
        _check_nt_args(nt_type, nt_samples, nt_samples_batch_size)
        _check_generator(generator)
        _check_flags(return_error=return_error)
        tolerance = _check_tolerance(tolerance, kwargs)
        tupled = inputs if isinstance(inputs, tuple) else (inputs,)
        _check_inputs(tupled, allow_integer=True)  # integer inputs take noise, as in NoiseTunnel
        _refuse_meta(kwargs.get("target"), "target")
        forward_func = self.attribution_method.forward_func
        if not self._private and (needs_private_copy(forward_func) or hides_models(forward_func)):
            # A forward that updates buffers (batch norm or spectral norm in training mode): run this
            # call on a private copy, the user's buffers left as found. A function hiding its model
            # runs guarded instead (such a layer is refused before it updates anything), and so does
            # the whole call where the method runs a model hiding one (DeepLift runs its `model`).
            tunnel = self._on_private_model()
            method = tunnel.attribution_method
            roots = [method.forward_func, getattr(method, "model", None)]
            with refusing_hidden_writers(roots, type(self).__name__):
                return type(self).attribute.__wrapped__(
                    tunnel,
                    inputs,
                    nt_type=nt_type,
                    nt_samples=nt_samples,
                    nt_samples_batch_size=nt_samples_batch_size,
                    stdevs=stdevs,
                    draw_baseline_from_distrib=draw_baseline_from_distrib,
                    generator=generator,
                    return_error=return_error,
                    tolerance=tolerance,
                    **kwargs,
                )
        if not self._private:
            warn_if_training(forward_func, type(self).__name__)  # dropout (no batch norm here)
        with autograd_allowed():
            inputs, kwargs = _normal_tensors((inputs, kwargs))
            tupled = inputs if isinstance(inputs, tuple) else (inputs,)
            std = _format_stdevs(stdevs, tupled, allow_zero=True)
            state = _CallState(generator=generator)
            drop_in = self.sampling == "iid" and isinstance(self.kernel, Gaussian) and generator is None
            captum_stdevs = _captum_stdevs(stdevs, tupled) if drop_in else None
            if captum_stdevs is not None:
                state.captum_stdevs = captum_stdevs
                state.round_back = _round_back_dtypes(self.attribution_method.forward_func)
            else:
                inputs = _as_floating(inputs)
                floating = inputs if isinstance(inputs, tuple) else (inputs,)
                state.input_noise = _InputNoise(
                    self.kernel, floating, std, seed_from(generator), self.sampling
                )
            stream = None if state.input_noise is None else state.input_noise.stream
            noiseless = not bool((std != 0).any())
            state.errors = _error_tracking(
                return_error, int(nt_samples), stream, nt_type, tolerance, noiseless
            )
            nt_samples_batch_size = _tolerance_partition(state.errors, nt_samples_batch_size, int(nt_samples))
            size = nt_samples if nt_samples_batch_size is None else nt_samples_batch_size
            if state.errors is not None and captum_stdevs is not None and draw_baseline_from_distrib:
                if int(size) < int(nt_samples) and "baselines" in kwargs:
                    raise ValueError(
                        "draw_baseline_from_distrib: on NoiseTunnel's own path (the Gaussian kernel, no "
                        "generator) every partition of samples reuses the same drawn baselines, so the "
                        "samples are not independent and the error (return_error, tolerance) would be "
                        "understated; pass a generator (each sample then draws its own baseline), or "
                        "nt_samples_batch_size=None without a tolerance"
                    )
            with _naming_token_ids(tupled):
                return self._run_tunnel(
                    state,
                    inputs,
                    kwargs,
                    nt_type=nt_type,
                    nt_samples=nt_samples,
                    nt_samples_batch_size=nt_samples_batch_size,
                    stdevs=stdevs,
                    draw_baseline_from_distrib=draw_baseline_from_distrib,
                )

    _private = False

    def _on_private_model(self) -> KernelNoiseTunnel:
        """This tunnel on a private copy of the model: for a model whose forward updates buffers.

        Batch norm in training mode gets a warning (its outputs mix examples);
        other buffer updates (``spectral_norm``'s power iteration) need none.
        A function hiding its model runs guarded instead (:func:`~captum_smoothhess._model.guarded`).
        """
        original = self.attribution_method.forward_func
        try:
            private = private_if_training(original, type(self).__name__)
        except (TypeError, RuntimeError, AttributeError, copy.Error) as err:
            raise TypeError(
                "forward_func: the model is in training mode with buffers its forward may update "
                "(batch norm statistics, spectral norm's power iteration), so this call runs on a "
                f"private copy, which copy.deepcopy could not make ({type(err).__name__}: {err}); "
                "call model.eval() first"
            ) from err

        def on_private(obj: Attribution) -> Attribution:
            """A shallow copy of ``obj`` on the private model, and so of the attributions it holds
            (GuidedGradCam runs a LayerGradCam and a GuidedBackprop of its own)."""
            new = copy.copy(obj)
            if new.forward_func is original:
                new.forward_func = private
            for name, value in list(vars(new).items()):
                if isinstance(value, Attribution):
                    setattr(new, name, on_private(value))
                elif name in ("layer", "model") and isinstance(value, nn.Module):
                    setattr(new, name, counterpart(value, original, private))  # layer methods, DeepLift
            return new

        method = on_private(self.attribution_method)
        tunnel = copy.copy(self)
        tunnel.attribution_method = method
        tunnel._private = True
        return tunnel

    def _add_noise_to_inputs(
        self,
        nt_samples_partition: int,
        inputs: Tuple[Tensor, ...],
        stdevs: Any,
    ) -> Tuple[Tensor, ...]:
        state = _current_state(self)
        if state.input_noise is None:
            # Drop-in path: NoiseTunnel's own draws, in its order and dtype. Noise wider than an input
            # widens the noisy input, as in NoiseTunnel, except for the dtypes of _round_back_dtypes (a
            # model's weights, which refuse wider inputs; half precision behind a function), which are
            # rounded back where NoiseTunnel would fail.
            noisy = super()._add_noise_to_inputs(nt_samples_partition, inputs, state.captum_stdevs)
            return tuple(
                t.detach().to(inp.dtype).requires_grad_(t.requires_grad)
                if inp.is_floating_point() and t.dtype != inp.dtype and inp.dtype in state.round_back
                else t
                for t, inp in zip(noisy, inputs)
            )
        noisy = state.input_noise.add(inputs, nt_samples_partition)
        if self.is_gradient_method:
            return tuple(t.requires_grad_() for t in noisy)
        return noisy


def _format_attributions(
    attributions: Any, delta_supported: bool, return_convergence_delta: bool
) -> Tuple[Tuple[Tensor, ...], bool, Optional[Tensor]]:
    """Split ``(attributions, delta)`` and tuple-ise as NoiseTunnel does."""
    delta = None
    if delta_supported and return_convergence_delta:
        attributions, delta = attributions
    is_tuple = isinstance(attributions, tuple)
    attrs: Tuple[Tensor, ...] = attributions if is_tuple else (attributions,)
    return attrs, is_tuple, delta
