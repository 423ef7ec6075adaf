"""Write an MNIST-family set (Fashion-MNIST, MNIST, KMNIST) as image folders, one per split and class.

    PYTHONPATH=. python scripts/mnist_images.py fashion data/fashion-images --size 32

Reads the local idx files (latents/mnist_files.py: torchvision's layout under --root, or Debian's
`dataset-fashion-mnist` package) and writes OUT/train/<k>-<class>/<index>.png (60,000 images) and
OUT/test/<k>-<class>/<index>.png (10,000), gray, centred on a black --size canvas (28: as stored;
32: the 2-pixel border a VQ-GAN of factor 4 or 8 needs). The class folders sort in label order, the
layout train-vqgan.py, generate-latents.py --use-class and evaluate.py read.
"""
import re
from pathlib import Path

import numpy as np
from PIL import Image

from infra.cli import ArgumentParser, run_cli
from infra.errors import UserError
from infra.files import atomic_path
from latents.mnist_files import MNIST_SETS, read_mnist


def class_folder(index, name):
    return f"{index}-" + re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def padded(images, size):
    """(N, 28, 28) -> (N, size, size), centred on black."""
    border = (size - images.shape[1]) // 2
    return np.pad(images, ((0, 0), (border, size - images.shape[1] - border), (border, size - images.shape[2] - border)))


def main(argv=None):
    p = ArgumentParser(__doc__)
    p.add_argument("name", choices=sorted(MNIST_SETS))
    p.add_argument("out_dir")
    p.add_argument("--size", type=int, default=28, help="canvas side in pixels, >= 28")
    p.add_argument("--root", default="data/torchvision", help="torchvision dataset root, searched first")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    args = p.parse_args(argv)
    if args.size < 28:
        raise UserError(f"--size must be >= 28 (the images are 28x28), got {args.size}")
    splits = {split: read_mnist(args.name, args.root, train=split == "train") for split in ("train", "test")}
    out = Path(args.out_dir)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out}: exists; pass --overwrite to replace it")
    with atomic_path(out, is_dir=True) as tmp:
        for split, (images, labels, classes) in splits.items():
            folders = [tmp / split / class_folder(k, name) for k, name in enumerate(classes)]
            for folder in folders:
                folder.mkdir(parents=True)
            for index, (image, label) in enumerate(zip(padded(images, args.size), labels)):
                Image.fromarray(image).save(folders[label] / f"{index:05d}.png")
            print(f"{split}: {len(images)} images of {args.size}x{args.size} in {len(classes)} class folders")
    print(f"wrote {out}")


if __name__ == "__main__":
    run_cli(main)
