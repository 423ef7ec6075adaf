"""Write a class-labelled latent dataset of gray-level token grids, no VQ-GAN involved.

    python generate-discrete-mnist.py digits data/digits           # bundled with scikit-learn
    python generate-discrete-mnist.py mnist data/mnist --root ~/torchvision-data --levels 16
    python generate-discrete-mnist.py fashion data/fashion       # apt-get install dataset-fashion-mnist

The 28x28 sets (mnist, fashion, kmnist) are read from torchvision's layout under --root, then,
for Fashion-MNIST, from Debian's dataset-fashion-mnist package (/usr/share/datasets/fashion-mnist).

--levels N keeps N gray levels (the vocabulary), binning the dataset's own: 2 to 17 for digits,
2 to 256 for the 28x28 sets; all of them by default.
"""
from infra.cli import ArgumentParser, run_cli
from latents.discrete import check_levels
from latents.mnist_files import MNIST_SETS


def parse_args(argv):
    p = ArgumentParser(__doc__)
    p.add_argument("name", nargs="?", default="digits", choices=["digits", *MNIST_SETS])
    p.add_argument("out_dir")
    p.add_argument("--levels", type=int, default=None,
                   help="gray levels kept, the vocabulary (default: all: 17 for digits, 256 for the 28x28 sets)")
    p.add_argument("--root", default="data/torchvision", help="torchvision dataset root (28x28 sets), searched before Debian's package")
    p.add_argument("--download", action="store_true", help="let torchvision download (needs a network)")
    p.add_argument("--eval-fraction", type=float, default=0.1, help="digits: fraction held out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    check_levels(args.name, args.levels)
    # torch takes seconds to import: the command line is read first, so that a mistyped flag is
    # reported at once
    from infra.devices import configure_threads
    configure_threads()  # before any torch work: SUNDAE_THREADS / OMP_NUM_THREADS, else 1 (infra/devices.py)
    write(args)


def write(args):
    import numpy as np

    from infra.data import split_groups
    from latents.dataset import create_latent_dataset
    from latents.discrete import digits_grids, mnist_grids

    if args.name == "digits":
        grids, labels, classes, vocab = digits_grids(args.levels)
        train, held_out = split_groups(range(len(grids)), [1 - args.eval_fraction, args.eval_fraction],
                                       args.seed)
        splits = {"train": np.asarray(train, dtype=np.int64), "eval": np.asarray(held_out, dtype=np.int64)}
        data = {name: (grids[i], labels[i], [f"sklearn.datasets.load_digits[{j}]" for j in i])
                for name, i in splits.items() if len(i)}
    else:
        data = {}
        for name, train in (("train", True), ("eval", False)):
            grids, labels, classes, vocab = mnist_grids(args.name, args.root, train, args.levels, args.download)
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
