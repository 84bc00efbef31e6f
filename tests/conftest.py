"""Fixtures shared by the test modules: the d = 10 one-hidden-layer ReLU oracle in float64, and points."""

from __future__ import annotations

import pytest
import torch
from helpers import OneHiddenReLU, gen, make_one_hidden


@pytest.fixture(scope="module")
def relu10() -> OneHiddenReLU:
    return make_one_hidden(10, 20, seed=0, dtype=torch.float64)


@pytest.fixture(scope="module")
def x10() -> torch.Tensor:
    return torch.randn(4, 10, generator=gen(1), dtype=torch.float64)
