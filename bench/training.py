"""Training-step throughput of the SUNDAE prior, and the fraction of this machine's matmul
throughput it reaches (issue 14).

Two shapes: the digits demo (`config/digits.toml`: 8x8 grids, vocabulary 17, batch 32, the
0.5M-parameter hourglass) and the FFHQ1024 shape at CPU width (32x32 grids, vocabulary 8192,
hourglass [2, 10, 2] with k=4, dim 256, 4 heads of 64, a small batch). Per shape:

- **Lightning ms/step**: the real step, `trainer.fit` on a Trainer from `infra.trainer.build_trainer`
  (the CSV logger, the progress bar, gradient clipping, the module's logging and EMA; no
  checkpoints, no evaluation), timed by a callback as the period between consecutive
  `on_train_batch_end` calls (data loading and every hook included).
- **raw ms/step**: the same module's work without Lightning: batch from the same DataLoader,
  unrolled loss, finiteness check, backward, gradient clipping, `module.optimizer_step` (AdamW and
  the EMA update), scheduler step. Lightning's per-step overhead is the difference.
- **steps/s, tokens/s** of the Lightning step (tokens = batch * h * w grid positions per step).
- **% matmul**: FLOP/s of the Lightning step over this machine's matmul throughput measured in the
  same run with the same threads (a 2048x2048 float32 matmul on CPU, 8192x8192 bf16 on CUDA,
  `bench.measure.MatmulProbe`; the best of the measurements before and after each shape).
  FLOPs are counted by `bench.flops.count_flops` (matmuls only, 2 per multiply-add): one step of
  the unrolled loss is T forwards and T backwards of the denoiser, a backward counted as 2
  forwards, so 3 * T * count_flops(model, h, w, batch).

Timings are the fastest block of consecutive steps after a warm-up, over rounds that alternate
Lightning and raw runs (other processes can only add time). The data are random tokens of the
shape's vocabulary (the step's cost does not depend on their values).

    .venv/bin/python -m bench.training            # CPU float32 table; a CUDA bf16 table too on a GPU
    .venv/bin/python -m bench.training --device cuda   # the CUDA table alone
    .venv/bin/python -m bench.training --quick    # a few steps per shape (for tests)
    SUNDAE_THREADS=2 .venv/bin/python -m bench.training   # threads: infra.devices.configure_threads
"""
import argparse
import contextlib
import dataclasses
import io
import logging
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytorch_lightning as pl
import torch

from bench.configs import DIGITS, FFHQ1024, load
from bench.flops import count_flops
from bench.measure import MatmulProbe, header, matmul_label, sync
from infra.data import step_generator
from infra.devices import configure_threads, resolve_devices
from infra.runs import stop_if_not_finite
from infra.trainer import build_trainer
from priors import build_model
from training.config import replace_section
from training.module import LatentDataModule, PriorModule

FFHQ_CPU_NET = dict(dim=256, nb_heads=4, dim_head=64, depth=[2, 10, 2], shorten_factor=4)


@dataclasses.dataclass
class Shape:
    name: str
    cfg: object  # training.config.Config
    warmup: int  # steps before timing
    block: int  # steps per timed block
    blocks: int  # timed blocks per round


def shapes(args, cuda):
    """The digits config as shipped, and FFHQ1024's at CPU width (its batch from --ffhq-batch);
    eager steps (the shipped compile = 'auto' pinned), compiled ones too with --compile."""
    trainer = {"precision": "bf16-mixed" if cuda else "32", "compile": False}
    ffhq_batch = args.ffhq_batch or (16 if cuda else 1 if args.quick else 2)
    ffhq = load(FFHQ1024, {"net": FFHQ_CPU_NET, "vqgan": None, "evaluation": None,
                           "trainer": {**trainer, "batch_size": ffhq_batch}})
    digits = load(DIGITS, {"evaluation": None, "trainer": trainer})
    q = args.quick
    found = [Shape("digits", digits, 3 if q else 10, 3 if q else 10, 2 if q else 4),
             Shape("ffhq1024-cpu-width", ffhq, 1 if q else 2, 1 if q else 2, 1 if q else 3)]
    found = [s for s in found if s.name in args.shapes]
    if args.compile:  # the same shapes with [trainer] compile: the compile happens in the warm-up
        found += [dataclasses.replace(s, name=f"{s.name} (compiled)", cfg=replace_section(s.cfg, "trainer", compile=True))
                  for s in found]
    return found


class RandomTokens(torch.utils.data.Dataset):
    """`n` random (tokens (h, w), label) rows of a config's shape, seeded."""

    def __init__(self, cfg, n=512, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(0, cfg.data.vocab_size, (n, *cfg.data.latent_shape), generator=g)
        classes = cfg.net.num_classes if cfg.net.conditional else 1
        self.labels = torch.randint(0, classes, (n,), generator=g).tolist()

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, i):
        return self.tokens[i], self.labels[i]


def prepare(cfg, steps, run_dir, seed=0):
    """A fresh module and data module of `cfg` for `steps` training steps."""
    cfg = replace_section(cfg, "trainer", max_steps=steps, runs_dir=str(run_dir), exp_name="bench")
    torch.manual_seed(seed)
    module = PriorModule(cfg, seed=seed)
    data = RandomTokens(cfg, n=max(64, 2 * cfg.trainer.batch_size), seed=seed)
    return cfg, module, LatentDataModule(data, data, cfg.trainer.batch_size, steps, seed=seed)


class StepTimer(pl.Callback):
    def __init__(self):
        self.ends = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.ends.append(time.perf_counter())


def fastest_block(periods, skip, block):
    """Mean of the fastest run of `block` consecutive periods after the first `skip`."""
    xs = periods[skip:]
    means = [sum(xs[i:i + block]) / block for i in range(0, len(xs) - block + 1, block)]
    return min(means) if means else math.inf


def lightning_step_s(shape, device, run_dir):
    """Seconds per step of trainer.fit, the fastest block of shape.block steps after the warm-up."""
    steps = shape.warmup + shape.block * shape.blocks + 1
    cfg, module, data = prepare(shape.cfg, steps, run_dir)
    tr = cfg.trainer
    devices = resolve_devices("gpu" if device.type == "cuda" else "cpu", "1", 1)
    args = SimpleNamespace(wandb=False, no_save=True, wandb_project="bench")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = build_trainer(args, devices, Path(run_dir) / "bench", precision=tr.precision, max_steps=steps,
                                eval_every=tr.eval_frequency, eval_batches=0, checkpoint_every=tr.checkpoint_frequency,
                                log_every=tr.log_frequency, grad_clip=tr.grad_clip, run_name="bench")
        timer = StepTimer()
        trainer.callbacks.append(timer)
        trainer.fit(module, datamodule=data)
    periods = [b - a for a, b in zip(timer.ends, timer.ends[1:])]
    return fastest_block(periods, shape.warmup, shape.block)


def raw_step_s(shape, device, run_dir):
    """Seconds per step of the module's own work without Lightning (see the module docstring)."""
    steps = shape.warmup + shape.block * shape.blocks + 1
    cfg, module, data = prepare(shape.cfg, steps, run_dir)
    module.to(device)
    opt_cfg = module.configure_optimizers()
    optimizer, scheduler = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    data.trainer = SimpleNamespace(global_step=0, global_rank=0, world_size=1)
    loader = data.train_dataloader()
    tr = cfg.trainer
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and tr.precision.startswith("bf16")
           else contextlib.nullcontext())
    module.train()
    ends = []
    for step, (tokens, labels) in enumerate(loader):
        tokens, labels = tokens.to(device, non_blocking=True), labels.to(device, non_blocking=True)

        def closure():
            optimizer.zero_grad(set_to_none=True)
            with amp:
                out = module._loss(module.training_model(), (tokens, labels), step_generator(0, step, 0, device),
                                   drop_classes=True)
            stop_if_not_finite(out.loss, step + 1, check_now=device.type == "cpu" or step % tr.log_frequency == 0)
            out.loss.backward()
            if tr.grad_clip:
                torch.nn.utils.clip_grad_norm_(module.model.parameters(), tr.grad_clip)
            return out.loss

        module.optimizer_step(0, step, optimizer, closure)
        scheduler.step()
        sync(device)
        ends.append(time.perf_counter())
    periods = [b - a for a, b in zip(ends, ends[1:])]
    return fastest_block(periods, shape.warmup, shape.block)


def step_flops(cfg, model):
    """3 * T * forward FLOPs: T forwards and T backwards (each 2 forwards) of the unrolled loss."""
    h, w = cfg.data.latent_shape
    return 3 * cfg.prior.unroll_steps * count_flops(model, h, w, cfg.trainer.batch_size)


def measure(shape, device, rounds):
    """Timings of one shape: Lightning and raw runs alternating over `rounds`, the fastest kept."""
    matmul = MatmulProbe(device)
    matmul.measure()
    lightning, raw = math.inf, math.inf
    with tempfile.TemporaryDirectory(prefix="bench-training-") as run_dir:
        for _ in range(rounds):
            lightning = min(lightning, lightning_step_s(shape, device, run_dir))
            raw = min(raw, raw_step_s(shape, device, run_dir))
    matmul.measure()
    cfg = shape.cfg
    model = build_model(cfg)
    h, w = cfg.data.latent_shape
    flops = step_flops(cfg, model)
    tokens = cfg.trainer.batch_size * h * w
    peak = matmul.best
    return dict(shape=shape.name, batch=cfg.trainer.batch_size, grid=f"{h}x{w}", vocab=cfg.data.vocab_size,
                params=sum(p.numel() for p in model.parameters()), gflop=flops / 1e9, raw_ms=1e3 * raw,
                lightning_ms=1e3 * lightning, overhead_ms=1e3 * (lightning - raw), steps_s=1 / lightning,
                tokens_s=tokens / lightning, matmul_gflop_s=peak / 1e9, matmul_low_gflop_s=matmul.lowest / 1e9,
                fraction=flops / lightning / peak, raw_fraction=flops / raw / peak,
                warning=matmul.warning(f"around {shape.name}"))


def print_table(rows, device, threads, rounds):
    precision = "bf16-mixed" if device.type == "cuda" else "float32"
    print(header(device, precision, versions=[f"Lightning {pl.__version__}"]))
    print(f"# {precision}; threads: {threads.intra_op} intra-op, {threads.inter_op} inter-op ({threads.source}); "
          f"fastest block over {rounds} alternating rounds; Lightning = real trainer.fit step, raw = the same "
          f"work without Lightning")
    print(f"# FLOPs per step = 3 * T * count_flops (T forwards + T backwards of the unrolled loss, "
          f"T = unroll_steps); matmul throughput {matmul_label(device)}, same threads")
    print()
    print("| shape | grid | vocab | batch | params | GFLOP/step | raw ms/step | Lightning ms/step | Lightning overhead ms | "
          "steps/s | tokens/s | matmul GFLOP/s | % matmul (Lightning) | % matmul (raw) |")
    print("|-------|------|------:|------:|-------:|-----------:|------------:|------------------:|----------------------:|"
          "--------:|---------:|---------------:|---------------------:|---------------:|")
    for r in rows:
        print(f"| {r['shape']} | {r['grid']} | {r['vocab']} | {r['batch']} | {r['params'] / 1e6:.2f}M | {r['gflop']:.2f} | "
              f"{r['raw_ms']:.1f} | {r['lightning_ms']:.1f} | {r['overhead_ms']:.1f} | {r['steps_s']:.2f} | "
              f"{r['tokens_s']:.0f} | {r['matmul_gflop_s']:.0f} | {100 * r['fraction']:.2g}% | "
              f"{100 * r['raw_fraction']:.2g}% |")  # 2 significant digits: a GPU's can be 0.015%
    for r in rows:
        if r["warning"]:
            print(f"\n{r['warning']}")
    digits = [r for r in rows if r["shape"] == "digits"]
    if digits and device.type == "cpu":
        fraction = digits[0]["fraction"]
        print(f"\ntarget: digits Lightning step >= 40% of matmul throughput on CPU: {100 * fraction:.0f}% -> "
              f"{'met' if fraction >= 0.4 else 'NOT met'}")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few steps per shape, one round (for tests)")
    p.add_argument("--rounds", type=int, default=None, help="alternating Lightning/raw rounds (default 2, quick 1)")
    p.add_argument("--shapes", nargs="+", default=["digits", "ffhq1024-cpu-width"],
                   choices=["digits", "ffhq1024-cpu-width"])
    p.add_argument("--ffhq-batch", type=int, default=None, help="FFHQ1024-shape batch (default 2 on CPU, 1 with --quick, 16 on CUDA)")
    p.add_argument("--threads", default=None, help="intra-op threads (default: infra.devices.configure_threads' rule)")
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                   help="the tables to print: cpu, cuda, or all (default: CPU, and CUDA when a GPU is present)")
    p.add_argument("--compile", action="store_true", help="also each shape with [trainer] compile (torch.compile)")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 2)
    return args


def main(argv=None):
    args = parse_args(argv)
    threads = configure_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench.training: --device cuda: no CUDA device is available", file=sys.stderr)
        sys.exit(2)
    names = {"cpu": ["cpu"], "cuda": ["cuda"], "all": ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]}
    devices = [torch.device(name) for name in names[args.device]]
    results = {}
    for device in devices:
        cuda = device.type == "cuda"
        if cuda:
            torch.set_float32_matmul_precision("high")
        rows = []
        for shape in shapes(args, cuda):
            print(f"measuring {shape.name} on {device.type} ...", file=sys.stderr, flush=True)
            rows.append(measure(shape, device, args.rounds))
        if cuda:
            print("\n## CUDA (bf16-mixed)\n")
        print_table(rows, device, threads, args.rounds)
        results[device.type] = rows
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
