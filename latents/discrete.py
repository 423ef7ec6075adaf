"""Small image datasets as token grids with no VQ-GAN: each gray level is a token."""
import numpy as np

from infra.errors import UserError
from latents.mnist_files import MNIST_SETS, read_mnist

# the gray levels each dataset has, so the most --levels can keep: scikit-learn's digits are
# 0..16, the MNIST family uint8
SOURCE_LEVELS = {"digits": 17, **dict.fromkeys(MNIST_SETS, 256)}


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


def mnist_grids(name, root, train, levels=None, download=False):
    """An MNIST-family set (latents/mnist_files.py: torchvision's layout under `root`, or Debian's
    package), or torchvision's download into `root` first: (N, 28, 28) grids, labels, class names."""
    levels = SOURCE_LEVELS[name] if levels is None else levels
    check_levels(name, levels)
    if download:
        import torchvision

        getattr(torchvision.datasets, MNIST_SETS[name][0])(root, train=train, download=True)
    images, labels, classes = read_mnist(name, root, train)
    return quantise(images, levels), labels, classes, levels
