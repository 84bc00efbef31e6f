"""captum-smoothhess: second-order and kernel-smoothed attributions for Captum.

Public API:

* :class:`SmoothHess`: pairwise feature interactions of ReLU networks, the
  Hessian of the kernel-smoothed network estimated from gradient calls
  (:class:`SmoothHessFactors` is its factored form).
* :mod:`captum_smoothhess.kernels`: the smoothing kernels (Gaussian, Poisson,
  Hyperbolic, Sigmoid, Rect) and their base class.
* :class:`KernelNoiseTunnel`, :class:`NoiseGrad`, :class:`FusionGrad`: gradient
  smoothing with any kernel in input space, weight space, or both.
* :class:`LayerSmoothHess`, :class:`NeuronSmoothHess`: interactions of a
  layer's units (e.g. token x token through an embedding, with
  :mod:`~captum_smoothhess.tokens` masks), and of one hidden unit.
* :class:`CASO`, :class:`CAFO`: second- and first-order sparse saliency.
* :func:`global_interactions`: interactions summarised over a dataset (mean,
  mean absolute value, standard errors), a :class:`GlobalInteractions`.
* Submodules :mod:`~captum_smoothhess.metrics` (perturbation MSE),
  :mod:`~captum_smoothhess.baselines` (SoftPlus surrogate, exact Hessian),
  :mod:`~captum_smoothhess.robust` (trust-region step, second-order attack),
  :mod:`~captum_smoothhess.datasets` (Four Quadrant, digits) and
  :mod:`~captum_smoothhess.visualization` (interaction plots).
"""

from . import baselines, datasets, metrics, robust, tokens, visualization
from .caso import CAFO, CASO
from .factors import SmoothHessFactors, TopPairs
from .global_interactions import GlobalInteractions, global_interactions
from .kernels import Gaussian, Hyperbolic, Kernel, Poisson, Rect, Sigmoid, get_kernel
from .layer import LayerSmoothHess, NeuronSmoothHess
from .noise_tunnel import KernelNoiseTunnel, SmoothingError
from .noisegrad import FusionGrad, NoiseGrad
from .smoothhess import SmoothHess, SmoothHessError

__version__ = "0.1.0"

__all__ = [
    "CAFO",
    "CASO",
    "FusionGrad",
    "Gaussian",
    "GlobalInteractions",
    "Hyperbolic",
    "Kernel",
    "KernelNoiseTunnel",
    "LayerSmoothHess",
    "NeuronSmoothHess",
    "NoiseGrad",
    "Poisson",
    "Rect",
    "Sigmoid",
    "SmoothHess",
    "SmoothHessError",
    "SmoothHessFactors",
    "SmoothingError",
    "TopPairs",
    "__version__",
    "baselines",
    "datasets",
    "get_kernel",
    "global_interactions",
    "metrics",
    "robust",
    "tokens",
    "visualization",
]
