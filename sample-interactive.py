"""Sample from a trained SUNDAE prior from a terminal menu: sample, repeat, edit parameters, exit.

    python sample-interactive.py --cfg-path config/digits.toml --resume runs/digits/checkpoints/last.ckpt

Each result is saved as a grid PNG in --out-dir; with `history` on, also as an animated GIF of
the sampling steps.
"""
import argparse

from sundae.interactive import InteractiveSampler, Params
from sundae.pretrained import load_prior
from infra.cli import default_device, run_cli


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg-path", required=True)
    p.add_argument("--resume", required=True, help="training checkpoint (its EMA weights are used)")
    p.add_argument("--out-dir", default="interactive")
    p.add_argument("--device", default=None)
    p.add_argument("--vqgan-device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    prior = load_prior(args.cfg_path, args.resume, device=args.device or default_device(),
                       vqgan_device=args.vqgan_device)
    s = prior.cfg.sampling
    params = Params(steps=s.steps, nb_samples=s.nb_samples, temperature=s.temperature,
                    end_temperature=s.end_temperature or s.temperature,
                    sample_proportion=s.sample_proportion,
                    end_sample_proportion=s.end_sample_proportion or s.sample_proportion,
                    min_steps=s.min_steps, early_stop=s.early_stop, seed=args.seed)
    InteractiveSampler(prior, params, args.out_dir).run()


if __name__ == "__main__":
    run_cli(main)
