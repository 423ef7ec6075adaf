r"""Train a SUNDAE prior on a latent dataset.

    python train.py --cfg-path config/digits.toml                     # CPU demo
    python train.py --cfg-path config/ffhq1024/ffhq1024-hourglass.toml --devices 8 \
        --precision bf16-mixed --wandb                                # multi-GPU
    python train.py --cfg-path config/digits.toml --resume runs/digits/checkpoints/last.ckpt
"""
import argparse
import dataclasses
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from sundae.checkpoint import check_checkpoint_matches
from sundae.config import load_config
from sundae.data import open_splits
from sundae.errors import SundaeError
from sundae.pretrained import load_config_vqgan
from sundae.training import (AtomicCheckpointIO, LastCheckpoint, LatentDataModule, SundaeModule,
                             add_run_args, prepare_run_dir)
from infra.cli import run_cli


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg-path", required=True, help="TOML config (see config/)")
    p.add_argument("--resume", help="checkpoint to continue from (model, EMA, optimiser, step, RNG)")
    p.add_argument("--precision", choices=["32", "bf16-mixed", "16-mixed"],
                   help="overrides trainer.precision")
    p.add_argument("--max-steps", type=int, help="overrides trainer.max_steps")
    p.add_argument("--nb-workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--overwrite", action="store_true",
                   help="train into a run directory that already holds checkpoints, without resuming")
    add_run_args(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.cfg_path)
    overrides = {"max_steps": args.max_steps, "precision": args.precision}
    cfg.trainer = dataclasses.replace(cfg.trainer, **{k: v for k, v in overrides.items() if v is not None})
    if cfg.trainer.max_steps < 1:
        raise SundaeError(f"--max-steps must be >= 1, got {cfg.trainer.max_steps}")
    pl.seed_everything(args.seed, workers=True, verbose=False)

    train, evaluation = open_splits(cfg, seed=args.seed)
    vqgan = load_config_vqgan(cfg)
    if args.resume:
        check_checkpoint_matches(args.resume, cfg)

    run_dir = Path(cfg.trainer.runs_dir) / cfg.trainer.exp_name
    checkpoints = run_dir / "checkpoints"
    module = SundaeModule(cfg, seed=args.seed, run_dir=run_dir, vqgan=vqgan)
    module.model.eval()
    with torch.no_grad():
        try:  # a grid the hourglass levels cannot divide fails here, not after data loading
            cond = torch.zeros(1, dtype=torch.long) if cfg.net.conditional else None
            module.model(torch.zeros(1, *cfg.data.latent_shape, dtype=torch.long), cond)
        except ValueError as e:
            raise SundaeError(f"{args.cfg_path}: [net] does not fit latent shape "
                              f"{cfg.data.latent_shape}: {e}") from None
    module.model.train()

    if rank_zero_only.rank == 0:
        prepare_run_dir(run_dir, args.cfg_path, "config.toml", ["samples"], args.resume, args.overwrite,
                        args.no_save, rename_hint="change trainer.exp_name")

    tr = cfg.trainer
    callbacks = [pl.callbacks.LearningRateMonitor(logging_interval="step")] if args.wandb else []
    if not args.no_save:
        callbacks.append(pl.callbacks.ModelCheckpoint(
            dirpath=checkpoints, filename="step-{step:07d}", auto_insert_metric_name=False,
            every_n_train_steps=tr.checkpoint_frequency, save_top_k=-1, save_last=False))
        callbacks.append(LastCheckpoint(checkpoints / "last.ckpt", tr.checkpoint_frequency))
    logger = (WandbLogger(project=args.wandb_project, name=tr.exp_name, save_dir=str(run_dir),
                          config=dataclasses.asdict(cfg))
              if args.wandb else CSVLogger(save_dir=str(run_dir), name="logs"))  # logs/version_N: one per run
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    devices = int(args.devices) if str(args.devices).isdigit() else args.devices
    trainer = pl.Trainer(
        accelerator=args.accelerator, devices=devices, num_nodes=args.num_nodes,
        strategy="ddp" if (devices not in ("auto", 1) or args.num_nodes > 1) else "auto",
        precision=tr.precision, max_steps=tr.max_steps,
        val_check_interval=tr.eval_frequency, check_val_every_n_epoch=None,
        limit_val_batches=tr.eval_batches, num_sanity_val_steps=0,
        gradient_clip_val=tr.grad_clip or None, log_every_n_steps=tr.log_frequency,
        logger=logger, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
        enable_checkpointing=not args.no_save, use_distributed_sampler=False,
        default_root_dir=str(run_dir), deterministic=False,
    )
    data = LatentDataModule(train, evaluation, tr.batch_size, tr.max_steps, seed=args.seed,
                            num_workers=args.nb_workers)
    trainer.fit(module, datamodule=data, ckpt_path=args.resume)
    if trainer.is_global_zero:
        print(f"run directory: {run_dir}")


if __name__ == "__main__":
    run_cli(main)
