"""Small image datasets as token grids with no VQ-GAN: each gray level is a token."""
from pathlib import Path

import numpy as np

from infra.errors import UserError

TORCHVISION_SETS = {"mnist": "MNIST", "fashion": "FashionMNIST", "kmnist": "KMNIST"}
# the gray levels each dataset has, so the most --levels can keep: scikit-learn's digits are
# 0..16, the torchvision sets uint8
SOURCE_LEVELS = {"digits": 17, **dict.fromkeys(TORCHVISION_SETS, 256)}


def check_levels(name, levels):
    """UserError unless `levels` (None: all of them) is a gray-level count dataset `name` can give."""
    if levels is not None and not 2 <= levels <= SOURCE_LEVELS[name]:
        raise UserError(f"--levels {levels}: {name} has {SOURCE_LEVELS[name]} gray levels; expected 2 to "
                        f"{SOURCE_LEVELS[name]} (or leave it out to keep them all)")


def digits_grids(levels=None):
    """scikit-learn's bundled digits: (1797, 8, 8) grids of 17 gray levels (or `levels`), labels 0-9."""
    from sklearn.datasets import load_digits

    levels = SOURCE_LEVELS["digits"] if levels is None else levels
    check_levels("digits", levels)
    digits = load_digits()
    grids = quantise(digits.images.astype(np.int64), levels, SOURCE_LEVELS["digits"])
    return grids, digits.target.astype(np.int64), [str(i) for i in range(10)], levels


def quantise(images, levels, source_levels=256):
    """Integer gray images with values 0..source_levels-1 (uint8 by default) -> integers
    0..levels-1 (equal-width bins; the identity when levels == source_levels)."""
    return (images.astype(np.int64) * levels) // source_levels


def torchvision_grids(name, root, train, levels=None, download=False):
    """MNIST-like sets from a local torchvision root: (N, 28, 28) grids, labels, class names."""
    import torchvision

    levels = SOURCE_LEVELS[name] if levels is None else levels
    check_levels(name, levels)
    cls = getattr(torchvision.datasets, TORCHVISION_SETS[name])
    try:
        ds = cls(root, train=train, download=download)
    except RuntimeError as e:
        raise UserError(f"{Path(root) / cls.__name__}: {name} not found ({e}); put the torchvision "
                          "files there or pass --download where a network exists") from None
    images = ds.data.numpy()
    return quantise(images, levels), ds.targets.numpy().astype(np.int64), list(ds.classes), levels
