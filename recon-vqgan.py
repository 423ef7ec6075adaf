"""Reconstruct images through a VQ-GAN: saves original | reconstruction per image and reports
PSNR and codebook usage.

    python recon-vqgan.py photos/ --cfg-path vqgan.yaml --ckpt-path vqgan.ckpt --out-dir recon
"""
from pathlib import Path

import torch

from infra.cli import ArgumentParser, run_cli
from infra.devices import configure_threads, default_device
from infra.errors import UserError
from infra.images import image_transform, list_images, open_rgb, psnr, save_png
from latents.encode import encode_images, image_size
from vqgan import load_vqgan


def parse_args(argv):
    p = ArgumentParser(__doc__)
    p.add_argument("images", help="an image file or a directory of images")
    p.add_argument("--cfg-path", required=True, help="taming / latent-diffusion VQ-GAN config (YAML)")
    p.add_argument("--ckpt-path", required=True, help="VQ-GAN checkpoint (.ckpt, .pth, .safetensors)")
    p.add_argument("--legacy-cfg", action="store_true", help="force the Net2Net (first_stage_config) layout")
    p.add_argument("--out-dir", default="recon")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--resolution", type=int, nargs=2, metavar=("H", "W"),
                   help="image size fed to the encoder (default: the config's resolution)")
    p.add_argument("--batch-size", type=int, default=16)
    return p.parse_args(argv)


@torch.inference_mode()
def main(argv=None):
    configure_threads()  # first: SUNDAE_THREADS / OMP_NUM_THREADS, else 1 (infra/devices.py)
    args = parse_args(argv)
    device = args.device or default_device()
    vqgan = load_vqgan(args.cfg_path, args.ckpt_path, legacy_cfg=True if args.legacy_cfg else None,
                       device=device)
    f = vqgan.downsample_factor
    size = image_size(vqgan, args.resolution)
    files = list_images(args.images)
    encoded = encode_images(vqgan, files, size, batch_size=args.batch_size, device=device, progress=False)
    for path in encoded.skipped:
        print(f"warning: skipped unreadable image {path}")
    if len(encoded.tokens) == 0:
        raise UserError(f"{args.images}: no readable images")
    print(f"latent shape: {tuple(encoded.tokens.shape[1:])} (downsample factor {f}, "
          f"codebook size {vqgan.codebook_size})")

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    transform = image_transform(size)
    scores = []
    for start in range(0, len(encoded.tokens), args.batch_size):
        rows = range(start, min(start + args.batch_size, len(encoded.tokens)))
        tokens = torch.from_numpy(encoded.tokens[rows.start:rows.stop]).to(device)
        recon = vqgan.decode(tokens).float().cpu()
        originals = torch.stack([transform(open_rgb(encoded.sources[i])) for i in rows])
        for i, original, rec, score in zip(rows, originals, recon, psnr(originals, recon)):
            source = Path(encoded.sources[i])
            save_png(torch.stack([original, rec]), out_dir / f"{i:05d}-{source.stem}.png", nrow=2)
            print(f"{source}: PSNR {score:.2f} dB")
            scores.append(score.item())
    used = len(set(encoded.tokens.reshape(-1).tolist()))
    print(f"mean PSNR: {sum(scores) / len(scores):.2f} dB over {len(scores)} image(s)")
    print(f"codebook usage: {used}/{vqgan.codebook_size} codes ({used / vqgan.codebook_size:.1%})")
    print(f"wrote {len(scores)} image(s) to {out_dir}")


if __name__ == "__main__":
    run_cli(main)
