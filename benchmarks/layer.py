"""LayerSmoothHess on a transformer encoder: time against the gradient floor at the layer, and memory.

Run ``python benchmarks/layer.py`` (``--quick`` for a smoke run). The model is
a token embedding (width 128) with a position embedding, a two-layer
``nn.TransformerEncoder`` (4 heads, ReLU feed-forward 256) on sequences of 64
tokens, mean pooling and a linear read-out. LayerSmoothHess is taken at the
embedding layer with a token mask (``(B, 64, 64)`` token interactions,
``d = 64 * 128 = 8192`` units per example) and pad-id baselines.

* Time: over the *gradient floor at the layer*, the same number of gradient
  calls with respect to the embedding output, in the same batches, on
  perturbed activations prepared in advance (the model from the embedding
  output on, nothing else: no hook, no noise drawing, no scores, no
  grouping). Timed by ``_timing.interleaved``: the ratio is the median of
  per-round ratios.
* Memory: the peak resident memory of a fresh process running the floor once,
  and one running token-grouped LayerSmoothHess once, next to the size a
  dense ``(B, d, d)`` result alone would take.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Dict, List

import _checkout  # noqa: F401  (this checkout's package first on sys.path)
import torch
from _memory import peak_mib
from _timing import interleaved
from torch import Tensor, nn

from captum_smoothhess import LayerSmoothHess
from captum_smoothhess.tokens import token_feature_mask

SEQ, WIDTH, VOCAB, PAD = 64, 128, 1000, 0


class Encoder(nn.Module):
    """Token ids ``(B, 64)`` -> two logits, through a two-layer transformer encoder of width 128."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tok = nn.Embedding(VOCAB, WIDTH)
        self.pos = nn.Parameter(0.1 * torch.randn(SEQ, WIDTH))
        layer = nn.TransformerEncoderLayer(WIDTH, 4, dim_feedforward=256, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(WIDTH, 2)

    def rest(self, emb: Tensor) -> Tensor:
        """The model from the embedding output on."""
        return self.head(self.encoder(emb + self.pos).mean(1))

    def forward(self, ids: Tensor) -> Tensor:
        return self.rest(self.tok(ids))


def _setup(batch: int) -> tuple[Encoder, Tensor]:
    net = Encoder().eval()
    ids = torch.randint(1, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(1))
    return net, ids


def _run_grouped(net: Encoder, ids: Tensor, n: int, chunk: int) -> Tensor:
    lsh = LayerSmoothHess(net, net.tok)
    return lsh.attribute(
        ids,
        target=1,
        baselines=PAD,
        feature_mask=token_feature_mask(SEQ, WIDTH),
        stdevs=0.1,
        n_samples=n,
        n_samples_batch_size=chunk,
        generator=torch.Generator().manual_seed(2),
    )


def _floor_points(net: Encoder, ids: Tensor, n: int, chunk: int) -> List[Tensor]:
    """The same gradient calls as LayerSmoothHess, in the same batches, on points made in advance."""
    with torch.no_grad():
        emb = net.tok(ids)
    points: List[Tensor] = []
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        pts = emb.repeat_interleave(rows, dim=0) + 0.1 * torch.randn(ids.shape[0] * rows, SEQ, WIDTH)
        points.append(pts.requires_grad_())
    return points


def _floor(net: Encoder, points: List[Tensor]) -> None:
    for pts in points:
        torch.autograd.grad(net.rest(pts)[:, 1].sum(), pts)


def timing(batch: int, n: int, chunk: int, rounds: int) -> Dict[str, float]:
    """Seconds of the floor and of token-grouped LayerSmoothHess, and their median ratio."""
    net, ids = _setup(batch)
    points = _floor_points(net, ids, n, chunk)
    t = interleaved([lambda: _floor(net, points), lambda: _run_grouped(net, ids, n, chunk)], rounds)
    return {"floor": t.best[0], "ours": t.best[1], "ratio": t.ratio[1]}


def memory(which: str, batch: int, n: int, chunk: int) -> Dict[str, float]:
    """Peak resident MiB of this (fresh) process after one run of ``which`` ("floor" or "ours")."""
    net, ids = _setup(batch)
    if which == "floor":
        _floor(net, _floor_points(net, ids, n, chunk))
    else:
        _run_grouped(net, ids, n, chunk)
    return {"peak": peak_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny n and one round")
    parser.add_argument("--memory-only", choices=["floor", "ours"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    batch, n, chunk, rounds = (1, 8, 4, 1) if args.quick else (4, 256, 64, 5)
    if args.memory_only:
        print(json.dumps(memory(args.memory_only, batch, n, chunk)))
        return
    t = timing(batch, n, chunk, rounds)
    peaks = {}
    for which in ("floor", "ours"):
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-only", which, *(["--quick"] if args.quick else [])],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[which] = json.loads(proc.stdout.strip().splitlines()[-1])["peak"]
    dense_mib = batch * (SEQ * WIDTH) ** 2 * 4 / 2**20
    print(f"LayerSmoothHess at a transformer encoder's embedding: T={SEQ}, width={WIDTH}, d={SEQ * WIDTH}")
    print(f"B={batch}, n={n}, n_samples_batch_size={chunk}, token mask -> (B, {SEQ}, {SEQ}), pad baselines")
    print("| contender | seconds (best round) | ratio to floor (median) | process peak MiB |")
    print("|---|---|---|---|")
    print(f"| gradient floor at the layer | {t['floor']:.4g} | 1 | {peaks['floor']:.0f} |")
    print(f"| LayerSmoothHess, token-grouped | {t['ours']:.4g} | {t['ratio']:.3f} | {peaks['ours']:.0f} |")
    print(f"a dense (B, d, d) float32 result alone would be {dense_mib:.0f} MiB")


if __name__ == "__main__":
    main()
