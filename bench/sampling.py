"""Sampling speed, in one run on one machine (load stated; best of repeats, interleaved):

  1. samples/s and steps used, early stop on and off: the digits model (the demo's checkpoint
     if it exists) and a model of the FFHQ1024 config's shape (32x32 latents, vocabulary 8192,
     hourglass [2, 10, 2], k=4) at CPU width, randomly initialised (its step cost is real; an
     untrained model rarely freezes);
  2. where one sampling step's time goes at 32x32 x 8192: backbone, logits head, categorical
     draw, bookkeeping;
  3. inference precision: float32 against bfloat16 autocast (--precision bf16);
  4. compiled sampling (--compile): eager against torch.compile, with the compile time.

    python -m bench.sampling [--digits-ckpt PATH] [--device cpu|cuda] [--quick]

Every model is built by the priors' registry from its config (or loaded from the digits
checkpoint), and sampled through its prior (priors.base.Prior.sample) with the config's
[sampling] settings, edited per row.
"""
import argparse
import dataclasses
from pathlib import Path

import torch

from bench.configs import DIGITS, FFHQ1024, REPO, load
from bench.measure import header, load_average, timed
from infra.devices import configure_threads
from infra.precision import inference_precision
from priors import build_model, prior_for
from priors.base import Bucketed
from priors.grids import sample_categorical
from training.checkpoint import load_denoiser


def draw(model, cfg, settings, n, device, seed=0, precision="32"):
    """n samples of `model` (the prior of `cfg`) with `settings`, classes drawn at random for a
    conditional model, from one seed."""
    prior = prior_for(cfg)
    g = torch.Generator(device=device).manual_seed(seed)
    cond = torch.randint(prior.num_classes, (n,), generator=g, device=device) if prior.num_classes else None
    with inference_precision(device, precision):
        return prior.sample(model, cfg.latent_shape, settings, nb_samples=n, cond=cond, generator=g, device=device)


def ffhq_shape(dim):
    """The FFHQ1024 config at CPU width: 32x32 latents, vocabulary 8192, [2, 10, 2], k=4."""
    return load(FFHQ1024, {"vqgan": None, "net": {"dim": dim, "nb_heads": max(1, dim // 64), "dim_head": 64}})


def speed_table(args, device):
    """Samples/s and mean steps used, early stop on and off."""
    rows = []
    digits = load(DIGITS)
    if Path(args.digits_ckpt).is_file():
        model, note = load_denoiser(args.digits_ckpt, digits, device=device), "trained"
    else:
        model, note = build_model(digits, device).eval(), "untrained: run make demo first"
    for early in (True, False):
        cfg = dataclasses.replace(digits.sampling, early_stop=early)
        n = args.digits_samples
        seconds, result = timed(lambda: draw(model, digits, cfg, n, device), args.repeats, device)
        rows.append((f"digits 8x8 ({note})", early, cfg.steps, n / seconds, result.steps_used.float().mean().item()))
    ffhq = ffhq_shape(args.dim)
    model = build_model(ffhq, device).eval()
    for early in (True, False):
        cfg = dataclasses.replace(ffhq.sampling, early_stop=early, steps=args.ffhq_steps)
        n = args.ffhq_samples
        seconds, result = timed(lambda: draw(model, ffhq, cfg, n, device), 1, device)
        rows.append((f"ffhq1024 shape 32x32, dim {args.dim} (untrained)", early, cfg.steps, n / seconds,
                     result.steps_used.float().mean().item()))
    print("| model | early stop | max steps | samples/s | mean steps used |\n|---|---|---|---|---|")
    for name, early, steps, rate, mean in rows:
        print(f"| {name} | {'on' if early else 'off'} | {steps} | {rate:.3f} | {mean:.1f} |")


@torch.no_grad()
def step_split(args, device):
    """One sampling step at 32x32 x 8192 split into backbone, logits head, categorical draw and
    bookkeeping; the head and the draw over every position (as before) and over the positions the
    step updates (the sampler now: a proportion p of them, the config's first-step proportion)."""
    cfg = ffhq_shape(args.dim)
    model = build_model(cfg, device).eval()
    n = args.ffhq_samples
    x = torch.randint(8192, (n, 32, 32), device=device)
    g = torch.Generator(device=device).manual_seed(0)
    p = cfg.sampling.sample_proportion
    at = torch.rand(x.shape, generator=g, device=device) < p

    def hidden():  # embeddings and the hourglass stack, up to the final norm
        return model.norm(model.stack(model.token_emb(x)))

    h = hidden()
    logits, logits_at = model.to_logits(h), model.to_logits(h[at])
    parts = {
        "backbone (embeddings, hourglass, norm)": lambda: hidden(),
        "logits head (dim -> 8192), every position": lambda: model.to_logits(h),
        f"logits head, the updated positions (p = {p})": lambda: model.to_logits(h[at]),
        "categorical draw (softmax, cdf, search), every position": lambda: sample_categorical(logits.float(), generator=g),
        f"categorical draw, the updated positions (p = {p})": lambda: sample_categorical(logits_at.float(), generator=g),
    }
    one_step = dataclasses.replace(cfg.sampling, steps=1, early_stop=False)
    prior = prior_for(cfg)
    whole, _ = timed(lambda: prior.sample(model, x, one_step, generator=g, device=device), args.repeats, device)
    times = {name: timed(fn, args.repeats, device)[0] for name, fn in parts.items()}
    now = [name for name in times if "every position" not in name]
    times["bookkeeping (proportion mask, updates)"] = max(0.0, whole - sum(times[name] for name in now))
    before = whole + sum(t for name, t in times.items() if "every position" in name) - sum(
        t for name, t in times.items() if "updated positions" in name)
    print(f"one sampling step, batch {n}, 32x32 x 8192, dim {args.dim}: {whole * 1000:.1f} ms "
          f"(head and draw at every position, as before: about {before * 1000:.1f} ms, {before / whole:.2f}x)")
    print("| part | ms | share of the step |\n|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds * 1000:.1f} | {seconds / whole:.0%} |")


@torch.no_grad()
def precision_table(args, device):
    """float32 against bf16 autocast, fixed steps (early stop off), 32x32 x 8192."""
    cfg = ffhq_shape(args.dim)
    model = build_model(cfg, device).eval()
    sampling = dataclasses.replace(cfg.sampling, steps=args.ffhq_steps, early_stop=False)
    n = args.ffhq_samples
    times = {}
    for _ in range(args.repeats):  # interleaved, so both see the same load
        for precision in ("32", "bf16"):
            seconds, _ = timed(lambda: draw(model, cfg, sampling, n, device, precision=precision), 1, device)
            times[precision] = min(times.get(precision, float("inf")), seconds)
    print(f"| precision | samples/s (32x32 x 8192, dim {args.dim}, {sampling.steps} steps, batch {n}) | speed-up |")
    print("|---|---|---|")
    for precision, seconds in times.items():
        print(f"| {precision} | {n / seconds:.3f} | {times['32'] / seconds:.2f}x |")


@torch.no_grad()
def compile_table(args, device):
    """Eager against torch.compile (bucketed batches), digits shape: steady state and compile time."""
    digits = load(DIGITS)
    model = build_model(digits, device).eval()
    sampling = dataclasses.replace(digits.sampling, early_stop=False)
    n = args.digits_samples
    compiled = Bucketed(model, max_batch=n)
    # the first call compiles the batch's bucket
    compile_seconds, _ = timed(lambda: draw(compiled, digits, sampling, n, device), device=device, warmup=False)
    times = {}
    for _ in range(args.repeats):
        for name, m in (("eager", model), ("compiled", compiled)):
            seconds, _ = timed(lambda: draw(m, digits, sampling, n, device), 1, device)
            times[name] = min(times.get(name, float("inf")), seconds)
    print(f"| digits 8x8, {sampling.steps} steps, batch {n} | samples/s | speed-up |\n|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {n / seconds:.1f} | {times['eager'] / seconds:.2f}x |")
    print(f"compile time (first batch, one bucket): {compile_seconds:.1f} s")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--digits-ckpt", default=str(REPO / "runs/digits/checkpoints/last.ckpt"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--digits-samples", type=int, default=256)
    p.add_argument("--ffhq-samples", type=int, default=2)
    p.add_argument("--ffhq-steps", type=int, default=10, help="steps of the 32x32 runs (the config has 100)")
    p.add_argument("--dim", type=int, default=256, help="width of the 32x32 model")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", default=None, help="intra-op threads, a number or 'all' (default: "
                   "infra.devices.configure_threads' rule: SUNDAE_THREADS, OMP_NUM_THREADS, else 1)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat, no compile (for tests)")
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.digits_samples, args.ffhq_samples, args.ffhq_steps, args.dim, args.repeats = 8, 1, 2, 64, 1
    configure_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(header(device))
    speed_table(args, device)
    step_split(args, device)
    precision_table(args, device)
    if not (args.quick or args.no_compile):
        compile_table(args, device)
    print(f"load at the end {load_average()}")


if __name__ == "__main__":
    main()
