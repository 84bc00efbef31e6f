"""The shared Monte-Carlo engine: noise addressable by sample index, whatever the chunking."""

from __future__ import annotations

import pytest
import torch

from captum_smoothhess._sampling import NoiseStream, chunks, default_chunk
from captum_smoothhess.kernels import Gaussian, Hyperbolic, Kernel, Poisson


def _stream(kernel: Kernel, workers: int, total: int | None = 100, dim: int = 1 << 13) -> NoiseStream:
    # B d = 2^14 makes a block 64 samples long, so 100 samples span two blocks.
    stream = NoiseStream(
        kernel, 2, dim, seed=1234, device=torch.device("cpu"), dtype=torch.float32, total=total
    )
    stream._workers = workers
    return stream


def _take_all(stream: NoiseStream, sizes: list[int]) -> torch.Tensor:
    parts, start = [], 0
    for size in sizes:
        parts.append(stream.take(start, start + size).clone())
        start += size
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize("kernel", [Gaussian(), Poisson(), Hyperbolic(1.0)], ids=repr)
def test_noise_does_not_depend_on_chunks_or_threads(kernel: Kernel) -> None:
    reference = _stream(kernel, workers=1).take(0, 100)
    assert reference.shape == (2, 100, 1 << 13)
    assert _stream(kernel, 1).block == 64
    for workers in (1, 2, 4):
        for sizes in ([100], [1] * 100, [7, 57, 36], [64, 36], [30, 50, 20]):
            assert torch.equal(_take_all(_stream(kernel, workers), sizes), reference), (workers, sizes)


def test_blocks_are_distinct_draws_and_the_cache_stays_bounded() -> None:
    stream = _stream(Gaussian(), workers=4, total=64 * 8)
    first, second = stream.take(0, 64), stream.take(64, 128)
    assert not torch.equal(first, second)
    # Same seed, other stream: same numbers; other seed: different numbers.
    assert torch.equal(_stream(Gaussian(), 1, total=64 * 8).take(64, 128), second)
    other = NoiseStream(Gaussian(), 2, 1 << 13, 99, torch.device("cpu"), torch.float32, 64 * 8)
    assert not torch.equal(other.take(0, 64), first)
    for start in range(0, 64 * 8, 16):
        stream.take(start, start + 16)
        # Blocks behind the current one are dropped; look-ahead is at most one block per worker.
        assert len(stream._cache) <= 4
        assert min(stream._cache) == start // 64


def test_unknown_total_draws_only_what_is_asked() -> None:
    stream = _stream(Gaussian(), workers=4, total=None, dim=1 << 15)
    assert stream.block == 16
    stream.take(0, 8)
    assert sorted(stream._cache) == [0]


def test_chunks_cover_the_range_in_order() -> None:
    assert list(chunks(10, 4)) == [(0, 4), (4, 8), (8, 10)]
    assert list(chunks(3, 8)) == [(0, 3)]


# --------------------------------------------------------------------------- default chunks


def test_default_chunk_budget_is_smaller_on_cpu_and_never_spans_two_blocks() -> None:
    """d = 784, one example, antithetic pairs (2 calls a draw): 2^20 elements on CPU, 2^24 elsewhere."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert default_chunk(10**6, 1, 784, 2, cpu) == (1 << 20) // 1568 == 668
    assert default_chunk(10**6, 1, 784, 2, cuda) == (1 << 24) // 1568 == 10699
    assert default_chunk(10**6, 1, 784, 2) == 668  # no device: CPU
    # Whole orthogonal blocks of 784 draws, or the largest divisor of a block within the budget.
    assert default_chunk(10**6, 1, 784, 2, cuda, block=784) == 13 * 784
    assert default_chunk(10**6, 1, 784, 2, cpu, block=784) == 392
    assert default_chunk(10**6, 4, 784, 2, cpu, block=784) == 112  # budget 167
    assert default_chunk(10**6, 1, 784, 2, cpu, block=1024) == 512  # an iid noise block
    # All draws fit: one chunk. No divisor of at least half the budget: the budget.
    assert default_chunk(600, 1, 784, 2, cpu, block=784) == 600
    assert default_chunk(10**6, 1, 784, 2, cpu, block=787) == 668  # 787 is prime
    assert default_chunk(10**6, 1, 10**7, 2, cpu, block=784) == 1


def test_smoothhess_default_chunks_do_not_span_blocks_on_cpu() -> None:
    """Dense SmoothHess at d = 784 (orthogonal blocks of 784 pairs) evaluates half a block a chunk."""
    from captum_smoothhess import SmoothHess

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(784, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    rows = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        rows.append(x.shape[0])
        return net(x)

    x = torch.rand(1, 784)
    n = 2 * 1568 + 100
    SmoothHess(forward).attribute(x, target=1, n_samples=n, generator=torch.Generator().manual_seed(0))
    assert rows[-5:] == [784, 784, 784, 784, 100]
