"""The one Trainer builder of both training scripts: devices, nodes, precision and world size are
resolved once, here, and the run's checkpoints, logger and callbacks are wired the same way."""
import signal
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from infra.cli import add_run_args  # noqa: F401  (its old place; it lives in the light infra.cli now)
from infra.runs import AtomicCheckpointIO, LastCheckpoint

SIGTERM_EXIT = 128 + signal.SIGTERM  # 143: the shell's convention for a process ended by SIGTERM


def build_trainer(args, devices, run_dir, *, precision, max_steps, eval_every, checkpoint_every,
                  log_every, eval_batches=None, grad_clip=None, find_unused_parameters=False,
                  logged_config=None, run_name=None):
    """A Lightning Trainer stepping `max_steps` training steps (never epochs): evaluation every
    `eval_every` steps, numbered checkpoints every `checkpoint_every` plus last.ckpt (written
    atomically), CSV logs in run_dir/logs/version_N (or wandb with --wandb), DDP when the world
    size is above one."""
    run_dir = Path(run_dir)
    checkpoints = run_dir / "checkpoints"
    callbacks = [pl.callbacks.LearningRateMonitor(logging_interval="step")] if args.wandb else []
    # named, so the console is the same whether or not `rich` is installed (Lightning prefers it)
    callbacks += [pl.callbacks.TQDMProgressBar(), pl.callbacks.ModelSummary()]
    if not args.no_save:
        callbacks.append(pl.callbacks.ModelCheckpoint(
            dirpath=checkpoints, filename="step-{step:07d}", auto_insert_metric_name=False,
            every_n_train_steps=checkpoint_every, save_top_k=-1, save_last=False))
        callbacks.append(LastCheckpoint(checkpoints / "last.ckpt", checkpoint_every))
    logger = (WandbLogger(project=args.wandb_project, name=run_name or run_dir.name,
                          save_dir=str(run_dir), config=logged_config)
              if args.wandb else CSVLogger(save_dir=str(run_dir), name="logs"))  # one version per run
    if devices.world_size > 1:
        strategy = "ddp_find_unused_parameters_true" if find_unused_parameters else "ddp"
    else:
        strategy = "auto"
    if devices.accelerator == "gpu":
        torch.set_float32_matmul_precision("high")
    trainer = pl.Trainer(
        accelerator=devices.accelerator, devices=devices.devices, num_nodes=devices.num_nodes,
        strategy=strategy, precision=precision, max_steps=max_steps,
        val_check_interval=eval_every, check_val_every_n_epoch=None, num_sanity_val_steps=0,
        limit_val_batches=eval_batches, gradient_clip_val=grad_clip or None,
        log_every_n_steps=log_every, logger=logger, callbacks=callbacks,
        plugins=[AtomicCheckpointIO()], enable_checkpointing=not args.no_save,
        use_distributed_sampler=False, default_root_dir=str(run_dir), deterministic=False,
    )
    assert trainer.world_size == devices.world_size, (trainer.world_size, devices)
    return trainer


def fit(trainer, *args, **kwargs):
    """trainer.fit(*args, **kwargs); None when it ran to the end. On SIGTERM Lightning stops after
    the current batch (whose last.ckpt LastCheckpoint writes) and raises SystemExit(None), an exit
    status 0 a wrapper could not tell from a finished run: here it is one line on stderr, the step
    and the last checkpoint, and SIGTERM_EXIT returned for the script to exit with."""
    try:
        trainer.fit(*args, **kwargs)
    except SIGTERMException:
        if trainer.is_global_zero:
            last = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
            if last is None:
                where = "no checkpoint was written (--no-save)"
            elif last.saved_step is None:
                where = f"no checkpoint was written in this run ({last.path} is as it was)"
            else:
                where = f"the last checkpoint is {last.path} (step {last.saved_step})"
            print(f"training stopped by SIGTERM at step {trainer.global_step}; {where}", file=sys.stderr)
        return SIGTERM_EXIT
    return None
