"""Inpaint images with a trained prior: known tokens stay fixed, the model sees the whole grid.

    python inpaint.py photo.png --cfg-path CFG --resume CKPT --mask mask.png --nb-samples 4
    python inpaint.py photos/  --cfg-path CFG --resume CKPT --block 64 64 128 128
    python inpaint.py --dataset-rows 0 1 2 --cfg-path config/digits.toml --resume CKPT --block 4 0 4 8

Mask convention: WHITE pixels of --mask are regenerated, black ones kept. --block Y X H W and
--random-blocks N SIZE are in pixels with a VQ-GAN, in grid cells for token-space configs
(digits). A latent is kept only if all pixels of its f x f patch are kept. Each input gives one
PNG: original | masked | the inpaintings.
"""
from pathlib import Path

import torch

from generation.pretrained import add_prior_args, prior_from_args, sampling_from_args
from infra.cli import ArgumentParser, run_cli
from infra.devices import configure_threads
from infra.errors import UserError


def parse_args(argv):
    p = ArgumentParser(__doc__)
    p.add_argument("images", nargs="?", help="an image file or a directory of images")
    p.add_argument("--dataset-rows", type=int, nargs="+", metavar="I",
                   help="inpaint these rows of the config's dataset (eval split if present) instead")
    masks = p.add_mutually_exclusive_group(required=True)
    masks.add_argument("--mask", help="mask image the size of the inpainted image; white = regenerate")
    masks.add_argument("--block", type=int, nargs=4, metavar=("Y", "X", "H", "W"), help="block to regenerate")
    masks.add_argument("--random-blocks", type=int, nargs=2, metavar=("N", "SIZE"),
                       help="N random SIZE x SIZE blocks to regenerate")
    p.add_argument("--nb-samples", type=int, default=4, help="inpaintings per image")
    p.add_argument("--class-idx", type=int, default=None, help="class (conditional models; default 0)")
    p.add_argument("--out-dir", default="inpainting")
    add_prior_args(p)
    return p.parse_args(argv)


@torch.inference_mode()
def main(argv=None):
    configure_threads()  # first: SUNDAE_THREADS / OMP_NUM_THREADS, else 1 (infra/devices.py)
    args = parse_args(argv)
    # imported once the arguments parse: torchvision and PIL take seconds
    from generation.inpainting import figure_row, inpaint, latent_keep_mask, load_inputs, regenerate_mask
    from infra.images import save_png

    if args.nb_samples < 1:
        raise UserError(f"--nb-samples must be >= 1, got {args.nb_samples}")
    prior = prior_from_args(args, max_batch=args.nb_samples)
    prior.check_class(args.class_idx)
    sampling = sampling_from_args(prior, args)
    prior.check_sampling(sampling)
    f = prior.vqgan.downsample_factor if prior.vqgan is not None else 1
    h, w = prior.latent_shape
    generator = torch.Generator().manual_seed(args.seed)
    regenerate = regenerate_mask((h * f, w * f), args.mask, args.block, args.random_blocks, generator)
    keep = latent_keep_mask(regenerate, f)
    prior.type.check_keep_mask(keep[None])  # e.g. a prior that completes raster prefixes only
    print(f"regenerating {int((~keep).sum())} of {h * w} latent positions")

    for name, tokens, image, label in load_inputs(prior, args.images, args.dataset_rows, args.class_idx):
        g = torch.Generator(device=prior.device).manual_seed(args.seed)
        cond = label if prior.num_classes is not None else None
        images = prior.render(inpaint(prior, tokens, keep, sampling, args.nb_samples, cond=cond, generator=g))
        path = Path(args.out_dir) / f"inpaint-{name}.png"
        save_png(figure_row(image.cpu(), keep, images), path, nrow=args.nb_samples + 2)
        print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
