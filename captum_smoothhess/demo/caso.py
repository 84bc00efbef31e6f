"""Demo section 4: CASO (two curvature sources) vs CAFO sparse saliency maps."""

from __future__ import annotations

from typing import List

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..caso import CAFO, CASO
from ..datasets import Digits
from ._common import _fmt, _image, _log, _save, _Settings


def section(out: str, net: nn.Module, data: Digits, s: _Settings, seed: int) -> List[str]:
    """CASO (two curvature sources) vs CAFO on a few test digits."""
    _log("CASO vs CAFO sparse saliency")
    n_digits = 3
    sparsity = 0.8
    # A confident classifier has a vanishing loss gradient (and curvature) on most digits; take
    # the first correctly classified test digits it is least sure about (probability < 0.95).
    x_all = data.x_test.reshape(-1, 1, 8, 8)
    with torch.no_grad():
        prob = net(x_all).softmax(1)
    unsure = (prob.argmax(1) == data.y_test) & (prob.max(1).values < 0.95)
    chosen = torch.nonzero(unsure).flatten()[:n_digits]
    which = (
        f"The first {n_digits} correctly classified test digits on which the model's top probability is "
        "below 0.95"
    )
    if len(chosen) < n_digits:  # pragma: no cover - depends on the trained model
        chosen = torch.arange(n_digits)
        which = f"The first {n_digits} test digits (the model is at least 0.95 sure of nearly all digits)"
    x = x_all[chosen]
    labels = data.y_test[chosen]
    cafo = CAFO(net).attribute(x, target=labels, sparsity=sparsity)
    caso, info = CASO(net).attribute(x, target=labels, sparsity=sparsity, return_info=True)
    caso_sh = CASO(net).attribute(
        x,
        target=labels,
        sparsity=sparsity,
        curvature="smoothhess",
        stdevs=0.5,
        n_samples=s.caso_samples,
        generator=torch.Generator().manual_seed(seed),
    )
    assert isinstance(cafo, Tensor) and isinstance(caso, Tensor) and isinstance(caso_sh, Tensor)
    maps = {"CAFO": cafo, "CASO (autograd H)": caso, "CASO (SmoothHess H)": caso_sh}

    fig = Figure(figsize=(2.7 * (len(maps) + 1) + 0.8, 2.6 * n_digits + 0.6))
    axes = fig.subplots(n_digits, len(maps) + 1, squeeze=False)
    im = None
    for r in range(n_digits):
        p_true = float(prob[chosen[r], labels[r]])
        axes[r, 0].imshow(_image(data, data.x_test[chosen[r]])[0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_title(f"digit (class {int(labels[r])}, p={p_true:.2f})", fontsize=10)
        for c, (name, d) in enumerate(maps.items()):
            m = d[r, 0].detach().numpy()
            v = float(np.abs(m).max()) or 1.0
            im = axes[r, c + 1].imshow(m / v, cmap="RdBu_r", vmin=-1, vmax=1)
            axes[r, c + 1].set_title(name, fontsize=10)
    for a in axes.flat:
        a.set_xticks([])
        a.set_yticks([])
    assert im is not None
    fig.colorbar(im, ax=axes[:, 1:].ravel().tolist(), fraction=0.03, pad=0.02, label="delta / max |delta|")
    fig.suptitle(
        f"Sparse loss-increasing perturbations, {int(sparsity * 100)}% of pixels exactly zero "
        "(red: raise the pixel, blue: lower it)",
        fontsize=11,
    )
    png = _save(fig, out, "caso_vs_cafo.png")

    # How much each perturbation, scaled to the same L2 norm, actually raises the loss.
    radius = 2.0
    with torch.no_grad():
        base = nn.functional.cross_entropy(net(x), labels, reduction="none")
        rows = []
        for name, d in maps.items():
            flat = d.flatten(1)
            step = (radius * flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).reshape(x.shape)
            gain = nn.functional.cross_entropy(net(x + step), labels, reduction="none") - base
            zeros = float((flat == 0).float().mean())
            rows.append(f"| {name} | {zeros:.2f} | {_fmt(float(gain.mean()))} |")
        overlap = []
        for r in range(n_digits):
            a, b = cafo[r].flatten() != 0, caso[r].flatten() != 0
            overlap.append(float((a & b).sum() / (a | b).sum()))
    return [
        "## 4. CASO vs CAFO",
        "",
        f"{which} (a confident classifier's loss has almost no gradient or curvature). "
        "CAFO is the sparse first-order saliency `soft(g, lambda1) / lambda2`; CASO adds the Hessian "
        "of the loss to the model it maximises, `g^T d + d^T H d / 2 - lambda1 |d|_1 - lambda2 |d|^2 / 2`, "
        f"solved by FISTA. `sparsity={sparsity}` picks `lambda1` so that {int(sparsity * 100)}% of the "
        "pixels are exactly zero. CASO's curvature comes either from exact Hessian-vector products "
        "(for a ReLU net and the cross-entropy this is the curvature of the softmax only) or from "
        "SmoothHess, which also sees the ReLUs' curvature.",
        "",
        f"![CASO vs CAFO]({png})",
        "",
        f"Each perturbation rescaled to L2 norm {radius} and applied to its digit: the mean increase "
        "of the cross-entropy loss (larger means a more loss-relevant set of pixels):",
        "",
        "| map | fraction of zeros | mean loss increase |",
        "|---|---|---|",
        *rows,
        "",
        "Support overlap (Jaccard) of CASO (autograd H) and CAFO per digit: "
        f"{', '.join(f'{o:.2f}' for o in overlap)}; "
        f"FISTA used {', '.join(str(int(v)) for v in info['hvps'])} Hessian-vector products per digit.",
        "",
    ]
