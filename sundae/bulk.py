"""Bulk sampling for FID: one PNG per sample, resumable, with a timing summary."""
import json
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, read_image, write_png
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from infra.files import atomic_path
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
    (seed, first index), so a re-run skips batches whose files all exist and re-creates a
    partly written batch identically, writing only its missing files. `save_latents` also keeps
    the token grids (N, h, w), row i for sample count_offset + i; it is filled in
    `<file>.partial` and renamed once complete.
    Returns the summary dict that is also written to `out_dir/summary.json`.
    """
    prior.check_class(class_idx)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise SundaeError(f"{out_dir}: output directory is not writable ({e.strerror})") from None
    h, w = prior.latent_shape
    # Grids of batches sampled by an earlier run are only known if that run kept them too.
    latents_known = save_latents is None or Path(f"{save_latents}.partial").exists()
    latents = _open_latents(save_latents, nb_samples, (h, w), prior.num_tokens)

    steps_used, prior_time, decode_time, written = [], 0.0, 0.0, 0
    bar = tqdm(total=nb_samples, unit="sample", disable=not progress, desc="sampling")
    for start in range(0, nb_samples, batch_size):
        indices = range(count_offset + start, count_offset + min(start + batch_size, nb_samples))
        missing = [i for i in indices if not sample_path(out_dir, i).exists()]
        if not missing and latents_known:
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
        if latents is not None:  # before the PNGs: a batch with all its files has its grids kept
            latents[start:start + len(indices)] = result.tokens.cpu().numpy()
            latents.flush()
        for i, image in zip(indices, images):
            if i in missing:
                with atomic_path(sample_path(out_dir, i)) as tmp:
                    save_image(to_unit(image), tmp, format="png")
                written += 1
        bar.update(len(indices))
    bar.close()
    if latents is not None:
        del latents
        Path(f"{save_latents}.partial").replace(save_latents)

    summary = _summary(nb_samples, written, steps_used, prior_time, decode_time, sampling)
    with atomic_path(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    return summary


def save_sample_grid(out_dir, indices, path, nrow=8):
    """Tile already written sample PNGs into one grid image (works after a resumed run too)."""
    images = [read_image(str(sample_path(out_dir, i)), ImageReadMode.RGB) for i in indices]
    grid = make_grid(torch.stack(images), nrow=nrow, padding=2)  # uint8 (3, H', W')
    with atomic_path(path) as tmp:
        write_png(grid, str(tmp))


def _open_latents(path, n, shape, num_tokens):
    """A (n, h, w) memmap to fill: a resumed run continues the `.partial` file it left."""
    if path is None:
        return None
    partial = Path(f"{path}.partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(num_tokens)
    if partial.exists():
        array = np.load(partial, mmap_mode="r+")
        if array.shape == (n, *shape) and array.dtype == dtype:
            return array
        raise SundaeError(f"{partial}: left by a run with {array.shape} grids, this run makes "
                          f"{(n, *shape)}; delete it or change --save-latents")
    if Path(path).exists():
        raise SundaeError(f"{path}: already exists; pick another --save-latents file")
    return np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=(n, *shape))


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
