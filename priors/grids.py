"""What every sampler shares: the starting batch of grids (from a shape or from given tokens,
with a keep-mask for inpainting), one categorical draw, and the checks of their arguments."""
import math
from numbers import Real

import torch

from priors.errors import PriorError


def sample_categorical(logits, generator=None):
    """Draw one token per position from softmax(logits); no gradient flows through the draw.

    logits: (..., V). Returns a LongTensor of shape logits.shape[:-1]. Inverse-CDF sampling: one
    uniform number per position and a binary search in the cumulative probabilities, several
    times faster than torch.multinomial for large vocabularies (8192 codes) and the same
    distribution. The softmax is taken in float32 so bf16/fp16 logits still give a proper one.
    """
    with torch.no_grad():
        cdf = logits.detach().float().softmax(dim=-1).cumsum(dim=-1)  # (..., V)
        # Scale by the last entry, not 1: float32 cumsums miss 1 by rounding.
        u = torch.rand((*cdf.shape[:-1], 1), generator=generator, device=cdf.device) * cdf[..., -1:]
        # right=True: the first index whose cdf exceeds u, so zero-probability tokens are never drawn.
        draws = torch.searchsorted(cdf, u, right=True).squeeze(-1)
    return draws.clamp_(max=logits.shape[-1] - 1)


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


def masked_start(start, *, mask_id, nb_samples=None, keep_mask=None, device=None):
    """Resolve a sampler's start to (tokens (N, h, w) long with mask_id where unknown, known (N, h, w) bool).

    start: a shape, (h, w) with nb_samples or (N, h, w): everything unknown. Or a LongTensor,
    (h, w) with nb_samples or (N, h, w), with values in [0, mask_id]: the known positions are
    keep_mask's True entries (bool, (h, w) or (N, h, w)), or without keep_mask the positions
    that do not hold mask_id. Known positions must hold real tokens (< mask_id).
    """
    tokens, shape, device = start_grid(start, nb_samples, device)
    if tokens is None:
        if keep_mask is not None:
            keep_mask_for(keep_mask, tokens)  # says that a keep-mask needs start tokens
        unknown = torch.full(shape, mask_id, dtype=torch.long, device=device)
        return unknown, torch.zeros(shape, dtype=torch.bool, device=device)
    if tokens.numel() and (tokens.min() < 0 or tokens.max() > mask_id):
        raise PriorError(f"start tokens must lie in [0, {mask_id}] ({mask_id} = masked), got values outside")
    known = tokens != mask_id if keep_mask is None else keep_mask_for(keep_mask, tokens)
    if keep_mask is not None and bool((tokens[known] == mask_id).any()):
        raise PriorError(f"keep_mask keeps a position whose start token is the mask ({mask_id})")
    return torch.where(known, tokens, torch.full_like(tokens, mask_id)), known


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


def cond_for(cond, n, device):
    """Class labels (or any conditioning) with one row per sample, on `device`; None stays None."""
    if cond is None:
        return None
    if cond.dim() == 0 or cond.shape[0] != n:
        raise PriorError(f"cond must have one row per sample ({n}), got shape {tuple(cond.shape)}")
    return cond.to(device)


def checked_logits(logits, num_tokens, hint=""):
    """`logits` when their last dimension is the vocabulary, else the one-line PriorError."""
    if logits.shape[-1] != num_tokens:
        raise PriorError(f"model gives {logits.shape[-1]} logits per position, expected "
                         f"num_tokens={num_tokens}{hint}")
    return logits


def count(name, value, minimum=1):
    """An int >= minimum (bools refused), else PriorError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PriorError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def positive(name, value):
    """A finite real > 0 (bools refused), else PriorError naming it."""
    if not (is_real(value) and value > 0 and math.isfinite(value)):
        raise PriorError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def is_real(value):
    return isinstance(value, Real) and not isinstance(value, bool)


class StepRecorder:
    """The grids a sampler passes through, from its start: kept as `frames` when asked
    (return_history), and handed to `on_step(tokens)` as each step ends (a page that shows the
    denoising while it runs). Each frame is a copy: the sampler goes on writing in place."""

    def __init__(self, start, keep=False, on_step=None):
        self.frames = [] if keep else None
        self.on_step = on_step
        self(start)

    def __call__(self, tokens):
        if self.frames is None and self.on_step is None:
            return
        frame = tokens.clone()
        if self.frames is not None:
            self.frames.append(frame)
        if self.on_step is not None:
            self.on_step(frame)
