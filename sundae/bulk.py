"""Bulk sampling for FID: one PNG per sample, resumable, with a timing summary."""
import json
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, read_image, write_png
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from infra.files import atomic_path, writable_dir, writable_file
from infra.images import to_unit
from sundae.errors import SundaeError
from sundae.latents import token_dtype
from sundae.sampler import sample


def sample_path(out_dir, index):
    return Path(out_dir) / f"sample-{index:06d}.png"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bulk_sample(prior, sampling, out_dir, nb_samples, batch_size=16, count_offset=0, class_idx=None,
                seed=0, save_latents=None, progress=True):
    """Write samples `count_offset .. count_offset + nb_samples - 1` as PNGs into `out_dir`.

    Batch `k` covers a fixed index range and draws from its own generator seeded by
    (seed, first index), so a re-run skips batches that are complete (all PNGs written and, with
    `save_latents`, all grids recorded) and re-creates any other batch identically, writing only
    what is missing. `save_latents` also keeps the token grids (N, h, w), row i for sample
    count_offset + i (see LatentRows). Returns the summary also written to out_dir/summary.json.
    """
    prior.check_class(class_idx)
    out_dir = writable_dir(out_dir, "--out-dir")
    h, w = prior.latent_shape
    latents = LatentRows(save_latents, nb_samples, (h, w), prior.num_tokens) if save_latents else None

    steps_used, prior_time, decode_time, written = [], 0.0, 0.0, 0
    bar = tqdm(total=nb_samples, unit="sample", disable=not progress, desc="sampling")
    for start in range(0, nb_samples, batch_size):
        rows = range(start, min(start + batch_size, nb_samples))
        indices = range(count_offset + rows.start, count_offset + rows.stop)
        missing = [i for i in indices if not sample_path(out_dir, i).exists()]
        if not missing and (latents is None or latents.complete(rows)):
            bar.update(len(indices))
            continue
        g = torch.Generator(device=prior.device).manual_seed(seed * 1_000_003 + indices[0])
        cond = None
        if prior.num_classes is not None:
            cond = (torch.full((len(indices),), class_idx, device=prior.device) if class_idx is not None
                    else torch.randint(prior.num_classes, (len(indices),), generator=g, device=prior.device))
        t0 = time.perf_counter()
        result = sample(prior.model, (h, w), sampling, num_tokens=prior.num_tokens,
                        nb_samples=len(indices), cond=cond, generator=g, device=prior.device)
        _sync(prior.device)
        t1 = time.perf_counter()
        images = prior.render(result.tokens)
        t2 = time.perf_counter()
        prior_time, decode_time = prior_time + t1 - t0, decode_time + t2 - t1
        steps_used += result.steps_used.tolist()
        if latents is not None:
            latents.write(rows, result.tokens.cpu().numpy())
        for i, image in zip(indices, images):
            if i in missing:
                with atomic_path(sample_path(out_dir, i)) as tmp:
                    save_image(to_unit(image), tmp, format="png")
                written += 1
        bar.update(len(indices))
    bar.close()
    if latents is not None:
        latents.finish()

    summary = _summary(nb_samples, written, steps_used, prior_time, decode_time, sampling)
    with atomic_path(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    return summary


class LatentRows:
    """The (N, h, w) grids of --save-latents, filled across interrupted runs.

    Rows are written into `FILE.partial` and which rows hold a grid into `FILE.filled` (a bool
    array, flushed after the rows it marks), so a re-run knows exactly which batches still need
    their grids, whatever PNGs exist. When every row is filled the file is renamed to FILE.
    """

    def __init__(self, path, n, shape, num_tokens):
        self.path = writable_file(path, "--save-latents file")
        self.partial, self.filled_path = Path(f"{path}.partial"), Path(f"{path}.filled")
        dtype = token_dtype(num_tokens)
        if self.path.exists():
            raise SundaeError(f"{path}: already exists; pick another --save-latents file")
        try:
            if self.partial.exists() and self.filled_path.exists():
                self.rows = np.load(self.partial, mmap_mode="r+")
                self.filled = np.load(self.filled_path, mmap_mode="r+")
                if self.rows.shape != (n, *shape) or self.rows.dtype != dtype or self.filled.shape != (n,):
                    raise SundaeError(f"{self.partial}: left by a run with {self.rows.shape} grids, this run "
                                      f"makes {(n, *shape)}; delete it or change --save-latents")
            else:
                self.rows = np.lib.format.open_memmap(self.partial, mode="w+", dtype=dtype, shape=(n, *shape))
                self.filled = np.lib.format.open_memmap(self.filled_path, mode="w+", dtype=bool, shape=(n,))
        except (OSError, ValueError) as e:  # unwritable, full, or a damaged leftover
            raise SundaeError(f"{self.partial}: cannot be used ({e}); delete it and run again") from None

    def complete(self, rows):
        return bool(self.filled[rows.start:rows.stop].all())

    def write(self, rows, tokens):
        self.rows[rows.start:rows.stop] = tokens
        self.rows.flush()
        self.filled[rows.start:rows.stop] = True
        self.filled.flush()

    def finish(self):
        if not self.filled.all():  # cannot happen: every incomplete batch was sampled
            raise SundaeError(f"{self.partial}: rows {np.flatnonzero(~self.filled)[:5].tolist()} not filled")
        del self.rows, self.filled
        self.partial.replace(self.path)
        self.filled_path.unlink()


def save_sample_grid(out_dir, indices, path, nrow=8):
    """Tile already written sample PNGs into one grid image (works after a resumed run too)."""
    images = [read_image(str(sample_path(out_dir, i)), ImageReadMode.RGB) for i in indices]
    grid = make_grid(torch.stack(images), nrow=nrow, padding=2)  # uint8 (3, H', W')
    with atomic_path(path) as tmp:
        write_png(grid, str(tmp))


def _summary(nb_samples, written, steps_used, prior_time, decode_time, sampling):
    steps = np.asarray(steps_used, dtype=np.int64)
    sampled = len(steps)
    total = prior_time + decode_time
    histogram = {int(k): int(v) for k, v in zip(*np.unique(steps, return_counts=True))}
    return {
        "nb_samples": nb_samples,
        "sampled_now": sampled,
        "written_now": written,
        "samples_per_second": sampled / total if total > 0 else None,
        "prior_seconds": prior_time,
        "decoder_seconds": decode_time,
        "mean_steps_used": float(steps.mean()) if sampled else None,
        "steps_histogram": histogram,
        "sampling": {k: getattr(sampling, k) for k in sampling.__dataclass_fields__},
    }
