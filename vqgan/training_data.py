"""Image folders for VQ-GAN training: checked up front, split, batched in a resumable order."""
import sys

import pytorch_lightning as pl
import torch
from PIL import Image

from infra.data import StepBatchSampler, loader_generator, split_groups
from infra.images import UNREADABLE, ImageFiles, collate_skipping_unreadable, list_images, refusing_bombs
from vqgan.errors import VQGANError


def scan_images(root, resolution):
    """(readable image files under `root`, unreadable ones), reading headers only.

    VQGANError when there are no images or any image is smaller than `resolution` on a side:
    training would silently upsample it, and the model would learn blur.
    """
    files, unreadable, small = [], [], []
    for path in list_images(root):
        try:
            with refusing_bombs(), Image.open(path) as image:
                width, height = image.size
        except UNREADABLE:
            unreadable.append(path)
            continue
        files.append(path)
        if min(width, height) < resolution:
            small.append((path, width, height))
    if small:
        path, width, height = small[0]
        raise VQGANError(
            f"{path}: {width}x{height} is smaller than the training resolution {resolution} "
            f"(model.params.ddconfig.resolution); {len(small)} of {len(files)} images in {root} are")
    if not files:
        raise VQGANError(f"{root}: no readable images")
    return files, unreadable


def split_files(files, eval_fraction, max_eval, seed=0):
    """A seeded (train, held-out) split of a file list; at least one image on each side."""
    if len(files) < 2:
        raise VQGANError(f"{len(files)} image(s): need at least 2 to hold some out for evaluation "
                         "(or pass --eval-dataset)")
    n_eval = min(max(1, round(eval_fraction * len(files))), max_eval, len(files) - 1)
    train, held_out = split_groups(files, [len(files) - n_eval, n_eval], seed)
    return [files[i] for i in train], [files[i] for i in held_out]


class CollateImages:
    """Stack the readable images of a batch, (B, 3, H, W); report the unreadable ones by name."""

    def __init__(self, files):
        self.files = files

    def __call__(self, batch):
        _, images, bad = collate_skipping_unreadable(batch)
        for i in bad:  # scan_images let only files with a readable header through
            print(f"warning: {self.files[i]}: unreadable image (its header read, its pixels failed to "
                  "decode); skipped", file=sys.stderr)
        if images is None:
            raise VQGANError(f"unreadable images: every image of a batch failed to decode "
                             f"({', '.join(str(self.files[i]) for i in bad[:3])}, ...)")
        return images


class ImageDataModule(pl.LightningDataModule):
    """Training batches in a step-indexed order (a resumed run continues where it stopped);
    held-out images in file order."""

    def __init__(self, train_files, eval_files, resolution, batch_size, max_steps, seed=0,
                 num_workers=0):
        super().__init__()
        size = (resolution, resolution)
        self.train, self.evaluation = ImageFiles(train_files, size), ImageFiles(eval_files, size)
        self.batch_size, self.max_steps = batch_size, max_steps
        self.seed, self.num_workers = seed, num_workers

    def steps_per_epoch(self, world_size=1):
        """Steps per pass over the training images (the ragged tail is dropped)."""
        return max(1, len(self.train) // (self.batch_size * world_size))

    def train_dataloader(self):
        # Called after a resumed checkpoint is restored, so global_step is where to continue.
        sampler = StepBatchSampler(len(self.train), self.batch_size, self.max_steps, seed=self.seed,
                                   start_step=self.trainer.global_step, rank=self.trainer.global_rank,
                                   world_size=self.trainer.world_size)
        return torch.utils.data.DataLoader(
            self.train, batch_sampler=sampler, collate_fn=CollateImages(self.train.files),
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
            generator=loader_generator(self.seed))

    def val_dataloader(self):
        return torch.utils.data.DataLoader(
            self.evaluation, batch_size=self.batch_size, shuffle=False,
            collate_fn=CollateImages(self.evaluation.files), num_workers=self.num_workers,
            generator=loader_generator(self.seed))
