"""The start of every sampler: a batch of token grids, from a shape or from given tokens, and
the checks of the arguments all samplers share."""
import math
from numbers import Real

import torch

from priors.errors import PriorError


def start_grid(start, nb_samples, device):
    """(tokens (N, h, w) long or None, shape (N, h, w), device) of a sampler's `start`: a shape,
    (h, w) with nb_samples or (N, h, w) (tokens None: the sampler fills them), or a LongTensor,
    (h, w) with nb_samples or (N, h, w) (copied onto `device`, default its own)."""
    if torch.is_tensor(start):
        device = start.device if device is None else torch.device(device)
        tokens = with_batch(start.to(device=device, dtype=torch.long), nb_samples, "start tokens")
        return tokens, tuple(tokens.shape), device
    device = torch.device("cpu") if device is None else torch.device(device)
    shape = tuple(start)
    if len(shape) == 2:
        shape = (count("nb_samples", nb_samples),) + shape
    elif len(shape) != 3 or (nb_samples is not None and nb_samples != shape[0]):
        raise PriorError(f"start shape must be (h, w) with nb_samples or (N, h, w), got {shape}")
    return None, shape, device


def with_batch(grid, nb_samples, what):
    """(h, w) -> (nb_samples, h, w); (N, h, w) is returned (copied) if it agrees with nb_samples."""
    if grid.dim() == 2:
        return grid.expand(count("nb_samples", nb_samples), *grid.shape).clone()
    if grid.dim() != 3 or (nb_samples is not None and nb_samples != grid.shape[0]):
        raise PriorError(f"{what} must be (h, w) with nb_samples or (N, h, w), got shape "
                          f"{tuple(grid.shape)} with nb_samples={nb_samples}")
    return grid.clone()


def keep_mask_for(keep_mask, tokens):
    """A keep-mask (bool, (h, w) or (N, h, w)) brought to the shape of `tokens` (N, h, w)."""
    if tokens is None:
        raise PriorError("keep_mask needs start tokens to keep, got only a shape")
    keep = with_batch(keep_mask.to(device=tokens.device, dtype=torch.bool), tokens.shape[0], "keep_mask")
    if keep.shape != tokens.shape:
        raise PriorError(f"keep_mask of shape {tuple(keep.shape)} does not match the grid {tuple(tokens.shape)}")
    return keep


def count(name, value, minimum=1):
    """An int >= minimum (bools refused), else PriorError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PriorError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def positive(name, value):
    """A finite real > 0 (bools refused), else PriorError naming it."""
    if not (isinstance(value, Real) and not isinstance(value, bool) and value > 0 and math.isfinite(value)):
        raise PriorError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def cond_for(cond, n, device):
    """Class labels (or any conditioning) with one row per sample, on `device`; None stays None."""
    if cond is None:
        return None
    if cond.dim() == 0 or cond.shape[0] != n:
        raise PriorError(f"cond must have one row per sample ({n}), got shape {tuple(cond.shape)}")
    return cond.to(device)
