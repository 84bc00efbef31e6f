"""Settings, logging, figure saving and the digits model shared by the demo's sections."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Tuple

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..datasets import Digits
from ._training import _fit

_DPI = 110


@dataclass(frozen=True)
class _Settings:
    """Sizes of one demo run (the full run and the ``--quick`` smoke run)."""

    digits_epochs: int = 60
    fq_steps: int = 1500
    fq_points: int = 3000
    interaction_samples: int = 40000
    group_samples: int = 20000
    fq_samples: int = 20000
    fq_stdevs: Tuple[float, ...] = (0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8)
    fq_betas: Tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
    nt_samples: int = 400
    caso_samples: int = 2000
    global_examples: int = 450
    global_samples: int = 1000
    pmse_val: int = 10
    pmse_test: int = 30
    pmse_samples: int = 3000
    pmse_perturbations: int = 1000
    pmse_radii: Tuple[float, ...] = (0.5, 2.0)
    stdevs_grid: Tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)
    beta_grid: Tuple[float, ...] = (3.0, 10.0, 30.0, 100.0)


_FULL = _Settings()
_QUICK = _Settings(
    digits_epochs=20,
    fq_steps=300,
    fq_points=1000,
    interaction_samples=4000,
    group_samples=2000,
    fq_samples=2000,
    fq_stdevs=(0.05, 0.2, 0.5),
    fq_betas=(2.0, 10.0, 50.0),
    nt_samples=50,
    caso_samples=400,
    global_examples=60,
    global_samples=200,
    pmse_val=3,
    pmse_test=5,
    pmse_samples=600,
    pmse_perturbations=200,
    pmse_radii=(0.5,),
    stdevs_grid=(0.1, 0.4),
    beta_grid=(10.0, 30.0),
)

_START = [time.perf_counter()]


def _log(message: str) -> None:
    print(f"[demo {time.perf_counter() - _START[0]:5.1f}s] {message}", flush=True)


def _save(fig: Figure, out: str, name: str) -> str:
    """Save ``fig`` as ``out/name`` and return ``name`` (the report's relative link)."""
    fig.savefig(os.path.join(out, name), dpi=_DPI, bbox_inches="tight")
    return name


def _bar_chunk(n_samples: int) -> int:
    """A sample batch size that makes SmoothHess's progress bar move in about ten steps."""
    return max(2, 2 * (n_samples // 20))


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _digits_model(data: Digits, epochs: int) -> Tuple[nn.Sequential, float]:
    """A 64-128-128-10 ReLU MLP on ``(B, 1, 8, 8)`` digit images, and its test accuracy."""
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 128),
        nn.ReLU(),
        nn.Linear(128, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    x = data.x_train.reshape(-1, 1, 8, 8)
    _fit(net, x, data.y_train, nn.functional.cross_entropy, epochs, lr=1e-3, batch=128, seed=1)
    with torch.no_grad():
        acc = float((net(data.x_test.reshape(-1, 1, 8, 8)).argmax(1) == data.y_test).float().mean())
    return net, acc


def _image(data: Digits, flat: Tensor) -> Tensor:
    """Standardised pixels ``(64,)`` back to a ``(1, 8, 8)`` image in ``[0, 1]``."""
    return ((flat * data.std + data.mean) / 16.0).clamp(0, 1).reshape(1, 8, 8)


# The 16 patches of 2x2 pixels of an 8x8 digit, named P(row)(col), row-major.
_PATCH_NAMES = tuple(f"P{pr}{pc}" for pr in range(4) for pc in range(4))


def _patch_mask() -> Tensor:
    """Captum feature mask ``(1, 1, 8, 8)`` of the 16 patches (group ids 0..15, row-major)."""
    r_idx, c_idx = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    return ((r_idx // 2) * 4 + c_idx // 2).reshape(1, 1, 8, 8)


def _draw_patches(ax: Axes, image: Tensor, title: str) -> None:
    """An ``(8, 8)`` image in grey with the patch grid and the patch names over it."""
    ax.imshow(image.numpy(), cmap="gray", vmin=0, vmax=1)
    for k, name in enumerate(_PATCH_NAMES):
        pr, pc = divmod(k, 4)
        ax.text(2 * pc + 0.5, 2 * pr + 0.5, name, ha="center", va="center", color="tab:orange", fontsize=11)
    for t in (1.5, 3.5, 5.5):
        ax.axhline(t, color="tab:orange", linewidth=1)
        ax.axvline(t, color="tab:orange", linewidth=1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
