"""The numbers of every method for fixed seeds, pinned bit for bit (refactors must keep them).

The cases live in ``_pinned_cases.py``; the numbers in ``data/pinned.json`` were
written by the code before the estimator core was refactored. The CASO cases were
re-pinned once since, when ``lambda_max`` moved from power iteration to Lanczos:
their solutions moved by at most 6e-7 relative (lambda2_effective by 6e-7), the
iteration counts stayed the same, and the HVPs per example fell (e.g. 16, 34, 12 ->
7, 6, 6). And once more when Lanczos learnt to certify a low-rank Hessian (here d = 5:
the basis spans everything) so that FISTA's products no longer call the model: the
solutions moved by at most 1.5e-12 relative, the iteration counts stayed the same, and
the model HVPs fell again (7, 6, 6 -> 4, 4, 4; SmoothHess curvature 15, 9, 9 -> 5, 5, 5;
sparsity 12, 9, 9 -> 4, 4, 4). The seven cases that sample orthogonal blocks were
re-pinned when the blocks' rotations came to be built from Householder reflectors
drawn directly (Stewart's method) instead of the QR of a Gaussian matrix: the same law
(Haar), different draws for a seed. Six of them again when SmoothHess's Gaussian
orthogonal blocks (from d = 5) took their radii from chi_{d+1} with importance weights
(the tilted radii of ``OrthogonalStream``): the same directions, other radii, and an
estimate of the same mean; the Poisson case (untilted) kept its numbers.
"""

from __future__ import annotations

import json

import pytest
import torch
from _pinned_cases import CASES, PINNED, compute

_DATA = json.loads(PINNED.read_text())

# CASO's exact curvature rebuilds the double-backprop graph of the unfinished
# examples when others converge (they leave the batch): the model's matrix
# products then run on fewer rows, which may round differently in the last
# bit. The iterates, iteration counts and solutions stay the same.
_ULPS = {"caso_autograd": 1e-12, "caso_sparsity": 1e-12}


@pytest.mark.parametrize("name", sorted(CASES))
def test_pinned_numbers(name: str) -> None:
    got = compute(name)
    want = _DATA[name]
    assert len(got) == len(want)
    for t, w in zip(got, want):
        assert list(t.shape) == w["shape"]
        assert str(t.dtype) == w["dtype"]
        expected = torch.tensor([float.fromhex(v) for v in w["values"]], dtype=torch.float64)
        got_flat = t.double().flatten()
        if name in _ULPS:
            scale = float(expected.abs().max()) if expected.numel() else 0.0
            assert torch.allclose(got_flat, expected, rtol=0, atol=_ULPS[name] * max(scale, 1e-300)), name
        else:
            assert torch.equal(got_flat, expected), name
