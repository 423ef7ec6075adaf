r"""The paper's claims as an ablation table on digits: each variant trained with the digits
config's budget over several seeds, sampled at N = 1000 (100 per class) and scored by the
evaluation harness; mean ± sd over seeds.

    python -m bench.ablations --seeds 0 1 2 --out runs/ablations.jsonl     # train, sample, score
    python -m bench.ablations --report runs/ablations.jsonl                # the table

Training variants (each its own model): unroll T = 1, 2 (the default), 3; 1D resampling of the
raster-flattened sequence instead of 2D patches; 1D rotary over the raster index and learned
absolute positions instead of 2D axial rotary; a vanilla (no hourglass) stack of about the same
training FLOPs; and the original code's choices where ours is the default (its resampling
blocks, its normalized rotary coordinates, dim_head 64). Sampling variants (on the default model): constant temperature against the
annealed default, and constant update proportions 0.5 and 1.0 against the annealed default.
"""
import argparse

import torch

from bench import digits_search  # the train / sample / score loop and the results format
from bench.flops import counted_flops
from priors import build_model
from training.config import replace_section

TRAINING = {
    "default (T=2, 2D hourglass, 2D rotary)": {},
    "unroll T=1": {"unroll_steps": 1},
    "unroll T=3": {"unroll_steps": 3},
    "1D resampling": {"net": {"resampling_layout": "1d"}},
    "1D rotary": {"net": {"rotary_layout": "1d"}},
    "learned positions": {"net": {"use_rotary": False}},
    "vanilla, equal FLOPs": None,  # depth chosen by equal_flops_depth()
    # the original code's choices, where ours is the default
    "original resampling": {"net": {"attn_resampling_type": "original"}},
    "normalized rotary (original)": {"net": {"rotary_coords": "normalized"}},
    "dim_head 64 (original)": {"net": {"dim_head": 64}},
}
SAMPLING = {
    "constant temperature": {"end_temperature": None},  # = the start temperature
    "proportion 0.5 constant": {"sample_proportion": 0.5, "end_sample_proportion": 0.5},
    "proportion 1.0 constant": {"sample_proportion": 1.0, "end_sample_proportion": 1.0},
}


def training_flops(cfg):
    """FLOPs of one forward of the model on a training batch (the backward is about twice this
    for every variant alike)."""
    model = build_model(cfg)
    tokens = torch.zeros(cfg.trainer.batch_size, *cfg.data.latent_shape, dtype=torch.long)
    cond = torch.zeros(cfg.trainer.batch_size, dtype=torch.long) if cfg.net.conditional else None
    return counted_flops(lambda: model(tokens, cond))


def equal_flops_depth(base_cfg):
    """The vanilla depth whose forward FLOPs are closest to the hourglass's."""
    target = training_flops(base_cfg)
    best = None
    for depth in range(1, 25):
        cfg = replace_section(base_cfg, "net", type="vanilla", depth=depth)
        gap = abs(training_flops(cfg) - target)
        if best is None or gap < best[1]:
            best = (depth, gap)
    return best[0]


def register(trainer=None):
    """Add the variants to digits_search's tables, so its loop trains and scores them; `trainer`
    ({key: value}, e.g. max_steps) overrides the digits config's [trainer] for every variant."""
    base = digits_search.search_base_config()  # the [2, 4, 2] default of the recorded table, whatever ships now
    for name, overrides in TRAINING.items():
        if overrides is None:
            overrides = {"net": {"type": "vanilla", "depth": equal_flops_depth(base)}}
        if trainer:
            overrides = {**overrides, "trainer": {**overrides.get("trainer", {}), **trainer}}
        digits_search.RECIPES[name] = overrides
    for name, overrides in SAMPLING.items():
        if overrides.get("end_temperature", 0) is None:
            overrides = {"end_temperature": base.sampling.temperature}
        digits_search.SAMPLINGS[name] = overrides
    digits_search.SAMPLINGS["default"] = {}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", default="data/digits")
    p.add_argument("--work", default="runs/ablations")
    p.add_argument("--out", default="runs/ablations/results.jsonl")
    # the table in bench/README.md: --max-steps 1000 --learning-rate 1e-3 --warmup-steps 200
    p.add_argument("--max-steps", type=int, help="every variant's training budget (default: the digits config's)")
    p.add_argument("--learning-rate", type=float, help="every variant's peak learning rate (default: the config's)")
    p.add_argument("--warmup-steps", type=int, help="every variant's warm-up (default: the config's)")
    p.add_argument("--report", metavar="RESULTS.jsonl")
    args = p.parse_args(argv)
    trainer = {"max_steps": args.max_steps, "learning_rate": args.learning_rate, "warmup_steps": args.warmup_steps}
    register({k: v for k, v in trainer.items() if v is not None})
    if args.report:
        digits_search.report(args.report)
        return
    common = ["--seeds", *map(str, args.seeds), "--threads", str(args.threads), "--data", args.data,
              "--work", args.work, "--out", args.out, "--reuse"]
    # the default model under every sampling variant, then every training variant at the default sampling
    digits_search.main(["--recipes", "default (T=2, 2D hourglass, 2D rotary)", "--samplings", "default",
                        *SAMPLING, *common])
    digits_search.main(["--recipes", *[n for n in TRAINING if not n.startswith("default")], "--samplings",
                        "default", *common])


if __name__ == "__main__":
    main()
