r"""Train a prior (SUNDAE, absorbing diffusion or autoregressive: [prior] type) on a latent dataset.

    python train.py --cfg-path config/digits.toml                     # CPU demo
    python train.py --cfg-path config/ffhq1024/ffhq1024-hourglass.toml --devices 8 \
        --precision bf16-mixed --wandb                                # multi-GPU
    python train.py --cfg-path config/digits.toml --resume runs/digits/checkpoints/last.ckpt
"""
import dataclasses
import warnings

from infra.cli import ArgumentParser, add_run_args, int_at_least, run_cli


def parse_args(argv):
    p = ArgumentParser(__doc__)
    p.add_argument("--cfg-path", required=True, help="TOML config (see config/)")
    p.add_argument("--nb-workers", type=int_at_least(0), default=0, help="data loader worker processes")
    add_run_args(p)
    return p.parse_args(argv)


def say_if_the_schedule_changes(path, resumed, cfg):
    """One line when a resume changes max_steps under a cosine schedule: the learning rates from
    here are another run's (the checkpoint's run decayed towards its own max_steps)."""
    saved = resumed["hyper_parameters"]["config"]["trainer"].get("max_steps")
    if cfg.trainer.lr_scheduler_name == "cosine" and saved != cfg.trainer.max_steps:
        print(f"note: {path} was trained towards max_steps = {saved}; resumed with max_steps = "
              f"{cfg.trainer.max_steps}: from here the cosine schedule decays towards step "
              f"{cfg.trainer.max_steps}, a different run than either")


def main(argv=None):
    args = parse_args(argv)
    # Imported after the arguments are parsed: a usage mistake is answered without the seconds
    # torch and Lightning take to import.
    import pytorch_lightning as pl
    from pytorch_lightning.utilities import rank_zero_only

    from infra.data import RESUME_WARNING, check_global_batch
    from infra.devices import configure_threads, resolve_devices
    from infra.errors import UserError
    from infra.precision import check_training_precision
    from infra.runs import claim_run_dir, run_seed
    from infra.trainer import build_trainer, fit
    from training.checkpoint import check_fits, read_checkpoint
    from training.config import load_config, replace_section, run_dir
    from training.data import load_config_vqgan, open_splits
    from training.memory import check_training_memory
    from training.module import LatentDataModule, PriorModule, resolve_compile
    from training.quality import SampleQuality

    configure_threads()  # before any torch work: SUNDAE_THREADS / OMP_NUM_THREADS, else 1 (infra/devices.py)
    cfg = replace_section(load_config(args.cfg_path), "trainer", max_steps=args.max_steps,
                          precision=args.precision)
    tr = cfg.trainer
    devices = resolve_devices(args.accelerator, args.devices, args.num_nodes)
    device = "cuda" if devices.accelerator == "gpu" else "cpu"
    check_training_precision(device, tr.precision, None if args.precision else args.cfg_path)
    check_training_memory(cfg, device, args.cfg_path)  # from the settings: before any model is built
    out = run_dir(cfg)  # checked to stay inside runs_dir
    cfg = replace_section(cfg, "trainer", compile=resolve_compile(tr.compile, device, args.cfg_path))
    tr = cfg.trainer
    resumed = read_checkpoint(args.resume) if args.resume else None
    seed = run_seed(args.seed, resumed and resumed["hyper_parameters"].get("seed"), args.resume)
    pl.seed_everything(seed, workers=True, verbose=False)

    train, evaluation = open_splits(cfg, seed=seed)
    check_global_batch(len(train), tr.batch_size, devices.world_size,
                       what=f"{args.cfg_path}: trainer.batch_size = {tr.batch_size}")
    vqgan = load_config_vqgan(cfg)
    if resumed is not None:
        check_fits(args.resume, resumed, cfg)
        say_if_the_schedule_changes(args.resume, resumed, cfg)
    quality = SampleQuality(cfg, train, evaluation, vqgan) if cfg.evaluation else None
    if quality is not None:
        quality.check(device)
    module = PriorModule(cfg, seed=seed, run_dir=out, vqgan=vqgan, quality=quality)
    try:  # a grid the hourglass levels cannot divide fails here, before anything is written
        module.prior.check_grid(module.model)
    except UserError as e:
        raise UserError(f"{args.cfg_path}: [net] does not fit latent shape {cfg.data.latent_shape}: {e}") from None

    # Everything above only read; from here the run directory is written.
    data = LatentDataModule(train, evaluation, tr.batch_size, tr.max_steps, seed=seed,
                            num_workers=args.nb_workers)
    with claim_run_dir(out, args.cfg_path, "config.toml", ["samples"], args.resume, args.overwrite,
                       args.no_save, rename_hint="change trainer.exp_name", rank=rank_zero_only.rank):
        trainer = build_trainer(args, devices, out, precision=tr.precision, max_steps=tr.max_steps,
                                eval_every=tr.eval_frequency, eval_batches=tr.eval_batches,
                                checkpoint_every=tr.checkpoint_frequency, log_every=tr.log_frequency,
                                grad_clip=tr.grad_clip, logged_config=dataclasses.asdict(cfg),
                                run_name=tr.exp_name)
        with warnings.catch_warnings():
            # the training batches follow trainer.global_step, so a mid-epoch resume is exact
            warnings.filterwarnings("ignore", message=RESUME_WARNING)
            stopped = fit(trainer, module, datamodule=data, ckpt_path=args.resume)
    if stopped is not None:
        return stopped
    if trainer.is_global_zero:
        print(f"run directory: {out}")


if __name__ == "__main__":
    run_cli(main)
