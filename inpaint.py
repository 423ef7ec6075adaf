"""Inpaint images with a trained SUNDAE prior: known tokens stay fixed, the model sees the whole grid.

    python inpaint.py photo.png --cfg-path CFG --resume CKPT --mask mask.png --nb-samples 4
    python inpaint.py photos/  --cfg-path CFG --resume CKPT --block 64 64 128 128
    python inpaint.py --dataset-rows 0 1 2 --cfg-path config/digits.toml --resume CKPT --block 4 0 4 8

Mask convention: WHITE pixels of --mask are regenerated, black ones kept. --block Y X H W and
--random-blocks N SIZE are in pixels with a VQ-GAN, in grid cells for token-space configs
(digits). A latent is kept only if all pixels of its f x f patch are kept. Each input gives one
PNG: original | masked | the inpaintings.
"""
import argparse
from pathlib import Path

import torch

from sundae.errors import SundaeError
from infra.images import image_transform, list_images, open_rgb, save_png
from sundae.inpainting import figure_row, inpaint, latent_keep_mask, regenerate_mask
from sundae.latents import LatentDataset, read_meta
from sundae.pretrained import add_sampling_args, load_prior, sampling_config
from infra.cli import default_device, run_cli


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="?", help="an image file or a directory of images")
    p.add_argument("--dataset-rows", type=int, nargs="+", metavar="I",
                   help="inpaint these rows of the config's dataset (eval split if present) instead")
    p.add_argument("--cfg-path", required=True)
    p.add_argument("--resume", required=True, help="training checkpoint (its EMA weights are used)")
    masks = p.add_mutually_exclusive_group(required=True)
    masks.add_argument("--mask", help="mask image the size of the inpainted image; white = regenerate")
    masks.add_argument("--block", type=int, nargs=4, metavar=("Y", "X", "H", "W"), help="block to regenerate")
    masks.add_argument("--random-blocks", type=int, nargs=2, metavar=("N", "SIZE"),
                       help="N random SIZE x SIZE blocks to regenerate")
    p.add_argument("--nb-samples", type=int, default=4, help="inpaintings per image")
    p.add_argument("--class-idx", type=int, default=None, help="class (conditional models; default 0)")
    p.add_argument("--out-dir", default="inpainting")
    p.add_argument("--device", default=None)
    p.add_argument("--vqgan-device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    add_sampling_args(p)
    return p.parse_args(argv)


def load_inputs(args, prior):
    """[(name, tokens (h, w), image (3, H, W) in [-1, 1], label)] for every input."""
    h, w = prior.latent_shape
    if args.dataset_rows is not None:
        data = prior.cfg.data
        root = data.root or data.eval_root
        ds = LatentDataset(root, "eval" if "eval" in read_meta(root)["splits"] else "train")
        inputs = []
        for i in args.dataset_rows:
            if not 0 <= i < len(ds):
                raise SundaeError(f"--dataset-rows {i}: out of range, {root} ({ds.split}) has {len(ds)} rows")
            tokens, label = ds[i]
            inputs.append((f"{ds.split}-{i:05d}", tokens, prior.render(tokens[None])[0], max(label, 0)))
        return inputs
    if args.images is None:
        raise SundaeError("give an image file or directory, or --dataset-rows")
    files = list_images(args.images)
    if prior.vqgan is None:  # token space: gray levels on the latent grid
        to_grid = image_transform((h, w))
        levels = prior.num_tokens - 1
        inputs = []
        for path in files:
            gray = (to_grid(open_rgb(path)).mean(0) + 1) / 2  # (h, w) in [0, 1]
            tokens = (gray * levels).round().long()
            inputs.append((path.stem, tokens, prior.render(tokens[None])[0], args.class_idx or 0))
        return inputs
    f = prior.vqgan.downsample_factor
    transform = image_transform((h * f, w * f))
    device = next(prior.vqgan.parameters()).device
    inputs = []
    for path in files:
        image = transform(open_rgb(path))
        tokens = prior.vqgan.encode(image[None].to(device))[0].cpu()
        inputs.append((path.stem, tokens, image, args.class_idx or 0))
    return inputs


@torch.inference_mode()
def main(argv=None):
    args = parse_args(argv)
    if args.nb_samples < 1:
        raise SundaeError(f"--nb-samples must be >= 1, got {args.nb_samples}")
    prior = load_prior(args.cfg_path, args.resume, device=args.device or default_device(),
                       vqgan_device=args.vqgan_device)
    prior.check_class(args.class_idx)
    sampling = sampling_config(prior.cfg.sampling, args)
    f = prior.vqgan.downsample_factor if prior.vqgan is not None else 1
    h, w = prior.latent_shape
    generator = torch.Generator().manual_seed(args.seed)
    regenerate = regenerate_mask((h * f, w * f), args.mask, args.block, args.random_blocks, generator)
    keep = latent_keep_mask(regenerate, f)
    print(f"regenerating {int((~keep).sum())} of {h * w} latent positions")

    out_dir = Path(args.out_dir)
    for name, tokens, image, label in load_inputs(args, prior):
        g = torch.Generator(device=prior.device).manual_seed(args.seed)
        cond = label if prior.num_classes is not None else None
        inpainted = inpaint(prior, tokens, keep, sampling, args.nb_samples, cond=cond, generator=g)
        images = prior.render(inpainted)
        if images.shape[-2:] != image.shape[-2:]:
            raise SundaeError(f"{name}: decoded size {tuple(images.shape[-2:])} differs from the input's")
        path = out_dir / f"inpaint-{name}.png"
        save_png(figure_row(image.cpu(), keep, images), path, nrow=args.nb_samples + 2)
        print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
