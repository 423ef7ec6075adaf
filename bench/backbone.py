"""Throughput and peak memory of the hourglass backbone against a vanilla transformer (issue 3).

Hourglass (2, 10, 2) with k=4 versus a plain 14-layer transformer of the same width, on 16x16,
32x32 and 64x64 token grids. Per row: tokens/s of a forward (inference) pass and of a training
step (forward + cross-entropy + backward), the peak memory of the training step, and the fraction
of this machine's measured matmul throughput the model reaches (FLOPs counted analytically).

    .venv/bin/python -m bench.backbone            # CPU (float32); CUDA (bf16 autocast) when present
    .venv/bin/python -m bench.backbone --quick    # 16x16 and 32x32 only, one timed repeat

Both models are built by the priors' registry from the FFHQ1024 config's [net] at this width
(model_configs); FLOPs are counted by bench.flops.count_flops.

Peak memory is what the training step allocates on top of what was live before it (parameters,
inputs): activations, gradients, workspace. CUDA: torch.cuda.max_memory_allocated. CPU: the torch
profiler with profile_memory=True records every allocation and free of torch's CPU allocator;
the peak is the largest running sum of those, in time order.
"""
import argparse
import math
import sys

import torch
import torch.nn.functional as F

from bench.configs import FFHQ1024, load
from bench.flops import count_flops
from bench.measure import MatmulProbe, header, sync, timed
from priors import build_model

HOURGLASS_DEPTH = (2, 10, 2)
VANILLA_DEPTH = 14
SHORTEN_FACTOR = 4
NUM_TOKENS = 1024  # a VQ-GAN codebook size


def model_configs(dim, heads, dim_head):
    """{name: config} of the two models: the FFHQ1024 config's hourglass ([2, 10, 2], k=4) at
    this width with a 1024-token vocabulary, and a vanilla stack of 14 layers in its place."""
    net = dict(dim=dim, nb_heads=heads, dim_head=dim_head, ff_mult=4, depth=list(HOURGLASS_DEPTH),
               shorten_factor=SHORTEN_FACTOR)
    edits = {"vqgan": None, "data": {"vocab_size": NUM_TOKENS, "latent_shape": [16, 16]}, "net": net}
    return {"hourglass": load(FFHQ1024, edits),
            "vanilla": load(FFHQ1024, {**edits, "net": {**net, "type": "vanilla", "depth": VANILLA_DEPTH}})}


# --- measuring ------------------------------------------------------------------------------------


def cpu_peak_bytes(fn):
    """Peak of live bytes allocated by torch on the CPU while fn runs, above the level at its start."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, todo = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while todo:
        event = todo.pop()
        todo.extend(event.children)
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            events.append((event.start_time_ns, event.extra_fields.alloc_size))
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return peak


def peak_bytes(fn, device):
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    return cpu_peak_bytes(fn)


def autocast(device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def workloads(model, grid, batch, device):
    """(forward, train_step) closures for one model on a (batch, h, w) grid of random tokens."""
    h, w = grid
    gen = torch.Generator(device).manual_seed(0)
    tokens = torch.randint(0, NUM_TOKENS, (batch, h, w), device=device, generator=gen)
    targets = torch.randint(0, NUM_TOKENS, (batch, h, w), device=device, generator=gen)

    @torch.inference_mode()
    def forward():
        model.eval()
        with autocast(device):
            model(tokens)

    def train_step():
        model.train()
        with autocast(device):
            logits = model(tokens)
            loss = F.cross_entropy(logits.reshape(-1, NUM_TOKENS).float(), targets.reshape(-1))
        loss.backward()
        model.zero_grad(set_to_none=True)

    return forward, train_step


def bench_grid(models, grid, batch, device, repeats):
    """Timings and training-step peak memory of every model on one grid.

    The repeats are interleaved across models and the fastest run of each is kept: other processes
    can only add time, and a burst of their load then spoils one run of each model, not one model.
    """
    runs = {name: workloads(model, grid, batch, device) for name, model in models.items()}
    for forward, train_step in runs.values():  # warm-up
        forward(), train_step()
    best = {(name, kind): math.inf for name in runs for kind in ("fwd", "train")}
    for _ in range(repeats):
        for name, (forward, train_step) in runs.items():
            best[name, "fwd"] = min(best[name, "fwd"], timed(forward, device=device, warmup=False)[0])
            best[name, "train"] = min(best[name, "train"], timed(train_step, device=device, warmup=False)[0])
    n = batch * grid[0] * grid[1]
    results = {}
    for name, (_, train_step) in runs.items():
        flops = count_flops(models[name], *grid, batch)
        fwd_s, train_s = best[name, "fwd"], best[name, "train"]
        results[name] = dict(fwd_tok_s=n / fwd_s, train_tok_s=n / train_s,
                             peak_mib=peak_bytes(train_step, device) / 2**20,
                             fwd_flop_s=flops / fwd_s, train_flop_s=3 * flops / train_s)  # backward ~ 2x forward
    return results


# --- report ---------------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim-head", type=int, default=64)
    p.add_argument("--grids", type=int, nargs="+", default=None, help="grid sides (default 16 32 64)")
    p.add_argument("--batch", type=int, default=None, help="same batch at every grid (default: 2 on CPU, 16 on CUDA)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per measurement, fastest kept (default 3)")
    p.add_argument("--quick", action="store_true", help="16x16 and 32x32, one timed run")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.grids = args.grids or ([16, 32] if args.quick else [16, 32, 64])
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.batch = args.batch or (16 if args.device.startswith("cuda") else 2)
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    models = {}
    for name, cfg in model_configs(args.dim, args.heads, args.dim_head).items():
        torch.manual_seed(args.seed)
        models[name] = build_model(cfg, device)

    # the matmul throughput is measured before every grid and at the end; the best is the
    # machine's, and a spread between them means other processes competed during the run
    matmul = MatmulProbe(device)
    matmul.measure()
    results = {}
    for side in args.grids:
        print(f"measuring {side}x{side} ...", file=sys.stderr, flush=True)
        for name, r in bench_grid(models, (side, side), args.batch, device, args.repeats).items():
            results[side, name] = r
        matmul.measure()
    peak_flop_s = matmul.best

    print(header(device, "bf16 autocast" if device.type == "cuda" else "float32"))
    print(f"# dim {args.dim}, heads {args.heads}x{args.dim_head}, ff x4, vocab {NUM_TOKENS}; hourglass depth "
          f"{HOURGLASS_DEPTH} k={SHORTEN_FACTOR}, vanilla depth {VANILLA_DEPTH}; batch {args.batch}; "
          f"fastest of {args.repeats}")
    print(f"# {matmul.summary()}")
    print()
    print("| grid  | model     | GFLOP/fwd | fwd tok/s | fwd+bwd tok/s | peak MiB (fwd+bwd) | fwd % matmul | fwd+bwd % matmul |")
    print("|-------|-----------|----------:|----------:|--------------:|-------------------:|-------------:|-----------------:|")
    for side in args.grids:
        for name, model in models.items():
            r = results[side, name]
            gflop = count_flops(model, side, side, args.batch) / 1e9
            print(f"| {f'{side}x{side}':5} | {name:9} | {gflop:9.1f} | {r['fwd_tok_s']:9.0f} | {r['train_tok_s']:13.0f} | "
                  f"{r['peak_mib']:18.1f} | {100 * r['fwd_flop_s'] / peak_flop_s:11.0f}% | "
                  f"{100 * r['train_flop_s'] / peak_flop_s:15.0f}% |")

    print()
    print("| grid  | hourglass/vanilla fwd speed-up | fwd+bwd speed-up | peak memory hourglass/vanilla |")
    print("|-------|-------------------------------:|-----------------:|------------------------------:|")
    for side in args.grids:
        hg, va = results[side, "hourglass"], results[side, "vanilla"]
        print(f"| {f'{side}x{side}':5} | {hg['fwd_tok_s'] / va['fwd_tok_s']:30.2f}x | "
              f"{hg['train_tok_s'] / va['train_tok_s']:15.2f}x | {hg['peak_mib'] / va['peak_mib']:29.2f} |")
    print()
    for (small, large) in zip(args.grids, args.grids[1:]):
        tokens_ratio = (large / small) ** 2
        print(f"peak memory {large}x{large} / {small}x{small} ({tokens_ratio:.0f}x tokens): " + ", ".join(
            f"{name} {results[large, name]['peak_mib'] / results[small, name]['peak_mib']:.2f}x" for name in models))
    print_targets(results, peak_flop_s)
    warning = matmul.warning()
    if warning:
        print(f"\n{warning}")
    return 0


def print_targets(results, peak_flop_s):
    """The issue's three targets, for the grids this run measured."""
    print()
    if (32, "vanilla") in results:
        speedup = results[32, "hourglass"]["fwd_tok_s"] / results[32, "vanilla"]["fwd_tok_s"]
        print(f"target: hourglass fwd speed-up at 32x32 >= 2.5x: {speedup:.2f}x -> {verdict(speedup >= 2.5)}")
    if (32, "vanilla") in results and (64, "vanilla") in results:
        for name in ("hourglass", "vanilla"):
            growth = results[64, name]["peak_mib"] / results[32, name]["peak_mib"]
            print(f"target: {name} training peak memory 64x64 / 32x32 <= 4.5x: {growth:.2f}x -> {verdict(growth <= 4.5)}")
    if (32, "vanilla") in results:
        fraction = results[32, "vanilla"]["fwd_flop_s"] / peak_flop_s
        print(f"target: vanilla fwd at 32x32 >= 50% of matmul throughput: {100 * fraction:.0f}% -> "
              f"{verdict(fraction >= 0.5)}")


def verdict(ok):
    return "met" if ok else "NOT met"


if __name__ == "__main__":
    sys.exit(main())
