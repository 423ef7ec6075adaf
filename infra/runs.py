"""Run directories and checkpoints, the same for both trainers: one owner per run directory,
atomic checkpoint writes, `last.ckpt` always the newest state, the RNG state carried along."""
import os
import shutil
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from infra.errors import UserError
from infra.files import atomic_path


def prepare_run_dir(run_dir, cfg_path, config_name, outputs, resume=None, overwrite=False,
                    no_save=False, rename_hint="choose another run directory"):
    """Create the run directory of a training run with a copy of its config (call on rank 0).

    A directory already holding checkpoints is refused unless the run resumes it, `overwrite`
    starts over (its checkpoints and the `outputs` sub-directories are removed: left in place,
    Lightning would write last-v1.ckpt beside the old last.ckpt) or nothing is saved.
    """
    run_dir = Path(run_dir)
    checkpoints = run_dir / "checkpoints"
    if any(checkpoints.glob("*.ckpt")) and not (resume or overwrite or no_save):
        raise UserError(f"{checkpoints}: holds checkpoints of an earlier run; pass --resume "
                        f"{checkpoints / 'last.ckpt'} to continue it, --overwrite to start over, "
                        f"or {rename_hint}")
    if overwrite and not resume:
        for old in (checkpoints, *(run_dir / name for name in outputs)):
            shutil.rmtree(old, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    if Path(cfg_path).resolve() != (run_dir / config_name).resolve():
        shutil.copyfile(cfg_path, run_dir / config_name)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file beside it, then rename: an interrupted write
    leaves the previous checkpoint of that name intact and no partial file behind."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())


class LastCheckpoint(pl.Callback):
    """Keep `path` (last.ckpt) the newest training state: written with every numbered checkpoint
    and after the final step, from the batch-end hook like ModelCheckpoint's own saves, so that
    resuming it is exact, with a larger max_steps too. (ModelCheckpoint's save_last misses a final
    step that is not a multiple of every_n_train_steps, and in a run shorter than that saves after
    fit, a state from which a resumed run repeats one batch.)"""

    def __init__(self, path, every_n_steps):
        self.path, self.every_n_steps = path, every_n_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % self.every_n_steps == 0 or step == trainer.max_steps:
            trainer.save_checkpoint(self.path)


def rng_state():
    """torch's global RNG state (CPU and every GPU), for a checkpoint."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng_state(states):
    if states is None:
        return
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
