r"""Bulk sampling from a trained prior (for FID): one PNG per sample, optionally the token grids
and an ADM-layout .npz, resumable, on one process or many.

    python sample.py --cfg-path config/digits.toml --resume runs/digits/checkpoints/last.ckpt \
        --nb-samples 1000 --out-dir samples/digits --npz samples/digits.npz
    torchrun --nproc-per-node 8 sample.py --cfg-path CFG --resume CKPT --device cuda \
        --vqgan-device cuda --nb-samples 50000 --out-dir fid-samples --npz fid-samples.npz

Re-running the same command after an interruption (with any number of processes) completes the
set without overwriting. Each process takes every W-th batch of the one global set, so the
samples do not depend on the number of processes. An --out-dir records the request that made its
samples (request.json): another request is refused there, and so is a second job while one runs.
"""
import json
import math

from generation.pretrained import add_prior_args, prior_from_args, sampling_from_args
from infra.cli import ArgumentParser, run_cli
from infra.devices import configure_threads, default_device
from infra.errors import UserError
from infra.files import writable_dir, writable_file


def parse_args(argv):
    p = ArgumentParser(__doc__)
    p.add_argument("--nb-samples", type=int, default=None, help="default: the config's sampling.nb_samples")
    p.add_argument("--batch-size", type=int, default=16, help="per process")
    p.add_argument("--class-idx", type=int, default=None, help="class of every sample (conditional models)")
    p.add_argument("--class-balanced", action="store_true",
                   help="sample i gets class i mod C (conditional models; default: random classes)")
    p.add_argument("--save-labels", default=None, metavar="FILE.npy", help="also save the (N,) class of each sample")
    p.add_argument("--out-dir", default="samples")
    p.add_argument("--save-latents", default=None, metavar="FILE.npy", help="also save the token grids")
    p.add_argument("--npz", default=None, metavar="FILE.npz",
                   help="also write all samples as an ADM-layout .npz (arr_0 images, arr_1 labels)")
    p.add_argument("--grid", default=None, metavar="FILE.png", help="also tile all samples into one image")
    p.add_argument("--count-offset", type=int, default=0, help="number of the first sample file")
    p.add_argument("--no-progress", action="store_true")
    add_prior_args(p)
    return p.parse_args(argv)


def main(argv=None):
    configure_threads()  # first: SUNDAE_THREADS / OMP_NUM_THREADS, else 1 (infra/devices.py)
    args = parse_args(argv)
    # imported once the arguments parse: torchvision and Lightning (the out-dir's lock) take seconds
    from generation.bulk import bulk_sample, save_sample_grid
    from infra.distributed import from_environment, process_group

    for flag, value, minimum in (("--batch-size", args.batch_size, 1), ("--count-offset", args.count_offset, 0),
                                 ("--nb-samples", args.nb_samples, 1)):
        if value is not None and value < minimum:
            raise UserError(f"{flag} must be >= {minimum}, got {value}")
    # every output checked before any work, and nothing made for a run that cannot finish
    writable_dir(args.out_dir, "--out-dir", create=False)
    if args.class_balanced and args.class_idx is not None:
        raise UserError("--class-balanced and --class-idx: give one of them")
    for path, what in ((args.grid, "--grid file"), (args.save_latents, "--save-latents file"),
                       (args.npz, "--npz file"), (args.save_labels, "--save-labels file")):
        if path:
            writable_file(path, what, create=False)
    procs = from_environment()
    if procs.world_size > 1 and (args.device or default_device()) == "cuda":
        args.device = f"cuda:{procs.local_rank}"  # one GPU per process
    prior = prior_from_args(args, max_batch=args.batch_size)
    if prior.num_classes is None and (args.class_balanced or args.save_labels):
        raise UserError(f"--class-balanced / --save-labels: the prior of {args.cfg_path} is not class-conditional")
    sampling = sampling_from_args(prior, args)
    prior.check_sampling(sampling)
    nb_samples = args.nb_samples or prior.cfg.sampling.nb_samples
    with process_group(procs, prior.device):
        summary = bulk_sample(prior, sampling, args.out_dir, nb_samples, batch_size=args.batch_size,
                              count_offset=args.count_offset, class_idx=args.class_idx,
                              class_balanced=args.class_balanced, seed=args.seed,
                              save_latents=args.save_latents, save_labels=args.save_labels, npz=args.npz,
                              progress=not args.no_progress, procs=procs)
    if not procs.is_main:
        return
    if summary["sampled_now"]:
        print(f"{summary['sampled_now']} samples on {summary['processes']} process(es) at "
              f"{summary['samples_per_second']:.2f} samples/s (prior {summary['prior_seconds']:.2f} s, "
              f"decoder {summary['decoder_seconds']:.2f} s); mean steps used {summary['mean_steps_used']:.1f}")
        print("steps used histogram: " + json.dumps(summary["steps_histogram"]))
    else:
        print(f"all {nb_samples} samples already in {args.out_dir}; nothing to do")
    if args.grid:
        indices = range(args.count_offset, args.count_offset + nb_samples)
        save_sample_grid(args.out_dir, indices, args.grid, nrow=max(1, int(math.sqrt(nb_samples))))
        print(f"wrote {args.grid}")
    for path in (args.npz, args.save_latents, args.save_labels):
        if path:
            print(f"wrote {path}")
    print(f"wrote {args.out_dir} (summary.json)")


if __name__ == "__main__":
    run_cli(main)
