"""Kernel noise by sample index, and the samplers that turn it into Stein pairs.

* :class:`NoiseStream` draws canonical kernel noise for (example, sample
  index) pairs. The noise of sample ``j`` depends only on the seed and ``j``:
  it is drawn in fixed blocks, each from its own generator seeded by
  ``hash(seed, block)``, so the result of a method does not depend on how the
  samples are split into chunks (``n_samples_batch_size``) or across
  processes. On CPU, where a generator is sequential, independent blocks are
  drawn by several threads at once.
* A :class:`Sampler` owns one stream and its variance reduction: it draws the
  noise of a range of draws, forms the perturbed points, and combines the
  gradients at those points into ``(scores, gradient terms)`` pairs, the two
  factors of the Stein estimate ``H = (1/eps) E[s(u) grad f(x + eps u)^T]``.
  :class:`PlainSampler` (one gradient call per draw) and
  :class:`AntitheticSampler` (the pair ``u, -u``) combine the gradients; where
  the noise comes from is the sampler's stream: :class:`NoiseStream` (iid
  draws) or :class:`OrthogonalStream` (blocks of mutually orthogonal
  directions of a random rotation, each direction uniform, with independent
  radii, for the rotation-invariant kernels), so a new kind of noise is one
  more stream, and
  the estimator loop does not change.
* :func:`chunks` / :func:`default_chunk` plan the chunks lazily, so memory
  does not grow with the number of samples.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar, Dict, Iterator, List, Literal, Optional, Tuple, Type

import torch
from torch import Tensor

from ._captum import progress
from ._dtypes import widened, working_dtype
from .kernels import Gaussian, Kernel, Poisson

_MASK64 = (1 << 64) - 1
# Elements of noise drawn per block; fixes the block length for a given (B, d, n).
_BLOCK_ELEMENTS = 1 << 20
# Most threads drawing noise blocks at once on CPU (bounds the look-ahead memory too).
_MAX_WORKERS = 4
# Default budget of perturbed input elements evaluated in one chunk (accelerators).
_CHUNK_ELEMENTS = 1 << 24
# The same on CPU, where smaller chunks run faster: their points, gradients and the model's activations
# stay in the caches, and they fault no fresh pages in each call (see `default_chunk`).
_CPU_CHUNK_ELEMENTS = 1 << 20
# Elements of one example's orthogonal block (directions x d): caps the block length at large d.
_ORTHOGONAL_ELEMENTS = 1 << 25
# Fewest features for SmoothHess's tilted radii (OrthogonalStream). The gradient weights' spread grows
# as d falls (variance 0.06 at d = 10, 0.13 at 5, 0.27 at 3, 0.57 at 2): on the ReLU oracle the smoothed
# gradient's error variance is then 1.05x, 1.16x, 1.8x and 2.8x that with chi_d radii.
_TILT_MIN_DIM = 5
# Most features for them (exclusive). The tilt's gain falls as d grows while its cost per draw (the weights,
# the weighted gradient sum) stays: on the ReLU oracle (n = 16 d) the Hessian's error variance was 1.3%
# lower than with chi_d radii at d = 256 and 0.4% at d = 784, while on the d = 784 MLP the tilted default
# took 2-9% longer (four interleaved runs of `benchmarks/efficiency.py --only timing`).
_TILT_MAX_DIM = 256
# Fewest features for SmoothHess's orthogonal blocks to share rotations (OrthogonalStream's ``share``), and
# blocks per shared rotation. A Haar block costs (4/3) d^3 flops and its dense sum 2 d^3, a mixer and its
# transpose 8 d^2 sqrt(d): at d = 784 the rotation and the sum of a block took about half as long as its
# gradient calls (MLP 784-500-300-250-250-10). Sharing a rotation over 8 blocks raised the error variance
# of the ReLU oracle (8 blocks, against independent ones) by 0.4% at d = 784 and 1.4% at d = 256 with the
# Kronecker mixers (0.5-0.7% and 1.5-1.8% with the two-layer ones; 0.5% and 1.1% over 4 blocks;
# `benchmarks/efficiency.py --only share`), and 4.4% at d = 64, where sharing saves little.
_SHARE_MIN_DIM = 256
_SHARE_BLOCKS = 8
# Fewest features (a multiple of 4) for whole rotations drawn from the compact symplectic group Sp(d/4)
# (`_quaternionic_rows`) instead of O(d): each direction still exactly uniform, at about half the cost
# (5.7 against 11.8 ms at d = 784). On the ReLU oracle (n = 2 d and 16 d; random, image-smooth and
# 4-feature-local first layers) the error variance stayed within 0.4% of that with O(d) rotations at
# d = 256 and 784 (`benchmarks/efficiency.py --only quaternion`). Below this, where each block draws its
# own rotation and the rotation is cheap beside the gradient calls, the seeded numbers are kept.
_QUATERNION_MIN_DIM = 256

Sampling = Literal["orthogonal", "iid"]
SAMPLINGS = ("orthogonal", "iid")


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


def _span(blocks: List[Tensor], offset: int, length: int) -> Tensor:
    """Draws ``offset .. offset + length - 1`` of consecutive ``blocks`` ``(B, L_k, ...)``, along dim 1.

    Within one block this is a view; across blocks only the rows taken are
    copied (a chunk that spans a block boundary of the d = 784 orthogonal
    stream would otherwise copy two whole ``d x d`` blocks, about 2 ms each).
    """
    if len(blocks) == 1:
        return blocks[0][:, offset : offset + length]
    pieces = []
    for block in blocks:
        rows = block.shape[1]
        if offset < rows and length > 0:
            take = min(rows - offset, length)
            pieces.append(block[:, offset : offset + take])
            length -= take
        offset = max(0, offset - rows)
    return torch.cat(pieces, dim=1)


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
        self.total = total
        self.block = self._block_length()
        self._n_blocks = None if total is None else -(-total // self.block)
        # CPU generators are sequential; independent blocks are drawn by several threads.
        self._workers = 1 if self.device.type != "cpu" else max(1, min(_MAX_WORKERS, torch.get_num_threads()))
        self._workers = min(self._workers, self._max_workers())
        self._cache: Dict[int, Tensor] = {}

    def _block_length(self) -> int:
        """Samples per block: a power of two within the element budget (fewer if ``total`` is small)."""
        cap = 256 if self.total is None else self.total
        # A power of two, so that chunks of power-of-two sizes are views of one block.
        fit = max(1, _BLOCK_ELEMENTS // max(1, self.batch * self.dim))
        return max(1, min(cap, 1 << (fit.bit_length() - 1)))

    #: Whether the radii are tilted and the draws carry importance weights (:class:`OrthogonalStream`).
    tilted: bool = False

    def _max_workers(self) -> int:
        return _MAX_WORKERS

    def gradient_weights(self, start: int, stop: int) -> Optional[Tensor]:
        """``(B, stop-start)`` weights of the gradients of draws ``start .. stop-1``; ``None``: all 1."""
        return None

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
        return _span(
            [self._cache[k] for k in range(first, last + 1)], start - first * self.block, stop - start
        )


def rotation_invariant(kernel: Kernel) -> bool:
    """Whether ``kernel``'s density depends on ``|u|`` only (Gaussian, or any ``radial`` kernel)."""
    return isinstance(kernel, Gaussian) or bool(kernel.radial)


def resolve_sampling(
    sampling: Optional[str], kernel: Kernel, dim: Optional[int] = None, draws: Optional[int] = None
) -> str:
    """The sampling to use: by default ``"orthogonal"`` where it pays, else ``"iid"``.

    The default is ``"orthogonal"`` for rotation-invariant kernels when the
    call draws at least one full rotation: ``draws >= dim`` directions, and
    ``dim`` small enough for a block to hold all of them
    (:func:`orthogonal_block_length`). The variance reduction comes from
    full rotations: on the ReLU oracle (d = 100 and 400) it is 3.6-3.7x with
    ``d`` or ``2 d`` pairs but 1.05, 1.2 and 1.55x with ``d/16``, ``d/4`` and
    ``d/2``, while the orthogonalisation costs the same per direction, so
    fewer draws, or image-size inputs (blocks of a few hundred directions of
    ``d = 150,528``), default to ``"iid"``. ``dim`` / ``draws`` unknown
    (``None``) count as fitting.

    Raises a ``ValueError`` naming ``sampling`` for an unknown value, or for
    ``"orthogonal"`` with a product kernel (its coordinates are independent
    but not rotation-invariant, so rotated samples would not keep its law).
    """
    invariant = rotation_invariant(kernel)
    if sampling is None:
        full = dim is None or (orthogonal_block_length(dim) == dim and (draws is None or draws >= dim))
        return "orthogonal" if invariant and full else "iid"
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling: expected one of {SAMPLINGS}, got {sampling!r}")
    if sampling == "orthogonal" and not invariant:
        raise ValueError(
            f"sampling: 'orthogonal' needs a rotation-invariant kernel (Gaussian or Poisson); "
            f"{kernel!r} is a product kernel, whose samples lose their law when rotated: use sampling='iid'"
        )
    return sampling


def chi_mean(dim: int) -> float:
    """``E |N(0, I_d)|``, the mean of ``chi_d``: ``sqrt(2) Gamma((d+1)/2) / Gamma(d/2)``."""
    return math.sqrt(2.0) * math.exp(math.lgamma((dim + 1) / 2) - math.lgamma(dim / 2))


def orthogonal_block_length(dim: int) -> int:
    """Draws per orthogonal block: ``d`` (a full rotation), fewer at very large ``d`` to bound memory."""
    return max(1, min(dim, _ORTHOGONAL_ELEMENTS // max(1, dim)))


def _lower_gaussian(
    batch: int, dim: int, generator: torch.Generator, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """``(B, d, d)`` with iid standard normal entries on and below the diagonal, all that
    :func:`_haar_columns` reads of a square Gaussian matrix, from ``d (d + 1) / 2`` normals instead of
    ``d^2`` (at d = 784 the draw takes 0.8 instead of 1.45 ms). Above the diagonal: zeros, and normals
    that the lower part does not use.

    The columns ``k < h = d // 2`` take their lower parts from the same columns of a Gaussian
    ``W`` ``(B, d, d - h)``; the lower triangle of the trailing ``(d - h) x (d - h)`` block is the
    transpose of the upper triangle of ``W``'s leading square block, whose strictly upper entries the
    first columns do not use, and its diagonal (which they do use) is drawn afresh. Every entry read
    is thus a distinct normal draw.
    """
    h = dim // 2
    w = dim - h
    top = torch.randn(batch, dim, w, generator=generator, device=device, dtype=dtype)
    gauss = torch.empty(batch, dim, dim, device=device, dtype=dtype)
    gauss[:, :, :h] = top[:, :, :h]
    gauss[:, :h, h:] = 0
    corner = gauss[:, h:, h:]
    corner.copy_(top[:, :w, :w].transpose(1, 2))
    corner.diagonal(dim1=-2, dim2=-1).copy_(
        torch.randn(batch, w, generator=generator, device=device, dtype=dtype)
    )
    return gauss


def _haar_columns(gauss: Tensor, overwrite: bool = False, rows: bool = False) -> Tensor:
    """The first ``m`` columns ``(B, d, m)`` of Haar-random ``d x d`` orthogonal matrices.

    Stewart's method: the Householder QR of a Gaussian matrix meets, at step
    ``k``, a column whose last ``d - k`` entries are again iid Gaussian
    (the earlier reflections are orthogonal and independent of it). So the
    ``k``-th reflector is built straight from the ``k``-th column of the
    lower triangle of ``gauss`` ``(B, d, m)``, with LAPACK's conventions
    (unit leading entry, ``tau``), and only the product of the ``m``
    reflectors is formed (``householder_product``): the law is that of the
    ``Q`` of ``torch.linalg.qr(gauss)`` with signs fixed so that ``R`` has a
    positive diagonal (exactly Haar), at about half its cost, since no
    factorisation runs. ``overwrite=True`` builds the reflectors in
    ``gauss`` itself (no second ``d x m`` buffer); with ``rows=True`` too
    (square ``gauss`` only) the result is the transpose, the matrix's
    rows, written back into ``gauss`` in the same pass as the signs.
    """
    m = gauss.shape[-1]
    alpha = torch.diagonal(gauss, dim1=-2, dim2=-1)
    if overwrite:
        alpha = alpha.clone()
    # Norms of the columns' lower parts; only the top m x m block has entries above the diagonal (which
    # householder_product does not read: zeroed in place when gauss may be overwritten, with no copy).
    top = gauss[..., :m, :]
    norm = torch.linalg.vector_norm(top.tril_() if overwrite else top.tril(), dim=-2)
    if gauss.shape[-2] > m:
        norm = torch.hypot(norm, torch.linalg.vector_norm(gauss[..., m:, :], dim=-2))
    sign = torch.where(alpha < 0, -1.0, 1.0).to(gauss.dtype)
    beta = -sign * norm  # the diagonal of R
    # householder_product reads the reflectors below the diagonal only: no need to zero the rest.
    pivot = (alpha - beta)[..., None, :]
    reflectors = gauss.div_(pivot) if overwrite else gauss / pivot
    q = torch.linalg.householder_product(reflectors, (beta - alpha) / beta)
    flip = (-sign)[..., None, :]  # columns times sign(R_kk): a positive diagonal
    if rows:
        if not overwrite or gauss.shape[-2] != m:
            raise ValueError("rows=True needs a square gauss that may be overwritten")
        return torch.mul(q.mT, flip.mT, out=gauss)
    return q.mul_(flip)


# Right multiplication of a quaternion ``z`` (components ``(1, i, j, k)``) by the unit ``u_t``:
# ``(z u_t)[c] = _Q_SIGN[t][c] * z[_Q_INDEX[t][c]]``.
_Q_INDEX = ((0, 1, 2, 3), (1, 0, 3, 2), (2, 3, 0, 1), (3, 2, 1, 0))
_Q_SIGN = ((1.0, 1.0, 1.0, 1.0), (-1.0, 1.0, 1.0, -1.0), (-1.0, -1.0, 1.0, 1.0), (-1.0, 1.0, -1.0, 1.0))


def _quaternion_product(x: Tensor, y: Tensor) -> Tensor:
    """``x y`` for quaternions with their components on dim 1 (broadcast over the rest)."""
    a1, b1, c1, d1 = x.unbind(1)
    a2, b2, c2, d2 = y.unbind(1)
    return torch.stack(
        [
            a1 * a2 - b1 * b2 - c1 * c2 - d1 * d2,
            a1 * b2 + b1 * a2 + c1 * d2 - d1 * c2,
            a1 * c2 - b1 * d2 + c1 * a2 + d1 * b2,
            a1 * d2 + b1 * c2 - c1 * b2 + d1 * a2,
        ],
        1,
    )


def _real_form(planes: Tensor, out: Tensor) -> Tensor:
    """``out`` ``(B, d, d)``, row ``4 p + t`` the quaternion vector ``z_p u_t`` (entry ``q`` at columns
    ``4 q .. 4 q + 3``), for ``z_p[q]`` with components ``planes[:, c, p, q]`` ``(B, 4, d/4, d/4)``."""
    b, n = planes.shape[0], planes.shape[-1]
    out5 = out.view(b, n, 4, n, 4)
    for t in range(4):
        for c in range(4):
            torch.mul(planes[:, _Q_INDEX[t][c]], _Q_SIGN[t][c], out=out5[:, :, t, :, c])
    return out


def _quaternionic(dim: int) -> bool:
    """Whether whole rotations of ``dim`` features come from :func:`_quaternionic_rows`."""
    return dim % 4 == 0 and dim >= _QUATERNION_MIN_DIM


def _quaternionic_rows(
    batch: int, dim: int, generator: torch.Generator, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """``(B, d, d)``: the rows of the real form of Haar-random elements of ``Sp(d/4)`` (``d % 4 == 0``).

    ``Sp(n)``, the ``n x n`` quaternionic matrices ``Q`` with ``Q* Q = I``, acts on ``H^n = R^d`` by
    orthogonal maps and transitively on the unit sphere; so for ``Q`` Haar on it, ``Q e`` is uniform on
    the sphere for every unit ``e``: each row here (a column of ``Q``) is exactly uniform, and the rows
    are orthonormal, as those of a Haar ``O(d)`` rotation. Columns ``4 p .. 4 p + 3`` of ``Q`` are column
    ``q_p`` times the units ``1, i, j, k`` (``Q`` commutes with right scalar multiplication), so only the
    ``d/4`` columns ``q_p`` are computed.

    Stewart's method in quaternions: ``Q = H_1 ... H_n L``, with ``H_p`` the quaternionic Householder
    reflection built from an independent quaternionic Gaussian vector of length ``n - p + 1`` (row
    ``p`` of ``planes`` from column ``p`` on, components on dim 1) and ``L`` the unit diagonal that gives
    the QR factor a positive real diagonal, which makes ``Q`` exactly Haar. In real form ``H_p = I - 2 W
    W^T`` with ``W = (w, w i, w j, w k)``; with ``v = w / w_1`` (leading entry 1) it is the product of
    the four real reflectors ``v, v i, v j, v k`` (mutually orthogonal, each with LAPACK's unit leading
    entry at rows ``4 p .. 4 p + 3``, ``tau = 2 / |v|^2``). One ``ormqr`` applies the ``d`` real
    reflectors to the ``d/4`` columns ``L e_{4p}``: ``d^3 / 2`` flops against the ``(4/3) d^3`` of
    forming a Haar ``O(d)`` rotation's reflectors (``_haar_columns``), and ``d^2 / 4`` normals (of which
    the reflectors read about half) against ``d^2 / 2``.
    """
    if dim % 4:
        raise ValueError(f"a quaternionic rotation needs a multiple of 4 features, got {dim}")
    n = dim // 4
    planes = torch.randn(batch, 4, n, n, generator=generator, device=device, dtype=dtype)  # [b, c, p, q]
    lead = planes.diagonal(dim1=-2, dim2=-1).clone()  # (B, 4, n): each column's leading quaternion x_1
    lead[:, 0] += lead.abs().sum(1) == 0  # all four exactly 0 (probability 0): any unit will do
    lead_norm = torch.linalg.vector_norm(lead, dim=1)
    tail = planes.square().sum(1).triu(1).sum(-1)  # (B, n): |x|^2 below the leading entry
    norm = (lead_norm.square() + tail).sqrt()
    conjugate = lead.clone()
    conjugate[:, 1:].neg_()
    # v = x / (x_1 - beta) with beta = -(x_1 / |x_1|) |x|: the right factor conj(x_1) / (|x_1| (|x_1| + |x|)).
    scale = conjugate / (lead_norm * (lead_norm + norm))[:, None]
    v = _quaternion_product(planes, scale[..., None])
    v.diagonal(dim1=-2, dim2=-1).zero_()
    v[:, 0].diagonal(dim1=-2, dim2=-1).fill_(1.0)  # the unit leading entries: LAPACK reads zeros below them
    # The reflectors, column-major as LAPACK reads them (row 4 p + t of `reflectors` is reflector v_p u_t;
    # what lies above each unit entry is not read).
    reflectors = _real_form(v, torch.empty(batch, dim, dim, device=device, dtype=dtype))
    tau = (2.0 / (1.0 + tail / (lead_norm + norm).square())).repeat_interleave(4, dim=1)
    # L e_{4p}: the phase -x_1 / |x_1| of column p at its quaternion p (column-major too).
    phases = torch.zeros(batch, n, n, 4, device=device, dtype=dtype)
    phases.diagonal(dim1=1, dim2=2).copy_(-lead / lead_norm[:, None])
    columns = torch.ormqr(reflectors.mT, tau, phases.view(batch, n, dim).mT)  # (B, d, n): column p is q_p
    return _real_form(columns.mT.reshape(batch, n, n, 4).permute(0, 3, 1, 2), reflectors)


def _balanced_factor(dim: int) -> int:
    """The largest divisor of ``dim`` that is at most ``sqrt(dim)``."""
    s = math.isqrt(dim)
    while dim % s:
        s -= 1
    return s


class _Mixer(ABC):
    """A random ``d x d`` orthogonal matrix ``M`` that is cheap to apply (:meth:`draw_many` picks the kind).

    For a Haar ``R`` independent of it, ``M R`` is again exactly Haar (for a Haar ``Sp(d/4)`` rotation,
    :func:`_quaternionic_rows`, each row of ``M R``, a fixed unit combination of ``R``'s rows, is still
    exactly uniform, ``Sp(d/4)`` being transitive on the sphere), so every block of a group that shares
    ``R`` (:class:`OrthogonalStream`) is orthonormal with each direction of the law it would have alone;
    what ``M`` must do is make the blocks of a group look unrelated to each other. Both kinds cost
    ``4 d^2 sqrt(d)`` flops per ``d`` columns (a Haar block costs ``(4/3) d^3``), and both keep the error
    variance of a group of 8 blocks on the ReLU oracle within 2% of that of 8 independent blocks
    (``benchmarks/efficiency.py --only share``), against 3.6-4x for a permutation alone (the blocks of a
    group then have the same directions).
    """

    #: ``d``.
    dim: int

    @staticmethod
    def draw_many(
        dim: int, count: int, generator: torch.Generator, device: torch.device, dtype: torch.dtype
    ) -> List[_Mixer]:
        """``count`` independent mixers: :class:`_KroneckerMixer` if ``d = s c`` with ``sqrt(d) / 2 <= s
        <= sqrt(d)`` (drawn together, one batched Haar draw: a group's mixers cost about one mixer's call
        overhead), else :class:`_LayeredMixer`."""
        s = _balanced_factor(dim)
        if s > 1 and 4 * s * s >= dim:
            return list(_KroneckerMixer.draw_batch(dim, s, count, generator, device, dtype))
        return [_LayeredMixer(dim, generator, device, dtype) for _ in range(count)]

    def apply(
        self,
        rows: Tensor,
        out: Optional[Tensor] = None,
        scratch: Optional[Tensor] = None,
        scale: Optional[Tensor] = None,
        count: Optional[int] = None,
    ) -> Tensor:
        """``M rows`` for ``rows`` ``(B, d, n)``, into ``out``, with ``scratch`` of the same shape (both
        contiguous, made if ``None``); with ``scale`` ``(B, d)``, row ``j`` of the result times
        ``scale[:, j]``.

        With ``count``, only the first ``count`` rows of the result are wanted (a partial block): the
        result is then ``(B, span(count), n)``, a view of ``out``'s memory, and may hold fewer
        than ``d`` rows.
        """
        out = torch.empty_like(rows) if out is None else out
        wanted = self.dim if count is None else self.span(count)
        return self._apply(rows, out, torch.empty_like(rows) if scratch is None else scratch, scale, wanted)

    def span(self, count: int) -> int:
        """The leading rows of ``M`` that :meth:`apply` computes, and :meth:`add_transpose` reads, for a
        partial block of ``count`` rows (at least ``count``; ``d`` unless the mixer can skip the rest)."""
        return self.dim

    @abstractmethod
    def _apply(
        self, rows: Tensor, out: Tensor, scratch: Tensor, scale: Optional[Tensor], wanted: int
    ) -> Tensor:
        """:meth:`apply` into the buffers given, of at least the first ``wanted`` (``span``) rows."""

    @abstractmethod
    def add_transpose(
        self,
        rows: Tensor,
        into: Tensor,
        scratch: Tensor,
        count: Optional[int] = None,
        scale: Optional[Tensor] = None,
    ) -> None:
        """``into += M^T rows`` (all ``(B, d, n)`` contiguous), overwriting ``rows`` and ``scratch``; with
        ``count``, rows past ``span(count)`` are taken as zero and not read (those from ``count`` to
        ``span(count)`` must be zero); with ``scale`` ``(B, span)`` or longer, row ``j`` of ``rows``
        taken times ``scale[:, j]``."""

    def apply_transpose(self, rows: Tensor) -> Tensor:
        """``M^T rows``."""
        out = torch.zeros_like(rows)
        self.add_transpose(rows.clone(), out, torch.empty_like(rows))
        return out


class _KroneckerMixer(_Mixer):
    """``M = (F kron G) P`` for ``d = s c``: a random permutation ``P`` of the rows, then Haar matrices
    ``F`` (``s x s``) and ``G`` (``c x c``) on the two indices of row ``a c + b``: one gather and two
    products, each over all rows at once (the two-layer mixer makes two gathers and its products are
    cut by block size). On the ReLU oracle a group of 8 blocks had 1.4% more error variance than 8
    independent blocks at d = 256 (60 seeds) and 0.4% at d = 784 (16 seeds), as the two-layer mixer
    (1.8% and 0.5%); without ``P``, 3.9% and 1.3%. Inside SmoothHess on the MLP 784-500-300-250-250-10
    (n = 8192: four mixed blocks and a partial one) the mixers of a call took 4.0-6.3 ms for the noise and
    4.2-6.6 ms for the sums (the host quiet or loaded); an earlier session measured 9.2 and 9.0 ms
    against 14.1 and 13.3 ms for two-layer mixers (both with the same reused buffers).
    """

    def __init__(self, perm: Tensor, f: Tensor, g: Tensor) -> None:
        self.dim, self.s, self.c = perm.numel(), f.shape[-1], g.shape[-1]
        self.perm, self.f, self.g = perm, f, g

    @classmethod
    def draw_batch(
        cls,
        dim: int,
        s: int,
        count: int,
        generator: torch.Generator,
        device: torch.device,
        dtype: torch.dtype,
    ) -> List[_KroneckerMixer]:
        """``count`` mixers with ``s``-row slabs: uniform permutations (the ranks of iid float64 uniforms;
        a tie, of probability about ``d^2 / 2^54``, still gives a permutation) and Haar factors."""
        c = dim // s
        keys = torch.rand(count, dim, generator=generator, device=device, dtype=torch.float64)
        perms = torch.argsort(keys, dim=1)
        if s == c:  # one call for all (a Haar draw of this size is mostly call overhead)
            both = torch.randn(2 * count, s, s, generator=generator, device=device, dtype=dtype)
            haar = _haar_columns(both, overwrite=True)
            fs, gs = haar[:count], haar[count:]
        else:
            fs, gs = (
                _haar_columns(
                    torch.randn(count, k, k, generator=generator, device=device, dtype=dtype), overwrite=True
                )
                for k in (s, c)
            )
        return [cls(perms[i], fs[i], gs[i]) for i in range(count)]

    def span(self, count: int) -> int:
        """Whole slabs of ``c`` rows: a partial block's mixing costs about its share of the slabs."""
        return min(self.dim, -(-count // self.c) * self.c)

    def _apply(
        self, rows: Tensor, out: Tensor, scratch: Tensor, scale: Optional[Tensor], wanted: int
    ) -> Tensor:
        b, s, c, n = rows.shape[0], self.s, self.c, rows.shape[-1]
        # The slabs wanted: the products below are cut to them, in the buffers' first elements.
        a = wanted // c
        torch.index_select(rows, 1, self.perm, out=out)
        mid = scratch.view(-1)[: b * a * c * n].view(b, a, c * n)
        torch.matmul(self.f[:a], out.view(b, s, c * n), out=mid)
        # The scale of the rows a c .. a c + c - 1 goes into G: one (c x c) matrix per slab a, no extra pass.
        g = self.g if scale is None else (scale[:, : a * c].reshape(b * a, c, 1) * self.g)
        result = out.view(-1)[: b * a * c * n].view(b, a * c, n)
        torch.matmul(g, mid.view(b * a, c, n), out=result.view(b * a, c, n))
        return result

    def add_transpose(
        self,
        rows: Tensor,
        into: Tensor,
        scratch: Tensor,
        count: Optional[int] = None,
        scale: Optional[Tensor] = None,
    ) -> None:
        b, s, c, n = rows.shape[0], self.s, self.c, rows.shape[-1]
        a = s if count is None else self.span(count) // c  # slabs past these are zero: G^T keeps them so
        mid = scratch.view(-1)[: b * a * c * n].view(b, a, c, n)
        # The scale of the rows of slab a goes into the columns of its G^T (no pass over the rows).
        g = self.g.mT if scale is None else self.g.mT * scale[:, : a * c].reshape(b, a, 1, c)
        torch.matmul(g, rows.view(b, s, c, n)[:, :a], out=mid)
        torch.matmul(self.f.mT[:, :a], mid.view(b, a, c * n), out=rows.view(b, s, c * n))
        into.index_add_(1, self.perm, rows)  # P^T: row j goes back to row perm[j]


class _LayeredMixer(_Mixer):
    """Two layers of (a random permutation of the rows, then a block-diagonal matrix of about ``sqrt(d)``
    blocks, one Haar matrix per block size), for any ``d``.

    On the ReLU oracle (d = 256 to 784; error variance over that of independent blocks) one such layer
    was not enough (+12-16%, groups of 4); two cost 0.5-1.9% for groups of 4 and 0.5-1.8% for groups of
    8, whether the diagonal blocks are independent or one repeated. One layer of about ``d^(1/3)``
    larger blocks cost 1.7% at d = 784 (two: 0.7%) and was slower to apply.
    """

    def __init__(
        self, dim: int, generator: torch.Generator, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.dim = dim
        layers = 2
        blocks = math.isqrt(dim - 1) + 1 if dim > 1 else 1  # ceil(sqrt(d)) blocks
        small, large = divmod(dim, blocks)  # `large` blocks of small + 1 rows, the rest of `small` rows
        self.sizes = [(size, count) for size, count in ((small + 1, large), (small, blocks - large)) if count]
        self.perms = [torch.randperm(dim, generator=generator, device=device) for _ in range(layers)]
        self.inverse = [torch.argsort(perm) for perm in self.perms]
        # One Haar matrix per block size and layer: factors[i][layer].
        self.factors = [
            _haar_columns(
                torch.randn(layers, size, size, generator=generator, device=device, dtype=dtype),
                overwrite=True,
            )
            for size, _ in self.sizes
        ]

    def _layer(self, x: Tensor, out: Tensor, layer: int, transpose: bool) -> None:
        """The block-diagonal part of ``layer``, from ``x`` into ``out``. Block ``c`` of a size holds its rows
        ``i * count + c``, so each size is one product ``F @ x.view(size, count * n)`` (the permutation before
        it makes the layout immaterial)."""
        batch, n = x.shape[0], x.shape[-1]
        at = 0
        for (size, count), factor in zip(self.sizes, self.factors):
            f = factor[layer].mT if transpose else factor[layer]
            rows = slice(at, at + size * count)
            view = (batch, size, count * n)
            torch.matmul(f, x[:, rows].reshape(view), out=out[:, rows].view(view))
            at += size * count

    def _apply(
        self, rows: Tensor, out: Tensor, scratch: Tensor, scale: Optional[Tensor], wanted: int
    ) -> Tensor:
        src = rows
        for layer, perm in enumerate(self.perms):
            torch.index_select(src, 1, perm, out=scratch)
            self._layer(scratch, out, layer, transpose=False)
            src = out
        if scale is not None:
            out.mul_(scale[..., None])
        return out

    def add_transpose(
        self,
        rows: Tensor,
        into: Tensor,
        scratch: Tensor,
        count: Optional[int] = None,
        scale: Optional[Tensor] = None,
    ) -> None:
        if scale is not None:
            rows.mul_(scale[:, : rows.shape[1], None])
        self._layer(rows, scratch, 1, transpose=True)
        torch.index_select(scratch, 1, self.inverse[1], out=rows)
        self._layer(rows, scratch, 0, transpose=True)
        into.index_add_(1, self.perms[0], scratch)  # the first permutation's inverse, added


class OrthogonalStream(NoiseStream):
    """Rotation-invariant kernel noise in blocks of mutually orthogonal directions.

    Block ``k`` covers draws ``k L .. k L + L - 1`` (``L`` =
    :func:`orthogonal_block_length`, which is ``d`` up to image sizes). For
    each example its directions are the first columns of a Haar-random
    orthogonal matrix, made of Householder reflectors drawn from a generator
    seeded by ``(seed, k)`` (:func:`_haar_columns`); only the ``d x m``
    directions drawn are formed, never a ``d x d`` matrix unless ``m = d``.
    A whole block (``m = d``) of a multiple of 4 features from
    ``_QUATERNION_MIN_DIM`` on takes the rows of a Haar-random element of
    ``Sp(d/4)`` instead (:func:`_quaternionic_rows`, about half the cost):
    orthonormal, each exactly uniform on the sphere, and in the ReLU oracle's
    error variance within 0.4% of Haar ``O(d)`` rows
    (``benchmarks/efficiency.py --only quaternion``).
    Each direction is scaled by the norm of an independent kernel sample
    (``chi_d`` for the Gaussian; for the Poisson kernel ``|g| / |z|``), so
    every draw has exactly the kernel's law and the estimator stays unbiased,
    while the directions of one block, being orthogonal, cancel each other's
    error. Blocks are independent; each example has its own rotations.

    ``tilted=True`` (Gaussian only; what SmoothHess uses from
    ``_TILT_MIN_DIM`` features up to ``_TILT_MAX_DIM``) draws the radii from ``chi_{d+1}``, the
    ``chi_d`` law tilted by the score's radial factor ``|u|``, and each draw
    carries the importance weight ``w = c_d / |u|`` (``c_d = E chi_d``,
    :func:`chi_mean`), so weighted draws keep the Gaussian's law exactly.
    The Stein score ``w u = c_d u / |u|`` then has a constant length: for a
    piecewise linear network the radius drops out of each direction's term,
    which is most of the error left at small ``d`` (on the ReLU oracle at
    ``d = 10`` the variance ratio to iid rises from 2.8x to 3.7x). The
    gradients are weighted by :meth:`gradient_weights`.

    ``share > 1`` (what SmoothHess uses from ``_SHARE_MIN_DIM`` features on,
    where a Haar rotation costs a large part of the gradient calls: ``(4/3)
    d^3`` flops per block) lets groups of ``share`` consecutive blocks share
    one rotation ``R``: the group's first block has the directions of ``R``,
    block ``k`` those of ``M_k R`` for its own random mixer ``M_k``
    (:class:`_Mixer`, ``4 d^2 sqrt(d)`` flops), independent of ``R``. ``R``
    (from the lower triangle of a Gaussian matrix alone,
    :func:`_lower_gaussian`, or from ``Sp(d/4)`` as above) and the mixers of the group's later blocks are
    drawn together, from the generator of its first block; each block draws
    its radii from its own. So each
    direction of each block is distributed as a row of ``R`` (exactly uniform) and each draw keeps
    its law (a whole block has the law of ``R`` only where ``R`` is Haar on ``O(d)``); the blocks of a
    group are not independent of each other, the groups are
    (:attr:`group_length` draws). Each example has its own rotations; a
    block's mixer serves all examples (their rotations being independent,
    so are their blocks). Only whole rotations are shared (blocks of ``d``
    directions). Memory: the open group's rotation and the mixers'
    workspace, ``(B, d, d)`` each, besides the blocks.
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
        tilted: bool = False,
        share: int = 1,
    ) -> None:
        if tilted and not isinstance(kernel, Gaussian):
            raise ValueError(f"tilted radii are defined for the Gaussian kernel only, not {kernel!r}")
        if share < 1:
            raise ValueError(f"share: expected a positive number of blocks per rotation, got {share}")
        self.tilted = tilted
        # A shared rotation must be a whole one: blocks of fewer than d directions would share a subspace.
        self.share = share if orthogonal_block_length(dim) == dim else 1
        self._weights: Dict[int, Tensor] = {}
        self._radius: Dict[int, Tensor] = {}
        self._rotations: Dict[int, Tensor] = {}
        self._group_mixers: Dict[int, List[_Mixer]] = {}
        self._mixers: Dict[int, _Mixer] = {}
        self._workspace: Optional[Tensor] = None
        super().__init__(kernel, batch, dim, seed, device, dtype, total)

    def _block_length(self) -> int:
        return orthogonal_block_length(self.dim)

    @property
    def group_length(self) -> int:
        """Draws of one group of blocks that share a rotation; the groups are independent."""
        return self.share * self.block

    def _max_workers(self) -> int:
        if self.share > 1:  # the blocks of a group need its rotation: one thread, which draws it once
            return 1
        # Small blocks are drawn faster in this thread than a pool can be started; a block is
        # B x L x d, so look ahead only as far as a bounded memory allows.
        elements = self.batch * self.block * self.dim
        return 1 if elements < 1 << 16 else max(1, (4 * _BLOCK_ELEMENTS) // elements)

    def block_draws(self, k: int) -> int:
        """Draws of block ``k``: the block length, fewer for the last block of a known ``total``."""
        return self.block if self.total is None else min(self.block, self.total - k * self.block)

    def group_blocks(self, group: int) -> int:
        """Blocks of ``group`` (``share``, fewer for the last group of a known ``total``)."""
        if self._n_blocks is None:
            return self.share
        return min(self.share, self._n_blocks - group * self.share)

    def _shared(self, group: int) -> bool:
        """Whether ``group`` has more than one block (and so a whole rotation that its blocks share)."""
        return self.group_blocks(group) > 1

    def rotation(self, group: int) -> Optional[Tensor]:
        """The rotation ``R`` ``(B, d, d)`` (rows orthonormal) that the blocks of ``group`` share.

        Its first block's directions are the rows of ``R``, those of block
        ``k`` the rows of ``M_k R`` (:meth:`mixer`). ``None`` for a group of
        one block (its directions are its own rows).
        """
        if not self._shared(group):
            return None
        if group not in self._rotations:
            self._cache[group * self.share] = self._draw(group * self.share)
        return self._rotations[group]

    def workspace(self, like: Tensor) -> Tensor:
        """A ``(B, d, d)`` buffer of ``like``'s dtype for the mixers' intermediate products (this stream's,
        and those of the sums of its blocks); what it holds does not outlast the call that writes it."""
        if self._workspace is None or self._workspace.dtype != like.dtype:
            self._workspace = torch.empty_like(like)
        return self._workspace

    def mixer(self, k: int) -> Optional[_Mixer]:
        """The mixer ``M_k`` of block ``k`` (``None``: the first block of its group, ``M = I``).

        Call after :meth:`take` of draws of block ``k``.
        """
        return self._mixers.get(k)

    def _draw(self, k: int) -> Tensor:
        m = self.block_draws(k)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(_mix(self.seed, k))
        b, d = self.batch, self.dim
        # householder_product has no half-precision kernels: such blocks are drawn in float32 and rounded.
        work = working_dtype(self.dtype)
        group, position = divmod(k, self.share)
        if position:
            # A later block of a group: the group's rotation, mixed by this block's own mixer, and scaled by
            # the radii as it is mixed (the rows past a partial block's m by 0, then cut).
            rotation = self.rotation(group)
            assert rotation is not None
            self._mixers[k] = mixer = self._group_mixers[group][position - 1]
            self._radius[k] = radius = self._radii(gen, m, work)
            scale = radius if m == d else torch.nn.functional.pad(radius, (0, d - m))
            mixed = mixer.apply(rotation, scratch=self.workspace(rotation), scale=scale, count=m)
            return mixed[:, :m].to(self.dtype).contiguous()
        quaternionic = m == d and _quaternionic(d)
        if self._shared(group) or quaternionic:
            if quaternionic:
                directions = _quaternionic_rows(b, d, gen, self.device, work)
            else:
                # Only the lower triangle is read; the rows end contiguous, in the buffer the reflectors
                # were built in.
                gauss = _lower_gaussian(b, d, gen, self.device, work)
                directions = _haar_columns(gauss, overwrite=True, rows=True)
            if self._shared(group):
                self._rotations[group] = directions
        else:
            gauss = torch.randn(b, d, m, generator=gen, device=self.device, dtype=work)
            directions = _haar_columns(gauss, overwrite=True).transpose(1, 2)
        self._radius[k] = radius = self._radii(gen, m, work)
        if self._shared(group):  # the mixers of the group's later blocks, drawn together
            self._group_mixers[group] = _Mixer.draw_many(
                d, self.group_blocks(group) - 1, gen, self.device, work
            )
        return (directions * radius[..., None]).to(self.dtype).contiguous()

    def _radii(self, gen: torch.Generator, m: int, dtype: torch.dtype) -> Tensor:
        """``(B, m)`` independent radii, with the law of the norm of a kernel draw.

        float16 noise cannot hold the Poisson kernel's tail (at d = 10 about one draw in 28,000 has a
        norm above its largest value, 65504): its radii are capped at that value over 16, which a draw
        exceeds with probability about ``6e-4`` at d = 10 (both measured on 2e7 draws). The score of
        such a draw is at most ``(d + 1) / 4094``, so the cap moves the estimate by far less than
        float16's own rounding.
        """
        b, d = self.batch, self.dim
        if isinstance(self.kernel, (Gaussian, Poisson)):
            # |N(0, I_d)| is chi_d: the square root of twice a Gamma(d/2) draw (chi_{d+1} when tilted).
            shape = torch.full((b, m), (d + self.tilted) / 2, device=self.device, dtype=dtype)
            radius = (2 * torch._standard_gamma(shape, generator=gen)).sqrt()
            if isinstance(self.kernel, Poisson):
                # A Poisson draw is g / |z| (Poisson.sample): its norm is chi_d over an independent |N(0, 1)|.
                radius /= torch.randn(b, m, generator=gen, device=self.device, dtype=dtype).abs()
        else:
            radius = self.kernel.sample(b * m, d, generator=gen, device=self.device, dtype=dtype)
            radius = radius.norm(dim=-1).reshape(b, m)
        if self.dtype == torch.float16:
            radius = radius.clamp(max=torch.finfo(torch.float16).max / 16)
        return radius

    def radii(self, start: int, stop: int) -> Tensor:
        """``(B, stop-start)``: the radii of draws ``start .. stop-1`` (their norms, up to rounding), in
        float32 at least. Call after :meth:`take` of the same draws."""
        first, last = start // self.block, (stop - 1) // self.block
        parts = [self._radius[k] for k in range(first, last + 1)]
        return _span(parts, start - first * self.block, stop - start)

    def take(self, start: int, stop: int) -> Tensor:
        for cache in (self._weights, self._mixers, self._radius):
            for k in [k for k in cache if k < start // self.block]:
                del cache[k]
        for group in [g for g in self._rotations if g < start // self.group_length]:
            del self._rotations[group], self._group_mixers[group]
        return super().take(start, stop)

    def gradient_weights(self, start: int, stop: int) -> Optional[Tensor]:
        """Weights ``(B, stop-start)`` of the gradients of draws ``start .. stop-1`` (tilted radii).

        The importance weight ``w_i = c_d / |u_i|`` makes each weighted
        gradient unbiased for the Gaussian smoothing, but its own spread
        (variance about ``1 / (2 d)``) would multiply the whole mean gradient.
        So each draw subtracts the excess of the *other* draws of its block,
        ``v_i = w_i - sum_{j != i} (w_j - 1) / (m - 1)``: ``E w_j = 1`` and
        ``w_j`` depends on radius ``j`` alone, which is independent of draw
        ``i``, so ``E[v_i g_i] = E[w_i g_i]`` (still unbiased), while the
        weights of a block sum to exactly ``m``. A function of the block only,
        so chunks and ranks see the same weights. Call after :meth:`take` of
        the same draws (whose blocks it reads). ``None`` (all 1) if not tilted.
        """
        if not self.tilted:
            return None
        first, last = start // self.block, (stop - 1) // self.block
        parts = []
        for k in range(first, last + 1):
            if k not in self._weights:
                u = self._cache[k]
                radius = torch.linalg.vector_norm(widened(u), dim=-1)
                excess = chi_mean(self.dim) / radius - 1
                m = excess.shape[1]
                others = excess.sum(1, keepdim=True) - excess
                self._weights[k] = (1 + excess - (others / (m - 1) if m > 1 else 0)).to(u.dtype)
            parts.append(self._weights[k])
        return _span(parts, start - first * self.block, stop - start)


class _AntitheticTake(NoiseStream):
    """Antithetic pairs: sample ``2 i`` is draw ``i`` of the stream, sample ``2 i + 1`` its negative."""

    def take(self, start: int, stop: int) -> Tensor:
        first, last = start // 2, (stop - 1) // 2
        base = super().take(first, last + 1)
        index = torch.arange(start, stop, device=base.device)
        sign = 1.0 - 2.0 * (index % 2).to(base.dtype)
        return base[:, index // 2 - first] * sign[:, None]


class _AntitheticStream(_AntitheticTake):
    """Antithetic pairs of iid draws."""


class _OrthogonalAntitheticStream(_AntitheticTake, OrthogonalStream):
    """Antithetic pairs of orthogonal draws."""


TUNNEL_SAMPLINGS = ("iid", "orthogonal", "antithetic", "orthogonal_antithetic")


def noise_stream(
    kernel: Kernel,
    batch: int,
    dim: int,
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
    sampling: str = "iid",
) -> NoiseStream:
    """A stream of samples for a noise tunnel: iid, orthogonal blocks, antithetic pairs, or both."""
    if sampling not in TUNNEL_SAMPLINGS:
        raise ValueError(f"sampling: expected one of {TUNNEL_SAMPLINGS}, got {sampling!r}")
    orthogonal = sampling.startswith("orthogonal")
    if orthogonal:
        resolve_sampling("orthogonal", kernel)
    if sampling.endswith("antithetic"):
        kind: Type[NoiseStream] = _OrthogonalAntitheticStream if orthogonal else _AntitheticStream
    else:
        kind = OrthogonalStream if orthogonal else NoiseStream
    return kind(kernel, batch, dim, seed, device, dtype)


def default_chunk(
    n: int, batch: int, dim: int, copies: int = 1, device: Optional[torch.device] = None, block: int = 1
) -> int:
    """Samples per chunk when the user gives none: all ``n`` if they fit the budget.

    ``copies`` is the number of inputs evaluated per sample (2 for
    antithetic pairs). The budget is ``2^24`` perturbed input elements a
    chunk on accelerators and ``2^20`` on CPU (``device`` ``None``: CPU),
    where large batches are slower per gradient call: for the MLP
    784-500-300-250-250-10 (two threads) 8192 gradient calls with their
    noise took 1.03-1.06x as long in batches of 1,568 as in batches of 512
    to 1024, and about 1.10x in one batch; dense SmoothHess at n = 8192
    took 1.02-1.17x as long in one chunk as in chunks of 784 calls (median
    1.10, eight runs of ``benchmarks/efficiency.py --only allocator``).

    With ``block`` (the draws of one block of the noise stream) no chunk
    spans two blocks, where it would copy its rows out of both: a chunk of
    at least a block holds whole blocks, a smaller one the largest divisor
    of the block within the budget (if that is at least half the budget).
    """
    per_sample = max(1, batch * dim * copies)
    cpu = device is None or device.type == "cpu"
    size = max(1, min(n, (_CPU_CHUNK_ELEMENTS if cpu else _CHUNK_ELEMENTS) // per_sample))
    if block <= 1 or size >= n:
        return size
    if size >= block:
        return size // block * block
    divisor = max(
        k for i in range(1, math.isqrt(block) + 1) if block % i == 0 for k in (i, block // i) if k <= size
    )
    return divisor if 2 * divisor >= size else size


def chunks(n: int, size: int, show_progress: bool = False, desc: str = "") -> Iterator[Tuple[int, int]]:
    """Consecutive ``(start, stop)`` ranges of at most ``size`` covering ``range(n)``, made lazily."""
    bar = progress(total=-(-n // size), desc=desc) if show_progress else None
    try:
        for start in range(0, n, size):
            yield start, min(n, start + size)
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()


class Sampler(ABC):
    """Canonical kernel noise for a batch, the perturbed points, and their Stein pairs.

    A sampler addresses its noise by *draw* index (one draw is one canonical
    noise vector per example; it may be evaluated at several points, e.g.
    ``u`` and ``-u``), so draw ``j`` depends only on ``(seed, j)``.

    Args:
        kernel: The kernel to draw from.
        batch: Number of examples ``B``.
        dim: Features per example ``d``.
        seed: Base seed, e.g. from :func:`seed_from`.
        device: Device of the noise.
        dtype: Floating dtype of the noise.
        draws: Number of draws that will be taken, if known.
        sampling: ``"iid"`` (a :class:`NoiseStream`) or ``"orthogonal"`` (an
            :class:`OrthogonalStream`, for rotation-invariant kernels; with
            the Gaussian and ``_TILT_MIN_DIM <= d < _TILT_MAX_DIM`` its radii
            are tilted, and :meth:`score` / :meth:`gradient_weights` carry
            the importance weights; from ``_SHARE_MIN_DIM`` features on its
            blocks share rotations in groups of ``_SHARE_BLOCKS``).
    """

    #: Gradient calls per draw.
    copies: ClassVar[int] = 1

    def __init__(
        self,
        kernel: Kernel,
        batch: int,
        dim: int,
        seed: int,
        device: torch.device,
        dtype: torch.dtype,
        draws: Optional[int] = None,
        sampling: str = "iid",
    ) -> None:
        self.kernel = kernel
        self.stream: NoiseStream
        if resolve_sampling(sampling, kernel) == "orthogonal":
            tilted = isinstance(kernel, Gaussian) and _TILT_MIN_DIM <= dim < _TILT_MAX_DIM
            share = _SHARE_BLOCKS if dim >= _SHARE_MIN_DIM else 1
            self.stream = OrthogonalStream(
                kernel, batch, dim, seed, device, dtype, draws, tilted=tilted, share=share
            )
        else:
            self.stream = NoiseStream(kernel, batch, dim, seed, device, dtype, draws)

    @property
    def block_length(self) -> Optional[int]:
        """Draws of one orthogonal block; ``None``: iid draws.

        SmoothHess takes its error groups a block long. The blocks of a group
        that share a rotation (:class:`OrthogonalStream`'s ``share``) are not
        independent, but so nearly that batch means over them stay
        calibrated: on the ReLU oracle (n = 16 d, one group of 8 blocks) the
        reported relative error was 0.98x the actual RMS error at d = 256
        (100 seeds) and 0.99x at d = 784 (20 seeds) with a group per block,
        as with groups of two blocks, and ``+-2 stderr`` covered 91% of the
        entries against 86%.
        """
        return self.stream.block if isinstance(self.stream, OrthogonalStream) else None

    def noise(self, start: int, stop: int) -> Tensor:
        """Canonical noise of draws ``start .. stop-1``, ``(B, stop-start, d)``."""
        return self.stream.take(start, stop)

    def score(self, u: Tensor) -> Tensor:
        """The Stein score of draws ``u``, times their importance weight if the radii are tilted.

        Tilted (:class:`OrthogonalStream`): ``w u = c_d u / |u|``, the
        direction at the mean radius of ``chi_d``.
        """
        if not self.stream.tilted:
            return self.kernel.score(u)
        wide = widened(u)
        direction = wide / torch.linalg.vector_norm(wide, dim=-1, keepdim=True)
        return (chi_mean(u.shape[-1]) * direction).to(u.dtype)

    @property
    def shares_rotations(self) -> bool:
        """Whether the orthogonal blocks share rotations in groups (:class:`OrthogonalStream`'s ``share``)."""
        return isinstance(self.stream, OrthogonalStream) and self.stream.share > 1

    def coefficients(self, u: Tensor, start: int) -> Tensor:
        """``(B, c)``: each score's length along its draw, ``a`` in ``score(u) = a u / |u|``, for the
        draws ``start .. start + c - 1`` of an :class:`OrthogonalStream`.

        Defined for the rotation-invariant kernels, whose scores are radial;
        ``c_d`` for every draw when the radii are tilted. From the radii the
        stream drew where the kernel gives the score's length in closed form
        (Gaussian: ``a = r``, Poisson: ``(d + 1) r / (1 + r^2)``), with no
        pass over ``u``; else from the points.
        """
        if self.stream.tilted:
            return u.new_full(u.shape[:-1], chi_mean(u.shape[-1]))
        if isinstance(self.stream, OrthogonalStream):
            radius = self.stream.radii(start, start + u.shape[1])
            length = self.kernel._radial_score(radius, u.shape[-1])
            if length is not None:
                return length.to(u.dtype)
        wide = widened(u)
        radial = (widened(self.kernel.score(u)) * wide).sum(-1) / torch.linalg.vector_norm(wide, dim=-1)
        return radial.to(u.dtype)

    def gradient_weights(self, start: int, stop: int) -> Optional[Tensor]:
        """``(B, stop-start)`` weights of the gradients of draws ``start .. stop-1``; ``None``: all 1.

        Call after :meth:`noise` of the same draws.
        """
        return self.stream.gradient_weights(start, stop)

    def draw_gradients(self, grads: Tensor, weights: Optional[Tensor]) -> Tensor:
        """``(B, c, d)``: the sum of each draw's gradient calls ``grads`` ``(B, copies * c, d)``, weighted."""
        per_draw = grads.reshape(grads.shape[0], self.copies, -1, grads.shape[-1]).sum(1)
        return per_draw if weights is None else per_draw * weights[..., None]

    @abstractmethod
    def points(self, x: Tensor, eps: Tensor, u: Tensor) -> Tensor:
        """Perturbed points ``(B, copies * c, d)`` of the ``c`` draws ``u`` around ``x`` ``(B, d)``."""

    def terms(self, grads: Tensor) -> Tensor:
        """``(B, c, d)``: the gradient terms of the draws, from the gradients at :meth:`points`."""
        c = grads.shape[1] // self.copies
        out = grads.new_empty(grads.shape[0], c, grads.shape[-1])
        self.write_terms(grads, slice(0, c), out)
        return out

    @abstractmethod
    def write_terms(self, grads: Tensor, draws: slice, out: Tensor) -> None:
        """``terms(grads)[:, draws]`` (a contiguous range of the chunk's draws), into ``out``, with no
        other buffer."""

    def pairs(self, u: Tensor, grads: Tensor) -> Tuple[Tensor, Tensor]:
        """``(scores, terms)``, both ``(B, c, d)``, from the gradients at :meth:`points`.

        ``sum_j scores_j terms_j^T / (eps * n)`` over all draws is the Stein
        estimate of the smoothed Hessian from ``n`` gradient calls.
        """
        return self.score(u), self.terms(grads)


class PlainSampler(Sampler):
    """One gradient call per draw: the terms are the gradients at ``x + eps u``."""

    copies = 1

    def points(self, x: Tensor, eps: Tensor, u: Tensor) -> Tensor:
        return torch.addcmul(x[:, None, :], eps, u)

    def terms(self, grads: Tensor) -> Tensor:
        return grads

    def write_terms(self, grads: Tensor, draws: slice, out: Tensor) -> None:
        out.copy_(grads[:, draws])


class AntitheticSampler(Sampler):
    """Antithetic pairs ``(u, -u)``: the terms are ``grad f(x + eps u) - grad f(x - eps u)``.

    For a symmetric kernel the score is odd, so the pair cancels the even part
    of the gradient's noise; two gradient calls per draw.
    """

    copies = 2

    def points(self, x: Tensor, eps: Tensor, u: Tensor) -> Tensor:
        batch, c, dim = u.shape
        x_rows = x[:, None, :]
        points = x.new_empty(batch, 2 * c, dim)
        torch.addcmul(x_rows, eps, u, out=points[:, :c])
        torch.addcmul(x_rows, eps, u, value=-1, out=points[:, c:])
        return points

    def write_terms(self, grads: Tensor, draws: slice, out: Tensor) -> None:
        c = grads.shape[1] // 2
        torch.sub(grads[:, draws], grads[:, c + draws.start : c + draws.stop], out=out)


def sampler_class(antithetic: bool) -> Type[Sampler]:
    """The sampler of the ``antithetic`` flag."""
    return AntitheticSampler if antithetic else PlainSampler
