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
import dataclasses
import warnings
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only

from infra.cli import ArgumentParser, run_cli
from infra.config import build
from infra.data import RESUME_WARNING
from infra.devices import configure_threads, resolve_devices
from infra.runs import claim_run_dir, run_seed
from infra.trainer import add_run_args, build_trainer
from vqgan.checkpoint import load_state_dict
from vqgan.errors import VQGANError
from vqgan.loading import check_state_dict
from vqgan.lpips import load_lpips
from vqgan.training import VQGANModule, learning_rate
from vqgan.training_config import TrainingConfig, load_train_config
from vqgan.training_data import ImageDataModule, scan_images, split_files


def parse_args(argv):
    p = ArgumentParser(__doc__)
    p.add_argument("--cfg-path", required=True, help="taming-layout VQ-GAN YAML (see config/vqgan/)")
    p.add_argument("--dataset", required=True, help="folder of training images (searched recursively)")
    p.add_argument("--eval-dataset", help="folder of held-out images (default: training.eval_fraction "
                                          "of --dataset)")
    p.add_argument("--run-dir", help="output directory (default: runs/vqgan-<config name>)")
    p.add_argument("--nb-workers", type=int, help="data loader workers (overrides data.params.num_workers)")
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
    configure_threads()  # first: SUNDAE_THREADS / OMP_NUM_THREADS, else 1 (infra/devices.py)
    args = parse_args(argv)
    cfg = load_train_config(args.cfg_path)
    overrides = {k: v for k, v in {"max_steps": args.max_steps, "precision": args.precision}.items() if v is not None}
    training = build(TrainingConfig, {**dataclasses.asdict(cfg.training), **overrides}, "training", "command line")
    cfg = dataclasses.replace(cfg, training=training)
    if args.nb_workers is not None and args.nb_workers < 0:
        raise VQGANError(f"--nb-workers must be >= 0, got {args.nb_workers}")
    devices = resolve_devices(args.accelerator, args.devices, args.num_nodes)
    args.seed = run_seed(args.seed)  # default 0
    pl.seed_everything(args.seed, workers=True, verbose=False)

    resolution = cfg.resolution
    files, unreadable = scan_images(args.dataset, resolution)
    for path in unreadable:
        print(f"warning: skipped unreadable image {path}")
    if args.eval_dataset:
        train_files, (eval_files, _) = files, scan_images(args.eval_dataset, resolution)
    else:
        train_files, eval_files = split_files(files, training.eval_fraction, training.max_eval_images, seed=args.seed)
    eval_files = eval_files[:training.max_eval_images]
    world = devices.world_size
    if len(train_files) < cfg.data.batch_size * world:
        raise VQGANError(f"{args.dataset}: {len(train_files)} training images, fewer than one batch "
                         f"(data.params.batch_size = {cfg.data.batch_size} x {world} processes)")
    data = ImageDataModule(train_files, eval_files, resolution, cfg.data.batch_size, training.max_steps,
                           seed=args.seed,
                           num_workers=cfg.data.num_workers if args.nb_workers is None else args.nb_workers)

    run_dir = Path(args.run_dir or Path("runs") / f"vqgan-{Path(args.cfg_path).stem}")
    module = VQGANModule(cfg, seed=args.seed, run_dir=run_dir, perceptual=perceptual_model(cfg),
                         codebook_window=training.codebook_window or data.steps_per_epoch(world))
    if args.resume:
        # a checkpoint of another architecture fails here with one line, not inside Lightning
        check_state_dict(module, load_state_dict(args.resume),
                         f"checkpoint {args.resume} does not fit config {args.cfg_path}")

    with claim_run_dir(run_dir, args.cfg_path, "config.yaml", ["reconstructions"], args.resume, args.overwrite,
                       args.no_save, rename_hint="choose another --run-dir", rank=rank_zero_only.rank):
        if rank_zero_only.rank == 0:
            print(f"{len(train_files)} training and {len(eval_files)} held-out images at "
                  f"{resolution}x{resolution}; learning rate {learning_rate(cfg, world):.3g} "
                  f"({world} process(es)); codebook statistics every {module.codebook_window} steps")
        trainer = build_trainer(args, devices, run_dir, precision=training.precision,
                                max_steps=training.max_steps, eval_every=training.eval_every,
                                checkpoint_every=training.checkpoint_every, log_every=training.log_every,
                                logged_config=cfg.raw,
                                # the discriminator sits out the generator's backward pass and vice versa
                                find_unused_parameters=True)
        with warnings.catch_warnings():
            # Lightning 2.6 warns that manual optimization checkpoints the weights after the step:
            # the state we want (a checkpoint at step N holds N updates, as automatic optimization's).
            warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")  # LPIPS
            # the training batches follow trainer.global_step, so a mid-epoch resume is exact
            warnings.filterwarnings("ignore", message=RESUME_WARNING)
            trainer.fit(module, datamodule=data, ckpt_path=args.resume)
    if trainer.is_global_zero:
        print(f"run directory: {run_dir}")
        if not args.no_save:
            print(f"VQ-GAN: --cfg-path {run_dir / 'config.yaml'} --ckpt-path {run_dir / 'checkpoints' / 'last.ckpt'}")


if __name__ == "__main__":
    run_cli(main)
