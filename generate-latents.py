r"""Encode an image folder with a VQ-GAN into a latent dataset (the format in latents/dataset.py).

    python generate-latents.py --cfg-path vqgan.yaml --ckpt-path vqgan.ckpt \
        --dataset-in images/ --latents-out data/latents [--use-class] [--eval-fraction 0.05]
"""
from pathlib import Path

from infra.cli import ArgumentParser, int_at_least, run_cli
from infra.errors import UserError


def parse_args(argv):
    p = ArgumentParser(__doc__)
    p.add_argument("--cfg-path", required=True, help="taming / latent-diffusion VQ-GAN config (YAML)")
    p.add_argument("--ckpt-path", required=True, help="VQ-GAN checkpoint (.ckpt, .pth, .safetensors)")
    p.add_argument("--dataset-in", required=True, help="image folder (ImageFolder layout with --use-class)")
    p.add_argument("--latents-out", required=True, help="output directory of the latent dataset")
    p.add_argument("--legacy-cfg", action="store_true", help="force the Net2Net (first_stage_config) layout")
    p.add_argument("--use-class", action="store_true", help="label rows by their class sub-directory")
    p.add_argument("--no-aug", action="store_true", help="do not add horizontally flipped copies")
    p.add_argument("--eval-fraction", type=float, default=0.0,
                   help="fraction of images (not flipped copies) held out as the eval split")
    p.add_argument("--batch-size", type=int_at_least(1), default=32)
    p.add_argument("--nb-workers", type=int_at_least(0), default=2)
    p.add_argument("--resolution", type=int_at_least(1), nargs=2, metavar=("H", "W"),
                   help="image size fed to the encoder (default: the config's resolution)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/eval split")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not 0.0 <= args.eval_fraction < 1.0:
        raise UserError(f"--eval-fraction must be in [0, 1), got {args.eval_fraction}")
    # torch and the VQ-GAN take seconds to import: the command line is read first, so that a
    # mistyped flag is reported at once
    from infra.devices import configure_threads
    configure_threads()  # before any torch work: SUNDAE_THREADS / OMP_NUM_THREADS, else 1 (infra/devices.py)
    encode(args)


def encode(args):
    import numpy as np

    from infra.data import split_groups
    from infra.devices import default_device
    from infra.files import sha256_of
    from infra.images import list_class_images, list_images
    from latents.dataset import create_latent_dataset
    from latents.encode import check_batch_fits, encode_images, image_size, report_skipped
    from vqgan import load_vqgan

    device = args.device or default_device()
    vqgan = load_vqgan(args.cfg_path, args.ckpt_path, legacy_cfg=True if args.legacy_cfg else None,
                       device=device)
    f = vqgan.downsample_factor
    size = image_size(vqgan, args.resolution)
    check_batch_fits(vqgan, size, args.batch_size, device, copies=1 if args.no_aug else 2)

    if Path(args.dataset_in).is_file():
        raise UserError(f"{args.dataset_in}: --dataset-in must be a directory of images")
    if args.use_class:
        files, labels, class_names = list_class_images(args.dataset_in)
    else:
        files, labels, class_names = list_images(args.dataset_in), None, None

    # Split files, not rows, so a mirrored copy never lands on the other side of the split.
    train, held_out = split_groups(range(len(files)), [1 - args.eval_fraction, args.eval_fraction], args.seed)
    splits = {name: idx for name, idx in (("train", train), ("eval", held_out)) if idx}

    provenance = {
        "created_by": "generate-latents.py",
        "vqgan": {
            "config": str(Path(args.cfg_path).resolve()),
            "config_sha256": sha256_of(args.cfg_path),
            "checkpoint": str(Path(args.ckpt_path).resolve()),
            "checkpoint_sha256": sha256_of(args.ckpt_path),
            "legacy_cfg": args.legacy_cfg,
            "image_size": list(size),
            "downsample_factor": f,
        },
        "dataset_in": str(Path(args.dataset_in).resolve()),
    }
    latent_shape = (size[0] // f, size[1] // f)
    skipped = []
    with create_latent_dataset(args.latents_out, vqgan.codebook_size, latent_shape, class_names,
                               provenance, overwrite=args.overwrite) as add_split:
        for name, idx in splits.items():
            encoded = encode_images(vqgan, [files[i] for i in idx], size,
                                    flip=(name == "train" and not args.no_aug),
                                    batch_size=args.batch_size, num_workers=args.nb_workers, device=device)
            skipped += encoded.skipped
            if len(encoded.tokens) == 0:
                raise UserError(f"{args.dataset_in}: no readable images in the {name} split")
            rows = add_split(name, len(encoded.tokens))
            row_labels = (np.asarray(labels)[np.asarray(idx)[encoded.file_index]]
                          if labels is not None else None)
            rows.write(0, encoded.tokens, row_labels, encoded.sources, encoded.flipped)
            print(f"{name}: {len(encoded.tokens)} grids of {latent_shape[0]}x{latent_shape[1]} tokens")
    report_skipped(skipped)
    print(f"wrote {args.latents_out}")


if __name__ == "__main__":
    run_cli(main)
