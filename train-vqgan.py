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
from pathlib import Path

from infra.cli import ArgumentParser, add_run_args, int_at_least, run_cli


def parse_args(argv):
    p = ArgumentParser(__doc__)
    p.add_argument("--cfg-path", required=True, help="taming-layout VQ-GAN YAML (see config/vqgan/)")
    p.add_argument("--dataset", required=True, help="folder of training images (searched recursively)")
    p.add_argument("--eval-dataset", help="folder of held-out images (default: training.eval_fraction "
                                          "of --dataset)")
    p.add_argument("--run-dir", help="output directory (default: runs/vqgan-<config name>)")
    p.add_argument("--nb-workers", type=int_at_least(0),
                   help="data loader workers (overrides data.params.num_workers)")
    add_run_args(p)
    return p.parse_args(argv)


def perceptual_model(cfg, rank):
    """LPIPS from training.lpips_weights, or None (with a note) when there are no local weights."""
    from vqgan.errors import VQGANError
    from vqgan.lpips import load_lpips

    if cfg.loss.perceptual_weight == 0:
        return None
    path = cfg.training.lpips_weights
    if path is None:
        if rank == 0:
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
    # torch and Lightning take seconds to import: the command line is read first, so that a
    # mistyped flag is reported at once
    from infra.devices import configure_threads
    configure_threads()  # before any torch work: SUNDAE_THREADS / OMP_NUM_THREADS, else 1 (infra/devices.py)
    return train(args)


def train(args):
    import dataclasses
    import warnings

    import pytorch_lightning as pl
    from pytorch_lightning.utilities import rank_zero_only

    from infra.config import build
    from infra.data import RESUME_WARNING
    from infra.devices import resolve_devices
    from infra.runs import claim_run_dir, run_seed
    from infra.trainer import build_trainer, fit
    from latents.encode import report_skipped
    from vqgan.checkpoint import read_training_checkpoint
    from vqgan.errors import VQGANError
    from vqgan.loading import check_state_dict
    from vqgan.training import VQGANModule, learning_rate
    from vqgan.training_config import TrainingConfig, load_train_config
    from vqgan.training_data import ImageDataModule, scan_images, split_files

    cfg = load_train_config(args.cfg_path)
    overrides = {k: v for k, v in {"max_steps": args.max_steps, "precision": args.precision}.items() if v is not None}
    training = build(TrainingConfig, {**dataclasses.asdict(cfg.training), **overrides}, "training", "command line")
    cfg = dataclasses.replace(cfg, training=training)
    devices = resolve_devices(args.accelerator, args.devices, args.num_nodes)
    # read as Lightning will read it, so that a checkpoint it would refuse is refused here, in one
    # line and before the run directory is touched; it also holds the seed the run continues with
    resumed = read_training_checkpoint(args.resume) if args.resume else None
    args.seed = run_seed(args.seed, resumed["hyper_parameters"]["seed"] if resumed else None, args.resume)
    pl.seed_everything(args.seed, workers=True, verbose=False)

    resolution = cfg.resolution
    files, unreadable = scan_images(args.dataset, resolution)
    if args.eval_dataset:
        (eval_files, eval_unreadable), train_files = scan_images(args.eval_dataset, resolution), files
        unreadable += eval_unreadable
    else:
        train_files, eval_files = split_files(files, training.eval_fraction, training.max_eval_images, seed=args.seed)
    eval_files = eval_files[:training.max_eval_images]
    report_skipped(unreadable)
    world = devices.world_size
    if len(train_files) < cfg.data.batch_size * world:
        raise VQGANError(f"{args.dataset}: {len(train_files)} training images, fewer than one batch "
                         f"(data.params.batch_size = {cfg.data.batch_size} x {world} processes)")
    data = ImageDataModule(train_files, eval_files, resolution, cfg.data.batch_size, training.max_steps,
                           seed=args.seed,
                           num_workers=cfg.data.num_workers if args.nb_workers is None else args.nb_workers)

    run_dir = Path(args.run_dir or Path("runs") / f"vqgan-{Path(args.cfg_path).stem}")
    module = VQGANModule(cfg, seed=args.seed, run_dir=run_dir, perceptual=perceptual_model(cfg, rank_zero_only.rank),
                         codebook_window=training.codebook_window or data.steps_per_epoch(world))
    if resumed is not None:
        # a checkpoint of another architecture fails here with one line, not inside Lightning
        check_state_dict(module, resumed["state_dict"],
                         f"checkpoint {args.resume} does not fit config {args.cfg_path}")
        del resumed  # Lightning reads the file again, with the same weights-only restriction

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
            stopped = fit(trainer, module, datamodule=data, ckpt_path=args.resume, weights_only=True)
    if stopped is not None:
        return stopped  # SIGTERM: stopped after a batch, its checkpoint written (infra/trainer.py)
    if trainer.is_global_zero:
        print(f"run directory: {run_dir}")
        if not args.no_save:
            print(f"VQ-GAN: --cfg-path {run_dir / 'config.yaml'} --ckpt-path {run_dir / 'checkpoints' / 'last.ckpt'}")


if __name__ == "__main__":
    run_cli(main)
