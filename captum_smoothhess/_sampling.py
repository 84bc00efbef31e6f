"""The Monte-Carlo engine shared by every method that averages over kernel noise.

Three pieces, each used by SmoothHess, the kernel noise tunnels and CASO:

* :class:`NoiseStream` draws canonical kernel noise for (example, sample
  index) pairs. The noise of sample ``j`` depends only on the seed and ``j``:
  it is drawn in fixed blocks, each from its own generator seeded by
  ``hash(seed, block)``, so the result of a method does not depend on how the
  samples are split into chunks (``n_samples_batch_size``) or across
  processes. On CPU, where a generator is sequential, independent blocks are
  drawn by several threads at once.
* :class:`GradientEvaluator` evaluates, with one forward and one backward
  pass, the gradient of the selected scalar output (Captum's ``target``) for
  every perturbed copy of a batch, expanding ``target`` and
  ``additional_forward_args`` per copy the way Captum does
  (``repeat_interleave``: the copies of one example are contiguous).
* :func:`chunks` / :func:`default_chunk` plan the chunks, so memory does
  not grow with the number of samples.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
from torch import Tensor

from ._captum import (
    ExpansionTypes,
    TargetType,
    _expand_additional_forward_args,
    _expand_target,
    _format_additional_forward_args,
    _run_forward,
    _select_targets,
    progress,
)
from ._validation import _unflatten
from .kernels import Kernel

_MASK64 = (1 << 64) - 1
# Elements of noise drawn per block; fixes the block length for a given (B, d, n).
_BLOCK_ELEMENTS = 1 << 20
# Most threads drawing noise blocks at once on CPU (bounds the look-ahead memory too).
_MAX_WORKERS = 4
# Default budget of perturbed input elements evaluated in one chunk.
_CHUNK_ELEMENTS = 1 << 24


def seed_from(generator: Optional[torch.Generator]) -> int:
    """One 62-bit seed drawn from ``generator`` (the global RNG if ``None``).

    Consuming one draw means two calls with the same generator differ, and a
    call after ``torch.manual_seed(s)`` is reproducible, as users expect.
    """
    if generator is None:
        return int(torch.randint(0, 1 << 62, (1,)).item())
    return int(torch.randint(0, 1 << 62, (1,), generator=generator, device=generator.device).item())


def _mix(seed: int, index: int) -> int:
    """SplitMix64 of (seed, index): decorrelated per-block seeds."""
    z = (seed + (index + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


class NoiseStream:
    """Canonical kernel noise for ``batch`` examples, addressable by sample index.

    Args:
        kernel: The kernel to draw from.
        batch: Number of examples ``B``.
        dim: Features per example ``d`` (the radial kernels span all of them).
        seed: Base seed, e.g. from :func:`seed_from`.
        device: Device of the noise.
        dtype: Floating dtype of the noise.
        total: Number of samples per example that will be taken, if known;
            bounds the block length so that small runs draw no more than they
            use (256 samples when unknown).
    """

    def __init__(
        self,
        kernel: Kernel,
        batch: int,
        dim: int,
        seed: int,
        device: torch.device,
        dtype: torch.dtype,
        total: Optional[int] = None,
    ) -> None:
        self.kernel = kernel
        self.batch = batch
        self.dim = dim
        self.seed = seed
        self.device = device
        self.dtype = dtype
        cap = 256 if total is None else total
        # A power of two, so that chunks of power-of-two sizes are views of one block.
        fit = max(1, _BLOCK_ELEMENTS // max(1, batch * dim))
        self.block = max(1, min(cap, 1 << (fit.bit_length() - 1)))
        self._n_blocks = None if total is None else -(-total // self.block)
        # CPU generators are sequential; independent blocks are drawn by several threads.
        self._workers = 1 if self.device.type != "cpu" else max(1, min(_MAX_WORKERS, torch.get_num_threads()))
        self._cache: Dict[int, Tensor] = {}

    def _draw(self, k: int) -> Tensor:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(_mix(self.seed, k))
        u = self.kernel.sample(
            self.batch * self.block, self.dim, generator=gen, device=self.device, dtype=self.dtype
        )
        return u.reshape(self.batch, self.block, self.dim)

    def _fill(self, first: int, last: int) -> None:
        """Cache blocks ``first .. last`` and, on CPU, the next ones up to one per worker."""
        end = last + 1
        if self._n_blocks is not None:
            end = max(end, min(first + self._workers, self._n_blocks))
        missing = [k for k in range(first, end) if k not in self._cache]
        if not missing:
            return
        if len(missing) == 1 or self._workers == 1:
            drawn = [self._draw(k) for k in missing]
        else:
            with ThreadPoolExecutor(min(self._workers, len(missing))) as pool:
                drawn = list(pool.map(self._draw, missing))
        self._cache.update(zip(missing, drawn))

    def take(self, start: int, stop: int) -> Tensor:
        """Noise of samples ``start .. stop-1``: a tensor ``(B, stop-start, d)``."""
        first, last = start // self.block, (stop - 1) // self.block
        # Chunks are visited in order: earlier blocks are never needed again.
        for k in [k for k in self._cache if k < first]:
            del self._cache[k]
        if any(k not in self._cache for k in range(first, last + 1)):
            self._fill(first, last)
        parts = [self._cache[k] for k in range(first, last + 1)]
        u = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        offset = start - first * self.block
        return u[:, offset : offset + (stop - start)]


def default_chunk(n: int, batch: int, dim: int, copies: int = 1) -> int:
    """Samples per chunk when the user gives none: all ``n`` if they fit the budget.

    ``copies`` is the number of inputs evaluated per sample (2 for
    antithetic pairs).
    """
    per_sample = max(1, batch * dim * copies)
    return max(1, min(n, _CHUNK_ELEMENTS // per_sample))


def chunks(n: int, size: int, show_progress: bool = False, desc: str = "") -> Iterator[Tuple[int, int]]:
    """Consecutive ``(start, stop)`` ranges of at most ``size`` covering ``range(n)``."""
    bounds = [(s, min(n, s + size)) for s in range(0, n, size)]
    if not show_progress:
        yield from bounds
        return
    bar = progress(total=len(bounds), desc=desc)
    try:
        for b in bounds:
            yield b
            bar.update()
    finally:
        bar.close()


def _scalar_per_row(out: Tensor, rows: int, argument: str = "target") -> Tensor:
    if out.dim() == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if out.dim() != 1 or out.shape[0] != rows:
        raise ValueError(
            f"{argument}: forward_func must give one scalar per example after target "
            f"selection, got an output of shape {tuple(out.shape)} for {rows} example(s); "
            "pass a `target` that selects one output per example"
        )
    return out


def selected_outputs(
    forward_func: Callable[..., Any],
    inputs: Tuple[Tensor, ...],
    target: TargetType = None,
    additional_forward_args: Any = None,
) -> Tensor:
    """The scalar output that ``target`` selects, one per example: shape ``(B,)``.

    Raises a ``ValueError`` naming ``target`` when the target does not exist
    in the output, or when the output is not one scalar per example.
    """
    afa = _format_additional_forward_args(additional_forward_args)
    out = _run_forward(forward_func, inputs, None, afa)
    if not isinstance(out, Tensor):
        raise TypeError(f"forward_func: expected a Tensor output, got {type(out).__name__}")
    try:
        sel = _select_targets(out, target)
    except (IndexError, AssertionError, RuntimeError, TypeError) as err:
        raise ValueError(
            f"target: {target!r} does not select an output of forward_func, whose output "
            f"has shape {tuple(out.shape)} ({err})"
        ) from err
    return _scalar_per_row(sel, inputs[0].shape[0])


class GradientEvaluator:
    """Gradients of the selected scalar output at many perturbed copies of a batch.

    Args:
        forward_func: The model or function, as given to the attribution method.
        inputs: The original inputs (their shapes define the flat layout).
        target: Captum target for the original batch.
        additional_forward_args: Captum additional forward args for the batch.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        inputs: Tuple[Tensor, ...],
        target: TargetType,
        additional_forward_args: Any,
    ) -> None:
        self.forward_func = forward_func
        self.inputs = inputs
        self.target = target
        self.afa = _format_additional_forward_args(additional_forward_args)
        self._expanded: Dict[int, Tuple[TargetType, Any]] = {}

    def _expand(self, copies: int) -> Tuple[TargetType, Any]:
        if copies not in self._expanded:
            kind = ExpansionTypes.repeat_interleave
            self._expanded[copies] = (
                _expand_target(self.target, copies, kind),
                _expand_additional_forward_args(self.afa, copies, kind),
            )
        return self._expanded[copies]

    def __call__(self, points: Tensor) -> Tensor:
        """Gradients at ``points`` of shape ``(B, r, d)``; returns ``(B, r, d)``."""
        batch, copies, dim = points.shape
        x = points.detach().reshape(batch * copies, dim).requires_grad_(True)
        target, afa = self._expand(copies)
        with torch.enable_grad():
            parts = _unflatten(x, self.inputs)
            out = _run_forward(self.forward_func, parts, target, afa)
            if not isinstance(out, Tensor):
                raise TypeError(f"forward_func: expected a Tensor output, got {type(out).__name__}")
            out = _scalar_per_row(out, batch * copies)
            (grad,) = torch.autograd.grad(out.sum(), x, allow_unused=True)
        if grad is None:
            grad = torch.zeros_like(x)
        return grad.reshape(batch, copies, dim)
