"""Cut scikit-image's bundled sample photographs into small crops: a dataset that needs no download.

    python scripts/shipped_image_crops.py data/skimage-crops --size 32

Writes OUT/train/<photo>-<y>-<x>.png from every photo but one, and OUT/heldout/ with the crops
of that one (a cat), which training never sees.
"""
from pathlib import Path

import numpy as np
from PIL import Image

from infra.cli import ArgumentParser, run_cli
from infra.files import atomic_path

TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "immunohistochemistry", "motorcycle")
HELD_OUT_PHOTO = "chelsea"


def load_photo(name):
    """An RGB uint8 array of one of scikit-image's bundled photographs (no download)."""
    import skimage.data

    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]  # the left view; bundled
    return getattr(skimage.data, name)()


def downscale(image, factor):
    """Shrink by an integer factor (antialiased), so a small crop still shows a whole object part."""
    pil = Image.fromarray(image)
    return np.asarray(pil.resize((pil.width // factor, pil.height // factor), Image.LANCZOS))


def crops(image, size, stride):
    """[(y, x, crop (size, size, 3))] on a regular grid."""
    h, w = image.shape[:2]
    return [(y, x, image[y:y + size, x:x + size])
            for y in range(0, h - size + 1, stride) for x in range(0, w - size + 1, stride)]


def parse_args(argv):
    p = ArgumentParser(__doc__)
    p.add_argument("out_dir")
    p.add_argument("--size", type=int, default=32, help="side of each square crop")
    p.add_argument("--stride", type=int, default=16, help="step between crops (overlapping if < size)")
    p.add_argument("--downscale", type=int, default=2, help="shrink each photo by this factor first")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out_dir)
    counts = {}
    with atomic_path(out, is_dir=True) as tmp:
        for split, names in (("train", TRAIN_PHOTOS), ("heldout", (HELD_OUT_PHOTO,))):
            (tmp / split).mkdir()
            for name in names:
                photo = downscale(load_photo(name), args.downscale)
                for y, x, crop in crops(photo, args.size, args.stride):
                    Image.fromarray(crop).save(tmp / split / f"{name}-{y:04d}-{x:04d}.png")
                    counts[split] = counts.get(split, 0) + 1
    print(f"wrote {counts['train']} training crops ({', '.join(TRAIN_PHOTOS)}) and "
          f"{counts['heldout']} held-out crops ({HELD_OUT_PHOTO}) of {args.size}x{args.size} to {out}")


if __name__ == "__main__":
    run_cli(main)
