"""The numbers of every method for fixed seeds, pinned bit for bit (refactors must keep them).

The cases live in ``_pinned_cases.py``; the numbers in ``data/pinned.json`` were
written by the code before the estimator core was refactored.
"""

from __future__ import annotations

import json

import pytest
import torch
from _pinned_cases import CASES, PINNED, compute

_DATA = json.loads(PINNED.read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_pinned_numbers(name: str) -> None:
    got = compute(name)
    want = _DATA[name]
    assert len(got) == len(want)
    for t, w in zip(got, want):
        assert list(t.shape) == w["shape"]
        assert str(t.dtype) == w["dtype"]
        expected = torch.tensor([float.fromhex(v) for v in w["values"]], dtype=torch.float64)
        assert torch.equal(t.double().flatten(), expected), name
