"""Inpainting with a trained prior: pixel masks -> latent keep-masks, sampling with known tokens
fixed, and the original | masked | inpaintings figure.

Mask convention: in a mask image, WHITE (>= 128 after conversion to gray) marks pixels to
REGENERATE and black marks pixels to keep. A latent position is kept only if every pixel of its
f x f patch is kept.
"""
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from generation.masks import block_mask, grid_keep_mask_from_pixels, random_block_mask
from infra.errors import UserError
from infra.images import UNREADABLE, image_transform, list_images, open_rgb, refusing_bombs
from latents.dataset import LatentDataset, read_meta
from latents.discrete import quantise


def read_mask_image(path, size):
    """A mask PNG as an (H, W) bool tensor, True where pixels are to be regenerated."""
    try:
        with refusing_bombs(), Image.open(path) as im:
            gray = np.asarray(im.convert("L"))
    except UNREADABLE as e:
        raise UserError(f"{path}: unreadable mask image ({e})") from None
    if gray.shape != tuple(size):
        raise UserError(f"{path}: mask is {gray.shape[0]}x{gray.shape[1]} (HxW), expected "
                          f"{size[0]}x{size[1]}, the size of the image being inpainted")
    return torch.from_numpy(gray >= 128)


def regenerate_mask(size, mask_path=None, block=None, random_blocks=None, generator=None):
    """(H, W) bool, True where to regenerate, from exactly one of: a mask image, a block
    (y, x, h, w), or random blocks (n, size); all in the units of `size`."""
    given = [m is not None for m in (mask_path, block, random_blocks)]
    if sum(given) != 1:
        raise UserError("give exactly one of --mask, --block, --random-blocks")
    if mask_path is not None:
        return read_mask_image(mask_path, size)
    if block is not None:
        return block_mask(*size, *block)
    return random_block_mask(*size, *random_blocks, generator=generator)


def latent_keep_mask(regenerate, f):
    """Pixel regenerate-mask (H, W) -> latent keep-mask (H/f, W/f)."""
    if f == 1:
        return ~regenerate
    return grid_keep_mask_from_pixels(~regenerate, f)


def inpaint(prior, tokens, keep, sampling, nb_samples, cond=None, generator=None):
    """K inpaintings of one grid: (h, w) tokens, (h, w) keep -> (K, h, w) tokens, kept ones fixed."""
    device = prior.device
    if cond is not None:
        cond = torch.full((nb_samples,), int(cond), device=device)
    result = prior.sample(tokens.to(device), sampling, nb_samples=nb_samples, cond=cond,
                          keep_mask=keep.to(device), generator=generator)
    return result.tokens


def masked_preview(image, keep, gray=0.0):
    """(3, H, W) image with the regenerated latent patches painted gray, to show what was hidden."""
    pixel_keep = F.interpolate(keep[None, None].float(), size=image.shape[-2:], mode="nearest")[0]
    return image * pixel_keep + gray * (1 - pixel_keep)


def load_inputs(prior, images=None, dataset_rows=None, class_idx=None):
    """[(name, tokens (h, w), image (3, H, W) in [-1, 1], label)] for every input: rows of the
    config's dataset (its eval split when it has one), or image files, encoded by the VQ-GAN or,
    for token-space configs, read as gray levels with the dataset builders' own quantisation."""
    label = class_idx or 0
    if dataset_rows is not None:
        data = prior.cfg.data
        root = data.root or data.eval_root
        ds = LatentDataset(root, "eval" if "eval" in read_meta(root)["splits"] else "train")
        inputs = []
        for i in dataset_rows:
            if not 0 <= i < len(ds):
                raise UserError(f"--dataset-rows {i}: out of range, {root} ({ds.split}) has {len(ds)} rows")
            tokens, row_label = ds[i]
            inputs.append((f"{ds.split}-{i:05d}", tokens, prior.render(tokens[None])[0], max(row_label, 0)))
        return inputs
    if images is None:
        raise UserError("give an image file or directory, or --dataset-rows")
    h, w = prior.latent_shape
    inputs = []
    for path in list_images(images):
        if prior.vqgan is None:  # token space: gray levels on the latent grid
            gray = (image_transform((h, w))(open_rgb(path)).mean(0) + 1) / 2  # (h, w) in [0, 1]
            tokens = torch.from_numpy(quantise((gray * 255).round().byte().numpy(), prior.num_tokens))
            inputs.append((path.stem, tokens, prior.render(tokens[None])[0], label))
        else:
            f = prior.vqgan.downsample_factor
            image = image_transform((h * f, w * f))(open_rgb(path))
            device = next(prior.vqgan.parameters()).device
            tokens = prior.vqgan.encode(image[None].to(device))[0].cpu()
            inputs.append((path.stem, tokens, image, label))
    return inputs


def figure_row(original, keep, inpaintings):
    """original | masked | inpaintings, as one (K + 2, 3, H, W) batch for a grid row."""
    return torch.cat([original[None], masked_preview(original, keep)[None], inpaintings])
