"""Feature masks for token x token (and word x word) interactions of text models.

An embedding layer's output is ``(B, T, E)``: ``T`` tokens of ``E`` units
each. Grouping every token's ``E`` units into one group turns
:class:`~captum_smoothhess.LayerSmoothHess` on that layer into ``(B, T, T)``
token interactions (:func:`token_feature_mask`); grouping the sub-word tokens
of each word turns it into word interactions (:func:`word_feature_mask`, the
grouping path_explain uses). :func:`fold_interactions` folds an already
computed token matrix into words; since grouping is linear, it equals the
estimate with the word mask for the same seed.
"""

from __future__ import annotations

import numbers
from typing import Optional

import torch
from torch import Tensor

__all__ = ["fold_interactions", "token_feature_mask", "word_feature_mask"]


def token_feature_mask(seq_len: int, embed_dim: int, device: Optional[torch.device] = None) -> Tensor:
    """Group ``t`` = all ``embed_dim`` units of position ``t``: a ``(1, T, E)`` feature mask.

    Args:
        seq_len: Number of tokens ``T``.
        embed_dim: Units per token ``E``.
        device: Device of the mask.

    Returns:
        An int64 tensor ``(1, T, E)`` with ``mask[0, t, :] = t``.

    Examples:
        >>> from captum_smoothhess.tokens import token_feature_mask
        >>> token_feature_mask(3, 2)[0]
        tensor([[0, 0],
                [1, 1],
                [2, 2]])
    """
    for name, v in (("seq_len", seq_len), ("embed_dim", embed_dim)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    seq_len, embed_dim = int(seq_len), int(embed_dim)
    return torch.arange(seq_len, device=device)[None, :, None].expand(1, seq_len, embed_dim).contiguous()


def _word_ids(word_ids: Tensor) -> Tensor:
    if not isinstance(word_ids, Tensor) or word_ids.is_floating_point() or word_ids.is_complex():
        raise TypeError("word_ids: expected an integer tensor (T,) or (B, T)")
    if word_ids.dim() == 1:
        word_ids = word_ids[None]
    if word_ids.dim() != 2:
        raise ValueError(f"word_ids: expected shape (T,) or (B, T), got {tuple(word_ids.shape)}")
    if word_ids.numel() and int(word_ids.min()) < 0:
        raise ValueError("word_ids: ids must be non-negative (give special tokens their own word)")
    return word_ids.long()


def word_feature_mask(word_ids: Tensor, embed_dim: int) -> Tensor:
    """Group the units of all sub-word tokens of one word: a ``(B, T, E)`` feature mask.

    Args:
        word_ids: The word index of every token, ``(T,)`` or ``(B, T)``
            (e.g. a tokenizer's ``word_ids()``, with special tokens given
            their own ids), non-negative.
        embed_dim: Units per token ``E``.

    Returns:
        An int64 tensor ``(B, T, E)`` (``B = 1`` for ``(T,)``) with
        ``mask[b, t, :] = word_ids[b, t]``: ``LayerSmoothHess`` then gives
        ``(B, W, W)`` word interactions, ``W = max id + 1``.

    Examples:
        >>> import torch
        >>> from captum_smoothhess.tokens import word_feature_mask
        >>> word_feature_mask(torch.tensor([0, 1, 1, 2]), 2)[0, :, 0]
        tensor([0, 1, 1, 2])
    """
    ids = _word_ids(word_ids)
    if isinstance(embed_dim, bool) or not isinstance(embed_dim, numbers.Integral) or embed_dim < 1:
        raise ValueError(f"embed_dim: expected a positive int, got {embed_dim!r}")
    embed_dim = int(embed_dim)
    return ids[:, :, None].expand(*ids.shape, embed_dim).contiguous()


def fold_interactions(matrix: Tensor, word_ids: Tensor) -> Tensor:
    """Fold token interactions ``(B, T, T)`` into word interactions ``(B, W, W)``.

    ``W[b, v, w] = sum_{s in v, t in w} matrix[b, s, t]``: the same grouping
    as :func:`word_feature_mask`, applied after the fact.

    Args:
        matrix: Token interactions ``(B, T, T)``.
        word_ids: The word index of every token, ``(T,)`` or ``(B, T)``.

    Returns:
        ``(B, W, W)``, ``W = max id + 1``.

    Examples:
        >>> import torch
        >>> from captum_smoothhess.tokens import fold_interactions
        >>> fold_interactions(torch.ones(1, 3, 3), torch.tensor([0, 0, 1]))
        tensor([[[4., 2.],
                 [2., 1.]]])
    """
    ids = _word_ids(word_ids).to(matrix.device)
    if matrix.dim() != 3 or matrix.shape[1] != matrix.shape[2] or matrix.shape[1] != ids.shape[1]:
        raise ValueError(
            f"matrix: expected (B, T, T) with T = {ids.shape[1]} tokens, got {tuple(matrix.shape)}"
        )
    if ids.shape[0] not in (1, matrix.shape[0]):
        raise ValueError(f"word_ids: batch {ids.shape[0]} does not fit the matrix's {matrix.shape[0]}")
    if ids.shape[1] == 0:
        raise ValueError("word_ids: no tokens (T = 0): there is nothing to fold")
    one_hot = torch.nn.functional.one_hot(ids, int(ids.max()) + 1).to(matrix.dtype)
    one_hot = one_hot.expand(matrix.shape[0], *one_hot.shape[1:])
    return one_hot.transpose(1, 2) @ matrix @ one_hot
