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
from typing import Optional, Sequence, Union

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from ._validation import _check_positive_int, _refuse_meta

__all__ = ["fold_interactions", "token_feature_mask", "word_feature_mask"]

# Word ids: a tensor, a NumPy array or a (nested) list such as a tokenizer's ``word_ids()``.
WordIds = Union[Tensor, npt.NDArray[np.integer], Sequence[int], Sequence[Sequence[int]]]


def _is_integer_tensor(value: Tensor) -> bool:
    return not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)


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
    seq_len, embed_dim = _check_positive_int(seq_len, "seq_len"), _check_positive_int(embed_dim, "embed_dim")
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(
                f"device: expected a torch.device or a name such as 'cpu', got {device!r}"
            ) from None
    return torch.arange(seq_len, device=device)[None, :, None].expand(1, seq_len, embed_dim).contiguous()


def _ids_from_sequence(word_ids: object) -> Tensor:
    """A list (e.g. a tokenizer's ``word_ids()``) or an array of word ids as an int64 tensor."""
    arr = word_ids if isinstance(word_ids, np.ndarray) else np.array(word_ids, dtype=object)
    if np.issubdtype(arr.dtype, np.integer):
        return torch.from_numpy(arr.astype(np.int64))
    if arr.dtype != object:
        raise TypeError(f"word_ids: expected integer word indices, got an array of dtype {arr.dtype}")
    flat = arr.reshape(-1).tolist()
    if any(v is None for v in flat):
        raise ValueError(
            "word_ids: a token has no word id (None, as a tokenizer gives its special tokens); "
            "give special tokens their own word ids"
        )
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in flat):
        raise TypeError("word_ids: expected integer word indices shaped (T,) or (B, T)")
    return torch.tensor(flat, dtype=torch.long).reshape(arr.shape)


def _word_ids(word_ids: WordIds) -> Tensor:
    if isinstance(word_ids, (list, tuple, np.ndarray)):
        word_ids = _ids_from_sequence(word_ids)
    if not isinstance(word_ids, Tensor) or not _is_integer_tensor(word_ids):
        raise TypeError(
            "word_ids: expected integer word indices (T,) or (B, T), as a tensor, a NumPy array or a list"
        )
    _refuse_meta(word_ids, "word_ids")
    if word_ids.dim() == 1:
        word_ids = word_ids[None]
    if word_ids.dim() != 2:
        raise ValueError(f"word_ids: expected shape (T,) or (B, T), got {tuple(word_ids.shape)}")
    if word_ids.shape[1] == 0:
        raise ValueError("word_ids: no tokens (T = 0)")
    if word_ids.numel() and int(word_ids.min()) < 0:
        raise ValueError("word_ids: ids must be non-negative (give special tokens their own word)")
    return word_ids.long()


def word_feature_mask(word_ids: WordIds, embed_dim: int) -> Tensor:
    """Group the units of all sub-word tokens of one word: a ``(B, T, E)`` feature mask.

    Args:
        word_ids: The word index of every token, ``(T,)`` or ``(B, T)``, a
            tensor, a NumPy array or a list (e.g. a tokenizer's
            ``word_ids()``, with special tokens given their own ids in place
            of ``None``), non-negative.
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
    embed_dim = _check_positive_int(embed_dim, "embed_dim")
    return ids[:, :, None].expand(*ids.shape, embed_dim).contiguous()


def fold_interactions(matrix: Tensor, word_ids: WordIds) -> Tensor:
    """Fold token interactions ``(B, T, T)`` into word interactions ``(B, W, W)``.

    ``W[b, v, w] = sum_{s in v, t in w} matrix[b, s, t]``: the same grouping
    as :func:`word_feature_mask`, applied after the fact.

    Args:
        matrix: Token interactions ``(B, T, T)``.
        word_ids: The word index of every token, ``(T,)`` or ``(B, T)``
            (as for :func:`word_feature_mask`).

    Returns:
        ``(B, W, W)``, ``W = max id + 1``.

    Examples:
        >>> import torch
        >>> from captum_smoothhess.tokens import fold_interactions
        >>> fold_interactions(torch.ones(1, 3, 3), torch.tensor([0, 0, 1]))
        tensor([[[4., 2.],
                 [2., 1.]]])
    """
    if not isinstance(matrix, Tensor) or matrix.is_complex() or matrix.dtype == torch.bool:
        kind = f"dtype {matrix.dtype}" if isinstance(matrix, Tensor) else type(matrix).__name__
        raise TypeError(f"matrix: expected a real tensor of token interactions (B, T, T), got {kind}")
    _refuse_meta(matrix, "matrix")
    ids = _word_ids(word_ids).to(matrix.device)
    if matrix.dim() != 3 or matrix.shape[1] != matrix.shape[2] or matrix.shape[1] != ids.shape[1]:
        raise ValueError(
            f"matrix: expected (B, T, T) with T = {ids.shape[1]} tokens, got {tuple(matrix.shape)}"
        )
    if ids.shape[0] not in (1, matrix.shape[0]):
        raise ValueError(f"word_ids: batch {ids.shape[0]} does not fit the matrix's {matrix.shape[0]}")
    one_hot = torch.nn.functional.one_hot(ids, int(ids.max()) + 1).to(matrix.dtype)
    one_hot = one_hot.expand(matrix.shape[0], *one_hot.shape[1:])
    return one_hot.transpose(1, 2) @ matrix @ one_hot
