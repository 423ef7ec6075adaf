"""Inpainting masks: rectangular blocks, random blocks, and pixel masks brought to the latent grid.

The block builders return True INSIDE the block(s), i.e. the region to regenerate; the sampler's
keep_mask is its complement (`keep = ~block_mask(...)`). They work in any unit: pass the latent
grid's size for a latent mask, or the image's size for a pixel mask.
"""
import torch
from einops import rearrange

from infra.errors import UserError


def block_mask(h, w, y, x, bh, bw):
    """(h, w) bool, True on the bh x bw block whose top-left corner is row y, column x."""
    if bh < 1 or bw < 1 or y < 0 or x < 0 or y + bh > h or x + bw > w:
        raise UserError(
            f"block (y={y}, x={x}, height={bh}, width={bw}) must lie inside the {h}x{w} grid"
        )
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[y : y + bh, x : x + bw] = True
    return mask


def random_block_mask(h, w, n, size, generator=None):
    """(h, w) bool, True on the union of n size x size squares placed uniformly inside the grid.

    Squares may overlap. Positions come from `generator` (a CPU generator), so a seed fixes them.
    """
    if n < 0:
        raise UserError(f"number of random blocks must be >= 0, got {n}")
    if size < 1 or size > min(h, w):
        raise UserError(f"random block size must be in [1, {min(h, w)}] for a {h}x{w} grid, got {size}")
    tops = torch.randint(h - size + 1, (n, 1), generator=generator)  # (n, 1)
    lefts = torch.randint(w - size + 1, (n, 1), generator=generator)  # (n, 1)
    rows, cols = torch.arange(h), torch.arange(w)
    in_rows = (rows >= tops) & (rows < tops + size)  # (n, h)
    in_cols = (cols >= lefts) & (cols < lefts + size)  # (n, w)
    return (in_rows[:, :, None] & in_cols[:, None, :]).any(dim=0)  # (n, h, w) -> (h, w)


def grid_keep_mask_from_pixels(pixel_keep, f):
    """(H, W) bool pixel keep-mask -> (H/f, W/f) latent keep-mask.

    A latent position covers an f x f block of pixels and is kept only if every one of them is
    kept: a latent touching any pixel to regenerate is regenerated.
    """
    pixel_keep = torch.as_tensor(pixel_keep)
    if pixel_keep.dtype != torch.bool or pixel_keep.dim() != 2:
        raise UserError(
            f"pixel keep-mask must be a 2D bool array, got {pixel_keep.dtype} of shape {tuple(pixel_keep.shape)}"
        )
    if isinstance(f, bool) or not isinstance(f, int) or f < 1:
        raise UserError(f"downsampling factor must be an integer >= 1, got {f!r}")
    height, width = pixel_keep.shape
    if height % f or width % f:
        raise UserError(f"mask of size {height}x{width} is not divisible by the downsampling factor {f}")
    blocks = rearrange(pixel_keep, "(h fh) (w fw) -> h w (fh fw)", fh=f, fw=f)
    return blocks.all(dim=-1)  # (H/f, W/f, f*f) -> (H/f, W/f)
