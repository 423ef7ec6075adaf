"""Image sets: what the harness reads images from, and the ADM .npz writer.

A set is a folder of images (searched recursively; every image must have one size, no resizing is
done here: torch-fidelity resizes each image to 299x299 with TF1's bilinear interpolation), an
.npz in the ADM layout (`arr_0`: uint8 N x H x W x 3, optional `arr_1`: int labels), or images
already in memory. Each yields uint8 (B, 3, H, W) batches and has a `path` to name it by.
"""
import concurrent.futures
import contextlib
import hashlib
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from infra.errors import UserError
from infra.files import atomic_path, sha256_of
from infra.images import UNREADABLE, list_images, open_rgb

ADM_LAYOUT = "the ADM layout: arr_0 uint8 N x H x W x 3 images, optional arr_1 labels"


class ImageArray:
    """Images already in memory (uint8 (N, 3, H, W)) as an image set, e.g. samples drawn during
    training."""

    def __init__(self, images, path="<samples in memory>"):
        self.images, self.path = images, path

    def __len__(self):
        return len(self.images)

    def batches(self, batch_size):
        yield from self.images.split(batch_size)


class ImageFolder:
    """Every image under a directory (recursively, sorted), all of one size, as RGB."""

    def __init__(self, path):
        self.path = Path(path)
        self.files = list_images(self.path)  # UserError when empty
        sizes = {}
        for f in self.files:
            try:
                with Image.open(f) as im:  # reads the header only
                    sizes.setdefault(im.size, f)
            except UNREADABLE as e:
                raise UserError(f"{f}: unreadable image ({e})") from None
        if len(sizes) > 1:
            (s1, f1), (s2, f2) = list(sizes.items())[:2]
            raise UserError(f"{self.path}: images of different sizes ({f1.name} is {s1[0]}x{s1[1]}, "
                            f"{f2.name} is {s2[0]}x{s2[1]}); resize them to one size first")

    def __len__(self):
        return len(self.files)

    def sha256(self):
        digest = hashlib.sha256()
        for f in self.files:
            digest.update(f"{f.relative_to(self.path)}\0{f.stat().st_size}\0".encode())
            digest.update(f.read_bytes())
        return digest.hexdigest()

    def batches(self, batch_size, workers=2):
        """uint8 (B, 3, H, W) batches; PNG/JPEG decoding runs in threads (PIL releases the GIL)."""
        def load(f):
            return torch.from_numpy(np.array(open_rgb(f))).permute(2, 0, 1)  # (3, H, W) uint8

        with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
            for start in range(0, len(self.files), batch_size):
                yield torch.stack(list(pool.map(load, self.files[start:start + batch_size])))


def _adm_header(path, member):
    """(shape, dtype) of an .npy member of an .npz, read from its header; UserError when not ADM."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise UserError(f"{path}: arr_0 has .npy format version {version}; expected 1.0 or 2.0")
    if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3:
        raise UserError(f"{path}: arr_0 is {dtype} {'x'.join(map(str, shape))}; expected {ADM_LAYOUT}")
    if fortran:
        raise UserError(f"{path}: arr_0 is stored in Fortran order; save it C-ordered (np.savez)")
    if shape[0] == 0:
        raise UserError(f"{path}: arr_0 holds no images")
    return shape, dtype


class AdmNpz:
    """The images of an ADM-layout .npz, streamed from the file batch by batch: a 50k x 256 x 256
    reference batch is never loaded whole (as ADM's own evaluator reads it)."""

    def __init__(self, path):
        self.path = Path(path)
        with self._open() as member:
            self.shape, _ = _adm_header(self.path, member)

    @contextlib.contextmanager
    def _open(self):
        """The arr_0.npy member of the archive, as a file positioned at its start."""
        try:
            archive = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as e:
            raise UserError(f"{self.path}: not a readable .npz ({e}); expected {ADM_LAYOUT}") from None
        with archive:
            if "arr_0.npy" not in archive.namelist():
                names = ", ".join(n.removesuffix(".npy") for n in archive.namelist()) or "nothing"
                raise UserError(f"{self.path}: no arr_0 (holds {names}); expected {ADM_LAYOUT}")
            with archive.open("arr_0.npy") as member:
                yield member

    def __len__(self):
        return self.shape[0]

    def sha256(self):
        return sha256_of(self.path)

    def batches(self, batch_size, workers=None):
        n, h, w, c = self.shape
        with self._open() as member:
            _adm_header(self.path, member)
            for start in range(0, n, batch_size):
                rows = min(batch_size, n - start)
                data = member.read(rows * h * w * c)
                if len(data) != rows * h * w * c:
                    raise UserError(f"{self.path}: arr_0 is truncated ({start + len(data) // (h * w * c)} "
                                    f"of {n} images)")
                batch = np.frombuffer(data, np.uint8).reshape(rows, h, w, c)
                yield torch.from_numpy(batch.copy()).permute(0, 3, 1, 2)


def write_adm_npz(path, images, labels=None):
    """Write uint8 (N, H, W, 3) images (and (N,) labels as arr_1) in the ADM layout, atomically."""
    images = np.asarray(images)
    write_adm_npz_batches(path, images.shape, [images], labels)


def write_adm_npz_batches(path, shape, batches, labels=None):
    """The ADM layout written one uint8 (B, H, W, 3) batch at a time, so 50k images at 256x256
    (10 GB) never need to sit in memory: each array is stored uncompressed in the zip, as
    np.savez does, and np.load reads the result as usual. Written atomically."""
    count, height, width, channels = shape
    if channels != 3 or len(shape) != 4:
        raise UserError(f"{path}: images are {tuple(shape)}; expected {ADM_LAYOUT}")
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (count,):
            raise UserError(f"{path}: {labels.shape} labels for {count} images")
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("arr_0.npy", "w", force_zip64=True) as f:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                      "shape": (count, height, width, 3)}
            np.lib.format.write_array_header_2_0(f, header)
            written = 0
            for batch in batches:
                batch = np.ascontiguousarray(batch)
                if batch.dtype != np.uint8 or batch.shape[1:] != (height, width, 3):
                    raise UserError(f"{path}: a batch of {batch.dtype} {batch.shape}; expected {ADM_LAYOUT}")
                f.write(batch.tobytes())
                written += len(batch)
            if written != count:
                raise UserError(f"{path}: {written} images written, {count} announced")
        if labels is not None:
            with archive.open("arr_1.npy", "w") as f:
                np.lib.format.write_array(f, labels)


def read_adm_npz(path):
    """(images uint8 (N, H, W, 3), labels (N,) or None) of an ADM-layout .npz, checked."""
    source = AdmNpz(path)
    with np.load(path) as data:
        images = data["arr_0"]
        labels = data["arr_1"] if "arr_1" in data.files else None
    if labels is not None and labels.shape != (len(source),):
        raise UserError(f"{path}: arr_1 has shape {labels.shape}; expected ({len(source)},) labels")
    return images, labels


def open_images(path):
    """An image set: a folder of images or an ADM-layout .npz."""
    path = Path(path)
    if path.is_dir():
        return ImageFolder(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    if path.suffix.lower() == ".npz":
        return AdmNpz(path)
    hint = " (token grids in a .npy are scored with --dataset DIR)" if path.suffix.lower() == ".npy" else ""
    raise UserError(f"{path}: expected a folder of images, an .npz in {ADM_LAYOUT}, or a statistics "
                    f"file written by --save-stats{hint}")
