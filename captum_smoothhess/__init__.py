"""captum-smoothhess: second-order and kernel-smoothed attributions for Captum.

Public API:

* :class:`SmoothHess`: pairwise feature interactions of ReLU networks, the
  Hessian of the kernel-smoothed network estimated from gradient calls.
* :mod:`captum_smoothhess.kernels`: the smoothing kernels (Gaussian, Poisson,
  Hyperbolic, Sigmoid, Rect) and their base class.
"""

from .kernels import Gaussian, Hyperbolic, Kernel, Poisson, Rect, Sigmoid, get_kernel
from .smoothhess import SmoothHess

__version__ = "0.1.0"

__all__ = [
    "Gaussian",
    "Hyperbolic",
    "Kernel",
    "Poisson",
    "Rect",
    "Sigmoid",
    "SmoothHess",
    "__version__",
    "get_kernel",
]
