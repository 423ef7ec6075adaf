"""Write a class-labelled latent dataset of gray-level token grids, no VQ-GAN involved.

    python generate-discrete-mnist.py digits data/digits           # bundled with scikit-learn
    python generate-discrete-mnist.py mnist data/mnist --root ~/torchvision-data --levels 16
"""

import numpy as np

from infra.cli import ArgumentParser, run_cli
from infra.data import split_groups
from infra.devices import configure_threads
from latents.dataset import create_latent_dataset
from latents.discrete import TORCHVISION_SETS, digits_grids, torchvision_grids


def parse_args(argv):
    p = ArgumentParser(__doc__)
    p.add_argument("name", nargs="?", default="digits", choices=["digits", *TORCHVISION_SETS])
    p.add_argument("out_dir")
    p.add_argument("--levels", type=int, default=256, help="gray levels of the 28x28 sets (vocabulary)")
    p.add_argument("--root", default="data/torchvision", help="torchvision dataset root (28x28 sets)")
    p.add_argument("--download", action="store_true", help="let torchvision download (needs a network)")
    p.add_argument("--eval-fraction", type=float, default=0.1, help="digits: fraction held out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    configure_threads()  # first: SUNDAE_THREADS / OMP_NUM_THREADS, else 1 (infra/devices.py)
    args = parse_args(argv)
    if args.name == "digits":
        grids, labels, classes, vocab = digits_grids()
        train, held_out = split_groups(range(len(grids)), [1 - args.eval_fraction, args.eval_fraction],
                                       args.seed)
        splits = {"train": np.asarray(train, dtype=np.int64), "eval": np.asarray(held_out, dtype=np.int64)}
        data = {name: (grids[i], labels[i], [f"sklearn.datasets.load_digits[{j}]" for j in i])
                for name, i in splits.items() if len(i)}
    else:
        data = {}
        for name, train in (("train", True), ("eval", False)):
            grids, labels, classes, vocab = torchvision_grids(args.name, args.root, train, args.levels,
                                                              args.download)
            data[name] = (grids, labels, [f"{args.name}/{name}[{j}]" for j in range(len(grids))])
    latent_shape = next(iter(data.values()))[0].shape[1:]
    provenance = {"created_by": f"generate-discrete-mnist.py {args.name}", "vqgan": None}
    with create_latent_dataset(args.out_dir, vocab, latent_shape, classes, provenance,
                               overwrite=args.overwrite) as add_split:
        for name, (grids, labels, sources) in data.items():
            add_split(name, len(grids)).write(0, grids, labels, sources)
            print(f"{name}: {len(grids)} grids of {latent_shape[0]}x{latent_shape[1]}, vocabulary {vocab}")
    print(f"wrote {args.out_dir}")


if __name__ == "__main__":
    run_cli(main)
