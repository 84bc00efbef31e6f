"""Orthogonal blocks that share a rotation in groups (from ``_SHARE_MIN_DIM`` features on).

Each block of a group is ``M_k R`` for the group's Haar rotation ``R`` and the block's own cheap
mixer ``M_k``: each direction of each block exactly uniform (so every draw keeps its law and the
estimate is unbiased; a block is exactly Haar where ``R`` is a Haar ``O(d)`` rotation),
groups independent, and the dense sum is formed in the rotation's coordinates
(``factors._RotatedSums``). Small ``d`` is used by lowering the threshold.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any, List, Optional

import pytest
import torch
from helpers import OneHiddenReLU, gen, make_one_hidden

from captum_smoothhess import Gaussian, Poisson, SmoothHess, _sampling
from captum_smoothhess import smoothhess as smoothhess_module
from captum_smoothhess._sampling import (
    AntitheticSampler,
    OrthogonalStream,
    PlainSampler,
    _KroneckerMixer,
    _LayeredMixer,
    _Mixer,
)
from captum_smoothhess.factors import _HessianSums, _RotatedSums
from captum_smoothhess.kernels import Kernel

EPS = 0.7
CPU = torch.device("cpu")


def _stream(kernel: Kernel, dim: int, total: int, share: int = 4, batch: int = 2) -> OrthogonalStream:
    return OrthogonalStream(kernel, batch, dim, 3, CPU, torch.float64, total, share=share)


@pytest.fixture
def shared(monkeypatch: pytest.MonkeyPatch) -> None:
    """SmoothHess shares rotations from 2 features on."""
    monkeypatch.setattr(_sampling, "_SHARE_MIN_DIM", 2)


# --------------------------------------------------------------------------- the mixer and the noise


@pytest.mark.parametrize(
    ("d", "kind"),
    [
        (1, _LayeredMixer),
        (2, _LayeredMixer),
        (5, _LayeredMixer),
        (6, _KroneckerMixer),  # 2 x 3
        (16, _KroneckerMixer),
        (257, _LayeredMixer),  # a prime
        (300, _KroneckerMixer),  # 15 x 20
        (302, _LayeredMixer),  # 2 x 151: too unbalanced
    ],
)
def test_mixer_is_orthogonal_and_its_transpose_inverts_it(d: int, kind: type) -> None:
    mixer = _Mixer.draw_many(d, 1, gen(0), CPU, torch.float64)[0]
    assert type(mixer) is kind
    mixers = [mixer] + ([_LayeredMixer(d, gen(0), CPU, torch.float64)] if kind is _KroneckerMixer else [])
    eye = torch.eye(d, dtype=torch.float64).expand(2, d, d)
    for mixer in mixers:
        m = mixer.apply(eye)
        torch.testing.assert_close(m @ m.mT, eye, rtol=0, atol=1e-12)
        torch.testing.assert_close(mixer.apply_transpose(eye), m.mT, rtol=0, atol=1e-12)
        scale = torch.rand(2, d, generator=gen(3), dtype=torch.float64)
        torch.testing.assert_close(mixer.apply(eye, scale=scale), m * scale[..., None], rtol=0, atol=1e-12)
        # add_transpose adds M^T rows to what is there, through the buffers it is given.
        rows, into = torch.randn(2, d, d, generator=gen(2), dtype=torch.float64), torch.ones(2, d, d).double()
        expected = 1 + m.mT @ rows
        mixer.add_transpose(rows, into, torch.empty_like(rows))
        torch.testing.assert_close(into, expected, rtol=0, atol=1e-12)
        if d >= 16:  # it mixes: every row spreads over more than one block of about sqrt(d) rows
            assert int((m[0].abs() > 1e-12).sum(1).min()) > math.isqrt(d)


@pytest.mark.parametrize(("d", "kind"), [(6, _KroneckerMixer), (300, _KroneckerMixer), (257, _LayeredMixer)])
def test_mixer_of_a_partial_block_computes_its_rows_only(d: int, kind: type) -> None:
    """With ``count`` the mixer forms (and reads back) only the slabs that hold a partial block's rows,
    with the same numbers as the whole product for those rows."""
    mixer = _Mixer.draw_many(d, 1, gen(5), CPU, torch.float64)[0]
    assert type(mixer) is kind
    rotation = torch.randn(2, d, d, generator=gen(6), dtype=torch.float64)
    scale = torch.rand(2, d, generator=gen(7), dtype=torch.float64)
    full = mixer.apply(rotation, scale=scale)
    for count in (1, d // 3, d - 1, d):
        span = mixer.span(count)
        assert count <= span <= d
        if kind is _KroneckerMixer:
            assert span < count + mixer.c  # whole slabs only
        part = mixer.apply(rotation, scale=scale, count=count)
        assert part.shape == (2, span, d)
        torch.testing.assert_close(part[:, :count], full[:, :count], rtol=0, atol=1e-12)
        rows = torch.randn(2, d, d, generator=gen(8), dtype=torch.float64)
        rows[:, count:] = 0
        expected = mixer.apply_transpose(rows)
        rows[:, span:] = float("nan")  # never read
        into = torch.zeros(2, d, d, dtype=torch.float64)
        mixer.add_transpose(rows, into, torch.empty_like(rows), count)
        torch.testing.assert_close(into, expected, rtol=0, atol=1e-12)


def test_blocks_of_a_group_are_mixed_copies_of_its_rotation() -> None:
    d, total = 6, 6 * 9 + 2  # share=4: groups of blocks 0-3, 4-7, and 8-9 (a last block of 2 draws)
    stream = _stream(Gaussian(), d, total)
    u = stream.take(0, total)
    rotations = _stream(Gaussian(), d, total)
    assert stream.group_length == 24
    for k in range(10):
        block = u[:, k * d : (k + 1) * d]
        directions = block / block.norm(dim=-1, keepdim=True)
        m = directions.shape[1]
        torch.testing.assert_close(
            directions @ directions.mT, torch.eye(m, dtype=torch.float64).expand(2, m, m)
        )
        if k % 4 == 0:  # a group's first block: the rows of the group's rotation, scaled by the radii
            rotation = rotations.rotation(k // 4)
            assert rotation is not None
            torch.testing.assert_close(directions, rotation, rtol=0, atol=1e-14)
    # A later block is its mixer applied to the group's rotation.
    stream = _stream(Gaussian(), d, total)
    block = stream.take(6, 12)
    rotation, mixer = stream.rotation(0), stream.mixer(1)
    assert rotation is not None and mixer is not None and stream.mixer(0) is None
    torch.testing.assert_close(block / block.norm(dim=-1, keepdim=True), mixer.apply(rotation))
    # Blocks of one group are not orthogonal to each other; each example has its own rotation.
    first, second = u[:, :d], u[:, d : 2 * d]
    assert float((first @ second.mT).abs().max()) > 1e-3
    assert not torch.allclose(u[0, :d].abs(), u[1, :d].abs())


def test_shared_noise_does_not_depend_on_the_split_or_the_first_draw_taken() -> None:
    d, total = 5, 5 * 11
    whole = _stream(Poisson(), d, total).take(0, total)
    for sizes in ([1] * total, [7, 5, 8, 35], [20, 20, 15], [3, 52]):
        stream, parts, start = _stream(Poisson(), d, total), [], 0
        for size in sizes:
            parts.append(stream.take(start, start + size))
            start += size
        assert torch.equal(torch.cat(parts, dim=1), whole), sizes
    # A rank that starts inside a group draws the group's rotation itself.
    assert torch.equal(_stream(Poisson(), d, total).take(33, 47), whole[:, 33:47])


def test_sharing_needs_whole_rotations() -> None:
    big = 1 << 13  # blocks of fewer than d directions
    assert _sampling.orthogonal_block_length(big) < big
    assert OrthogonalStream(Gaussian(), 1, big, 0, CPU, torch.float32, 10, share=4).share == 1
    with pytest.raises(ValueError, match="share"):
        OrthogonalStream(Gaussian(), 1, 4, 0, CPU, torch.float32, 10, share=0)


def test_smoothhess_shares_rotations_from_share_min_dim_features() -> None:
    def sampler(d: int, kernel: Kernel = Gaussian(), sampling: str = "orthogonal") -> AntitheticSampler:
        return AntitheticSampler(kernel, 1, d, 0, CPU, torch.float32, 4 * d, sampling)

    d = _sampling._SHARE_MIN_DIM
    assert sampler(d).shares_rotations and sampler(d, Poisson()).shares_rotations
    assert sampler(d).block_length == d and sampler(d).stream.group_length == _sampling._SHARE_BLOCKS * d
    assert not sampler(d - 1).shares_rotations and sampler(d - 1).block_length == d - 1
    assert sampler(d, sampling="iid").block_length is None
    assert not sampler(d, sampling="iid").shares_rotations


@pytest.mark.parametrize("kernel", [Gaussian(), Poisson()], ids=repr)
def test_each_shared_draw_has_the_kernel_marginal(kernel: Kernel) -> None:
    """KS on a coordinate and on the norm of one draw of the second block of each of 2000 groups."""
    d, groups = 4, 2000
    u = _stream(kernel, d, 4 * d * groups, batch=1).take(0, 4 * d * groups)[0]
    u = u.reshape(groups, 4, d, d)[:, 1, 2]
    bound = 1.95 / math.sqrt(groups)  # the 0.1% critical value
    coord = u[:, 0]
    order = coord.argsort()
    cdf = kernel.marginal_cdf(coord)[order]
    i = torch.arange(1, groups + 1, dtype=cdf.dtype)
    assert float(torch.maximum(i / groups - cdf, cdf - (i - 1) / groups).max()) < bound


# --------------------------------------------------------------------------- the estimate


@pytest.mark.parametrize("antithetic", [True, False], ids=["antithetic", "plain"])
@pytest.mark.parametrize("kernel", [Gaussian(), Poisson()], ids=repr)
def test_rotated_sums_equal_the_explicit_sum(kernel: Kernel, antithetic: bool) -> None:
    """Any chunking, a partial last block, a group of one block, two examples; chi_d / Poisson radii;
    antithetic pairs and one gradient call per draw (whose terms are the gradients themselves)."""
    d = 6
    kind = AntitheticSampler if antithetic else PlainSampler
    for draws in (6 * 9 + 2, 6 * 8 + 3, 6 * 4, 6 * 5):
        grads = torch.randn(2, kind.copies * draws, d, generator=gen(draws), dtype=torch.float64)
        sampler = kind(kernel, 2, d, 9, CPU, torch.float64, draws, "orthogonal")
        sampler.stream = _stream(kernel, d, draws)
        explicit = _HessianSums(2, d, torch.ones(2, d, dtype=torch.float64), None, 0)
        u = sampler.noise(0, draws)
        explicit.add(*sampler.pairs(u, grads))
        for chunk in (1, 5, 13, draws):
            rotated = _RotatedSums(
                _HessianSums(2, d, torch.ones(2, d, dtype=torch.float64), None, 0), sampler
            )
            for start in range(0, draws, chunk):
                stop = min(draws, start + chunk)
                parts = [grads[:, start:stop]] + (
                    [grads[:, draws + start : draws + stop]] if antithetic else []
                )
                rotated.add_draws(start, stop, sampler.noise(start, stop), torch.cat(parts, dim=1))
            rotated.finish()
            torch.testing.assert_close(rotated.total, explicit.total, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel", [Gaussian(), Poisson()], ids=repr)
def test_score_lengths_from_the_radii_equal_those_of_the_points(kernel: Kernel) -> None:
    """``Kernel._radial_score`` is the length of ``score(u)`` at ``|u|``, and the coefficients taken from
    the stream's radii equal those measured on the points (what a radial kernel without the closed
    form gets)."""
    u = torch.randn(5, 7, generator=gen(11), dtype=torch.float64) * 3
    length = kernel._radial_score(u.norm(dim=-1), 7)
    assert length is not None
    torch.testing.assert_close(length, kernel.score(u).norm(dim=-1), rtol=1e-12, atol=0)
    d, draws = 6, 6 * 5
    sampler = AntitheticSampler(kernel, 2, d, 9, CPU, torch.float64, draws, "orthogonal")
    sampler.stream = _stream(kernel, d, draws)
    noise = sampler.noise(7, 20)
    from_radii = sampler.coefficients(noise, 7)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(kernel), "_radial_score", lambda self, radius, dim: None)
        from_points = sampler.coefficients(noise, 7)
    torch.testing.assert_close(from_radii, from_points, rtol=1e-12, atol=0)


def test_rotated_sums_of_some_chunks_ignore_what_their_buffers_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a rank sees: every other chunk, so blocks with gaps, mixed back at ``finish``. A block's buffer
    is not zeroed when taken; the rows never written must count as zero (buffers made of NaN here)."""
    d, draws, chunk = 6, 6 * 9 + 2, 5
    grads = torch.randn(2, 2 * draws, d, generator=gen(4), dtype=torch.float64)
    sampler = AntitheticSampler(Gaussian(), 2, d, 9, CPU, torch.float64, draws, "orthogonal")
    sampler.stream = _stream(Gaussian(), d, draws)
    monkeypatch.setattr(_RotatedSums, "_buffer", lambda self, like: torch.full_like(like, float("nan")))
    explicit = _HessianSums(2, d, torch.ones(2, d, dtype=torch.float64), None, 0)
    rotated = _RotatedSums(_HessianSums(2, d, torch.ones(2, d, dtype=torch.float64), None, 0), sampler)
    for start in range(0, draws, 2 * chunk):
        stop = min(draws, start + chunk)
        g = torch.cat([grads[:, start:stop], grads[:, draws + start : draws + stop]], dim=1)
        u = sampler.noise(start, stop)
        explicit.add(*sampler.pairs(u, g))
        rotated.add_draws(start, stop, u, g)
    rotated.finish()
    torch.testing.assert_close(rotated.total, explicit.total, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("antithetic", [True, False], ids=["antithetic", "plain"])
def test_smoothhess_with_and_without_rotated_sums_agree(
    shared: None,
    relu10: OneHiddenReLU,
    x10: torch.Tensor,
    monkeypatch: pytest.MonkeyPatch,
    antithetic: bool,
) -> None:
    sh = SmoothHess(relu10.net)
    kw: Any = dict(stdevs=EPS, n_samples=2 * 95, n_samples_batch_size=36, antithetic=antithetic)
    h = sh.attribute(x10, generator=gen(2), **kw)
    monkeypatch.setattr(smoothhess_module, "_RotatedSums", lambda inner, sampler: inner)
    explicit = sh.attribute(x10, generator=gen(2), **kw)
    torch.testing.assert_close(h, explicit, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel", ["gaussian", "poisson"])
def test_shared_is_unbiased(shared: None, relu10: OneHiddenReLU, x10: torch.Tensor, kernel: str) -> None:
    """80 calls: one group of 4 blocks of 10 pairs (all the call draws). 200 seeds against the closed
    form. (The smoothed gradient, and chunk invariance: tests/test_orthogonal.py, "shared rotations".)"""
    sh = SmoothHess(relu10.net, kernel=kernel)
    ref = relu10.gaussian_hessian(x10, EPS) if kernel == "gaussian" else relu10.poisson_hessian(x10, EPS)
    err = torch.stack(
        [sh.attribute(x10, stdevs=EPS, n_samples=80, generator=gen(s)) - ref for s in range(200)]
    )
    mean, spread = err.mean(0), err.std(0) / math.sqrt(err.shape[0])
    assert float((mean.abs() / spread).max()) < 4.5


def test_sharing_costs_little_variance_unless_the_mixer_is_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    """d = 64, n = 16 d calls (8 blocks, one group), 30 seeds. With the mixer the error variance stays
    within 1.2x of independent blocks (1.044x measured with 40 seeds; 1.015x at d = 256, 1.007x at
    784); without it (every block of the group the same directions, other radii) it is 7.0x, which the
    bound must catch."""
    d = 64
    relu = make_one_hidden(d, 2 * d, seed=0, dtype=torch.float64)
    x = torch.randn(2, d, generator=gen(1), dtype=torch.float64)
    sh = SmoothHess(relu.net)
    ref = relu.gaussian_hessian(x, EPS)

    def mse() -> float:
        return sum(
            float(((sh.attribute(x, stdevs=EPS, n_samples=16 * d, generator=gen(s)) - ref) ** 2).sum())
            for s in range(30)
        )

    monkeypatch.setattr(_sampling, "_SHARE_MIN_DIM", 10**9)
    independent = mse()
    monkeypatch.setattr(_sampling, "_SHARE_MIN_DIM", 2)
    with_mixer = mse()

    def identity(
        self: _Mixer,
        rows: torch.Tensor,
        out: Optional[torch.Tensor] = None,
        scratch: object = None,
        scale: Optional[torch.Tensor] = None,
        count: Optional[int] = None,
    ) -> torch.Tensor:
        out = rows.clone() if out is None else out.copy_(rows)
        return out if scale is None else out.mul_(scale[..., None])

    def add(
        self: _Mixer,
        rows: torch.Tensor,
        into: torch.Tensor,
        scratch: object,
        count: Optional[int] = None,
        scale: Optional[torch.Tensor] = None,
    ) -> None:
        into += rows if scale is None else rows * scale[..., None]

    for kind in (_KroneckerMixer, _LayeredMixer):
        monkeypatch.setattr(kind, "apply", identity)
        monkeypatch.setattr(kind, "add_transpose", add)
        monkeypatch.setattr(kind, "span", lambda self, count: self.dim)
    without = mse()
    assert with_mixer / independent < 1.2
    assert without / independent > 2.0


def test_error_groups_are_single_blocks_of_a_shared_rotation(
    shared: None, relu10: OneHiddenReLU, x10: torch.Tensor
) -> None:
    """The reported error's groups are single blocks, though 8 share a rotation: it stays calibrated."""
    sh = SmoothHess(relu10.net)
    ref = relu10.gaussian_hessian(x10, EPS)
    reported, actual = [], []
    for s in range(30):
        h, err = sh.attribute(x10, stdevs=EPS, n_samples=1600, return_error=True, generator=gen(s))
        reported.append(err.relative**2)
        actual.append(((h - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)) ** 2)
        assert bool((err.n_samples == 1600).all())
    ratio = float((torch.stack(reported).mean() / torch.stack(actual).mean()).sqrt())
    assert 0.7 < ratio < 1.4


def test_half_precision_inputs_share_rotations_in_float32(shared: None) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
    x = torch.randn(2, 8, generator=gen(0))
    h32 = SmoothHess(net).attribute(x, target=1, stdevs=0.5, n_samples=160, generator=gen(1))
    h16 = SmoothHess(net.to(torch.bfloat16)).attribute(
        x.to(torch.bfloat16), target=1, stdevs=0.5, n_samples=160, generator=gen(1)
    )
    assert h16.dtype == torch.bfloat16 and bool(torch.isfinite(h16).all())
    assert float((h16.float() - h32).norm() / h32.norm()) < 0.1


# --------------------------------------------------------------------------- hostile use


def test_shared_path_refuses_nan_gradients(shared: None) -> None:
    with pytest.raises(ValueError, match=r"^forward_func: .*NaN"):
        SmoothHess(lambda x: torch.sqrt(x).sum(1)).attribute(torch.randn(2, 6), stdevs=0.1, n_samples=200)


def test_shared_path_memory_does_not_grow_with_n_samples(shared: None) -> None:
    """Groups close and their rotations, mixers and sums are dropped while chunks go by."""
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    sizes: List[int] = []

    class Stop(Exception):
        pass

    original = _RotatedSums.add_draws

    def add_draws(self: _RotatedSums, *args: Any) -> None:
        original(self, *args)
        stream = self.stream
        sizes.append(
            len(self._groups)
            + len(self._blocks)
            + len(stream._rotations)
            + len(stream._mixers)
            + len(stream._radius)
        )
        if len(sizes) > 400:
            raise Stop

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_RotatedSums, "add_draws", add_draws)
        with pytest.raises(Stop):
            SmoothHess(net).attribute(torch.randn(4, 64), target=0, n_samples=10**12, n_samples_batch_size=50)
    # At most an open group and its rotation, two open blocks, and the mixers and radii of two blocks.
    assert max(sizes) <= 8, max(sizes)


def test_shared_path_in_threads_gives_the_one_thread_numbers(shared: None) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)).double()
    x = torch.randn(3, 12, generator=gen(0), dtype=torch.float64)

    def run(seed: int) -> torch.Tensor:
        return SmoothHess(net).attribute(x, target=1, stdevs=0.5, n_samples=480, generator=gen(seed))

    expected = [run(s) for s in range(4)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(run, range(4)))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel", ["gaussian", "poisson"])
def test_kronecker_mixers_keep_the_contract(
    shared: None, kernel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cross-method contract tests run the shared rotations at d = 5, where the mixers are two-layer;
    here d = 6 + 4 = 10 = 2 x 5, so the Kronecker mixers run (counted): a tuple in gives a tuple of
    blocks out, the chunk size does not change the result, and a model in training mode is left as
    found (weights, BatchNorm buffers, the flag), the inputs keeping ``requires_grad``."""
    applied: List[int] = []
    apply = _KroneckerMixer._apply

    def counted(self: _KroneckerMixer, *args: Any) -> torch.Tensor:
        applied.append(1)
        return apply(self, *args)

    monkeypatch.setattr(_KroneckerMixer, "_apply", counted)

    class TwoInputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Linear(10, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
            )

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.body(torch.cat([a, b], dim=1))

    net = TwoInputs().double()
    net.eval()  # batch statistics would make the result depend on the chunks; training mode is below
    before = {k: v.clone() for k, v in net.state_dict().items()}
    a = torch.randn(3, 6, generator=gen(1), dtype=torch.float64).requires_grad_()
    b = torch.randn(3, 4, generator=gen(2), dtype=torch.float64)
    sh = SmoothHess(net, kernel=kernel)
    kw: Any = {"target": 1, "stdevs": 0.3, "n_samples": 200, "generator": gen(3)}
    h = sh.attribute((a, b), **kw)
    kw["generator"] = gen(3)
    chunked = sh.attribute((a, b), n_samples_batch_size=36, **kw)
    assert applied, "the Kronecker mixers did not run"
    assert isinstance(h, tuple) and len(h) == 2 and all(len(row) == 2 for row in h)
    assert h[0][0].shape == (3, 6, 6) and h[0][1].shape == (3, 6, 4) and h[1][1].shape == (3, 4, 4)
    for row, row_chunked in zip(h, chunked):
        for block, block_chunked in zip(row, row_chunked):
            torch.testing.assert_close(block, block_chunked, rtol=1e-10, atol=1e-12)
    net.train()
    kw["generator"] = gen(3)
    sh.attribute((a, b), **kw)
    assert a.requires_grad and not b.requires_grad and net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_hessian_sums_result_is_taken_once() -> None:
    """``result`` scales the sum in place (no second ``(B, d, d)`` buffer): the symmetrised, scaled mean,
    and a second call refuses instead of scaling twice."""
    d = 5
    scale = torch.rand(d, generator=gen(3), dtype=torch.float64) + 0.5  # 1 / stdevs, one per feature
    sums = _HessianSums(2, d, scale, None, 0)
    a, b = (torch.randn(2, 7, d, generator=gen(k), dtype=torch.float64) for k in (4, 5))
    sums.add(a, b)
    torch.testing.assert_close(sums.total, a.transpose(1, 2) @ b, rtol=1e-12, atol=1e-12)
    raw = sums.total * (scale[:, None] / 7)  # rows times 1 / eps_i: what result() computed out of place
    assert torch.equal(sums.result(7), (raw + raw.transpose(1, 2)) * 0.5)
    with pytest.raises(RuntimeError, match="already taken"):
        sums.result(7)
