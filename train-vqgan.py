r"""Train a VQ-GAN on a folder of images; checkpoints in taming-transformers' format.

    python train-vqgan.py --cfg-path config/vqgan/tiny-crops32.yaml --dataset data/crops   # CPU
    python train-vqgan.py --cfg-path my-vqgan.yaml --dataset /data/ffhq --devices 8 \
        --precision bf16-mixed --wandb                                                  # multi-GPU
    python train-vqgan.py --cfg-path my-vqgan.yaml --dataset /data/ffhq \
        --resume runs/vqgan-my-vqgan/checkpoints/last.ckpt

The config is a taming YAML (model.params.ddconfig, n_embed, embed_dim, lossconfig) with an
optional `training:` section of our own (see vqgan/training_config.py). Each image is scaled so
that its shorter side is ddconfig.resolution, then centre-cropped square. The run directory holds
config.yaml (a copy) and checkpoints/last.ckpt: give both to load_vqgan, generate-latents.py,
recon-vqgan.py or a SUNDAE config's [vqgan] section.
"""
import argparse
import dataclasses
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from sundae.training import AtomicCheckpointIO, LastCheckpoint, add_run_args, prepare_run_dir
from infra.cli import run_cli
from vqgan.checkpoint import load_state_dict
from vqgan.errors import VQGANError
from vqgan.loading import check_state_dict
from vqgan.lpips import load_lpips
from vqgan.training import VQGANModule, learning_rate
from vqgan.training_config import PRECISIONS, load_train_config
from vqgan.training_data import ImageDataModule, scan_images, split_files


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg-path", required=True, help="taming-layout VQ-GAN YAML (see config/vqgan/)")
    p.add_argument("--dataset", required=True, help="folder of training images (searched recursively)")
    p.add_argument("--eval-dataset", help="folder of held-out images (default: training.eval_fraction "
                                          "of --dataset)")
    p.add_argument("--run-dir", help="output directory (default: runs/vqgan-<config name>)")
    p.add_argument("--resume", help="checkpoint to continue from (weights, optimisers, step, RNG)")
    p.add_argument("--precision", choices=PRECISIONS, help="overrides training.precision")
    p.add_argument("--max-steps", type=int, help="overrides training.max_steps")
    p.add_argument("--nb-workers", type=int, help="data loader workers (overrides data.params.num_workers)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a run directory that holds an earlier run (its checkpoints "
                        "and reconstructions are deleted; logs are kept)")
    add_run_args(p)
    return p.parse_args(argv)


def perceptual_model(cfg):
    """LPIPS from training.lpips_weights, or None (with a note) when there are no local weights."""
    if cfg.loss.perceptual_weight == 0:
        return None
    path = cfg.training.lpips_weights
    if path is None:
        if rank_zero_only.rank == 0:
            print("note: perceptual loss off (weight 0): training.lpips_weights is not set and LPIPS "
                  "weights are never downloaded. Point it at a local LPIPS state_dict or any "
                  "taming VQ-GAN checkpoint to use it, or set perceptual_weight: 0.0 to silence "
                  "this note.")
        return None
    if not Path(path).is_file():
        raise VQGANError(f"{cfg.source}: training.lpips_weights: {path} not found (or not a file)")
    return load_lpips(path)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_train_config(args.cfg_path)
    overrides = {"max_steps": args.max_steps, "precision": args.precision}
    cfg = dataclasses.replace(cfg, training=dataclasses.replace(
        cfg.training, **{k: v for k, v in overrides.items() if v is not None}))
    if cfg.training.max_steps < 1:
        raise VQGANError(f"--max-steps must be >= 1, got {cfg.training.max_steps}")
    if args.nb_workers is not None and args.nb_workers < 0:
        raise VQGANError(f"--nb-workers must be >= 0, got {args.nb_workers}")
    pl.seed_everything(args.seed, workers=True, verbose=False)

    resolution = cfg.resolution
    files, unreadable = scan_images(args.dataset, resolution)
    for path in unreadable:
        print(f"warning: skipped unreadable image {path}")
    if args.eval_dataset:
        train_files, (eval_files, _) = files, scan_images(args.eval_dataset, resolution)
    else:
        train_files, eval_files = split_files(files, cfg.training.eval_fraction,
                                              cfg.training.max_eval_images, seed=args.seed)
    eval_files = eval_files[:cfg.training.max_eval_images]

    devices = int(args.devices) if str(args.devices).isdigit() else args.devices
    distributed = devices not in ("auto", 1) or args.num_nodes > 1
    data = ImageDataModule(train_files, eval_files, resolution, cfg.data.batch_size,
                           cfg.training.max_steps, seed=args.seed,
                           num_workers=cfg.data.num_workers if args.nb_workers is None else args.nb_workers)
    world = (devices if isinstance(devices, int) else 1) * args.num_nodes
    if len(train_files) < cfg.data.batch_size * world:
        raise VQGANError(f"{args.dataset}: {len(train_files)} training images, fewer than one batch "
                         f"(data.params.batch_size = {cfg.data.batch_size} x {world} processes)")

    run_dir = Path(args.run_dir or Path("runs") / f"vqgan-{Path(args.cfg_path).stem}")
    checkpoints = run_dir / "checkpoints"
    module = VQGANModule(cfg, seed=args.seed, run_dir=run_dir, perceptual=perceptual_model(cfg),
                         codebook_window=cfg.training.codebook_window or data.steps_per_epoch(world))
    if args.resume:
        # a checkpoint of another architecture fails here with one line, not inside Lightning
        check_state_dict(module, load_state_dict(args.resume),
                         f"checkpoint {args.resume} does not fit config {args.cfg_path}")

    if rank_zero_only.rank == 0:
        prepare_run_dir(run_dir, args.cfg_path, "config.yaml", ["reconstructions"], args.resume,
                        args.overwrite, args.no_save, rename_hint="choose another --run-dir")
        print(f"{len(train_files)} training and {len(eval_files)} held-out images at "
              f"{resolution}x{resolution}; learning rate {learning_rate(cfg, world):.3g}; "
              f"codebook statistics every {module.codebook_window} steps")

    tr = cfg.training
    callbacks = []
    if not args.no_save:
        callbacks.append(pl.callbacks.ModelCheckpoint(
            dirpath=checkpoints, filename="step-{step:07d}", auto_insert_metric_name=False,
            every_n_train_steps=tr.checkpoint_every, save_top_k=-1, save_last=False))
        callbacks.append(LastCheckpoint(checkpoints / "last.ckpt", tr.checkpoint_every))
    logger = (WandbLogger(project=args.wandb_project, name=run_dir.name, save_dir=str(run_dir),
                          config=cfg.raw)
              if args.wandb else CSVLogger(save_dir=str(run_dir), name="logs"))  # logs/version_N
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    trainer = pl.Trainer(
        accelerator=args.accelerator, devices=devices, num_nodes=args.num_nodes,
        # the discriminator sits out the generator's backward pass and vice versa
        strategy="ddp_find_unused_parameters_true" if distributed else "auto",
        precision=tr.precision, max_steps=tr.max_steps,
        val_check_interval=tr.eval_every, check_val_every_n_epoch=None, num_sanity_val_steps=0,
        log_every_n_steps=tr.log_every, logger=logger, callbacks=callbacks,
        plugins=[AtomicCheckpointIO()], enable_checkpointing=not args.no_save,
        use_distributed_sampler=False, default_root_dir=str(run_dir), deterministic=False,
    )
    with warnings.catch_warnings():
        # Lightning 2.6 warns that manual optimization checkpoints the weights after the step:
        # the state we want (a checkpoint at step N holds N updates, as automatic optimization's).
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")  # LPIPS
        trainer.fit(module, datamodule=data, ckpt_path=args.resume)
    if trainer.is_global_zero:
        print(f"run directory: {run_dir}")
        if not args.no_save:
            print(f"VQ-GAN: --cfg-path {run_dir / 'config.yaml'} --ckpt-path {checkpoints / 'last.ckpt'}")


if __name__ == "__main__":
    run_cli(main)
