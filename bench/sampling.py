"""Sampling speed: samples/s and mean steps used, early stop on and off, for

  digits    the demo's trained model (runs/digits/checkpoints/last.ckpt, from `make demo`)
  ffhq1024  a model of the FFHQ1024 config's shape (vocab 8192, 32x32 latents, hourglass
            [2, 10, 2], k=4) scaled to CPU size (dim 128), randomly initialised: its step cost is
            real; its steps used are those of an untrained model, which rarely settles

    python bench/sampling.py [--digits-ckpt PATH] [--device cpu|cuda]
"""
import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sundae.checkpoint import load_denoiser  # noqa: E402
from sundae.config import load_config  # noqa: E402
from sundae.priors import build_denoiser  # noqa: E402
from sundae.sampler import sample  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def measure(model, shape, num_tokens, cfg, n, batch, device, cond_classes=None, seed=0, repeats=2):
    """(samples/s, mean steps used): the best of `repeats` timed runs after one warm-up batch
    (this machine's timings are noisy; the best run is the least disturbed)."""
    run_once(model, shape, num_tokens, cfg, min(n, batch), batch, device, cond_classes, seed)
    runs = [run_once(model, shape, num_tokens, cfg, n, batch, device, cond_classes, seed) for _ in range(repeats)]
    return max(runs)


def run_once(model, shape, num_tokens, cfg, n, batch, device, cond_classes, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    steps, start = [], time.perf_counter()
    for first in range(0, n, batch):
        b = min(batch, n - first)
        cond = torch.randint(cond_classes, (b,), generator=g, device=device) if cond_classes else None
        result = sample(model, shape, cfg, num_tokens=num_tokens, nb_samples=b, cond=cond, generator=g,
                        device=device)
        steps += result.steps_used.tolist()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return n / elapsed, sum(steps) / len(steps)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--digits-ckpt", default=str(REPO / "runs/digits/checkpoints/last.ckpt"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--digits-samples", type=int, default=256)
    p.add_argument("--ffhq-samples", type=int, default=2)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)

    rows = []
    digits = load_config(REPO / "config/digits.toml")
    if Path(args.digits_ckpt).is_file():
        model, note = load_denoiser(args.digits_ckpt, digits, device=device), "trained"
    else:
        model, note = build_denoiser(digits).to(device).eval(), "untrained (no checkpoint: run make demo)"
    base = digits.sampling
    for early in (True, False):
        cfg = dataclasses.replace(base, early_stop=early)
        rate, mean = measure(model, (8, 8), 17, cfg, args.digits_samples, 256, device, cond_classes=10)
        rows.append((f"digits 8x8 ({note})", early, cfg.steps, rate, mean))

    ffhq = load_config(REPO / "config/ffhq1024/ffhq1024-hourglass.toml")
    ffhq.net = dataclasses.replace(ffhq.net, dim=128, nb_heads=4)
    model = build_denoiser(ffhq).to(device).eval()
    base = ffhq.sampling
    for early in (True, False):
        cfg = dataclasses.replace(base, early_stop=early)
        rate, mean = measure(model, (32, 32), 8192, cfg, args.ffhq_samples, args.ffhq_samples, device,
                             repeats=1)
        rows.append(("ffhq1024-shape 32x32, dim 128 (untrained)", early, cfg.steps, rate, mean))

    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| model | early stop | max steps | samples/s | mean steps used |\n|---|---|---|---|---|")
    for name, early, steps, rate, mean in rows:
        print(f"| {name} | {'on' if early else 'off'} | {steps} | {rate:.2f} | {mean:.1f} |")


if __name__ == "__main__":
    main()
