"""Small datasets that ship offline, for tests, tutorials and the paper reproduction.

* :func:`four_quadrant`: the Four Quadrant synthetic 2-D regression data of the
  SmoothHess paper: the target is constant on each quadrant, so all of the
  interaction sits at the origin, and the Gaussian-smoothed target has a
  closed-form Hessian (:func:`four_quadrant_smoothed_hessian`) against which an
  estimated interaction can be read as the smoothing scale varies.
* :func:`load_digits_tensors`: scikit-learn's bundled 8x8 digits (1797 images,
  no download) as standardised float tensors with a seeded, stratified
  train/test split. Needs scikit-learn, the ``demo`` extra (``pip install ".[demo]"`` from a
  clone of the repository, or ``pip install scikit-learn``).
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ._dtypes import working_dtype
from ._validation import _check_flags, _check_generator, _check_number, _check_positive_int

__all__ = [
    "Digits",
    "four_quadrant",
    "four_quadrant_interaction",
    "four_quadrant_smoothed_hessian",
    "load_digits_tensors",
]

#: Default quadrant values (Q1, Q2, Q3, Q4): ``sign(x1 x2)``.
FOUR_QUADRANT_VALUES: Tuple[float, float, float, float] = (1.0, -1.0, 1.0, -1.0)


def _check_values(values: Sequence[float]) -> Tensor:
    try:
        vals = torch.as_tensor([float(v) for v in values], dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"values: expected four finite numbers (Q1, Q2, Q3, Q4), got {values!r}") from None
    if vals.numel() != 4 or not bool(torch.isfinite(vals).all()):
        raise ValueError(f"values: expected four finite numbers (Q1, Q2, Q3, Q4), got {values!r}")
    return vals


def _check_dtype(dtype: object) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype.is_complex:
        raise TypeError(f"dtype: expected a floating torch.dtype such as torch.float32, got {dtype!r}")
    return dtype


def four_quadrant(
    n: int,
    values: Sequence[float] = FOUR_QUADRANT_VALUES,
    extent: float = 1.0,
    noise: float = 0.0,
    generator: Optional[torch.Generator] = None,
    dtype: torch.dtype = torch.float32,
) -> Tuple[Tensor, Tensor]:
    r"""The Four Quadrant dataset: a target that is constant on each quadrant.

    Points ``x`` are uniform on ``[-extent, extent]^2`` and the target is

    ``y = c_Q(x) + noise * e``,  ``e ~ N(0, 1)``,

    with ``c_Q`` the value of the quadrant of ``x``: ``c1`` for
    ``x1 > 0, x2 > 0``, ``c2`` for ``x1 < 0, x2 > 0``, ``c3`` for both
    negative and ``c4`` for ``x1 > 0, x2 < 0`` (ties on an axis, of
    probability zero, go to the positive side). The default
    ``(1, -1, 1, -1)`` is ``y = sign(x1 x2)``. The target is flat on every
    quadrant, so its whole interaction sits at the origin: smoothed by a
    Gaussian of standard deviation ``sigma`` its mixed partial derivative at
    the origin is ``(c1 - c2 + c3 - c4) / (2 pi sigma^2)`` (``2 / (pi sigma^2)``
    by default) and the diagonal of its Hessian there is zero; see
    :func:`four_quadrant_smoothed_hessian`.

    Args:
        n: Number of points (at least 1).
        values: ``(c1, c2, c3, c4)``, the target on quadrants I to IV.
        extent: Half-width of the square. Default: 1.
        noise: Standard deviation of additive Gaussian target noise (>= 0).
        generator: ``torch.Generator`` for reproducible draws.
        dtype: Floating dtype of the tensors.

    Returns:
        ``(x, y)``: ``x`` of shape ``(n, 2)`` and ``y`` of shape ``(n,)``.

    Raises:
        ValueError: ``n`` < 1, non-positive ``extent``, negative ``noise``, or
            ``values`` that are not four finite numbers.
        TypeError: Arguments of the wrong type (``dtype`` not a floating ``torch.dtype``).

    Examples:
        >>> import torch
        >>> from captum_smoothhess.datasets import four_quadrant
        >>> x, y = four_quadrant(1000, generator=torch.Generator().manual_seed(0))
        >>> x.shape, y.shape
        (torch.Size([1000, 2]), torch.Size([1000]))
        >>> bool((y == torch.sign(x[:, 0] * x[:, 1])).all())
        True
    """
    n = _check_positive_int(n, "n")
    dtype = _check_dtype(dtype)
    vals = _check_values(values).to(dtype)
    ext = _check_number(extent, "extent", allow_zero=False)
    sd = _check_number(noise, "noise", allow_zero=True)
    _check_generator(generator)
    # Half precision: drawn in float32 and rounded, so that points fall on an axis with probability
    # about 1e-7 (on float16's own grid of rand, one draw in 2048 would).
    work = working_dtype(dtype)
    x = ((torch.rand(n, 2, generator=generator, dtype=work) * 2 - 1) * ext).to(dtype)
    right, up = x[:, 0] >= 0, x[:, 1] >= 0
    quadrant = torch.where(up, torch.where(right, 0, 1), torch.where(right, 3, 2))
    y = vals[quadrant]
    if sd > 0:
        y = y + sd * torch.randn(n, generator=generator, dtype=dtype)
    return x, y


def four_quadrant_smoothed_hessian(
    x: Tensor, stdevs: float, values: Sequence[float] = FOUR_QUADRANT_VALUES
) -> Tensor:
    r"""Hessian of the Four Quadrant target smoothed by ``N(0, stdevs^2 I)``, in closed form.

    With ``p_i = Phi(x_i / s)`` and ``phi`` the standard normal density, the
    smoothed target is ``c1 p1 p2 + c2 (1-p1) p2 + c3 (1-p1)(1-p2) + c4 p1 (1-p2)``
    (the square's boundary ignored), whose Hessian is

    * ``d2/dx1 dx2 = phi(x1/s) phi(x2/s) (c1 - c2 + c3 - c4) / s^2``,
    * ``d2/dx1^2 = phi'(x1/s) [p2 (c1 - c2) + (1 - p2)(c4 - c3)] / s^2``, and
      symmetrically for ``x2``.

    Args:
        x: Points ``(B, 2)``.
        stdevs: Smoothing standard deviation ``s`` > 0.
        values: ``(c1, c2, c3, c4)`` as in :func:`four_quadrant`.

    Returns:
        Tensor ``(B, 2, 2)`` in ``x``'s dtype.

    Raises:
        ValueError: ``x`` not of shape ``(B, 2)``, non-positive ``stdevs``.

    Examples:
        >>> import torch
        >>> from captum_smoothhess.datasets import four_quadrant_smoothed_hessian
        >>> h = four_quadrant_smoothed_hessian(torch.zeros(1, 2), stdevs=1.0)
        >>> round(float(h[0, 0, 1]), 4), float(h[0, 0, 0].abs())  # 2 / pi, 0
        (0.6366, 0.0)
    """
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != 2 or not x.is_floating_point():
        raise ValueError("x: expected a floating tensor of shape (B, 2)")
    s = _check_number(stdevs, "stdevs", allow_zero=False)
    c1, c2, c3, c4 = (float(v) for v in _check_values(values))
    z = x.detach() / s
    phi = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    dphi = -z * phi
    p = torch.special.ndtr(z)
    cross = phi[:, 0] * phi[:, 1] * (c1 - c2 + c3 - c4) / s**2
    h11 = dphi[:, 0] * (p[:, 1] * (c1 - c2) + (1 - p[:, 1]) * (c4 - c3)) / s**2
    h22 = dphi[:, 1] * (p[:, 0] * (c1 - c4) + (1 - p[:, 0]) * (c2 - c3)) / s**2
    return torch.stack([torch.stack([h11, cross], -1), torch.stack([cross, h22], -1)], -2)


def four_quadrant_interaction(stdevs: float, values: Sequence[float] = FOUR_QUADRANT_VALUES) -> float:
    """The smoothed target's interaction at the origin: ``(c1 - c2 + c3 - c4) / (2 pi stdevs^2)``.

    Args:
        stdevs: Smoothing standard deviation > 0.
        values: ``(c1, c2, c3, c4)`` as in :func:`four_quadrant`.

    Returns:
        The mixed partial derivative ``d2 g / dx1 dx2`` at ``(0, 0)``.

    Raises:
        ValueError: Non-positive ``stdevs``.

    Examples:
        >>> from captum_smoothhess.datasets import four_quadrant_interaction
        >>> round(four_quadrant_interaction(0.5), 4)  # 2 / (pi 0.25)
        2.5465
    """
    s = _check_number(stdevs, "stdevs", allow_zero=False)
    c1, c2, c3, c4 = (float(v) for v in _check_values(values))
    return (c1 - c2 + c3 - c4) / (2 * math.pi * s * s)


class Digits(NamedTuple):
    """The digits split returned by :func:`load_digits_tensors`.

    Attributes:
        x_train: ``(n_train, 64)`` standardised pixels.
        y_train: ``(n_train,)`` int64 labels 0-9.
        x_test: ``(n_test, 64)`` pixels standardised with the training statistics.
        y_test: ``(n_test,)`` int64 labels.
        mean: ``(64,)`` training mean per pixel (raw scale 0-16).
        std: ``(64,)`` training standard deviation per pixel (1 where it is 0).
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    mean: Tensor
    std: Tensor


#: scikit-learn's digits: examples and classes.
_DIGITS, _DIGIT_CLASSES = 1797, 10


def load_digits_tensors(
    test_size: float = 0.25,
    seed: int = 0,
    standardize: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Digits:
    """scikit-learn's bundled 8x8 digits as tensors, with a seeded stratified split.

    The 1797 images ship with scikit-learn (no download). Pixels are flattened
    to 64 features; with ``standardize`` each pixel is centred and scaled by
    the *training* mean and standard deviation (constant pixels get scale 1),
    and the test set is transformed with the same statistics.

    Args:
        test_size: Fraction of the data held out, in (0, 1). Default: 0.25.
        seed: Seed of the split, in ``[0, 2**32 - 1]`` (the same seed gives the same split).
        standardize: Standardise the pixels (default) or keep the raw 0-16 scale.
        dtype: Floating dtype of the features.

    Returns:
        A :class:`Digits` named tuple ``(x_train, y_train, x_test, y_test, mean, std)``.

    Raises:
        ImportError: scikit-learn is not installed.
        ValueError: ``test_size`` outside (0, 1) or leaving a class out of either part,
            ``seed`` outside ``[0, 2**32 - 1]``.
        TypeError: Arguments of the wrong type (``dtype`` not a floating ``torch.dtype``).

    Examples:
        >>> from captum_smoothhess.datasets import load_digits_tensors
        >>> data = load_digits_tensors(seed=0)
        >>> data.x_train.shape, data.x_test.shape
        (torch.Size([1347, 64]), torch.Size([450, 64]))
        >>> abs(float(data.x_train.mean())) < 1e-6
        True
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "load_digits_tensors needs scikit-learn (the package's demo extra): pip install scikit-learn"
        ) from err
    if isinstance(test_size, bool) or not isinstance(test_size, numbers.Real):
        raise TypeError(f"test_size: expected a fraction in (0, 1), got {test_size!r}")
    if not 0 < test_size < 1:
        raise ValueError(f"test_size: expected a fraction in (0, 1), got {test_size!r}")
    test_size = float(test_size)
    n_test = math.ceil(test_size * _DIGITS)  # scikit-learn's rounding of a fraction
    if min(n_test, _DIGITS - n_test) < _DIGIT_CLASSES:
        raise ValueError(
            f"test_size: {test_size} leaves {n_test} of the {_DIGITS} digits for testing and "
            f"{_DIGITS - n_test} for training; the stratified split needs at least one example of each of "
            f"the {_DIGIT_CLASSES} classes in both"
        )
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed: expected an integer, got {seed!r}")
    seed = int(seed)
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed: expected an integer in [0, 2**32 - 1] (a NumPy seed), got {seed}")
    _check_flags(standardize=standardize)
    dtype = _check_dtype(dtype)
    bunch = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        bunch.data, bunch.target, test_size=test_size, random_state=seed, stratify=bunch.target
    )
    x_train = torch.as_tensor(x_tr, dtype=torch.float64)
    x_test = torch.as_tensor(x_te, dtype=torch.float64)
    mean = x_train.mean(0)
    std = x_train.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    if standardize:
        x_train = (x_train - mean) / std
        x_test = (x_test - mean) / std
    return Digits(
        x_train.to(dtype),
        torch.as_tensor(y_tr, dtype=torch.long),
        x_test.to(dtype),
        torch.as_tensor(y_te, dtype=torch.long),
        mean.to(dtype),
        std.to(dtype),
    )
