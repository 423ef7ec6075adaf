"""Run directories and checkpoints, the same for both trainers: one owner per run directory,
atomic checkpoint writes, `last.ckpt` always the newest state, the RNG state carried along."""
import contextlib
import errno
import fcntl
import os
import shutil
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from infra.errors import UserError
from infra.files import atomic_path, disk_full, host_and_pid, remove_stale_temps, writable_dir


@contextlib.contextmanager
def claim_run_dir(run_dir, cfg_path, config_name, outputs, resume=None, overwrite=False, no_save=False,
                  rename_hint="choose another run directory", rank=0):
    """Own a training run's directory for the duration of the block (call on every process; only
    rank 0 claims): lock it against a second writer, apply the refuse / overwrite / resume rules,
    remove temporary files that killed writes left, and copy the config in."""
    if rank != 0:
        yield
        return
    run_dir = writable_dir(run_dir, "run directory")
    with RunDirLock(run_dir):
        checkpoints = run_dir / "checkpoints"
        if any(checkpoints.glob("*.ckpt")) and not (resume or overwrite or no_save):
            raise UserError(f"{checkpoints}: holds checkpoints of an earlier run; pass --resume "
                            f"{checkpoints / 'last.ckpt'} to continue it, --overwrite to start over, "
                            f"or {rename_hint}")
        if overwrite and not resume:
            # left in place, Lightning would write last-v1.ckpt beside the old last.ckpt
            for old in (checkpoints, *(run_dir / name for name in outputs)):
                shutil.rmtree(old, ignore_errors=True)
        if checkpoints.is_dir():
            remove_stale_temps(checkpoints)
        if Path(cfg_path).resolve() != (run_dir / config_name).resolve():
            shutil.copyfile(cfg_path, run_dir / config_name)
        yield


class RunDirLock:
    """One writer per run directory: an exclusive flock on `run_dir/.lock`, which holds the
    owner's host and pid for the message a second writer gets. The kernel drops the lock when
    its process dies, so a lock left by a killed run is stale and simply taken over."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / ".lock"
        self.fd = None

    def __enter__(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{self.path.parent}: in use by another run ({owner}); wait for it to "
                            "finish or give this run another directory") from None
        previous = os.read(fd, 200).decode(errors="replace").strip()
        if previous:
            print(f"note: {self.path} was left by a run that stopped without releasing it "
                  f"({previous}); taking it over")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{host_and_pid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc):
        os.ftruncate(self.fd, 0)
        self.path.unlink(missing_ok=True)
        os.close(self.fd)  # closing releases the flock
        self.fd = None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file beside it, then rename: an interrupted write
    leaves the previous checkpoint of that name intact and no partial file behind."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            try:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            except RuntimeError as e:  # torch's zip writer reports a failed write this way, without errno
                if disk_full(e, Path(path).parent):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
                raise OSError(str(e).splitlines()[0]) from None


class LastCheckpoint(pl.Callback):
    """Keep `path` (last.ckpt) the newest training state: written with every numbered checkpoint
    and after the final step, from the batch-end hook like ModelCheckpoint's own saves, so that
    resuming it is exact, with a larger max_steps too. (ModelCheckpoint's save_last misses a final
    step that is not a multiple of every_n_train_steps, and in a run shorter than that saves after
    fit, a state from which a resumed run repeats one batch.) A batch during which SIGTERM
    arrived is saved too in a one-process run: Lightning stops after it, and the resume continues
    from there. (Not under DDP: a save is a barrier of all ranks, and a signal may reach one rank
    a batch before the others.)"""

    def __init__(self, path, every_n_steps):
        self.path, self.every_n_steps = path, every_n_steps
        self.saved_step = None  # the step of this run's last save, for the SIGTERM line

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        stopping = trainer.received_sigterm and trainer.world_size == 1
        if step % self.every_n_steps == 0 or step == trainer.max_steps or stopping:
            trainer.save_checkpoint(self.path)
            self.saved_step = step


def run_seed(requested, saved=None, what="the checkpoint"):
    """The seed a run trains with: a new run takes --seed (default 0); a resumed run continues
    with the seed its checkpoint was trained with (`saved`), which --seed may repeat but not
    change, since every batch order and corruption derives from it."""
    if saved is None:
        return 0 if requested is None else requested
    if requested is not None and requested != saved:
        raise UserError(f"--seed {requested}: {what} was trained with --seed {saved}, and a resume continues "
                        f"that run (leave --seed out, or give --seed {saved})")
    return saved


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


def stop_if_not_finite(loss, step, check_now=True):
    """UserError naming the step when the training loss is NaN or infinite, raised before the
    step's update and before any checkpoint of it, so the last good checkpoint stays the newest.
    `check_now` lets GPU runs check only every few steps (each check waits for the GPU)."""
    if check_now and not bool(torch.isfinite(loss.detach()).all()):
        raise UserError(f"step {step}: the training loss is {loss.detach().float().item()}, not finite; "
                        "stopped before this update, no checkpoint of it was written (lower the "
                        "learning rate, or check the data)")


def check_parameters_finite(module, step):
    """Refuse to checkpoint non-finite weights (one host sync per checkpoint)."""
    bad = next((name for name, p in module.named_parameters() if not bool(torch.isfinite(p).all())), None)
    if bad is not None:
        raise UserError(f"step {step}: parameter {bad} is not finite; training diverged and this "
                        "checkpoint was not written (the last good one is kept)")

