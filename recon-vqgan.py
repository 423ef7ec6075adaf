"""Reconstruct images through a VQ-GAN: saves original | reconstruction per image (or, with
--recon-only, the reconstruction alone, at the model's input size: a set to score against the
originals with evaluate.py, the rFID) and reports PSNR and codebook usage.

    python recon-vqgan.py photos/ --cfg-path vqgan.yaml --ckpt-path vqgan.ckpt --out-dir recon
"""
from pathlib import Path

from infra.cli import ArgumentParser, int_at_least, run_cli
from infra.errors import UserError


def parse_args(argv):
    p = ArgumentParser(__doc__)
    p.add_argument("images", help="an image file or a directory of images")
    p.add_argument("--cfg-path", required=True, help="taming / latent-diffusion VQ-GAN config (YAML)")
    p.add_argument("--ckpt-path", required=True, help="VQ-GAN checkpoint (.ckpt, .pth, .safetensors)")
    p.add_argument("--legacy-cfg", action="store_true", help="force the Net2Net (first_stage_config) layout")
    p.add_argument("--out-dir", default="recon")
    p.add_argument("--recon-only", action="store_true", help="save each reconstruction alone (for evaluate.py)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--resolution", type=int_at_least(1), nargs=2, metavar=("H", "W"),
                   help="image size fed to the encoder (default: the config's resolution)")
    p.add_argument("--batch-size", type=int_at_least(1), default=16)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # torch and the VQ-GAN take seconds to import: the command line is read first, so that a
    # mistyped flag is reported at once
    from infra.devices import configure_threads
    configure_threads()  # before any torch work: SUNDAE_THREADS / OMP_NUM_THREADS, else 1 (infra/devices.py)
    reconstruct(args)


def reconstruct(args):
    import torch

    from infra.devices import default_device
    from infra.files import writable_dir
    from infra.images import image_transform, list_images, open_rgb, psnr, save_png
    from latents.encode import check_batch_fits, encode_images, image_size, report_skipped
    from vqgan import load_vqgan

    out_dir = writable_dir(args.out_dir, "--out-dir", create=False)  # checked now, made once there is output
    device = args.device or default_device()
    vqgan = load_vqgan(args.cfg_path, args.ckpt_path, legacy_cfg=True if args.legacy_cfg else None,
                       device=device)
    f = vqgan.downsample_factor
    size = image_size(vqgan, args.resolution)
    check_batch_fits(vqgan, size, args.batch_size, device)
    files = list_images(args.images)
    encoded = encode_images(vqgan, files, size, batch_size=args.batch_size, device=device, progress=False)
    report_skipped(encoded.skipped)
    if len(encoded.tokens) == 0:
        raise UserError(f"{args.images}: no readable images")
    print(f"latent shape: {tuple(encoded.tokens.shape[1:])} (downsample factor {f}, "
          f"codebook size {vqgan.codebook_size})")

    writable_dir(out_dir, "--out-dir")
    transform = image_transform(size)
    scores = []
    with torch.inference_mode():
        for start in range(0, len(encoded.tokens), args.batch_size):
            rows = range(start, min(start + args.batch_size, len(encoded.tokens)))
            tokens = torch.from_numpy(encoded.tokens[rows.start:rows.stop]).to(device)
            recon = vqgan.decode(tokens).float().cpu()
            originals = torch.stack([transform(open_rgb(encoded.sources[i])) for i in rows])
            for i, original, rec, score in zip(rows, originals, recon, psnr(originals, recon)):
                source = Path(encoded.sources[i])
                pair = rec[None] if args.recon_only else torch.stack([original, rec])
                save_png(pair, out_dir / f"{i:05d}-{source.stem}.png", nrow=2)
                print(f"{source}: PSNR {score:.2f} dB")
                scores.append(score.item())
    used = len(set(encoded.tokens.reshape(-1).tolist()))
    print(f"mean PSNR: {sum(scores) / len(scores):.2f} dB over {len(scores)} image(s)")
    print(f"codebook usage: {used}/{vqgan.codebook_size} codes ({used / vqgan.codebook_size:.1%})")
    print(f"wrote {len(scores)} image(s) to {out_dir}")


if __name__ == "__main__":
    run_cli(main)
