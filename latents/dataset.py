"""The latent dataset format: what generate-latents.py and generate-discrete-mnist.py write and
what training reads.

A latent dataset is a directory:

    meta.json              format, codebook size, latent shape, class names, provenance
    <split>_tokens.npy     (N, h, w) integer grid per image; uint16 when the codebook fits, else int32
    <split>_labels.npy     (N,) int64 class index, only when the dataset has classes

with one or more splits (usually `train`, sometimes also `eval`). The `.npy` files are plain
numpy format, so `np.load(path, mmap_mode="r")` maps them without reading them into RAM.
`meta.json["splits"][split]` holds `count` and, per row, `sources` (the source file or item) and
`flipped` (whether the row is a horizontally flipped copy).
"""
import contextlib
import json
from pathlib import Path

import numpy as np
import torch

from infra.errors import UserError
from infra.files import atomic_path

FORMAT_NAME = "sundae-latents"
FORMAT_VERSION = 1
CHUNK_ROWS = 65536  # rows read at once when a memory-mapped split is scanned


def token_dtype(codebook_size):
    return np.dtype(np.uint16) if codebook_size <= 2**16 else np.dtype(np.int32)


def _tokens_path(root, split):
    return Path(root) / f"{split}_tokens.npy"


def _labels_path(root, split):
    return Path(root) / f"{split}_labels.npy"


class LatentWriter:
    """Fills one split of a latent dataset being built in a temporary directory."""

    def __init__(self, tmp_dir, split, count, latent_shape, codebook_size, with_labels):
        self.split = split
        self.count = count
        self.tokens = np.lib.format.open_memmap(
            _tokens_path(tmp_dir, split), mode="w+", dtype=token_dtype(codebook_size),
            shape=(count, *latent_shape))
        self.labels = (np.lib.format.open_memmap(_labels_path(tmp_dir, split), mode="w+",
                                                 dtype=np.int64, shape=(count,))
                       if with_labels else None)
        self.sources = [None] * count
        self.flipped = [False] * count
        self.codebook_size = codebook_size

    def write(self, start, tokens, labels=None, sources=None, flipped=None):
        """Write rows `start : start + len(tokens)`; tokens (n, h, w) integers."""
        tokens = np.asarray(tokens)
        n = len(tokens)
        if n and (tokens.min() < 0 or tokens.max() >= self.codebook_size):
            raise UserError(f"token values must lie in [0, {self.codebook_size}), "
                              f"got [{tokens.min()}, {tokens.max()}]")
        self.tokens[start:start + n] = tokens
        if self.labels is not None:
            self.labels[start:start + n] = np.asarray(labels)
        if sources is not None:
            self.sources[start:start + n] = [str(s) for s in sources]
        if flipped is not None:
            self.flipped[start:start + n] = [bool(f) for f in flipped]

    def close(self):
        self.tokens.flush()
        if self.labels is not None:
            self.labels.flush()
        return {"count": self.count, "sources": self.sources, "flipped": self.flipped}


@contextlib.contextmanager
def create_latent_dataset(out_dir, codebook_size, latent_shape, class_names=None, provenance=None,
                          overwrite=False):
    """Build a latent dataset atomically.

    Yields `add_split(name, count) -> LatentWriter`; on success writes meta.json and renames the
    temporary directory onto `out_dir`. An existing non-empty `out_dir` is refused unless
    `overwrite`; on failure nothing is left behind and any existing dataset is untouched.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(f"{out_dir}: output directory is not empty (pass --overwrite to replace it)")
    latent_shape = tuple(int(s) for s in latent_shape)
    writers = {}
    with atomic_path(out_dir, is_dir=True) as tmp:
        def add_split(name, count):
            if count < 1:
                raise UserError(f"{out_dir}: split '{name}' would have no rows")
            writers[name] = LatentWriter(tmp, name, count, latent_shape, codebook_size,
                                         with_labels=class_names is not None)
            return writers[name]

        yield add_split
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "codebook_size": int(codebook_size),
            "latent_shape": list(latent_shape),
            "token_dtype": token_dtype(codebook_size).name,
            "class_names": list(class_names) if class_names is not None else None,
            "splits": {name: w.close() for name, w in writers.items()},
            **(provenance or {}),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))


def read_meta(root):
    """Read and check a latent dataset's meta.json."""
    path = Path(root) / "meta.json"
    if not path.is_file():
        raise UserError(f"{root}: not a latent dataset (no meta.json); "
                          "make one with generate-latents.py or generate-discrete-mnist.py")
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None
    if meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
        raise UserError(f"{path}: expected format {FORMAT_NAME} v{FORMAT_VERSION}, "
                          f"got {meta.get('format')} v{meta.get('version')}")
    return meta


class LatentDataset(torch.utils.data.Dataset):
    """One split of a latent dataset, memory-mapped: rows are read when indexed.

    Items are `(tokens (h, w) int64, label)`; label is -1 when the dataset has no classes.
    """

    def __init__(self, root, split="train"):
        self.root = Path(root)
        self.meta = read_meta(root)
        if split not in self.meta["splits"]:
            raise UserError(f"{root}: no split '{split}' (has {sorted(self.meta['splits'])})")
        self.split = split
        self.codebook_size = self.meta["codebook_size"]
        self.latent_shape = tuple(self.meta["latent_shape"])
        self.class_names = self.meta["class_names"]
        self.tokens = _load_array(_tokens_path(root, split))
        count = self.meta["splits"][split].get("count")
        if self.tokens.ndim != 3 or self.tokens.shape[1:] != self.latent_shape:
            raise UserError(f"{_tokens_path(root, split)}: grids of shape {self.tokens.shape[1:]}, but "
                              f"meta.json has latent_shape {list(self.latent_shape)}")
        if len(self.tokens) == 0:
            raise UserError(f"{_tokens_path(root, split)}: the '{split}' split is empty (0 rows); write the "
                            "dataset again with rows in it")
        if count is not None and len(self.tokens) != count:
            raise UserError(f"{_tokens_path(root, split)}: {len(self.tokens)} rows, but meta.json counts "
                              f"{count}; the dataset is incomplete, write it again")
        if not np.issubdtype(self.tokens.dtype, np.integer):
            raise UserError(f"{_tokens_path(root, split)}: {self.tokens.dtype} values, expected integers")
        high = max((int(chunk.max()) for chunk in _chunks(self.tokens)), default=0)
        low = min((int(chunk.min()) for chunk in _chunks(self.tokens)), default=0)
        if low < 0 or high >= self.codebook_size:
            raise UserError(f"{_tokens_path(root, split)}: token values in [{low}, {high}], outside the "
                              f"codebook [0, {self.codebook_size})")
        self.labels = None
        if self.class_names is not None:
            self.labels = _load_array(_labels_path(root, split))
            if self.labels.shape != (len(self.tokens),):
                raise UserError(f"{_labels_path(root, split)}: {self.labels.shape[0] if self.labels.ndim else 0} "
                                  f"labels for {len(self.tokens)} rows")
            _check_labels(self.labels, len(self.class_names), _labels_path(root, split))

    @property
    def num_classes(self):
        return len(self.class_names) if self.class_names is not None else None

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, i):
        tokens = torch.from_numpy(self.tokens[i].astype(np.int64))
        label = int(self.labels[i]) if self.labels is not None else -1
        return tokens, label


def _load_array(path):
    """A memory-mapped .npy; UserError naming the file when it is missing, truncated or not .npy."""
    try:
        return np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise UserError(f"{path}: missing (the latent dataset is incomplete)") from None
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"{path}: unreadable ({str(e).splitlines()[0]}); write the dataset again") from None


def _check_labels(labels, num_classes, path):
    """UserError naming `path` and the first bad label unless every label is an integer class
    index in [0, num_classes): checked when the split opens, not when a batch reaches it."""
    expected = f"expected integer class indices in [0, {num_classes}) for the {num_classes} classes of meta.json"
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{path}: {labels.dtype} values; {expected}")
    for start in range(0, len(labels), CHUNK_ROWS):
        chunk = labels[start:start + CHUNK_ROWS]
        bad = np.flatnonzero((chunk < 0) | (chunk >= num_classes))
        if bad.size:
            row = start + int(bad[0])
            raise UserError(f"{path}: label {int(labels[row])} at row {row}; {expected}")


def _chunks(array, rows=CHUNK_ROWS):
    for start in range(0, len(array), rows):
        yield array[start:start + rows]

