"""Small image datasets as token grids with no VQ-GAN: each gray level is a token."""
from pathlib import Path

import numpy as np

from infra.errors import UserError

TORCHVISION_SETS = {"mnist": "MNIST", "fashion": "FashionMNIST", "kmnist": "KMNIST"}


def digits_grids():
    """scikit-learn's bundled digits: (1797, 8, 8) grids of 17 gray levels, labels 0-9."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.int64), digits.target.astype(np.int64), [str(i) for i in range(10)], 17


def quantise(images, levels):
    """uint8 gray images -> integers 0..levels-1 (equal-width bins)."""
    return (images.astype(np.int64) * levels) // 256


def torchvision_grids(name, root, train, levels=256, download=False):
    """MNIST-like sets from a local torchvision root: (N, 28, 28) grids, labels, class names."""
    import torchvision

    if not 2 <= levels <= 256:
        raise UserError(f"--levels must be in [2, 256], got {levels}")
    cls = getattr(torchvision.datasets, TORCHVISION_SETS[name])
    try:
        ds = cls(root, train=train, download=download)
    except RuntimeError as e:
        raise UserError(f"{Path(root) / cls.__name__}: {name} not found ({e}); put the torchvision "
                          "files there or pass --download where a network exists") from None
    images = ds.data.numpy()
    return quantise(images, levels), ds.targets.numpy().astype(np.int64), list(ds.classes), levels
