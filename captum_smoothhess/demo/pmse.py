"""Demo section 5: perturbation MSE of first- and second-order Taylor models."""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from captum.attr import Saliency
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import Tensor, nn

from ..baselines import exact_hessian, softplus_surrogate
from ..datasets import Digits
from ..metrics import perturbation_mse
from ..smoothhess import SmoothHess
from ._common import _fmt, _log, _save, _Settings


def section(out: str, net: nn.Module, data: Digits, s: _Settings, seed: int) -> List[str]:
    """Perturbation MSE of four Taylor models, knobs tuned on validation digits."""
    _log("Perturbation MSE: SmoothHess + SmoothGrad vs SmoothGrad vs SoftPlus Hessian vs gradient")
    x_val = data.x_test[: s.pmse_val].reshape(-1, 1, 8, 8)
    x_test = data.x_test[s.pmse_val : s.pmse_val + s.pmse_test].reshape(-1, 1, 8, 8)
    with torch.no_grad():
        t_val, t_test = net(x_val).argmax(1), net(x_test).argmax(1)
    methods = ["SmoothHess + SmoothGrad", "SmoothGrad", "SoftPlus Hessian + SoftPlus gradient", "Gradient"]

    def taylor(x: Tensor, t: Tensor, method: str, knob: float) -> Tuple[Tensor, Tensor | None]:
        if method in ("SmoothHess + SmoothGrad", "SmoothGrad"):
            hess, grad = SmoothHess(net).attribute(
                x,
                target=t,
                stdevs=knob,
                n_samples=s.pmse_samples,
                return_gradient=True,
                generator=torch.Generator().manual_seed(seed),
                show_progress=True,
            )
            assert isinstance(hess, Tensor) and isinstance(grad, Tensor)
            return grad, (hess if method.startswith("SmoothHess") else None)
        if method.startswith("SoftPlus"):
            hess, grad = exact_hessian(softplus_surrogate(net, knob), x, target=t, return_gradient=True)
            assert isinstance(hess, Tensor) and isinstance(grad, Tensor)
            return grad, hess
        grad = Saliency(net).attribute(x.clone().requires_grad_(True), target=t, abs=False).detach()
        return grad, None

    def pmse(x: Tensor, t: Tensor, model: Tuple[Tensor, Tensor | None], radius: float) -> Tensor:
        grad, hess = model
        return perturbation_mse(
            net,
            x,
            grad,
            hess,
            radius=radius,
            n_perturbations=s.pmse_perturbations,
            target=t,
            generator=torch.Generator().manual_seed(seed + 1),
        )

    def knobs(method: str) -> Sequence[float]:
        if method.startswith("Smooth"):
            return s.stdevs_grid
        if method.startswith("SoftPlus"):
            return s.beta_grid
        return (math.nan,)

    results: Dict[str, Dict[float, Tuple[float, float, float]]] = {m: {} for m in methods}
    cache: Dict[Tuple[str, str, float], Tuple[Tensor, Tensor | None]] = {}
    for method in methods:
        for k in knobs(method):
            cache[("val", method, k)] = taylor(x_val, t_val, method, k)
        for radius in s.pmse_radii:
            val = {
                k: float(pmse(x_val, t_val, cache[("val", method, k)], radius).mean()) for k in knobs(method)
            }
            best = min(val, key=lambda k: val[k])
            key = ("test", method, best)
            if key not in cache:
                cache[key] = taylor(x_test, t_test, method, best)
            err = pmse(x_test, t_test, cache[key], radius)
            results[method][radius] = (best, float(err.mean()), float(err.std() / math.sqrt(len(err))))

    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.subplots()
    width = 0.8 / len(s.pmse_radii)
    colors = ["tab:red", "tab:orange", "tab:blue", "tab:gray"]
    for j, radius in enumerate(s.pmse_radii):
        means = [results[m][radius][1] for m in methods]
        errs = [results[m][radius][2] for m in methods]
        pos = np.arange(len(methods)) + (j - (len(s.pmse_radii) - 1) / 2) * width
        hatch = None if j == 0 else "//"
        ax.bar(pos, means, width, yerr=errs, color=colors, hatch=hatch, edgecolor="k", capsize=3)
    handles = [
        Patch(facecolor="white", edgecolor="k", hatch=None if j == 0 else "//", label=f"radius r = {radius}")
        for j, radius in enumerate(s.pmse_radii)
    ]
    ax.legend(handles=handles, loc="upper left")
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(methods)))
    ax.set_xticklabels(["SmoothHess\n+ SmoothGrad", "SmoothGrad", "SoftPlus Hessian\n+ gradient", "Gradient"])
    ax.set_ylabel("perturbation MSE (log scale, lower is better)")
    ax.set_title(f"Taylor-model error of the predicted logit, {len(x_test)} test digits")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    png = _save(fig, out, "pmse.png")

    header = (
        "| method | " + " | ".join(f"r = {r}: PMSE (± s.e.)" for r in s.pmse_radii) + " | knob per radius |"
    )
    lines = [
        "## 5. Perturbation MSE",
        "",
        "How well does a Taylor model built from each explanation predict the network near the input? "
        "For perturbations `delta` of norm uniform in `[0, r]`, the perturbation MSE is the mean of "
        "`(f(x + delta) - f(x) - g^T delta - delta^T H delta / 2)^2` (first-order methods drop the `H` "
        "term), `f` the predicted-class logit. Each method's knob (`stdevs` for SmoothHess/SmoothGrad, "
        f"SoftPlus `beta`) is picked per radius on {len(x_val)} validation digits from "
        f"{list(s.stdevs_grid)} / {list(s.beta_grid)}; the table reports {len(x_test)} other test digits.",
        "",
        header,
        "|---|" + "---|" * len(s.pmse_radii) + "---|",
    ]
    for m in methods:
        cells = [f"{_fmt(results[m][r][1])} (± {_fmt(results[m][r][2])})" for r in s.pmse_radii]
        kn = ", ".join("-" if math.isnan(results[m][r][0]) else f"{results[m][r][0]:g}" for r in s.pmse_radii)
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {kn} |")
    lines += ["", f"![perturbation MSE]({png})", ""]
    return lines
