"""Image files for the image-metric tests."""
import numpy as np
from PIL import Image


def write_images(folder, n, size=32, seed=0, brightness=0):
    """n random RGB PNGs of size x size in `folder`, each a colour of its own plus noise (so even a
    random network tells them apart); returns their (n, size, size, 3) uint8 array."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 220, size=(n, 1, 1, 3))
    noise = rng.integers(-20, 20, size=(n, size, size, 3))
    arrays = np.clip(colours + noise + brightness, 0, 255).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"{i:03d}.png")
    return arrays
