"""2D axial rotary position embeddings.

Each head vector of size `dim_head` is split into `dim_head // 2` rotation pairs
(x[j], x[j + dim_head // 2]). The first half of the pairs is rotated by the token's row,
the second half by its column, each axis with `dim_head // 4` frequencies. Rotating both
queries and keys makes the score q(r1, c1) . k(r2, c2) a function of the 2D offset
(r1 - r2, c1 - c2) only. The rotation is applied per head, after the head split, so every
head sees positions.

Coordinate conventions (`coords`):

- "integer" (default): a token at row r, column c sits at (r, c), with the usual RoPE
  frequencies base ** (-i / n), i = 0..n-1. The score depends on the offset counted in
  tokens, so a token's neighbourhood looks the same on any grid size. A VQ-GAN token
  always covers the same number of pixels, so a model trained on 32x32 latents can be run
  on a 64x64 latent (a larger image at the same scale): nearby offsets are exactly the ones
  it was trained on; only offsets beyond the training grid are new.
- "normalized": rows and columns are spread evenly over [-1, 1], with frequencies
  pi * 16 ** (i / (n - 1)). Position is then relative to the image, not the token: on a
  larger grid neighbouring tokens are closer in angle than in training, so the model sees a
  "zoomed-in" geometry it never learned. Useful only to compare with the original code.

Every hourglass level computes positions on its own grid (a pooled token at row r of the
shortened grid sits at r), so offsets at every level are counted in that level's tokens.
"""
import math

import torch

from .errors import HourglassError

COORDS = ("integer", "normalized")
ROPE_BASE = 10_000.0
NORMALIZED_MAX_FREQ = 16.0  # in units of pi: the finest wave has 16 periods across [-1, 1]


def axis_frequencies(n, coords):
    """(n,) float64 angular frequencies for one axis."""
    i = torch.arange(n, dtype=torch.float64)
    if coords == "integer":
        return ROPE_BASE ** (-i / n)
    return math.pi * NORMALIZED_MAX_FREQ ** (i / max(n - 1, 1))


def axis_positions(size, coords):
    """(size,) float64 coordinates of the tokens along one axis."""
    if coords == "integer":
        return torch.arange(size, dtype=torch.float64)
    return torch.linspace(-1.0, 1.0, size, dtype=torch.float64)


def axial_rotary(h, w, dim_head, coords="integer", device=None, dtype=torch.float32):
    """(cos, sin) of the rotation angles for an h x w grid, flattened row-major.

    Each is (h*w, dim_head // 2); angles are computed in float64, then cast to `dtype`.
    """
    if dim_head % 4:
        raise HourglassError(f"dim_head={dim_head}: 2D rotary embeddings need a multiple of 4")
    if coords not in COORDS:
        raise HourglassError(f"rotary_coords={coords!r}: expected one of {COORDS}")
    freqs = axis_frequencies(dim_head // 4, coords)
    rows = axis_positions(h, coords)[:, None] * freqs  # (h, n)
    cols = axis_positions(w, coords)[:, None] * freqs  # (w, n)
    angles = torch.cat(
        (rows[:, None, :].expand(h, w, -1), cols[None, :, :].expand(h, w, -1)), dim=-1
    ).reshape(h * w, dim_head // 2)
    return angles.cos().to(device, dtype), angles.sin().to(device, dtype)


def apply_rotary(x, cos, sin):
    """Rotate the pairs (x[j], x[j + e/2]) of x (..., L, e) by the angles behind cos, sin (L, e/2)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
