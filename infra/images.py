"""Image files in and out: folders of images as tensors in [-1, 1], PNG writing, PSNR."""
import contextlib
import warnings
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, UnidentifiedImageError
from torchvision.utils import save_image

from infra.errors import UserError
from infra.files import atomic_path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def list_images(path):
    """A single image file, or every image under a directory (recursively, sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"{path}: no such image file or directory")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"{path}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def list_class_images(root):
    """An ImageFolder layout `root/<class>/<image>`: (files, labels, class names)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such directory")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir())
    if not class_dirs:
        raise UserError(f"{root}: --use-class needs one sub-directory per class, found none")
    files, labels = [], []
    for label, d in enumerate(class_dirs):
        images = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        files += images
        labels += [label] * len(images)
    if not files:
        raise UserError(f"{root}: no images found in its class directories")
    return files, labels, [d.name for d in class_dirs]


def image_transform(size):
    """PIL image -> (3, H, W) in [-1, 1]: scale so it covers `size` (H, W), centre-crop."""
    height, width = size

    def transform(image):
        scale = max(height / image.height, width / image.width)
        covered = (max(height, round(image.height * scale)), max(width, round(image.width * scale)))
        x = TF.to_image(image)
        x = TF.resize(x, list(covered), antialias=True)
        x = TF.center_crop(x, [height, width])
        return TF.to_dtype(x, torch.float32, scale=True) * 2 - 1

    return transform


# What PIL raises for a file that is not a readable image, a decompression bomb included (a
# header claiming more than PIL's MAX_IMAGE_PIXELS, refused before any pixel is decoded).
UNREADABLE = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError,
              Image.DecompressionBombWarning)


@contextlib.contextmanager
def refusing_bombs():
    """PIL only warns between MAX_IMAGE_PIXELS and twice that; treat those as unreadable too."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def open_rgb(path):
    """Open any image as RGB (grayscale, palette and RGBA are converted); UserError if unreadable."""
    try:
        with refusing_bombs(), Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except UNREADABLE as e:
        raise UserError(f"{path}: unreadable image ({e})") from None


class ImageFiles(torch.utils.data.Dataset):
    """Images as (3, H, W) tensors in [-1, 1]. An unreadable file yields `None` for the image,
    so a loader can skip it and report its path instead of crashing mid-run."""

    def __init__(self, files, size):
        self.files = list(files)
        self.transform = image_transform(size)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        try:
            return i, self.transform(open_rgb(self.files[i]))
        except UserError:
            return i, None


def collate_skipping_unreadable(batch):
    """(indices of readable items, their images stacked, indices of unreadable items)."""
    ok = [(i, x) for i, x in batch if x is not None]
    bad = [i for i, x in batch if x is None]
    if not ok:
        return [], None, bad
    idx, xs = zip(*ok)
    return list(idx), torch.stack(xs), bad


def to_unit(x):
    """[-1, 1] -> [0, 1]."""
    return ((x.clamp(-1, 1) + 1) / 2)


def psnr(a, b):
    """Per-image PSNR in dB of images in [-1, 1], (B, C, H, W) -> (B,)."""
    mse = ((to_unit(a) - to_unit(b)) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


def save_png(images, path, nrow=8, padding=2):
    """Save a (B, C, H, W) batch in [-1, 1] as one grid PNG, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        save_image(to_unit(images.detach().float().cpu()), tmp, nrow=nrow, padding=padding, format="png")
