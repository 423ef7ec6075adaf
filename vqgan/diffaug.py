"""Differentiable augmentation of the discriminator's inputs (DiffAugment, Zhao et al. 2020).

The discriminator sees augmented real and augmented fake images, so it cannot tell them apart
by what augmentation leaves intact only in real data, and overfits a small dataset less. Every
operation is differentiable, so the generator's gradient passes through it. Within one training
step the same random parameters transform real[i] and fake[i] (`sample` once, `apply` to both):
the pair differs only in what the generator made.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Augmentation:
    """One draw of the random parameters for a batch of B images."""

    brightness: torch.Tensor  # (B, 1, 1, 1) added, in [-0.5, 0.5)
    saturation: torch.Tensor  # (B, 1, 1, 1) factor on the distance to the pixel's gray, in [0, 2)
    contrast: torch.Tensor  # (B, 1, 1, 1) factor on the distance to the image mean, in [0.5, 1.5)
    shift: torch.Tensor  # (B, 2) integer (dy, dx) translation in pixels


class DiffAugment:
    """`color`: brightness, saturation, contrast; `translation`: shifts of up to that fraction of
    the side, the uncovered border filled with 0 (mid-gray for images in [-1, 1])."""

    def __init__(self, color=True, translation=0.125):
        if not 0 <= translation < 1:
            raise ValueError(f"translation must be a fraction in [0, 1), got {translation}")
        self.color = color
        self.translation = translation

    def sample(self, batch, height, width, generator=None, device="cpu") -> Augmentation:
        def uniform(low, high):
            u = torch.rand(batch, 1, 1, 1, generator=generator, device=device)
            return low + (high - low) * u

        max_shift = torch.tensor([int(height * self.translation), int(width * self.translation)],
                                 device=device)
        # uniform integers in [-max, max] per axis
        u = torch.rand(batch, 2, generator=generator, device=device)
        shift = (u * (2 * max_shift + 1)).floor().long() - max_shift
        return Augmentation(uniform(-0.5, 0.5), uniform(0.0, 2.0), uniform(0.5, 1.5), shift)

    def apply(self, x, aug: Augmentation):
        """(B, C, H, W) -> (B, C, H, W), differentiable in x."""
        if self.color:
            x = x + aug.brightness.to(x.dtype)
            gray = x.mean(dim=1, keepdim=True)
            x = (x - gray) * aug.saturation.to(x.dtype) + gray
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * aug.contrast.to(x.dtype) + mean
        if self.translation > 0:
            x = translate(x, aug.shift)
        return x


def translate(x, shift):
    """Shift each image by its own integer (dy, dx), filling with zeros: (B, C, H, W) -> same."""
    b, _, h, w = x.shape
    pad = int(shift.abs().max()) if shift.numel() else 0
    if pad == 0:
        return x
    padded = F.pad(x, (pad, pad, pad, pad))
    # output pixel (y, x) reads input pixel (y - dy, x - dx), i.e. padded (y - dy + pad, ...)
    rows = torch.arange(h, device=x.device) + pad - shift[:, :1]  # (B, H)
    cols = torch.arange(w, device=x.device) + pad - shift[:, 1:]  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C): advanced indexing
    return out.permute(0, 3, 1, 2)
