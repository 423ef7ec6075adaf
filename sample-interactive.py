"""Sample from a trained prior from a terminal menu: sample, repeat, edit parameters, exit.

    python sample-interactive.py --cfg-path config/digits.toml --resume runs/digits/checkpoints/last.ckpt

The sampling flags of sample.py set the menu's starting values.

Each result is saved as a grid PNG in --out-dir; with `history` on, also as an animated GIF of
the sampling steps.
"""
from generation.interactive import InteractiveSampler, MenuOptions
from generation.pretrained import add_prior_args, prior_from_args, sampling_from_args
from infra.cli import ArgumentParser, run_cli
from infra.devices import configure_threads


def parse_args(argv):
    p = ArgumentParser(__doc__)
    p.add_argument("--out-dir", default="interactive")
    add_prior_args(p)  # the sampling flags set the menu's starting values
    return p.parse_args(argv)


def main(argv=None):
    configure_threads()  # first: SUNDAE_THREADS / OMP_NUM_THREADS, else 1 (infra/devices.py)
    args = parse_args(argv)
    prior = prior_from_args(args)
    settings = sampling_from_args(prior, args)
    prior.check_sampling(settings)
    InteractiveSampler(prior, settings, MenuOptions(seed=args.seed), args.out_dir).run()


if __name__ == "__main__":
    run_cli(main)
