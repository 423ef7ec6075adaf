"""The priors side by side (issue 13, item 4): (a) sampling cost at equal parameter count.

Three priors over the same token grids, untrained (random weights: cost only, no quality):

  sundae     the non-causal hourglass, iterated parallel denoising (priors.sundae), with
             early stopping and without
  absorbing  the same hourglass reading V + 1 tokens (the mask) and predicting V, sampled by
             Unleashing's sampler at S = 64 and 256 steps and by MaskGIT's decoding at 8 and 16
  ar         a causal raster-order transformer (CausalTransformerLM, a vanilla stack) whose depth
             is chosen to match the SUNDAE model's parameter count, with the KV cache and without

at two shapes: the digits models (8x8, V=17, config/digits.toml) and the FFHQ1024 shape
(32x32, V=8192, hourglass [2, 10, 2] k=4, config/ffhq1024/ffhq1024-hourglass.toml) narrowed to
a width a CPU can sample in minutes (--large-dim, default 128: 2 heads of 64). Each model is
built by the priors' registry from the SUNDAE config with its [prior] (and, for AR, its [net])
switched (prior_configs), and sampled through its prior (priors.base.Prior.sample).

    .venv/bin/python -m bench.priors            # full run: 12 min on 1 thread of 2 busy CPU cores
    .venv/bin/python -m bench.priors --quick    # tiny sizes, one timed run (the test runs this)

Per row: forwards per sample (model calls each sample took part in, from the sampler's
steps_used), token-positions per sample (the inputs those calls processed: h*w per grid
forward; for AR without the cache call i re-runs the whole prefix of i + 1 inputs), GFLOP per
sample (torch's FlopCounterMode, attention counted with the math backend's dense matmuls),
samples/s and seconds per sample for one batch (the same batch for every row of a shape), and
ms per forward per sample. At 32x32 the time of AR without the cache comes from a fit over its
calls (ar_no_cache_seconds), which the 8x8 run checks against a whole run.

(b) with --quality: quality, the same priors trained on digits with the digits config's budget
(bench.digits_search's recipes "default", "absorbing", "autoregressive": the same data,
steps, batch and learning rate, about the same parameter count), each sampled at N = 1000 (100
per class) under its documented settings and scored by the evaluation harness; mean ± sd over
--quality-seeds. Training runs are reused when their checkpoints exist.

    .venv/bin/python -m bench.priors --quality --no-cost --quality-seeds 0 1   # ~25 min per prior per seed
"""
import argparse
import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple, Optional

import torch

from bench import digits_search
from bench.configs import DIGITS, FFHQ1024, load, with_prior
from bench.flops import counted_flops
from bench.measure import MatmulProbe, header, load_average, timed
from priors import build_model, prior_for
from priors.autoregressive import filter_logits
from priors.grids import sample_categorical

ABSORBING_STEPS = (64, 256)
MASKGIT_STEPS = (8, 16)
TRAINED = "†"  # marks the numbers that depend on how a trained model behaves
ESTIMATED = "‡"  # marks the times estimated from a fit (AR without the cache at 32x32)


# --- the shapes and their models ------------------------------------------------------------------


@dataclasses.dataclass(eq=False)  # hashable by identity: a key of the results
class Shape:
    """One grid shape: the SUNDAE config it comes from, narrowed as the run asks."""

    name: str
    cfg: object  # training.config.Config: [data] grid and vocabulary, [net] hourglass, [sampling] schedule
    batch: int  # of every row of this shape
    repeats: int  # timed runs per row, the fastest kept
    estimate_ar_no_cache: bool = False  # time AR without the cache from a fit (see ar_no_cache_seconds)

    @property
    def grid(self):
        return tuple(self.cfg.data.latent_shape)

    @property
    def vocab(self):
        return self.cfg.data.vocab_size

    @property
    def num_classes(self):
        return self.cfg.net.num_classes if self.cfg.net.conditional else None


def shapes(args):
    """The digits shape as configured, and the FFHQ1024 shape at CPU width (tiny in --quick)."""
    digits = load(DIGITS)
    narrow = {"vqgan": None,
              "net": {"dim": args.large_dim, "nb_heads": args.large_dim // args.large_dim_head,
                      "dim_head": args.large_dim_head}}
    if args.quick:  # seconds, not minutes: a small grid and vocabulary, fewer SUNDAE steps
        narrow.update(data={"latent_shape": [8, 8], "vocab_size": 256}, sampling={"steps": 20})
    ffhq = load(FFHQ1024, narrow)
    side = ffhq.data.latent_shape[0]
    return [Shape("digits", digits, args.digits_batch, args.repeats),
            Shape(f"ffhq1024-shape {side}x{side}, dim {args.large_dim}", ffhq, args.large_batch, args.large_repeats,
                  estimate_ar_no_cache=not args.measure_ar_no_cache)]


def ar_config(shape, depth):
    """The AR prior of a shape: a causal vanilla stack of `depth` at the hourglass's width (dim,
    heads, dim_head, ff_mult)."""
    return with_prior(shape.cfg, "autoregressive", net={"type": "vanilla", "depth": depth})


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def matched_depth(shape, target):
    """The AR depth at the same width whose parameter count is nearest `target`."""
    with torch.device("meta"):  # shapes only, no memory
        one, two = (count_params(build_model(ar_config(shape, depth))) for depth in (1, 2))
    per_block = two - one  # the count is linear in depth: embeddings and head, then identical blocks
    return max(1, round((target - one) / per_block) + 1)


def prior_configs(shape):
    """{prior: config} at one shape: the shape's SUNDAE config, the same [net] as an absorbing
    prior, and the AR prior whose depth matches the SUNDAE model's parameter count; [sampling]
    is each prior's default (the rows set what they vary)."""
    with torch.device("meta"):
        sundae_params = count_params(build_model(shape.cfg))
    return {"sundae": shape.cfg, "absorbing": with_prior(shape.cfg, "absorbing"),
            "ar": ar_config(shape, matched_depth(shape, sundae_params))}


def build_models(configs, seed):
    """{prior: model} in eval mode, each built by the registry from its config and initialised
    from its own explicit seed (torch's global generator is restored afterwards: the caller's
    random state is not touched)."""
    models = {}
    with torch.random.fork_rng(devices=[]):
        for offset, (name, cfg) in enumerate(configs.items()):
            torch.manual_seed(seed + offset)
            models[name] = build_model(cfg).eval()
    # the absorbing model is the SUNDAE architecture plus one embedding row (the mask token)
    assert count_params(models["absorbing"]) == count_params(models["sundae"]) + configs["sundae"].net.dim
    return models


# --- the rows: one sampler configuration each ------------------------------------------------------


class Row(NamedTuple):
    prior: str  # key of prior_configs
    label: str
    settings: object  # the prior's Sampling settings of this row
    fixed_forwards: Optional[int]  # forwards per sample when the sampler fixes them, else None
    trained: bool = False  # True when the forwards depend on a trained model's behaviour
    ar_cache: Optional[bool] = None  # AR rows: whether the KV cache is used; None for grid models
    estimated: bool = False  # True when the time comes from a fit, not from a whole sampling run


def rows(shape, configs):
    """Every sampler configuration of the cost table, at this shape."""
    h, w = shape.grid
    tokens = h * w
    sundae, absorbing, ar = (configs[name].sampling for name in ("sundae", "absorbing", "ar"))
    steps = sundae.steps
    out = [Row("sundae", "SUNDAE, early stop", dataclasses.replace(sundae, early_stop=True), None, trained=True),
           Row("sundae", "SUNDAE, no early stop", dataclasses.replace(sundae, early_stop=False), steps)]
    # Unleashing's sampler runs the model only for samples that reveal a token at that step, so its
    # forwards per sample are random (not model-dependent) and at most min(S, h*w)
    out += [Row("absorbing", f"absorbing (Unleashing), S={s}",
                dataclasses.replace(absorbing, steps=s, decoder="unleashing"), None) for s in ABSORBING_STEPS]
    out += [Row("absorbing", f"MaskGIT, S={s}", dataclasses.replace(absorbing, steps=s, decoder="maskgit"),
                min(s, tokens)) for s in MASKGIT_STEPS]
    out.append(Row("ar", "AR, KV cache", dataclasses.replace(ar, use_cache=True), tokens, ar_cache=True))
    out.append(Row("ar", "AR, no cache", dataclasses.replace(ar, use_cache=False), tokens, ar_cache=False,
                   estimated=shape.estimate_ar_no_cache))
    return out


def run_row(row, config, model, shape, cond, generator):
    """(seconds, steps_used (B,)) of one batch of a row: a timed sampling run through the prior,
    or for an estimated row ar_no_cache_seconds."""
    if row.estimated:
        return ar_no_cache_seconds(model, shape, cond, generator)
    prior = prior_for(config)
    elapsed, result = timed(lambda: prior.sample(model, shape.grid, row.settings, nb_samples=shape.batch, cond=cond,
                                                 generator=generator), warmup=False)
    return elapsed, result.steps_used


def ar_no_cache_seconds(model, shape, cond, generator, points=24):
    """(seconds, steps_used) of AR sampling without the cache for one batch, from a fit: a whole run
    at 32x32 re-runs ~h*w/2 full forwards and takes as long as all the other rows together.

    Call n (n = 0..h*w-1) of the uncached sampler runs the model on the start input and n tokens,
    then filters and draws from the last position's logits; its time depends on n only (not on
    the token values). `points` calls at evenly spaced n are timed once each as the sampler runs
    them (not the fastest of several: a whole run pays every call's share of outside load too),
    a + b n + c n^2 is fitted by least squares (projections grow like n, attention like n^2) and
    summed over the h*w calls.
    """
    length = shape.grid[0] * shape.grid[1]
    prefix = torch.zeros((shape.batch, length), dtype=torch.long)
    ns = torch.linspace(0, length - 1, points).round().long().unique()
    times = []
    with torch.inference_mode():
        for n in ns.tolist():
            def call():
                logits = model.forward_step(prefix[:, :n], cond, grid=shape.grid)[:, -1]  # noqa: B023
                sample_categorical(filter_logits(logits.float()), generator=generator)
            times.append(timed(call, warmup=False)[0])
    x = ns.double()
    design = torch.stack([torch.ones_like(x), x, x * x], dim=1)  # (points, 3)
    coef = torch.linalg.lstsq(design, torch.tensor(times, dtype=torch.float64)[:, None]).solution[:, 0]
    all_n = torch.arange(length, dtype=torch.float64)
    total = (coef[0] + coef[1] * all_n + coef[2] * all_n**2).sum().item()
    return total, torch.full((shape.batch,), length)


def absorbing_expected_forwards(steps, tokens):
    """E[forwards per sample] of Unleashing's sampler here: each token is revealed at a step drawn
    uniformly from the S steps, independently, and a sample's forward runs at the distinct ones."""
    return steps * (1 - (1 - 1 / steps) ** tokens)


# --- FLOPs ----------------------------------------------------------------------------------------


def grid_forward_flops(model, shape):
    """FLOPs of one sample's forward of a grid model (every SUNDAE/absorbing/MaskGIT call). The
    SUNDAE sampler runs the logits head at the positions a step updates only, so for it this is an
    upper bound (by the head's share times the proportion not updated)."""
    tokens = torch.zeros((1, *shape.grid), dtype=torch.long)
    cond = torch.zeros(1, dtype=torch.long) if shape.num_classes else None
    return counted_flops(lambda: model(tokens, cond))


def ar_sample_flops(model, shape, use_cache):
    """FLOPs of one AR sample, from a few counted calls (a full counted run would cost as much as sampling).

    With the cache call k = 1..L feeds one input that attends to k keys: f(k) is linear in k.
    Without it, call n = 1..L re-runs n inputs with causal attention over them: f(n) is quadratic.
    One more counted call checks the polynomial before it is summed over the L calls.
    """
    h, w = shape.grid
    length = h * w
    cond = torch.zeros(1, dtype=torch.long) if shape.num_classes else None
    token = torch.zeros((1, 1), dtype=torch.long)
    if use_cache:
        cache = model.new_cache(h, w)
        f = [counted_flops(lambda: model.forward_step(token[:, :0], cond, cache=cache))]  # start input only
        f += [counted_flops(lambda: model.forward_step(token, cond, cache=cache)) for _ in range(2)]
        slope = f[1] - f[0]
        assert f[2] - f[1] == slope, f"AR cached call FLOPs not linear in the keys: {f}"
        return length * f[0] + slope * length * (length - 1) // 2
    f = [counted_flops(lambda: model.forward_step(torch.zeros((1, n), dtype=torch.long), cond, grid=(h, w)))
         for n in range(4)]  # n tokens after the start input: n + 1 inputs
    first, second = f[1] - f[0], f[2] - 2 * f[1] + f[0]
    assert f[3] - 3 * f[2] + 3 * f[1] - f[0] == 0, f"AR prefix FLOPs not quadratic in its length: {f}"
    # f(n) = f0 + n*first + C(n, 2)*second for n = 0..L-1; summed: L*f0 + C(L, 2)*first + C(L, 3)*second
    return length * f[0] + math.comb(length, 2) * first + math.comb(length, 3) * second


def flops_per_sample(row, model, shape, forwards):
    if row.ar_cache is None:
        return forwards * grid_forward_flops(model, shape)
    return ar_sample_flops(model, shape, row.ar_cache)


def positions_per_sample(row, shape, forwards):
    """Token-positions the model processed per sample: its inputs, summed over its calls."""
    length = shape.grid[0] * shape.grid[1]
    if row.ar_cache is None:
        return forwards * length
    if row.ar_cache:
        return length  # the start input, then one token per call
    return length * (length + 1) // 2  # call i re-runs the start input and the i tokens drawn


# --- measuring ------------------------------------------------------------------------------------


def warm_up(models, shape, cond):
    """One batch through every code path (grid forward, cached and uncached AR steps): allocator
    and kernel caches are then warm, without paying for a whole sampling run of each row."""
    grid = torch.zeros((shape.batch, *shape.grid), dtype=torch.long)
    with torch.inference_mode():
        models["sundae"](grid, cond)
        models["absorbing"](grid, cond)
        ar = models["ar"]
        cache = ar.new_cache(*shape.grid)
        ar.forward_step(grid.flatten(1)[:, :0], cond, cache=cache)
        ar.forward_step(grid.flatten(1)[:, :1], cond, cache=cache)
        ar.forward_step(grid.flatten(1)[:, :8], cond, grid=shape.grid)


def measure_shape(shape, seed):
    """({label: result dict} for every row, {prior: parameters}, the AR model) at one shape.

    Each timed run samples one batch from the same seed, so every repeat of a row draws the same
    tokens and takes the same forwards. The repeats are interleaved across rows and the fastest
    run of each row is kept: other processes can only add time, and a burst of their load then
    spoils one run of each row, not one row.
    """
    configs = prior_configs(shape)
    models = build_models(configs, seed)
    cond_gen = torch.Generator().manual_seed(seed)
    cond = torch.randint(shape.num_classes, (shape.batch,), generator=cond_gen) if shape.num_classes else None
    warm_up(models, shape, cond)
    table = rows(shape, configs)
    best, forwards = {r.label: math.inf for r in table}, {}
    fit_check = math.inf  # where AR without the cache is run whole, the fit's estimate of it checks the fit
    for repeat in range(shape.repeats):
        for r in table:
            print(f"  {shape.name}: {r.label} (run {repeat + 1}/{shape.repeats}) ...", file=sys.stderr, flush=True)
            elapsed, steps_used = run_row(r, configs[r.prior], models[r.prior], shape, cond,
                                          torch.Generator().manual_seed(seed))
            best[r.label] = min(best[r.label], elapsed)
            forwards[r.label] = steps_used.double().mean().item()
            if r.fixed_forwards is not None and not (steps_used == r.fixed_forwards).all():
                raise RuntimeError(f"{r.label}: forwards per sample {steps_used.tolist()}, "
                                   f"expected {r.fixed_forwards} (has the sampler changed?)")
            if r.ar_cache is False and not r.estimated:  # right after the whole run, under the same load
                estimate, _ = ar_no_cache_seconds(models["ar"], shape, cond, torch.Generator().manual_seed(seed))
                fit_check = min(fit_check, estimate)
    out = {}
    for r in table:
        s_per_sample = best[r.label] / shape.batch
        out[r.label] = dict(
            row=r, forwards=forwards[r.label], positions=positions_per_sample(r, shape, forwards[r.label]),
            flops=flops_per_sample(r, models[r.prior], shape, forwards[r.label]),
            samples_per_s=1 / s_per_sample, s_per_sample=s_per_sample,
            ms_per_forward=1e3 * s_per_sample / forwards[r.label])
    if math.isfinite(fit_check):
        out["AR, no cache"]["fit_check_s"] = fit_check
    params = {name: count_params(m) for name, m in models.items()}
    return out, params, models["ar"]


# --- report ---------------------------------------------------------------------------------------


def print_params(measured):
    print("| shape | prior | model | parameters | vs SUNDAE |")
    print("|---|---|---|---:|---:|")
    for shape, (_, params, ar) in measured.items():
        net = shape.cfg.net
        hg = f"hourglass {list(net.depth)} k={net.shorten_factor}, dim {net.dim}, {net.nb_heads}x{net.dim_head} heads"
        kinds = {"sundae": f"{hg}, V={shape.vocab}",
                 "absorbing": f"{hg}, V+1={shape.vocab + 1} in, V out",
                 "ar": f"causal vanilla, depth {len(ar.blocks)}, dim {net.dim}, {net.nb_heads}x{net.dim_head} heads"}
        for prior, n in params.items():
            print(f"| {shape.name} | {prior} | {kinds[prior]} | {n:,} | {100 * (n / params['sundae'] - 1):+.1f}% |")


def print_cost(shape, results, peak_flop_s):
    h, w = shape.grid
    sc = shape.cfg.sampling
    print(f"\n#### {shape.name}: {h}x{w} grid, V={shape.vocab}, batch {shape.batch}"
          f"{', class-conditional' if shape.num_classes else ''}, fastest of {shape.repeats} timed run(s)")
    print(f"\nSUNDAE schedule: {sc.steps} steps, temperature {sc.temperature}->{sc.end_temperature}, "
          f"proportion {sc.sample_proportion}->{sc.end_sample_proportion}, min_steps {sc.min_steps}")
    print()
    print("| sampler | batch | forwards / sample | token-positions / sample | GFLOP / sample | samples/s "
          "| s / sample | ms / forward / sample | % matmul |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, r in results.items():
        mark = TRAINED if r["row"].trained else ""
        time_mark = mark + (ESTIMATED if r["row"].estimated else "")
        est = ESTIMATED if r["row"].estimated else ""
        flop_s = r["flops"] / r["s_per_sample"]
        print(f"| {label} | {shape.batch} | {r['forwards']:.1f}{mark} | {r['positions']:,.0f}{mark} "
              f"| {r['flops'] / 1e9:.3g}{mark} | {r['samples_per_s']:.3g}{time_mark} "
              f"| {r['s_per_sample']:.3g}{time_mark} | {r['ms_per_forward']:.3g}{est} "
              f"| {100 * flop_s / peak_flop_s:.2g}%{est} |")
    print()
    print("| SUNDAE/AR speed (AR s/sample ÷ SUNDAE s/sample; > 1: SUNDAE faster) "
          "| vs AR, KV cache | vs AR, no cache |")
    print("|---|---:|---:|")
    ar = {c: results[f"AR, {c}"]["s_per_sample"] for c in ("KV cache", "no cache")}
    est = ESTIMATED if results["AR, no cache"]["row"].estimated else ""
    for label in ("SUNDAE, early stop", "SUNDAE, no early stop"):
        s = results[label]["s_per_sample"]
        mark = TRAINED if results[label]["row"].trained else ""
        print(f"| {label} | {ar['KV cache'] / s:.3g}x{mark} | {ar['no cache'] / s:.3g}x{mark}{est} |")
    # how many SUNDAE forwards per sample fit in one AR sample's time: the break-even for a trained model
    per_forward = results["SUNDAE, no early stop"]["s_per_sample"] / results["SUNDAE, no early stop"]["forwards"]
    print(f"| SUNDAE forwards / sample at which SUNDAE costs what AR costs | "
          f"{ar['KV cache'] / per_forward:.3g} | {ar['no cache'] / per_forward:.3g}{est} |")


def print_notes(measured):
    print()
    print(f"{TRAINED} depends on a trained model: SUNDAE's early stop freezes a sample once a step changes "
          "none of its tokens, which an untrained (near-uniform) model practically never does, so here "
          "it costs what no early stop costs plus the per-step check. Its cost per forward and the "
          "break-even row do not depend on training.")
    print()
    print("Unleashing's sampler reveals each token at one of the S steps, uniformly at random, and the "
          "library runs a sample's forward only at the steps that reveal one of its tokens: the forwards "
          "per sample are random (independent of the model), at most min(S, h*w), expected "
          "S(1 - (1 - 1/S)^(h*w)); S > h*w adds steps that reveal nothing and cost no forward. Here:")
    for shape, (results, _, _) in measured.items():
        tokens = shape.grid[0] * shape.grid[1]
        print(f"- {shape.name}, {tokens} tokens: " + ", ".join(
            f"S={s} {results[f'absorbing (Unleashing), S={s}']['forwards']:.1f} forwards "
            f"(expected {absorbing_expected_forwards(s, tokens):.1f})" for s in ABSORBING_STEPS))
    print()
    print(f"{ESTIMATED} estimated, not run whole: AR sampling without the cache re-runs the growing prefix at "
          "each of its h*w calls: at 32x32 one batch takes as long as all the other rows together. The time of "
          "a call depends on its prefix length only; calls at evenly spaced lengths are timed as the "
          "sampler runs them (model, filter, draw), a quadratic in the length is fitted and summed over "
          "the calls (ar_no_cache_seconds; --measure-ar-no-cache runs it whole). Where the row was run "
          "whole, the same fit checks itself:")
    for shape, (results, _, _) in measured.items():
        r = results["AR, no cache"]
        if "fit_check_s" in r:
            measured_s = r["s_per_sample"] * shape.batch
            print(f"- {shape.name}: fit {r['fit_check_s']:.3g} s per batch, whole run {measured_s:.3g} s, "
                  f"each the fastest of {shape.repeats} (fit / run = {r['fit_check_s'] / measured_s:.2f})")
    print()
    print("AR without the cache: call i re-runs the start input and the i tokens drawn so far, and "
          "computes the logits of every position (the library's forward_step); the sampler uses the "
          "last. GFLOP count attention as the math backend's dense matmuls (causal: the full square), "
          "which the fused CPU kernel that the timings use partly skips.")


# (b): each prior's recipe in bench.digits_search and the samplings scored on it
QUALITY = {"default": ["default", "paper rule"],
           "absorbing": ["unleashing64", "unleashing32", "maskgit12", "maskgit8"],
           "autoregressive": ["ar", "ar-top-k5"]}


def quality_section(args):
    """(b) quality on digits: train (or reuse), sample N = 1000 and score each prior; one table."""
    out = Path(args.quality_work) / "results.jsonl"
    for recipe, samplings in QUALITY.items():
        digits_search.main(["--recipes", recipe, "--samplings", *samplings, "--seeds", *map(str, args.quality_seeds),
                            "--data", args.quality_data, "--work", args.quality_work, "--out", str(out),
                            "--threads", str(args.threads), "--reuse"])
    print(f"\n## quality on digits (N = 1000, 100 per class; {out})\n")
    digits_search.report(out, only=QUALITY)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, one timed run (seconds)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="torch intra-op threads (default: the cores this process may use)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per digits row, fastest kept (default 3; quick 1)")
    p.add_argument("--large-repeats", type=int, default=None,
                   help="timed runs per 32x32 row (default 1: one run of every row takes ~10 min on 1 core)")
    p.add_argument("--digits-batch", type=int, default=None, help="batch of every digits row (default 64; quick 8)")
    p.add_argument("--large-batch", type=int, default=None, help="batch of every 32x32 row (default 4; quick 2)")
    p.add_argument("--large-dim", type=int, default=None, help="width of the 32x32 models (default 128; quick 32)")
    p.add_argument("--large-dim-head", type=int, default=None, help="head width at 32x32 (default 64; quick 16)")
    p.add_argument("--measure-ar-no-cache", action="store_true",
                   help="run AR without the cache whole at 32x32 too (default: fitted, see ar_no_cache_seconds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cost", action="store_true", help="skip (a), the cost tables")
    p.add_argument("--quality", action="store_true", help="run (b): train each prior on digits, sample, score")
    p.add_argument("--quality-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--quality-data", default="data/digits")
    p.add_argument("--quality-work", default="runs/priors-quality",
                   help="configs, runs and results.jsonl of (b); a run whose checkpoint exists is reused")
    args = p.parse_args(argv)
    quick = args.quick
    args.repeats = args.repeats or (1 if quick else 3)
    args.large_repeats = args.large_repeats or 1
    args.digits_batch = args.digits_batch or (8 if quick else 64)
    args.large_batch = args.large_batch or (2 if quick else 4)
    args.large_dim = args.large_dim or (32 if quick else 128)
    args.large_dim_head = args.large_dim_head or (16 if quick else 64)
    return args


def cost_section(args):
    """(a): every row at both shapes, with the matmul throughput measured before, between and after."""
    matmul = MatmulProbe("cpu")
    matmul.measure()
    measured = {}
    for shape in shapes(args):
        print(f"measuring {shape.name} ...", file=sys.stderr, flush=True)
        measured[shape] = measure_shape(shape, args.seed)
        matmul.measure()
    peak = matmul.best
    print(matmul.summary())
    print()
    print_params(measured)
    for shape, (results, _, _) in measured.items():
        print_cost(shape, results, peak)
    print_notes(measured)
    warning = matmul.warning(advice="compare rows of one run only")
    if warning:
        print(f"\n{warning}")
    return measured


def main(argv=None):
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # explicit: the timings depend on it, and the header states it
    try:
        print(f"{header('cpu', 'float32')} at the start")
        print(f"# {'quick' if args.quick else 'full'} run; seed {args.seed}; untrained models (cost only); "
              "absorbing, MaskGIT and AR at temperature 1 (AR without top-k/top-p), MaskGIT choice temperature 4.5")
        started = time.perf_counter()
        if not args.no_cost:
            cost_section(args)
        if args.quality:
            quality_section(args)
        print(f"\n# run took {time.perf_counter() - started:.0f} s; load avg at the end {load_average()}")
    finally:
        torch.set_num_threads(threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
