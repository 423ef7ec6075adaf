"""The 28x28 MNIST-family sets from local idx files: torchvision's layout or Debian's package.

Looked for, in order: `<root>/<Name>/raw/` (where torchvision keeps them, gzipped or not), then the
Debian package's directory (Fashion-MNIST: `apt-get install dataset-fashion-mnist` puts it in
/usr/share/datasets/fashion-mnist/). Nothing is downloaded here.
"""
import gzip
from pathlib import Path

import numpy as np

from infra.errors import UserError

DEBIAN_ROOT = Path("/usr/share/datasets")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot"]
# name -> (torchvision's directory, Debian package or None, class names)
MNIST_SETS = {
    "mnist": ("MNIST", None, [f"{i} - {w}" for i, w in enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])]),
    "fashion": ("FashionMNIST", "fashion-mnist", FASHION_CLASSES),
    "kmnist": ("KMNIST", None, ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]),
}
_IDX_TYPES = {0x08: np.uint8}


def read_idx(path):
    """An idx file (LeCun's format; gzipped when the name ends in .gz) as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_TYPES:
        raise UserError(f"{path}: not an idx file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise UserError(f"{path}: holds {body.size} values, its header says {shape}")
    return body.reshape(shape)


def _find(directories, stem):
    for directory in directories:
        for name in (stem, f"{stem}.gz"):
            if (directory / name).is_file():
                return directory / name
    return None


def mnist_directories(name, root):
    torchvision_dir, debian, _ = MNIST_SETS[name]
    return [Path(root) / torchvision_dir / "raw", *([DEBIAN_ROOT / debian] if debian else [])]


def read_mnist(name, root, train):
    """(images (N, 28, 28) uint8, labels (N,) int64, class names) of one split."""
    directories = mnist_directories(name, root)
    prefix = "train" if train else "t10k"
    paths = [_find(directories, f"{prefix}-{kind}-idx{ndim}-ubyte") for kind, ndim in (("images", 3), ("labels", 1))]
    if None in paths:
        debian = MNIST_SETS[name][1]
        install = f"`apt-get install dataset-{debian}` (Debian) or " if debian else ""
        raise UserError(f"{name}: {prefix} files not found in {' or '.join(map(str, directories))}; install "
                        f"them with {install}torchvision's download (generate-discrete-mnist.py --download)")
    images, labels = (read_idx(p) for p in paths)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"{paths[0]}: {images.shape} images for {labels.shape} labels")
    classes = MNIST_SETS[name][2]
    if labels.max(initial=0) >= len(classes):
        raise UserError(f"{paths[1]}: label {labels.max()} outside the {len(classes)} classes of {name}")
    return images, labels.astype(np.int64), classes
