"""Smoothing kernels: probability densities used to mollify a network.

A kernel ``k`` is a density on R^d. Smoothing a function ``f`` with bandwidth
``eps`` (called ``stdevs`` in the public API, as in Captum's ``NoiseTunnel``)
means ``g(x) = E_u[f(x + eps * u)]`` with ``u ~ k``. Every kernel here is given
in a canonical form with unit variance per coordinate where the variance is
finite (the Poisson kernel, whose variance is infinite, has unit scale), so
that at equal ``stdevs`` the kernels inject the same noise energy and differ
only in shape.

Each kernel draws exact samples (inverse CDF, ratio of variates, or rejection
against the exact target; never importance weights), accepts an optional
``torch.Generator``, works on any device and floating dtype, and exposes its
*score* ``s(u) = -grad log k(u)``, which Stein's identity needs to turn gradient
samples into Hessian estimates. ``Rect`` has no score (its density is not
differentiable) and says so when asked for one.

Users can add kernels by subclassing :class:`Kernel`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable, Dict, Optional, Union

import numpy as np
import torch
from torch import Tensor

from ._dtypes import HALF, widened
from ._validation import _check_generator, _check_positive_int

__all__ = [
    "KERNELS",
    "Gaussian",
    "Hyperbolic",
    "Kernel",
    "Poisson",
    "Rect",
    "Sigmoid",
    "get_kernel",
]


def _check_sample_args(n: object, dim: object, generator: object) -> tuple[int, int]:
    """``n`` and ``dim`` as non-negative ints, and ``generator``, checked by name."""
    _check_generator(generator)  # type: ignore[arg-type]
    return _check_positive_int(n, "n", minimum=0), _check_positive_int(dim, "dim", minimum=0)


def _draw(
    fn: Callable[..., Tensor],
    size: tuple[int, ...],
    generator: Optional[torch.Generator],
    device: Optional[Union[str, torch.device]],
    dtype: Optional[torch.dtype],
) -> Tensor:
    """Call a torch sampling function honouring a generator on another device."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = dtype if dtype is not None else torch.get_default_dtype()
    if generator is not None and generator.device.type != device.type:
        out = fn(size, generator=generator, device=generator.device, dtype=dtype)
        return out.to(device)
    return fn(size, generator=generator, device=device, dtype=dtype)


def _resolve_dtype(dtype: Optional[torch.dtype]) -> tuple[torch.dtype, torch.dtype]:
    """The result dtype (the default dtype when ``None``) and the dtype to draw and compute in.

    Half-precision samples are drawn in float32 and rounded once at the end: drawing on the
    coarse float16/bfloat16 grid of ``rand`` skews the law (bfloat16 ``rand`` has 256 values in
    [0, 1), so an inverse CDF of it is neither symmetric nor able to reach the tails), and
    intermediate values overflow float16. Other dtypes are drawn as they are, so float32 and
    float64 draws are unchanged and non-floating dtypes fail in torch's samplers, as they would
    for any kernel.
    """
    dtype = dtype if dtype is not None else torch.get_default_dtype()
    return dtype, (torch.float32 if dtype in HALF else dtype)


def _uniform_open(
    size: tuple[int, ...],
    generator: Optional[torch.Generator],
    device: Optional[Union[str, torch.device]],
    dtype: Optional[torch.dtype],
) -> Tensor:
    """Uniform draws on the open interval (0, 1).

    ``torch.rand`` can return exactly 0; such draws are moved to half of the
    smallest positive step of the dtype's grid, the usual exact-up-to-rounding
    treatment of an open interval.
    """
    p = _draw(torch.rand, size, generator, device, dtype)
    tiny = 0.5 * torch.finfo(p.dtype).eps
    return torch.where(p > 0, p, torch.full_like(p, tiny))


class Kernel(ABC):
    """Base class of smoothing kernels.

    Subclasses implement :meth:`sample` and, where the density is
    differentiable, :meth:`score`. The log-density (``_log_prob``, which
    :meth:`log_prob` calls at float32 or float64 points; overriding
    :meth:`log_prob` itself works too, without that widening) and
    :meth:`marginal_cdf` are optional but make a kernel testable against its
    definition.

    Attributes:
        name: Short lowercase name (also accepted by :func:`get_kernel`).
        radial: ``True`` when the kernel couples coordinates (its samples are
            not independent per coordinate), as the Poisson kernel does.
        variance: Per-coordinate variance of the canonical form (``inf`` where
            it does not exist).

    Examples:
        >>> import torch
        >>> from captum_smoothhess.kernels import Kernel
        >>> class Laplace(Kernel):
        ...     name = "laplace"
        ...     def sample(self, n, dim, *, generator=None, device=None, dtype=None):
        ...         e = torch.empty(n, dim, device=device, dtype=dtype)
        ...         e = e.exponential_(generator=generator)
        ...         sign = torch.randint(0, 2, (n, dim), generator=generator,
        ...                              device=device).to(e.dtype) * 2 - 1
        ...         return sign * e / 2 ** 0.5
        ...     def score(self, u):
        ...         return torch.sign(u) * 2 ** 0.5
        >>> Laplace().sample(3, 2).shape
        torch.Size([3, 2])
    """

    name: str = "kernel"
    radial: bool = False
    variance: float = 1.0

    @abstractmethod
    def sample(
        self,
        n: int,
        dim: int,
        *,
        generator: Optional[torch.Generator] = None,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> Tensor:
        """Draw ``n`` independent points of the canonical kernel on R^dim.

        Args:
            n: Number of points.
            dim: Dimension of one point (all features of one example).
            generator: Optional ``torch.Generator``; the global RNG if ``None``.
            device: Device of the result (default CPU).
            dtype: Floating dtype of the result (default ``torch.get_default_dtype()``).

        Returns:
            Tensor of shape ``(n, dim)``.
        """

    @property
    def has_score(self) -> bool:
        """Whether the kernel's density is differentiable, so :meth:`score` exists."""
        return type(self).score is not Kernel.score

    def score(self, u: Tensor) -> Tensor:
        """Score ``s(u) = -grad log k(u)`` of the canonical kernel.

        Args:
            u: Points of shape ``(..., dim)``.

        Returns:
            Tensor shaped like ``u``.

        Raises:
            NotImplementedError: The kernel has no score.
        """
        raise NotImplementedError(
            f"kernel {self!r} has no score: its density is not differentiable, so "
            "Stein's identity (and with it SmoothHess or any Hessian estimate) "
            "cannot use it. Choose a kernel with a score, e.g. Gaussian(), "
            "Poisson(), Hyperbolic() or Sigmoid()."
        )

    def _radial_score(self, radius: Tensor, dim: int) -> Optional[Tensor]:
        """For a radial kernel on R^dim, the length of :meth:`score` at points of norm ``radius``
        (``score(u) = a(|u|) u / |u|``); ``None`` where the kernel does not give it in closed form (the
        samplers then take it from the points)."""
        return None

    def log_prob(self, u: Tensor) -> Tensor:
        """Log-density of the canonical kernel at points ``u`` of shape ``(..., dim)``.

        Half-precision points are evaluated in float32 and the result rounded
        back (their squares overflow float16 from about 256: a Gaussian point
        at 300 has log-density -45,000, which float16 holds).

        Returns:
            Tensor of shape ``u.shape[:-1]``, of ``u``'s dtype if it is floating.
        """
        wide = widened(u)
        out = self._log_prob(wide)
        return out.to(u.dtype) if u.is_floating_point() else out

    def _log_prob(self, u: Tensor) -> Tensor:
        """:meth:`log_prob` at float32 or float64 points: what a kernel with a density defines."""
        raise NotImplementedError(f"kernel {self!r} does not define log_prob")

    def marginal_cdf(self, t: Tensor) -> Tensor:
        """CDF of one coordinate of the canonical kernel, elementwise.

        The derivative of ``relu`` smoothed by the kernel along one coordinate
        is this CDF, which makes it a closed-form oracle.
        """
        raise NotImplementedError(f"kernel {self!r} does not define marginal_cdf")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(vars(self).items()))))


class Gaussian(Kernel):
    """Standard normal kernel N(0, I): smoothing with it gives SmoothGrad.

    Score ``s(u) = u``.

    Examples:
        >>> from captum_smoothhess.kernels import Gaussian
        >>> Gaussian().sample(4, 3).shape
        torch.Size([4, 3])
    """

    name = "gaussian"

    def sample(
        self,
        n: int,
        dim: int,
        *,
        generator: Optional[torch.Generator] = None,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> Tensor:
        n, dim = _check_sample_args(n, dim, generator)
        return _draw(torch.randn, (n, dim), generator, device, dtype)

    def score(self, u: Tensor) -> Tensor:
        return u

    def _radial_score(self, radius: Tensor, dim: int) -> Optional[Tensor]:
        return radius

    def _log_prob(self, u: Tensor) -> Tensor:
        return -0.5 * (u * u).sum(-1) - 0.5 * u.shape[-1] * math.log(2 * math.pi)

    def marginal_cdf(self, t: Tensor) -> Tensor:
        return torch.special.ndtr(t)


class Poisson(Kernel):
    """The Poisson kernel of R^d: the multivariate Cauchy density.

    ``k(u) = c_d (1 + |u|^2)^(-(d+1)/2)`` over *all* features of one example,
    with ``c_d = Gamma((d+1)/2) / pi^((d+1)/2)``. Sampled exactly as ``g / |z|``
    with ``g ~ N(0, I_d)`` and one scalar ``z ~ N(0, 1)`` per point. Its
    variance is infinite; the canonical form has unit scale, and each
    coordinate is standard Cauchy. Score ``s(u) = (d+1) u / (1 + |u|^2)``.

    Examples:
        >>> from captum_smoothhess.kernels import Poisson
        >>> Poisson().sample(4, 3).shape
        torch.Size([4, 3])
    """

    name = "poisson"
    radial = True
    variance = math.inf

    def sample(
        self,
        n: int,
        dim: int,
        *,
        generator: Optional[torch.Generator] = None,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> Tensor:
        """Draw ``n`` independent points of the Poisson kernel on R^dim.

        Half-precision draws are made in float32 and rounded. float16 cannot hold the kernel's
        tail (at d = 10 about one draw in 28,000 has a norm above its largest value, 65504, and
        would hold infinite entries with a NaN score), so the norm of a float16 or bfloat16 draw
        is capped at the dtype's largest value over 16 (4094 in float16), its direction kept:
        the same cap the orthogonal noise stream puts on its radii. A float16 draw exceeds it with
        probability about ``6e-4`` at d = 10, and the score of such a draw is at most
        ``(d + 1) / 4094``, so the cap moves a Stein estimate by far less than float16's own
        rounding. float32 and float64 draws are exact and uncapped.

        Args:
            n: Number of points.
            dim: Dimension of one point (all features of one example).
            generator: Optional ``torch.Generator``; the global RNG if ``None``.
            device: Device of the result (default CPU).
            dtype: Floating dtype of the result (default ``torch.get_default_dtype()``).

        Returns:
            Tensor of shape ``(n, dim)``.
        """
        n, dim = _check_sample_args(n, dim, generator)
        dtype, work = _resolve_dtype(dtype)
        g = _draw(torch.randn, (n, dim + 1), generator, device, work)
        if work == dtype:
            return g[:, :dim] / g[:, dim:].abs()
        # |u| = |g| / |z|: dividing by max(|z|, |g| / cap) caps the norm at cap, even where z = 0.
        cap = torch.finfo(dtype).max / 16
        z = torch.maximum(g[:, dim:].abs(), g[:, :dim].norm(dim=-1, keepdim=True) / cap)
        return (g[:, :dim] / z).to(dtype)

    def score(self, u: Tensor) -> Tensor:
        d = u.shape[-1]
        # |u|^2 of heavy-tailed draws overflows half precision: accumulate in float32 at least.
        wide = widened(u)
        score = (d + 1) * wide / (1 + (wide * wide).sum(-1, keepdim=True))
        # An infinite coordinate: inf / inf. The score's limit there is 0 (it decays as (d + 1) / |u|).
        return torch.where(torch.isinf(wide), 0.0, score).to(u.dtype)

    def _radial_score(self, radius: Tensor, dim: int) -> Optional[Tensor]:
        return (dim + 1) * radius / (1 + radius * radius)  # the length of score(u) above, |u| = radius

    def _log_prob(self, u: Tensor) -> Tensor:
        d = u.shape[-1]
        log_c = math.lgamma((d + 1) / 2) - (d + 1) / 2 * math.log(math.pi)
        return log_c - (d + 1) / 2 * torch.log1p((u * u).sum(-1))

    def marginal_cdf(self, t: Tensor) -> Tensor:
        return 0.5 + torch.atan(t) / math.pi


class Hyperbolic(Kernel):
    """Symmetric hyperbolic kernel, rescaled to unit variance.

    Per coordinate the density is proportional to ``exp(-alpha sqrt(1 + t^2))``
    for the raw variable ``t``, whose variance is
    ``K_2(alpha) / (alpha K_1(alpha))`` (modified Bessel functions); the
    canonical variable is ``u = t / sd``. Large ``alpha`` tends to the
    Gaussian, small ``alpha`` gives Laplace-like tails. The score
    ``alpha sd^2 u / sqrt(1 + sd^2 u^2)`` is bounded.

    Sampling is exact rejection from an envelope built on the tangent of the
    concave log-density (flat centre, exponential tails), tuned per ``alpha``;
    the acceptance rate is above 80% for every ``alpha``.

    Args:
        alpha: Shape parameter, positive.

    Examples:
        >>> from captum_smoothhess.kernels import Hyperbolic
        >>> Hyperbolic(alpha=2.0).sample(4, 3).shape
        torch.Size([4, 3])
    """

    name = "hyperbolic"

    def __init__(self, alpha: float = 1.0) -> None:
        if isinstance(alpha, (bool, str, bytes)) or alpha is None:
            raise TypeError(f"alpha: expected a positive finite number, got {alpha!r}")
        try:
            alpha = float(alpha)
        except (TypeError, ValueError) as err:
            raise TypeError(f"alpha: expected a positive finite number, got {alpha!r}") from err
        if not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"alpha: must be a positive finite number, got {alpha}")
        self.alpha = alpha
        a = torch.tensor(alpha, dtype=torch.float64)
        k0 = float(torch.special.scaled_modified_bessel_k0(a))
        k1 = float(torch.special.scaled_modified_bessel_k1(a))
        # Var(t) = K_2/(alpha K_1) and K_2 = K_0 + (2/alpha) K_1.
        self._sd = math.sqrt(k0 / (alpha * k1) + 2.0 / alpha**2)
        # Normaliser of exp(-alpha (sqrt(1+t^2) - 1)): 2 e^alpha K_1(alpha).
        self._log_z = math.log(2.0 * k1)
        self._a, self._rate, self._p_centre = self._envelope(alpha)

    @staticmethod
    def _envelope(alpha: float) -> tuple[float, float, float]:
        """Flat-plus-exponential envelope from the tangent at the best point t0."""
        t0 = np.geomspace(1e-4, 1e4, 4001) / math.sqrt(alpha)
        r0 = np.sqrt(1.0 + t0**2)
        # Tangent of log h(t) = -alpha (r - 1) at t0 crosses 0 at a; slope -rate.
        a = t0 - r0 * (r0 - 1.0) / t0
        rate = alpha * t0 / r0
        area = 2.0 * np.maximum(a, 0.0) + 2.0 / rate
        i = int(np.argmin(np.where(a >= 0, area, np.inf)))
        a_best, rate_best = float(max(a[i], 0.0)), float(rate[i])
        return a_best, rate_best, a_best / (a_best + 1.0 / rate_best)

    def __repr__(self) -> str:
        return f"Hyperbolic(alpha={self.alpha})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Hyperbolic) and other.alpha == self.alpha

    def __hash__(self) -> int:
        return hash((Hyperbolic, self.alpha))

    def _raw_sample(
        self,
        count: int,
        generator: Optional[torch.Generator],
        device: Optional[Union[str, torch.device]],
        work: torch.dtype,
    ) -> Tensor:
        # Rejection runs in the working precision (float32 for half-precision results).
        if count == 0:  # an empty draw, through the same sampler (which refuses integer dtypes)
            return _uniform_open((0,), generator, device, work)
        out: list[Tensor] = []
        have = 0
        p, a = self._p_centre, self._a
        # p = 0 only when the envelope has no flat centre (a = 0); then no draw lands there.
        centre_scale = a / p if p > 0 else 0.0
        while have < count:
            k = int((count - have) * 1.3) + 64
            u = _uniform_open((2, k), generator, device, work)
            # One uniform gives the sign (which half of (0, 1)) and, folded, the magnitude by
            # the inverse CDF of the envelope's |t|: uniform on [0, a] with mass p, then an
            # exponential tail of the given rate. The other uniform accepts or rejects.
            v = (2 * u[0] - 1).abs()
            centre = v < p
            log_env = torch.log1p(-v).sub_(math.log1p(-p)).masked_fill_(centre, 0.0)
            mag = torch.where(centre, v * centre_scale, a - log_env / self._rate)
            log_h = (torch.sqrt(1 + mag * mag) - 1).mul_(-self.alpha)
            ok = torch.log(u[1]) <= log_h - log_env
            out.append(mag.mul_(torch.sign(u[0] - 0.5))[ok])
            have += out[-1].numel()
        return torch.cat(out)[:count]

    def sample(
        self,
        n: int,
        dim: int,
        *,
        generator: Optional[torch.Generator] = None,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> Tensor:
        n, dim = _check_sample_args(n, dim, generator)
        dtype, work = _resolve_dtype(dtype)
        t = self._raw_sample(n * dim, generator, device, work)
        return (t / self._sd).to(dtype).reshape(n, dim)

    def score(self, u: Tensor) -> Tensor:
        # sd^2 u^2 overflows float16 (at |u| = 300 for alpha = 1) and, at huge |u|, float32: work in
        # float32 at least, and where it still overflows the score is its bound alpha sd sign(u)
        # (the ratio t / sqrt(1 + t^2), t = sd u, is 1 to within 1 / (2 t^2) < 1e-38 there).
        wide = widened(u)
        s2 = self._sd**2
        q = s2 * wide * wide
        score = self.alpha * s2 * wide / torch.sqrt(1 + q)
        bound = torch.sign(wide).mul_(self.alpha * self._sd)
        return torch.where(torch.isinf(q), bound, score).to(u.dtype)

    def _log_prob(self, u: Tensor) -> Tensor:
        t = u * self._sd
        per = -self.alpha * (torch.sqrt(1 + t * t) - 1) - self._log_z + math.log(self._sd)
        return per.sum(-1)

    def marginal_cdf(self, t: Tensor) -> Tensor:
        # No closed form: Simpson's rule on [0, |t|], the density being symmetric.
        x = t.detach().to(torch.float64).reshape(-1, 1).abs()
        grid = torch.linspace(0, 1, 2001, dtype=torch.float64, device=t.device)
        pts = x * grid
        dens = self.log_prob(pts.unsqueeze(-1)).exp()
        w = torch.ones(2001, dtype=torch.float64, device=t.device)
        w[1:-1:2], w[2:-1:2] = 4.0, 2.0
        area = (dens * w).sum(-1) * x.squeeze(-1) / (3 * 2000)
        out = 0.5 + torch.sign(t.reshape(-1).to(torch.float64)) * area
        # Integer points get a CDF in the default floating dtype, as the other kernels give.
        return out.reshape(t.shape).to(t.dtype if t.is_floating_point() else torch.get_default_dtype())


class Sigmoid(Kernel):
    """Logistic kernel (the derivative of the sigmoid), unit variance.

    Scale ``s = sqrt(3) / pi``; sampled by the inverse CDF
    ``s * logit(p)``. Score ``(1/s) tanh(u / (2 s))``.

    Examples:
        >>> from captum_smoothhess.kernels import Sigmoid
        >>> Sigmoid().sample(4, 3).shape
        torch.Size([4, 3])
    """

    name = "sigmoid"
    _s = math.sqrt(3.0) / math.pi

    def sample(
        self,
        n: int,
        dim: int,
        *,
        generator: Optional[torch.Generator] = None,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> Tensor:
        n, dim = _check_sample_args(n, dim, generator)
        dtype, work = _resolve_dtype(dtype)
        p = _uniform_open((n, dim), generator, device, work)
        return (self._s * (torch.log(p) - torch.log1p(-p))).to(dtype)

    def score(self, u: Tensor) -> Tensor:
        return torch.tanh(u / (2 * self._s)) / self._s

    def _log_prob(self, u: Tensor) -> Tensor:
        z = u / self._s
        return (-z - 2 * torch.nn.functional.softplus(-z) - math.log(self._s)).sum(-1)

    def marginal_cdf(self, t: Tensor) -> Tensor:
        return torch.sigmoid(t / self._s)


class Rect(Kernel):
    """Uniform kernel on ``[-sqrt(3), sqrt(3)]`` per coordinate, unit variance.

    It has no score (zero inside the box, the mass of its derivative sits on
    the boundary), so it serves gradient smoothing but not Hessian estimation.

    Examples:
        >>> from captum_smoothhess.kernels import Rect
        >>> Rect().sample(4, 3).abs().max() <= 3 ** 0.5
        tensor(True)
    """

    name = "rect"
    _h = math.sqrt(3.0)

    def sample(
        self,
        n: int,
        dim: int,
        *,
        generator: Optional[torch.Generator] = None,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> Tensor:
        n, dim = _check_sample_args(n, dim, generator)
        dtype, work = _resolve_dtype(dtype)
        p = _draw(torch.rand, (n, dim), generator, device, work)
        return (self._h * (2 * p - 1)).to(dtype)

    def _log_prob(self, u: Tensor) -> Tensor:
        inside = (u.abs() <= self._h).all(-1)
        val = torch.full(u.shape[:-1], -u.shape[-1] * math.log(2 * self._h), dtype=u.dtype, device=u.device)
        return torch.where(inside, val, torch.full_like(val, -math.inf))

    def marginal_cdf(self, t: Tensor) -> Tensor:
        return ((t + self._h) / (2 * self._h)).clamp(0, 1)


KERNELS: Dict[str, Callable[[], Kernel]] = {
    "gaussian": Gaussian,
    "normal": Gaussian,
    "poisson": Poisson,
    "cauchy": Poisson,
    "hyperbolic": Hyperbolic,
    "sigmoid": Sigmoid,
    "logistic": Sigmoid,
    "rect": Rect,
    "uniform": Rect,
}


def get_kernel(kernel: Union[str, Kernel], argument: str = "kernel") -> Kernel:
    """Return a :class:`Kernel` instance from an instance or a name.

    Args:
        kernel: A :class:`Kernel`, or one of the names ``"gaussian"``,
            ``"poisson"``, ``"hyperbolic"``, ``"sigmoid"``, ``"rect"``
            (case-insensitive; ``"normal"``, ``"cauchy"``, ``"logistic"`` and
            ``"uniform"`` are aliases).
        argument: Name of the caller's argument, used in error messages.

    Returns:
        The kernel.

    Raises:
        ValueError: Unknown name.
        TypeError: Neither a string nor a kernel.

    Examples:
        >>> from captum_smoothhess.kernels import get_kernel
        >>> get_kernel("Poisson")
        Poisson()
    """
    if isinstance(kernel, Kernel):
        return kernel
    if isinstance(kernel, str):
        key = kernel.strip().lower()
        if key not in KERNELS:
            raise ValueError(
                f"{argument}: unknown kernel {kernel!r}; expected a Kernel instance or "
                f"one of {sorted(KERNELS)}"
            )
        return KERNELS[key]()
    if isinstance(kernel, type) and issubclass(kernel, Kernel):
        raise TypeError(
            f"{argument}: got the class {kernel.__name__}, expected an instance of it: {kernel.__name__}()"
        )
    raise TypeError(f"{argument}: expected a Kernel instance or a kernel name, got {type(kernel).__name__}")
