"""The one Trainer builder of both training scripts: devices, nodes, precision and world size are
resolved once, here, and the run's checkpoints, logger and callbacks are wired the same way."""
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from infra.config import PRECISIONS
from infra.runs import AtomicCheckpointIO, LastCheckpoint


def add_run_args(parser):
    """The command-line flags every training script shares."""
    parser.add_argument("--resume", help="checkpoint to continue from (weights, optimisers, step, RNG)")
    parser.add_argument("--precision", choices=PRECISIONS, help="overrides the config's precision")
    parser.add_argument("--max-steps", type=int, help="overrides the config's max_steps")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in a run directory that holds an earlier run (its "
                             "checkpoints and pictures are deleted; logs are kept)")
    parser.add_argument("--seed", type=int, default=None,
                        help="default 0; a resumed run continues with its checkpoint's seed")
    parser.add_argument("--wandb", action="store_true", help="log to wandb (WANDB_MODE=offline works offline)")
    parser.add_argument("--wandb-project", default="sundae-vqgan")
    parser.add_argument("--devices", default="auto", help="number of devices per node (or 'auto')")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--accelerator", default="auto", choices=["cpu", "gpu", "auto"])
    parser.add_argument("--no-save", action="store_true", help="write no checkpoints")


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
