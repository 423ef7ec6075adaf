"""Test helpers: running the top-level scripts, tiny configs and datasets, the VQ-GAN fixtures."""
import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures" / "vqgan"


def run_script(script, *args, cwd=None, env=None, timeout=600):
    """Run a top-level script in a fresh interpreter; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd or REPO,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def assert_user_error(proc, *fragments):
    """A user mistake: exit status 2 and one `error: ...` line naming what was wrong."""
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"


def vqgan_fixture(name):
    """Path of one conformance fixture directory, skipping when ../shared is absent."""
    path = SHARED_FIXTURES / name
    if not path.is_dir():
        pytest.skip(f"VQ-GAN fixture {path} not present (../shared/fixtures/vqgan is handed out "
                    "beside the checkout)")
    return path


def write_tiny_latents(root, n_train=64, n_eval=16, shape=(4, 4), vocab=5, classes=2, seed=0,
                       sources=None):
    """A small structured latent dataset: each class is a fixed pattern with a little noise.
    No eval split when n_eval is 0; `sources` (one per train row) defaults to one per row."""
    from latents.dataset import create_latent_dataset

    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, vocab, size=(classes, *shape))
    class_names = [f"c{i}" for i in range(classes)] if classes else None
    with create_latent_dataset(root, vocab, shape, class_names, {"created_by": "tests"}) as add_split:
        for name, n in (("train", n_train), ("eval", n_eval)):
            if n == 0:
                continue
            labels = rng.integers(0, max(classes, 1), size=n)
            grids = patterns[labels] if classes else rng.integers(0, vocab, size=(n, *shape))
            noise = rng.random(grids.shape) < 0.05
            grids = np.where(noise, rng.integers(0, vocab, size=grids.shape), grids)
            names = sources if name == "train" and sources is not None else [f"{name}{i}" for i in range(n)]
            add_split(name, n).write(0, grids, labels if classes else None, names)
    return Path(root)


TINY_CONFIG = """\
unroll_steps = 2

[trainer]
    exp_name = 'tiny'
    batch_size = 8
    learning_rate = 3e-3
    max_steps = 20
    eval_frequency = 10
    eval_batches = 1
    checkpoint_frequency = 10
    ema_decay = 0.9
    log_frequency = 1
    runs_dir = '{runs}'

[data]
    root = '{data}'
    vocab_size = 5
    latent_shape = [4, 4]

[sampling]
    steps = 6
    nb_samples = 4
    min_steps = 2

[net]
    type = 'hourglass'
    dim = 32
    nb_heads = 2
    dim_head = 16
    depth = [1, 1, 1]
    shorten_factor = 4
    conditional = true
    num_classes = 2
"""


def write_tiny_config(tmp_path, text=TINY_CONFIG, **fields):
    """Write a tiny TOML config (and its dataset) under tmp_path; returns the config path."""
    data = tmp_path / "latents"
    if not data.exists():
        write_tiny_latents(data)
    path = tmp_path / "tiny.toml"
    path.write_text(text.format(runs=tmp_path / "runs", data=data, **fields))
    return path


def shrunk_digits_config(text, tmp_path):
    """A shipped digits config's text, shrunk to train in seconds, its data and runs in tmp_path
    (the dataset at tmp_path / 'digits'); no [evaluation] (sample quality is tested elsewhere) and an
    eager step (compile = 'auto' is tested on the tiny config)."""
    for key, value in (("max_steps", 30), ("eval_frequency", 15), ("checkpoint_frequency", 15),
                       ("warmup_steps", 5), ("dim", 32), ("nb_samples", 8)):
        text = re.sub(rf"(\n    {key} = )[^\n#]*", rf"\g<1>{value}", text, count=1)
    text = re.sub(r"\n\[evaluation\].*", "\n", text, flags=re.S)
    text = text.replace("compile = 'auto'", "compile = false")  # eager: compiling costs a minute a run
    text = text.replace("root = 'data/digits'", f"root = '{tmp_path / 'digits'}'")
    return text.replace("[trainer]", f"[trainer]\n    runs_dir = '{tmp_path / 'runs'}'", 1)


def run_main(script, *args):
    """Run a top-level script's `main` in this interpreter through infra.cli.run_cli, as run_script
    would run it in a fresh one, but without paying the start-up (torch, Lightning) again.

    Returns a CompletedProcess (returncode, stdout, stderr) so `assert_user_error` applies. The
    environment (PL_GLOBAL_SEED, ...) and torch's global RNG are restored afterwards.
    """
    import contextlib
    import importlib.util
    import io

    import torch

    from infra.cli import run_cli

    path = REPO / script
    spec = importlib.util.spec_from_file_location(f"_script_{path.stem.replace('-', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = [str(a) for a in args]
    stdout, stderr = io.StringIO(), io.StringIO()
    saved_env, saved_rng = dict(os.environ), torch.get_rng_state()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                run_cli(module.main, argv)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_rng_state(saved_rng)
    return subprocess.CompletedProcess([script, *argv], code, stdout.getvalue(), stderr.getvalue())


ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1"}  # for run_script: see single_thread


def metrics(run_dir, column):
    """(step, value) of every row of the CSV logs that has `column`, over all runs in run_dir."""
    rows = []
    for log in sorted((run_dir / "logs").glob("version_*/metrics.csv")):
        with open(log) as f:
            rows += [(int(row["step"]), float(row[column])) for row in csv.DictReader(f) if row.get(column)]
    return rows


def load_checkpoint(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def write_bomb(path, side=20000):
    """A PNG whose header claims side x side pixels (a decompression bomb for PIL's default
    limit): only the IHDR size is changed, the CRC is left stale, no large data is written."""
    from PIL import Image

    Image.new("L", (4, 4)).save(path)
    data = bytearray(Path(path).read_bytes())
    data[16:24] = side.to_bytes(4, "big") * 2  # IHDR width and height
    Path(path).write_bytes(bytes(data))
    return path
