"""The cases whose numbers are pinned by ``test_pinned.py`` (seeded, float64, small).

``python tests/_pinned_cases.py`` rewrites ``tests/data/pinned.json`` from the
current code; do that only when a change of numbers is intended and stated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List

import torch
from captum.attr import IntegratedGradients, Saliency
from torch import Tensor, nn

from captum_smoothhess import CAFO, CASO, FusionGrad, KernelNoiseTunnel, NoiseGrad, SmoothHess

PINNED = Path(__file__).resolve().parent / "data" / "pinned.json"


def _net(d: int = 5, out: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 12), nn.ReLU(), nn.Linear(12, out)).double().eval()


def _x(b: int = 3, d: int = 5, seed: int = 1) -> Tensor:
    return torch.randn(b, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _g(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _flat(out: object) -> List[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _flat(out[k])]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    if hasattr(out, "to_dense"):
        return _flat(out.to_dense()) + _flat(out.gradient)  # type: ignore[attr-defined]
    raise TypeError(type(out).__name__)


def _smoothhess_tuple() -> object:
    net = _net(5)
    x = _x(3, 5)
    return SmoothHess(lambda a, b: net(torch.cat([a, b], 1))).attribute(
        (x[:, :2], x[:, 2:]), target=1, stdevs=(0.3, 0.5), n_samples=64, generator=_g(), return_gradient=True
    )


CASES: Dict[str, Callable[[], object]] = {
    "smoothhess_dense": lambda: SmoothHess(_net()).attribute(
        _x(),
        target=0,
        stdevs=0.4,
        n_samples=96,
        n_samples_batch_size=20,
        generator=_g(),
        return_gradient=True,
    ),
    "smoothhess_iid_poisson": lambda: SmoothHess(_net(), kernel="poisson").attribute(
        _x(), target=2, stdevs=0.3, n_samples=50, antithetic=False, generator=_g()
    ),
    "smoothhess_hyperbolic_mask": lambda: SmoothHess(_net(), kernel="hyperbolic").attribute(
        _x(),
        target=[0, 1, 2],
        stdevs=0.5,
        n_samples=80,
        feature_mask=torch.tensor([0, 0, 1, 2, 2]),
        generator=_g(),
    ),
    "smoothhess_per_feature": lambda: SmoothHess(_net(), kernel="sigmoid").attribute(
        _x(),
        target=1,
        stdevs=torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64),
        n_samples=40,
        generator=_g(),
    ),
    "smoothhess_tuple": _smoothhess_tuple,
    "smoothhess_factors": lambda: SmoothHess(_net()).attribute(
        _x(), target=0, stdevs=0.4, n_samples=64, generator=_g(), output="factors"
    ),
    "kernel_noise_tunnel": lambda: KernelNoiseTunnel(Saliency(_net()), kernel="poisson").attribute(
        _x(), nt_samples=9, nt_samples_batch_size=4, stdevs=0.2, target=0, abs=False, generator=_g()
    ),
    "kernel_noise_tunnel_ig": lambda: KernelNoiseTunnel(IntegratedGradients(_net())).attribute(
        _x(), nt_type="smoothgrad_sq", nt_samples=4, stdevs=0.2, target=1, generator=_g(), n_steps=8
    ),
    "noisegrad": lambda: NoiseGrad(Saliency(_net())).attribute(
        _x(), nt_samples=6, stdevs=0.2, target=0, abs=False, generator=_g()
    ),
    "fusiongrad": lambda: FusionGrad(Saliency(_net()), input_kernel="sigmoid").attribute(
        _x(), nt_samples=6, stdevs=0.2, input_stdevs=0.1, target=2, abs=False, generator=_g()
    ),
    "caso_autograd": lambda: CASO(_net()).attribute(_x(), target=0, lambda1=0.01, return_info=True),
    "caso_sparsity": lambda: CASO(_net()).attribute(_x(), sparsity=0.4, return_info=True),
    "caso_smoothhess": lambda: CASO(_net()).attribute(
        _x(),
        target=1,
        lambda1=0.005,
        curvature="smoothhess",
        stdevs=0.3,
        n_samples=64,
        generator=_g(),
        return_info=True,
    ),
    "cafo": lambda: CAFO(_net()).attribute(_x(), sparsity=0.4, return_info=True),
}


def compute(name: str) -> List[Tensor]:
    return [t.detach() for t in _flat(CASES[name]())]


def _encode(t: Tensor) -> Dict[str, object]:
    return {
        "shape": list(t.shape),
        "dtype": str(t.dtype),
        "values": [float(v).hex() for v in t.double().flatten().tolist()],
    }


if __name__ == "__main__":
    PINNED.parent.mkdir(exist_ok=True)
    data = {name: [_encode(t) for t in compute(name)] for name in CASES}
    PINNED.write_text(json.dumps(data, indent=0) + "\n")
    print(f"wrote {PINNED}: {len(data)} cases")
