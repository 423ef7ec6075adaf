"""Resuming is exact: a run stopped at any step, a checkpoint step or not, resumed once
or twice, or killed with SIGKILL between checkpoints, ends with every tensor of the uninterrupted
run: weights, EMA, optimiser moments and steps, scheduler, code counts. For train.py and
train-vqgan.py, with dropout on so that the global RNG matters too.

Before the fix a resume at step s of an N-step run with s < N / 2 replayed the batches of steps
s, s + 1, ... in its last s steps (Lightning ended its epoch of len = N - s batches early and began
another); resumes at N / 2 or later happened to be exact."""
import csv
import signal

import pytest
import torch

from tests.helpers import ONE_THREAD_ENV, REPO, TINY_CONFIG, assert_user_error, run_main, run_script, write_tiny_latents
from tests.scripts.test_train_vqgan import smooth_images, tiny_config, write_config

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.slow]

# Runs `script` as a real process that SIGKILLs itself at the end of step KILL_AT_STEP, after the
# checkpoint callbacks of that step (so nothing is written for it) and before the next step.
KILLER = """\
import os, runpy, signal, sys
import pytorch_lightning as pl

def on_train_batch_end(self, outputs, batch, batch_idx):
    if self.global_step == int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)

pl.LightningModule.on_train_batch_end = on_train_batch_end
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def differences(a, b, path=""):
    """Paths at which two nested checkpoint structures differ; tensors compared with torch.equal."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
        return [] if same else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path} (keys)"]
        return [d for k in a for d in differences(a[k], b[k], f"{path}.{k}" if path else str(k))]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path} (length)"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


TRAINING_STATE = ("global_step", "state_dict", "optimizer_states", "lr_schedulers", "codebook_counts")


def count_leaves(x):
    if isinstance(x, dict):
        return sum(count_leaves(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return sum(count_leaves(v) for v in x)
    return 1


def assert_same_training_state(resumed_path, straight_path):
    resumed, straight = load(resumed_path), load(straight_path)
    diff, counts = [], {}
    for key in TRAINING_STATE:
        assert (key in resumed) == (key in straight), key
        if key in straight:
            d = differences(resumed[key], straight[key], key)
            diff += d
            counts[key] = f"{len(d)}/{count_leaves(straight[key])}"
    assert not diff, f"{resumed_path.name} differs from the uninterrupted run: {counts}; {diff[:4]}"


def metric_steps(run_dir, column):
    steps = []
    for log in sorted((run_dir / "logs").glob("version_*/metrics.csv")):
        with open(log) as f:
            steps += [int(row["step"]) for row in csv.DictReader(f) if row.get(column)]
    return sorted(steps)


def expect_ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstderr:\n{proc.stderr[-4000:]}"
    assert "resuming from a checkpoint that ended before the epoch ended" not in proc.stderr
    return proc


# --- train.py: 20 steps, checkpoints and evaluations at 10 and 20, 8 steps per data epoch ----
# Every feature of the shipped configs is on: metrics while training ([evaluation], with its
# token classifier cached beside the data that every run shares, as a user's runs do), EMA,
# dropout, guidance's label dropout, and each prior type; the compiled step where a compiler is.

SUNDAE_STEPS = 20
# Warm-up, then constant: --max-steps also sets the length of a cosine decay, so a first segment
# run with --max-steps 7 would rightly follow another schedule than the 20-step run.
SUNDAE_CONFIG = (TINY_CONFIG
                 .replace("    learning_rate = 3e-3\n", "    learning_rate = 3e-3\n    warmup_steps = 4\n")
                 .replace("    num_classes = 2\n", "    num_classes = 2\n    cond_drop_prob = 0.2\n"
                          "    attn_dropout = 0.1\n    ff_dropout = 0.1\n")
                 + "\n[evaluation]\n    every = 1\n    nb_samples = 12\n    batch_size = 8\n")


def prior_text(kind, compiled=False):
    """The tiny config as a `kind` prior, with every feature above."""
    text = SUNDAE_CONFIG
    if kind != "sundae":  # the sundae prior's own settings out, the prior's type in
        text = text.replace("unroll_steps = 2\n", "").replace("    min_steps = 2\n", "")
        text += f"\n[prior]\n    type = '{kind}'\n"
    if kind == "autoregressive":  # a causal vanilla stack; a grid takes h * w forwards
        text = (text.replace("    steps = 6\n", "").replace("type = 'hourglass'", "type = 'vanilla'")
                .replace("depth = [1, 1, 1]", "depth = 2"))
    if compiled:
        text = text.replace("[trainer]\n", "[trainer]\n    compile = true\n")
    return text


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory):
    return write_tiny_latents(tmp_path_factory.mktemp("resume-data") / "latents")


def prior_config(root, name, data, kind="sundae", compiled=False):
    path = root / f"{name}.toml"
    path.write_text(prior_text(kind, compiled).replace("exp_name = 'tiny'", f"exp_name = '{name}'")
                    .format(runs=root / "runs", data=data))
    return path, root / "runs" / name


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory, shared_data, single_thread):
    """{(kind, compiled): run directory} of uninterrupted runs, trained on first use."""
    runs = {}

    def get(kind, compiled=False):
        if (kind, compiled) not in runs:
            root = tmp_path_factory.mktemp(f"straight-{kind}-{compiled}")
            cfg, run_dir = prior_config(root, "straight", shared_data, kind, compiled)
            expect_ok(run_main("train.py", "--cfg-path", cfg, "--seed", 3))
            runs[kind, compiled] = run_dir
        return runs[kind, compiled]
    return get


def train_prior(cfg, *args, first=True):
    """train.py with --seed 3 on a first segment; a resume continues with the checkpoint's seed."""
    return expect_ok(run_main("train.py", "--cfg-path", cfg, *(("--seed", 3) if first else ()), *args))


def check_resumed_run(run_dir, straight, first_stop):
    last = run_dir / "checkpoints" / "last.ckpt"
    assert load(last)["state_dict"]["ema.n_averaged"].item() == SUNDAE_STEPS
    assert_same_training_state(last, straight / "checkpoints" / "last.ckpt")
    for step in (10, 20):  # the numbered checkpoints written after the first stop match too
        if step > first_stop:
            assert_same_training_state(run_dir / "checkpoints" / f"step-{step:07d}.ckpt",
                                       straight / "checkpoints" / f"step-{step:07d}.ckpt")
    # evaluations and sample-quality measurements at the same steps, none twice (logged at step - 1)
    for column in ("eval/loss", "eval/fd"):
        assert metric_steps(run_dir, column) == metric_steps(straight, column) == [9, 19], column


RESUMES = [("sundae", [3]), ("sundae", [7]), ("sundae", [13]), ("sundae", [5, 11]),
           ("absorbing", [7]), ("absorbing", [5, 13]), ("autoregressive", [13]), ("autoregressive", [6, 11])]


@pytest.mark.parametrize("kind, stops", RESUMES, ids=lambda x: "-".join(map(str, x)) if isinstance(x, list) else x)
def test_train_resumed_at_any_step_ends_identical(straight_runs, shared_data, tmp_path, kind, stops):
    cfg, run_dir = prior_config(tmp_path, "resumed", shared_data, kind)
    last = run_dir / "checkpoints" / "last.ckpt"
    train_prior(cfg, "--max-steps", stops[0])
    for stop in stops[1:]:
        assert load(last)["global_step"] < stop
        train_prior(cfg, "--max-steps", stop, "--resume", last, first=False)
    train_prior(cfg, "--resume", last, first=False)
    check_resumed_run(run_dir, straight_runs(kind), stops[0])


@pytest.mark.parametrize("kind", ["sundae", "absorbing", "autoregressive"])
def test_train_killed_between_checkpoints_resumes_identically(straight_runs, shared_data, tmp_path, kind):
    cfg, run_dir = prior_config(tmp_path, "killed", shared_data, kind)
    (tmp_path / "killer.py").write_text(KILLER)
    proc = run_script(tmp_path / "killer.py", REPO / "train.py", "--cfg-path", cfg, "--seed", 3,
                      env={**ONE_THREAD_ENV, "KILL_AT_STEP": "17"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert load(last)["global_step"] == 10  # the last numbered checkpoint
    train_prior(cfg, "--resume", last, first=False)
    check_resumed_run(run_dir, straight_runs(kind), 10)


def test_the_compiled_step_resumes_identically(straight_runs, shared_data, tmp_path):
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception:
        pytest.skip("this machine has no C++ compiler for torch.compile (the eager resumes are tested above)")
    cfg, run_dir = prior_config(tmp_path, "compiled", shared_data, compiled=True)
    train_prior(cfg, "--max-steps", 7)
    train_prior(cfg, "--resume", run_dir / "checkpoints" / "last.ckpt", first=False)
    check_resumed_run(run_dir, straight_runs("sundae", compiled=True), 7)


def test_a_resume_keeps_the_runs_seed_and_says_when_the_schedule_changes(shared_data, tmp_path):
    text = prior_text("sundae").replace("    warmup_steps = 4\n", "    warmup_steps = 4\n    lr_scheduler_name = 'cosine'\n")
    cfg = tmp_path / "cosine.toml"
    cfg.write_text(text.format(runs=tmp_path / "runs", data=shared_data))
    last = tmp_path / "runs" / "tiny" / "checkpoints" / "last.ckpt"
    train_prior(cfg, "--max-steps", 13)
    proc = run_main("train.py", "--cfg-path", cfg, "--resume", last, "--seed", 4)
    assert_user_error(proc, "--seed 4", "was trained with --seed 3", "leave --seed out")
    assert load(last)["global_step"] == 13  # refused before anything was written
    proc = train_prior(cfg, "--resume", last, "--max-steps", 16, "--seed", 3, first=False)
    assert "note: " in proc.stdout and "trained towards max_steps = 13" in proc.stdout
    assert "resumed with max_steps = 16: from here the cosine schedule decays towards step 16" in proc.stdout
    proc = train_prior(cfg, "--resume", last, "--max-steps", 16, first=False)  # the same schedule: nothing to say
    assert "trained towards max_steps" not in proc.stdout


# --- train-vqgan.py: 12 steps, checkpoints and evaluations at 6 and 12, code windows of 3 steps,
# discriminator from step 4, 4 steps per data epoch -------------------------------------------

VQGAN_STEPS = 12


@pytest.fixture(scope="module")
def vqgan_setup(tmp_path_factory, single_thread):
    root = tmp_path_factory.mktemp("vqgan-straight")
    images = smooth_images(root / "images", 20, 16)
    cfg = tiny_config()
    cfg["model"]["params"]["ddconfig"]["dropout"] = 0.1
    cfg = write_config(root / "tiny.yaml", cfg)
    straight = root / "straight"
    train_vqgan(cfg, images, straight)
    return cfg, images, straight


def train_vqgan(cfg, images, run_dir, *args):
    return expect_ok(run_main("train-vqgan.py", "--cfg-path", cfg, "--dataset", images,
                              "--run-dir", run_dir, "--seed", 1, *args))


@pytest.mark.parametrize("stops", [[2], [5], [6], [8], [3, 7]], ids=lambda s: "-".join(map(str, s)))
def test_vqgan_resumed_at_any_step_ends_identical(vqgan_setup, tmp_path, stops):
    cfg, images, straight = vqgan_setup
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    train_vqgan(cfg, images, run_dir, "--max-steps", stops[0])
    for stop in stops[1:]:
        train_vqgan(cfg, images, run_dir, "--max-steps", stop, "--resume", last)
    train_vqgan(cfg, images, run_dir, "--resume", last)

    assert load(last)["global_step"] == VQGAN_STEPS  # generator steps (step_uncounted)
    assert_same_training_state(last, straight / "checkpoints" / "last.ckpt")
    for step in (6, 12):
        if step > stops[0]:
            assert_same_training_state(run_dir / "checkpoints" / f"step-{step:07d}.ckpt",
                                       straight / "checkpoints" / f"step-{step:07d}.ckpt")
    assert metric_steps(run_dir, "eval/psnr") == metric_steps(straight, "eval/psnr") == [5, 11]
    assert metric_steps(run_dir, "train/codebook_usage") == [2, 5, 8, 11]


def test_vqgan_killed_between_checkpoints_resumes_identically(vqgan_setup, tmp_path):
    cfg, images, straight = vqgan_setup
    run_dir = tmp_path / "run"
    (tmp_path / "killer.py").write_text(KILLER)
    proc = run_script(tmp_path / "killer.py", REPO / "train-vqgan.py", "--cfg-path", cfg,
                      "--dataset", images, "--run-dir", run_dir, "--seed", 1,
                      env={**ONE_THREAD_ENV, "KILL_AT_STEP": "10"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert load(last)["global_step"] == 6
    train_vqgan(cfg, images, run_dir, "--resume", last)
    assert_same_training_state(last, straight / "checkpoints" / "last.ckpt")
