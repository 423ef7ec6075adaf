"""Turn image files into VQ-GAN token grids (the work behind generate-latents.py and recon-vqgan.py)."""
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from infra.devices import memory_bytes
from infra.errors import UserError
from infra.images import ImageFiles, collate_skipping_unreadable, open_rgb


@dataclass
class EncodedImages:
    tokens: np.ndarray                 # (N, h, w) int64: originals, then (if flipped) mirrored copies interleaved
    sources: list                      # source path of each row
    flipped: list                      # whether each row is the mirrored copy
    file_index: np.ndarray             # (N,) index into the input file list of each row
    skipped: list = field(default_factory=list)  # unreadable files


def image_size(vqgan, resolution=None):
    """The (H, W) images are brought to: `resolution` if given, else the VQ-GAN's own."""
    f = vqgan.downsample_factor
    size = tuple(resolution) if resolution else (vqgan.resolution, vqgan.resolution)
    if min(size) < 1 or size[0] % f or size[1] % f:
        raise UserError(f"--resolution {size[0]} {size[1]}: both sides must be positive and divisible by "
                        f"the VQ-GAN's downsample factor {f}")
    return size


def batch_bytes(vqgan, size, images):
    """A lower bound on the memory that encoding (or decoding) `images` images of `size` at once
    needs: their float32 pixels, and one convolution's input and output at full resolution, where
    the encoder's first level (and the decoder's last) has ch * ch_mult[0] channels."""
    dd = vqgan.config.ddconfig
    width = dd.ch * max(1, dd.ch_mult[0])
    return images * 4 * size[0] * size[1] * (3 + 2 * width)


def check_batch_fits(vqgan, size, batch_size, device, copies=1):
    """UserError, before anything is allocated, when a batch of `batch_size` images (`copies`
    rows each, 2 with mirrored copies) at `size` needs more memory than `device` has."""
    device = torch.device(device)
    if device.type == "cuda":
        have, where = torch.cuda.get_device_properties(device).total_memory, f"{device}'s"
    else:
        have, where = memory_bytes(), "this machine's"
    need = batch_bytes(vqgan, size, batch_size * copies)
    if need > have:
        raise UserError(f"--resolution {size[0]} {size[1]}: a batch of {batch_size * copies} image(s) at "
                        f"{size[0]}x{size[1]} needs at least {need / 2**30:,.1f} GiB (pixels and full-resolution "
                        f"activations, float32), more than {where} {have / 2**30:,.1f} GiB of memory; "
                        "lower --resolution or --batch-size")


def report_skipped(paths):
    """One warning line per unreadable image, on stderr, saying why, then how many were skipped."""
    for path in paths:
        try:
            open_rgb(path)
            why = f"{path}: unreadable image (it could not be read at the time)"
        except UserError as e:
            why = str(e)
        print(f"warning: {why}; skipped", file=sys.stderr)
    if paths:
        print(f"warning: {len(paths)} unreadable image(s) skipped", file=sys.stderr)


@torch.inference_mode()
def encode_images(vqgan, files, size, *, flip=False, batch_size=32, num_workers=0, device="cpu",
                  progress=True):
    """Encode every readable file; each image is followed by its horizontal mirror when `flip`.

    Unreadable images are skipped and listed in `.skipped`, so one bad file in a large folder
    does not lose the run.
    """
    loader = torch.utils.data.DataLoader(
        ImageFiles(files, size), batch_size=batch_size, num_workers=num_workers,
        collate_fn=collate_skipping_unreadable)
    tokens, index, mirrored, skipped = [], [], [], []
    with tqdm(total=len(files), unit="img", disable=not progress, desc="encoding") as bar:
        for idx, images, bad in loader:
            skipped += [files[i] for i in bad]
            if images is not None:
                x = images.to(device)
                if flip:
                    # (B, 3, H, W) -> (2B, ...) with each image directly followed by its mirror
                    x = torch.stack([x, x.flip(-1)], dim=1).flatten(0, 1)
                tokens.append(vqgan.encode(x).cpu().numpy())
                copies = 2 if flip else 1
                index += [i for i in idx for _ in range(copies)]
                mirrored += [c == 1 for _ in idx for c in range(copies)]
            bar.update(len(idx) + len(bad))
    h, w = size[0] // vqgan.downsample_factor, size[1] // vqgan.downsample_factor
    tokens = np.concatenate(tokens) if tokens else np.zeros((0, h, w), np.int64)
    return EncodedImages(tokens=tokens, sources=[str(files[i]) for i in index], flipped=mirrored,
                         file_index=np.asarray(index, dtype=np.int64), skipped=[str(f) for f in skipped])
