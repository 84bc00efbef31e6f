"""Tests added by a mutation-testing audit: each one fails under a small change of the estimator's core
that the rest of the suite let through (see the report of the audit)."""

from __future__ import annotations

import torch
from helpers import OneHiddenReLU, gen
from torch import Tensor

from captum_smoothhess import SmoothHess
from captum_smoothhess._sampling import _KroneckerMixer, _Mixer

CPU = torch.device("cpu")


def test_kronecker_mixer_permutes_before_its_kronecker_factors() -> None:
    """``M = (F kron G) P``: without the permutation ``P`` the mixer would be a Kronecker product, whose
    entries rearranged as an ``(s s) x (c c)`` matrix have rank one (the blocks of a group then look far
    more alike: 3.9% more error variance at d = 256 instead of 1.4%)."""
    d, s, c = 16, 4, 4
    mixers = _Mixer.draw_many(d, 4, gen(0), CPU, torch.float64)
    eye = torch.eye(d, dtype=torch.float64)[None]
    for mixer in mixers:
        assert isinstance(mixer, _KroneckerMixer) and (mixer.s, mixer.c) == (s, c)
        m = mixer.apply(eye)[0]
        rearranged = m.reshape(s, c, s, c).permute(0, 2, 1, 3).reshape(s * s, c * c)
        sv = torch.linalg.svdvals(rearranged)
        assert float(sv[1] / sv[0]) > 1e-3, sv
        # And the transpose it adds back undoes that same M.
        into = torch.zeros(1, d, d, dtype=torch.float64)
        mixer.add_transpose(m[None].clone(), into, torch.empty(1, d, d, dtype=torch.float64))
        torch.testing.assert_close(into[0], torch.eye(d, dtype=torch.float64), rtol=0, atol=1e-12)


def test_tolerance_stops_after_eight_independent_blocks_at_the_earliest(
    relu10: OneHiddenReLU, x10: Tensor
) -> None:
    """A tolerance that any estimate meets stops every example after exactly 8 independent blocks (the
    documented minimum), not after the 2 groups that first give a spread: d = 10, blocks of 10 antithetic
    pairs, so 8 blocks are 160 gradient calls."""
    sh = SmoothHess(relu10.net)
    _, err = sh.attribute(x10, stdevs=0.7, n_samples=4000, tolerance=1e6, generator=gen(0))
    assert err.n_samples.tolist() == [160] * 4
    # The same with iid draws (groups of d draws) and with the Poisson kernel's orthogonal blocks.
    _, iid = sh.attribute(x10, stdevs=0.7, n_samples=4000, tolerance=1e6, sampling="iid", generator=gen(0))
    assert iid.n_samples.tolist() == [160] * 4
    poisson = SmoothHess(relu10.net, kernel="poisson")
    _, err = poisson.attribute(x10, stdevs=0.7, n_samples=4000, tolerance=1e6, generator=gen(0))
    assert err.n_samples.tolist() == [160] * 4
