"""Rotary position embeddings over a token grid: 2D axial (default) or 1D over the raster order.

Each head vector of size `dim_head` is split into `dim_head // 2` rotation pairs
(x[j], x[j + dim_head // 2]). Rotating queries and keys by angle(position) * frequency makes the
score q(p1) . k(p2) a function of the offset p1 - p2 only. The rotation is applied per head,
after the head split, so every head sees positions.

Layouts (`layout`):

- "2d" (default, `axial_rotary`): the first half of the pairs is rotated by the token's row, the
  second half by its column, each axis with `dim_head // 4` frequencies, so the score depends on
  the 2D offset (r1 - r2, c1 - c2).
- "1d" (`sequence_rotary`): the grid is read as one raster sequence (row by row) and token
  (r, c) sits at r * w + c, with `dim_head // 2` frequencies. The score depends on the raster
  offset, so a token's neighbour above is as far as w tokens to its left: the ablation that
  shows what 2D positions are worth.

Coordinate conventions (`coords`):

- "integer" (default): a token sits at its index along the axis (0, 1, 2, ...), with the usual
  RoPE frequencies base ** (-i / n), i = 0..n-1. The score depends on the offset counted in
  tokens, so a token's neighbourhood looks the same on any grid size. A VQ-GAN token always
  covers the same number of pixels, so a model trained on 32x32 latents can be run on a 64x64
  latent (a larger image at the same scale): nearby offsets are exactly the ones it was trained
  on; only offsets beyond the training grid are new.
- "normalized": the original SUNDAE-VQGAN's convention. The `size` tokens of an axis are spread
  evenly over [-1, 1] (torch.linspace(-1, 1, size)) and the frequencies are the rotary-embedding
  library's "pixel" ones, pi * linspace(1, max_freq / 2, n), with max_freq = size, the number
  of tokens along the axis. On the original's square grids that is its
  max_freq = int(sqrt(sequence length)). Position is then relative to the image, not the token:
  on a larger grid the same offset in tokens is a smaller angle than in training, so the model
  sees a "zoomed-in" geometry it never learned. Kept to compare with the original.
  Two notes on the original. Its code builds the pre/post blocks of every hourglass level with
  the reference's default max_seq_len = 256 (HourglassTransformer does not forward max_seq_len),
  so there they used max_freq 16 whatever the grid; only the innermost valley got
  sqrt(its length). On 16x16 latents (FFHQ256, CelebA256, ImageNet) that is exactly what this
  does; on 32x32 (FFHQ1024) its full-resolution blocks used 16 where this uses 32. And the two
  ends of an axis (-1 and +1) differ by 2 * frequency, a whole turn for every frequency that is
  a whole multiple of pi (always the lowest, pi): when all of them are, e.g. 32 tokens with
  dim_head 64 (16 frequencies pi * 1..16), the first and last row get the same rotation.

Every hourglass level computes positions on its own grid (a pooled token at row r of the
shortened grid sits at r; for "normalized", the level's grid spans [-1, 1] with max_freq = its
side), so offsets at every level are counted in that level's tokens.
"""
import math

import torch

from .errors import HourglassError

COORDS = ("integer", "normalized")
LAYOUTS = ("2d", "1d")
ROPE_BASE = 10_000.0


def axis_frequencies(n, coords, size):
    """(n,) float64 angular frequencies for an axis of `size` tokens."""
    if coords == "integer":
        return ROPE_BASE ** (-torch.arange(n, dtype=torch.float64) / n)
    # the "pixel" frequencies: from one half-turn to max_freq / 2 half-turns per unit of [-1, 1]
    return torch.linspace(1.0, size / 2, n, dtype=torch.float64) * math.pi


def axis_positions(size, coords):
    """(size,) float64 coordinates of the tokens along one axis."""
    if coords == "integer":
        return torch.arange(size, dtype=torch.float64)
    return torch.linspace(-1.0, 1.0, size, dtype=torch.float64)


def axis_angles(size, n, coords):
    """(size, n) float64 rotation angles of the tokens along one axis."""
    return axis_positions(size, coords)[:, None] * axis_frequencies(n, coords, size)


def check(dim_head, coords, layout="2d"):
    multiple = 4 if layout == "2d" else 2  # 2d: a pair per frequency per axis
    if layout not in LAYOUTS:
        raise HourglassError(f"rotary_layout={layout!r}: expected one of {LAYOUTS}")
    if coords not in COORDS:
        raise HourglassError(f"rotary_coords={coords!r}: expected one of {COORDS}")
    if dim_head % multiple:
        raise HourglassError(f"dim_head={dim_head}: {layout.upper()} rotary embeddings need a multiple of {multiple}")


def axial_rotary(h, w, dim_head, coords="integer", device=None, dtype=torch.float32):
    """(cos, sin) of the 2D rotation angles for an h x w grid, flattened row-major.

    Each is (h*w, dim_head // 2); angles are computed in float64, then cast to `dtype`.
    """
    check(dim_head, coords, "2d")
    n = dim_head // 4
    rows, cols = axis_angles(h, n, coords), axis_angles(w, n, coords)  # (h, n), (w, n)
    angles = torch.cat(
        (rows[:, None, :].expand(h, w, n), cols[None, :, :].expand(h, w, n)), dim=-1
    ).reshape(h * w, dim_head // 2)
    return angles.cos().to(device, dtype), angles.sin().to(device, dtype)


def sequence_rotary(length, dim_head, coords="integer", device=None, dtype=torch.float32):
    """(cos, sin) of the 1D rotation angles for `length` tokens, each (length, dim_head // 2)."""
    check(dim_head, coords, "1d")
    angles = axis_angles(length, dim_head // 2, coords)
    return angles.cos().to(device, dtype), angles.sin().to(device, dtype)


def grid_rotary(h, w, dim_head, coords="integer", layout="2d", device=None, dtype=torch.float32):
    """(cos, sin) for an h x w grid flattened row-major: axial ("2d") or over the raster order ("1d")."""
    if layout == "1d":
        return sequence_rotary(h * w, dim_head, coords, device, dtype)
    return axial_rotary(h, w, dim_head, coords, device, dtype)


def apply_rotary(x, cos, sin):
    """Rotate the pairs (x[j], x[j + e/2]) of x (..., L, e) by the angles behind cos, sin (L, e/2)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
