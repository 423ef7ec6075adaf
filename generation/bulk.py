"""Bulk sampling for FID: one PNG per sample, an ADM .npz, resumable, on one process or under
torchrun, with one timing summary.

The job is one global set of samples, `count_offset .. count_offset + N - 1`, cut into batches of
`batch_size` consecutive indices. Batch k draws from its own generator seeded by (seed, first
index of k), and process r of W takes batches r, r + W, r + 2W, ... (DiT's sample_ddp.py
interleaving, by batch), so every sample is the same whatever the number of processes, and a
re-run (with any number of processes) skips the batches that are complete and re-creates the
others identically, writing only what is missing. The out-dir records the request that made it
(request.json), so that a re-run of another request cannot mix its samples in.
"""
import contextlib
import errno
import itertools
import json
import math
import os
import shutil
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, read_image, write_png
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from evaluation.image_sets import write_adm_npz_batches
from generation.pretrained import flag
from infra.distributed import Processes
from infra.errors import UserError
from infra.files import atomic_path, writable_dir, writable_file
from infra.images import to_unit
from infra.runs import RunDirLock
from latents.dataset import token_dtype
from priors.settings import fields


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
    process's elsewhere).

    `out_dir` belongs to one request (sampling_request, recorded in its request.json) and one job
    at a time: the same request completes it, another is refused, and so is a second job while
    one runs. Every refusal comes before anything is made."""
    prior.check_class(class_idx)
    classes = Classes(prior.num_classes, class_idx, class_balanced)
    out_dir = Path(out_dir)
    request = sampling_request(prior, sampling, nb_samples, batch_size, count_offset, class_idx, class_balanced, seed)
    latents = None if not save_latents else LatentRows(save_latents, out_dir, nb_samples, prior.latent_shape,
                                                       prior.num_tokens)
    if procs.is_main:
        writable_dir(out_dir, "--out-dir", create=False)
        check_request(out_dir, request)
        if latents is not None:
            latents.check()
    with claimed_out_dir(out_dir, procs):
        if procs.is_main:
            check_request(out_dir, request)  # again: now no other job can write here
            if latents is not None:
                latents.open()
            record_request(out_dir, request)
        procs.barrier()  # rank 0 has made (or found) the files the others fill
        if latents is not None and not procs.is_main:
            latents.open(create=False)
        return _sample_job(prior, sampling, out_dir, nb_samples, batch_size, count_offset, classes, seed,
                           latents, save_labels, npz, progress, procs)


def _sample_job(prior, sampling, out_dir, nb_samples, batch_size, count_offset, classes, seed, latents,
                save_labels, npz, progress, procs):
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


REQUEST = "request.json"  # in an out-dir: the request its samples were made by


def sampling_request(prior, sampling, nb_samples, batch_size, count_offset, class_idx, class_balanced, seed):
    """Everything that decides the samples of a job, each under the flag (or config key) that
    sets it, in the order a difference is reported. Left out: the outputs, and --compile and
    --vqgan-device, which make the same draws (to rounding)."""
    request = {
        "--resume": _file_identity(prior.checkpoint),
        "vqgan.checkpoint": _file_identity(prior.cfg.vqgan.checkpoint) if prior.cfg.vqgan else None,
        "--class-idx": class_idx, "--class-balanced": class_balanced,
        **{flag(f.name): getattr(sampling, f.name) for f in fields(type(sampling), flags_only=True)},
        "--seed": seed, "--nb-samples": nb_samples, "--batch-size": batch_size, "--count-offset": count_offset,
        "--device": prior.device.type,  # each device type draws its own random numbers
        "--precision": prior.precision,
    }
    return json.loads(json.dumps(request))  # as the record reads back (lists for tuples)


def _file_identity(path):
    """A file as a request names it: where, how large, when written (a checkpoint retrained under
    the same name is another file)."""
    if path is None:
        return None
    path = Path(path).resolve()
    stat = path.stat()
    when = datetime.fromtimestamp(stat.st_mtime_ns / 1e9).isoformat(timespec="microseconds")
    return f"{path} ({stat.st_size} bytes, modified {when})"


def check_request(out_dir, request):
    """UserError naming `out_dir` and the first setting that differs, unless the samples in it
    were made by `request` (or it holds none): a re-run completes a set, another never mixes in."""
    record = out_dir / REQUEST
    if not record.is_file():
        if any(out_dir.glob("sample-*.png")):
            raise UserError(f"{out_dir}: holds samples but no {REQUEST} saying what made them; choose "
                            "another --out-dir")
        return
    try:
        made = json.loads(record.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{record}: unreadable ({e}); choose another --out-dir") from None
    if not isinstance(made, dict):
        raise UserError(f"{record}: not a record of a sampling request; choose another --out-dir")
    for key in dict.fromkeys([*made, *request]):
        if made.get(key) != request.get(key):
            raise UserError(f"{out_dir}: made {_difference(key, made.get(key), request.get(key))}; "
                            "choose another --out-dir")


def _difference(key, made, asked):
    """'by --seed 3, not 5', 'without --class-idx, not with --class-idx 1'."""
    def flagless(value):
        return value is None or isinstance(value, bool)

    def given(value):
        if value is None or value is False:
            return f"without {key}"
        return f"with {key}" if value is True else f"with {key} {value}"

    if not flagless(made) and not flagless(asked):
        return f"by {key} {made}, not {asked}"
    return f"{given(made)}, not {given(asked)}"


def record_request(out_dir, request):
    record = out_dir / REQUEST
    if not record.exists():
        with atomic_path(record) as tmp:
            tmp.write_text(json.dumps(request, indent=1) + "\n")


@contextlib.contextmanager
def claimed_out_dir(out_dir, procs):
    """Own `out_dir` for the block: rank 0 creates and locks it (infra.runs.RunDirLock: a second
    job on it is refused in one line), the other processes use it. Directories the block created
    are removed again if it fails while they are still empty."""
    if not procs.is_main:
        yield
        return
    made = list(itertools.takewhile(lambda p: not p.exists(), (out_dir, *out_dir.parents)))  # deepest first
    writable_dir(out_dir, "--out-dir")
    try:
        with RunDirLock(out_dir):
            yield
    except BaseException:
        for directory in made:
            try:
                directory.rmdir()
            except OSError:  # not empty: the samples so far are kept
                break
        raise


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

    Rows are written into `latents.partial.npy` in the out-dir and which rows hold a grid into
    `latents.filled.npy` (a bool array, flushed after the rows it marks), so a re-run (of the
    out-dir's one request) knows exactly which batches still need their grids, whatever PNGs
    exist; the out-dir's lock keeps them to one job. Processes fill disjoint rows of the same
    memory-mapped files, which are allocated on disk when made: a disk too small is a one-line
    error then, not a SIGBUS hours later. When every row is filled the rows become FILE.
    """

    def __init__(self, path, out_dir, n, shape, num_tokens):
        self.path, self.shape, self.dtype = Path(path), (n, *shape), token_dtype(num_tokens)
        self.partial, self.filled_path = out_dir / "latents.partial.npy", out_dir / "latents.filled.npy"

    @property
    def nbytes(self):
        """Of the rows, with room for the .npy header."""
        return math.prod(self.shape) * self.dtype.itemsize + NPY_HEADER

    def check(self):
        """UserError, before anything is made, when FILE exists or a disk cannot hold the grids."""
        writable_file(self.path, "--save-latents file", create=False)
        if self.path.exists():
            raise UserError(f"{self.path}: already exists; pick another --save-latents file (or delete it)")
        if self.partial.exists() and self.filled_path.exists():
            return  # made, and allocated, by an earlier run of this request
        needs = {_existing(self.partial.parent): self.nbytes + self.shape[0] + NPY_HEADER}
        target = _existing(self.path.parent)
        if os.stat(target).st_dev != os.stat(next(iter(needs))).st_dev:
            needs[target] = self.nbytes  # FILE on another disk: the rows are copied there at the end
        for directory, needed in needs.items():
            free = shutil.disk_usage(directory).free
            if needed > free:
                raise UserError(f"{self.path}: the token grids need {needed} bytes in {directory}, which has "
                                f"{free} bytes free; free some space or sample fewer (--nb-samples)")

    def open(self, create=True):
        """Map the files: those an earlier run of the request made, else (`create`) new ones."""
        found = not create or (self.partial.exists() and self.filled_path.exists())
        try:
            if found:
                self.rows = np.load(self.partial, mmap_mode="r+")
                self.filled = np.load(self.filled_path, mmap_mode="r+")
            else:
                self.rows = _allocated(self.partial, self.dtype, self.shape)
                self.filled = _allocated(self.filled_path, np.dtype(bool), self.shape[:1])
        except (OSError, ValueError) as e:  # a full disk, or a damaged leftover
            if not found:
                self.partial.unlink(missing_ok=True)
                self.filled_path.unlink(missing_ok=True)
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                raise UserError(f"{self.path}: no space left for the {self.nbytes} bytes of the token grids in "
                                f"{self.partial.parent}; free some space or sample fewer (--nb-samples)") from None
            raise UserError(f"{self.partial}: cannot be used ({e}); delete it and run again") from None
        if self.rows.shape != self.shape or self.rows.dtype != self.dtype or self.filled.shape != self.shape[:1]:
            raise UserError(f"{self.partial}: holds {self.rows.shape} grids, this run makes {self.shape}; "
                            "delete it and run again")

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
        if self.path.exists():  # made meanwhile by a job on another out-dir
            raise UserError(f"{self.path}: appeared while sampling; the grids are in {self.partial}")
        try:
            os.replace(self.partial, self.path)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise UserError(f"{self.path}: could not be written ({e.strerror}); the grids are in "
                                f"{self.partial}") from None
            with atomic_path(self.path) as tmp:  # another filesystem: copied, then renamed there
                shutil.copyfile(self.partial, tmp)
            self.partial.unlink()
        self.filled_path.unlink()


NPY_HEADER = 4096  # at most, for a .npy file's header


def _existing(directory):
    """`directory`, or its nearest existing parent (where a file made in it would go)."""
    return next(p for p in (directory, *directory.parents) if p.exists())


def _allocated(path, dtype, shape):
    """A new .npy file mapped into memory, its blocks allocated on disk first: open_memmap alone
    makes a sparse file, and writing into a sparse file on a full disk is a SIGBUS."""
    np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)  # the header; unmapped when dropped
    if hasattr(os, "posix_fallocate"):  # Linux; elsewhere the file stays sparse
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        finally:
            os.close(fd)
    return np.load(path, mmap_mode="r+")


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
