"""Checks of user-given token arrays: each mistake is one line naming the array and what was expected."""
import numpy as np

from infra.errors import UserError


def check_token_grids(tokens, shape, vocab_size, name):
    """(N, h, w) integer grids with values in [0, vocab_size), else UserError naming `name`."""
    tokens = np.asarray(tokens)
    h, w = shape
    if tokens.ndim != 3 or tokens.shape[1:] != (h, w):
        raise UserError(f"{name}: expected (N, {h}, {w}) token grids (the dataset's grid shape), "
                        f"got shape {tokens.shape}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise UserError(f"{name}: expected integer tokens, got dtype {tokens.dtype}")
    if len(tokens) == 0:
        raise UserError(f"{name}: holds no token grids")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= vocab_size:
        raise UserError(f"{name}: token values must lie in [0, {vocab_size}) (the dataset's vocabulary), "
                        f"got values in [{low}, {high}]")
    return tokens


def check_labels(labels, n, num_classes, name):
    """(n,) integer class labels in [0, num_classes), else UserError naming `name`."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise UserError(f"{name}: expected ({n},) labels, one per sample, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{name}: expected integer class labels, got dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{name}: labels must lie in [0, {num_classes}) (the dataset's classes), "
                        f"got values in [{labels.min()}, {labels.max()}]")
    return labels.astype(np.int64)
