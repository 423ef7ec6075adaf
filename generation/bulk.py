"""Bulk sampling for FID: one PNG per sample, an ADM .npz, resumable, on one process or under
torchrun, with one timing summary.

The job is one global set of samples, `count_offset .. count_offset + N - 1`, cut into batches of
`batch_size` consecutive indices. Batch k draws from its own generator seeded by (seed, first
index of k), and process r of W takes batches r, r + W, r + 2W, ... (DiT's sample_ddp.py
interleaving, by batch), so every sample is the same whatever the number of processes, and a
re-run (with any number of processes) skips the batches that are complete and re-creates the
others identically, writing only what is missing.
"""
import json
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, read_image, write_png
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from evaluation.image_sets import write_adm_npz_batches
from infra.distributed import Processes
from infra.errors import UserError
from infra.files import atomic_path, writable_dir, writable_file
from infra.images import to_unit
from latents.dataset import token_dtype


def sample_path(out_dir, index):
    return Path(out_dir) / f"sample-{index:06d}.png"


def bulk_sample(prior, sampling, out_dir, nb_samples, batch_size=16, count_offset=0, class_idx=None,
                class_balanced=False, seed=0, save_latents=None, save_labels=None, npz=None, progress=True,
                procs=Processes()):
    """Write this process's share of the samples as PNGs into `out_dir`; on rank 0, once every
    process is done, also the token grids (`save_latents`, see LatentRows), the ADM `npz` of all
    samples (labels in arr_1 for class-conditional priors), the (N,) classes (`save_labels`) and
    one summary.json merging every process's. Classes: `class_idx` for all, sample i gets class
    i mod C with `class_balanced`, else random. Returns the merged summary on rank 0 (this
    process's elsewhere)."""
    prior.check_class(class_idx)
    classes = Classes(prior.num_classes, class_idx, class_balanced)
    out_dir = writable_dir(out_dir, "--out-dir")
    h, w = prior.latent_shape
    latents = None
    if save_latents and procs.is_main:
        latents = LatentRows(save_latents, nb_samples, (h, w), prior.num_tokens)
    procs.barrier()  # rank 0 has made (or found) the files the others fill
    if save_latents and not procs.is_main:
        latents = LatentRows(save_latents, nb_samples, (h, w), prior.num_tokens, create=False)

    mine = range(0, nb_samples, batch_size)[procs.rank::procs.world_size]
    stats = {"steps_used": [], "prior_seconds": 0.0, "decoder_seconds": 0.0, "written": 0}
    bar = tqdm(total=len(mine), unit="batch", disable=not (progress and procs.is_main), desc="sampling")
    for start in mine:
        rows = range(start, min(start + batch_size, nb_samples))
        indices = range(count_offset + rows.start, count_offset + rows.stop)
        missing = [i for i in indices if not sample_path(out_dir, i).exists()]
        if missing or (latents is not None and not latents.complete(rows)):
            _sample_batch(prior, sampling, out_dir, indices, missing, classes, seed, latents, rows, stats)
        bar.update()
    bar.close()

    procs.barrier()  # every process's PNGs and grids are written
    gathered = procs.gather(stats)
    if not procs.is_main:
        return _summary(nb_samples, [stats], sampling)
    if latents is not None:
        latents.finish()
    indices = range(count_offset, count_offset + nb_samples)
    labels = None if prior.num_classes is None else classes.of_job(prior, indices, batch_size, seed)
    if npz:
        write_npz(npz, out_dir, indices, labels)
    if save_labels and labels is not None:
        with atomic_path(save_labels) as tmp, open(tmp, "wb") as f:
            np.save(f, labels)
    summary = _summary(nb_samples, gathered, sampling)
    with atomic_path(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    return summary


def _sample_batch(prior, sampling, out_dir, indices, missing, classes, seed, latents, rows, stats):
    g = batch_generator(prior, seed, indices[0])
    cond = classes.of_batch(indices, g, prior.device)
    t0 = time.perf_counter()
    result = prior.sample(prior.latent_shape, sampling, nb_samples=len(indices), cond=cond, generator=g)
    if prior.device.type == "cuda":
        torch.cuda.synchronize(prior.device)
    t1 = time.perf_counter()
    images = prior.render(result.tokens)
    stats["prior_seconds"] += t1 - t0
    stats["decoder_seconds"] += time.perf_counter() - t1
    stats["steps_used"] += result.steps_used.tolist()
    if latents is not None:
        latents.write(rows, result.tokens.cpu().numpy())
    for i, image in zip(indices, images):
        if i in missing:
            with atomic_path(sample_path(out_dir, i)) as tmp:
                save_image(to_unit(image), tmp, format="png")
            stats["written"] += 1


def batch_generator(prior, seed, first_index):
    return torch.Generator(device=prior.device).manual_seed(seed * 1_000_003 + first_index)


class Classes:
    """The class of each sample of a conditional prior: one fixed class, i mod C, or random (the
    first draw of the batch's generator, so that they can be recomputed without sampling)."""

    def __init__(self, num_classes, class_idx=None, balanced=False):
        self.num_classes, self.class_idx, self.balanced = num_classes, class_idx, balanced

    def of_batch(self, indices, generator, device):
        if self.num_classes is None:
            return None
        if self.class_idx is not None:
            return torch.full((len(indices),), self.class_idx, device=device)
        if self.balanced:
            return torch.tensor(list(indices), device=device) % self.num_classes
        return torch.randint(self.num_classes, (len(indices),), generator=generator, device=device)

    def of_job(self, prior, indices, batch_size, seed):
        """(N,) the classes of every sample of the job."""
        batches = (range(first, min(first + batch_size, indices.stop))
                   for first in range(indices.start, indices.stop, batch_size))
        return torch.cat([self.of_batch(b, batch_generator(prior, seed, b[0]), prior.device).cpu()
                          for b in batches]).numpy()


def write_npz(path, out_dir, indices, labels=None, chunk=256):
    """The job's PNGs, in index order, as an ADM .npz (streamed: never all in memory)."""
    first = read_image(str(sample_path(out_dir, indices[0])), ImageReadMode.RGB)
    shape = (len(indices), first.shape[1], first.shape[2], 3)

    def batches():
        for start in range(0, len(indices), chunk):
            images = [read_image(str(sample_path(out_dir, i)), ImageReadMode.RGB)
                      for i in indices[start:start + chunk]]
            yield torch.stack(images).permute(0, 2, 3, 1).numpy()  # (B, 3, H, W) -> (B, H, W, 3)

    write_adm_npz_batches(path, shape, batches(), labels)


class LatentRows:
    """The (N, h, w) grids of --save-latents, filled across interrupted runs and processes.

    Rows are written into `FILE.partial` and which rows hold a grid into `FILE.filled` (a bool
    array, flushed after the rows it marks), so a re-run knows exactly which batches still need
    their grids, whatever PNGs exist. Processes fill disjoint rows of the same memory-mapped
    files. When every row is filled the file is renamed to FILE.
    """

    def __init__(self, path, n, shape, num_tokens, create=True):
        self.path = writable_file(path, "--save-latents file")
        self.partial, self.filled_path = Path(f"{path}.partial"), Path(f"{path}.filled")
        dtype = token_dtype(num_tokens)
        if self.path.exists():
            raise UserError(f"{path}: already exists; pick another --save-latents file")
        try:
            if not create or (self.partial.exists() and self.filled_path.exists()):
                self.rows = np.load(self.partial, mmap_mode="r+")
                self.filled = np.load(self.filled_path, mmap_mode="r+")
                if self.rows.shape != (n, *shape) or self.rows.dtype != dtype or self.filled.shape != (n,):
                    raise UserError(f"{self.partial}: left by a run with {self.rows.shape} grids, this run "
                                      f"makes {(n, *shape)}; delete it or change --save-latents")
            else:
                self.rows = np.lib.format.open_memmap(self.partial, mode="w+", dtype=dtype, shape=(n, *shape))
                self.filled = np.lib.format.open_memmap(self.filled_path, mode="w+", dtype=bool, shape=(n,))
        except (OSError, ValueError) as e:  # unwritable, full, or a damaged leftover
            raise UserError(f"{self.partial}: cannot be used ({e}); delete it and run again") from None

    def complete(self, rows):
        return bool(self.filled[rows.start:rows.stop].all())

    def write(self, rows, tokens):
        self.rows[rows.start:rows.stop] = tokens
        self.rows.flush()
        self.filled[rows.start:rows.stop] = True
        self.filled.flush()

    def finish(self):
        if not self.filled.all():  # cannot happen: every incomplete batch was sampled
            raise UserError(f"{self.partial}: rows {np.flatnonzero(~self.filled)[:5].tolist()} not filled")
        del self.rows, self.filled
        self.partial.replace(self.path)
        self.filled_path.unlink()


def save_sample_grid(out_dir, indices, path, nrow=8):
    """Tile already written sample PNGs into one grid image (works after a resumed run too)."""
    images = [read_image(str(sample_path(out_dir, i)), ImageReadMode.RGB) for i in indices]
    grid = make_grid(torch.stack(images), nrow=nrow, padding=2)  # uint8 (3, H', W')
    with atomic_path(path) as tmp:
        write_png(grid, str(tmp))


def _summary(nb_samples, per_process, sampling):
    """One summary of every process's share: counts and step histograms add up, throughput is
    the samples over the slowest process's time."""
    steps = np.asarray([s for stats in per_process for s in stats["steps_used"]], dtype=np.int64)
    sampled = len(steps)
    wall = max(stats["prior_seconds"] + stats["decoder_seconds"] for stats in per_process)
    histogram = {int(k): int(v) for k, v in zip(*np.unique(steps, return_counts=True))}
    return {
        "nb_samples": nb_samples,
        "processes": len(per_process),
        "sampled_now": sampled,
        "written_now": sum(stats["written"] for stats in per_process),
        "samples_per_second": sampled / wall if wall > 0 else None,
        "prior_seconds": sum(stats["prior_seconds"] for stats in per_process),
        "decoder_seconds": sum(stats["decoder_seconds"] for stats in per_process),
        "mean_steps_used": float(steps.mean()) if sampled else None,
        "steps_histogram": histogram,
        "sampling": {k: getattr(sampling, k) for k in sampling.__dataclass_fields__},
    }
