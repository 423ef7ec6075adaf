"""Every bad input a user can give the scripts, in one table: each must end with exit status 2,
a single `error:` line naming the offending file, key or value, and no output file created or
changed. The scripts' `main` runs in this interpreter (run_main) on tiny inputs, so the table is
cheap to grow: add a row for every new mistake that gets handled."""
import os
from pathlib import Path

import numpy as np
import pytest

from infra.runs import RunDirLock
from tests.helpers import TINY_CONFIG, assert_user_error, run_main, write_bomb, write_tiny_latents

pytestmark = pytest.mark.usefixtures("single_thread")


def edited(**changes):
    """TINY_CONFIG with `key = value` lines replaced (or added to the section named section__key)."""
    text = TINY_CONFIG
    for key, value in changes.items():
        section, _, name = key.rpartition("__")
        lines = text.splitlines()
        at = next((i for i, line in enumerate(lines) if line.strip().startswith(f"{name} =")), None)
        if at is not None:
            lines[at] = f"    {name} = {value}"
        else:
            header = lines.index(f"[{section}]")
            lines.insert(header + 1, f"    {name} = {value}")
        text = "\n".join(lines) + "\n"
    return text


class Case:
    """A world in tmp_path (the tiny dataset, a config, files) and the command to run in it."""

    def __init__(self, tmp_path, tiny_prior):
        self.root, self.prior = tmp_path, tiny_prior
        self.releases = []  # what a row holds while the script runs (a lock, a socket): undone after
        self.ignored = set()  # files under root that holding it makes (a lock file), not compared
        self.data = write_tiny_latents(tmp_path / "latents")
        self.runs = tmp_path / "runs"

    def config(self, text=TINY_CONFIG, name="c.toml", data=None):
        path = self.root / name
        path.write_text(text.format(runs=self.runs, data=data or self.data))
        return path

    def file(self, name, content=b""):
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path

    def sample(self, *args):
        return ["sample.py", "--cfg-path", self.prior.cfg, "--resume", self.prior.last,
                "--out-dir", self.root / "samples", *args]

    def inpaint(self, *args):
        return ["inpaint.py", "--cfg-path", self.prior.cfg, "--resume", self.prior.last,
                "--out-dir", self.root / "inpainting", *args]


def train(c, text=TINY_CONFIG, *args, **kwargs):
    return ["train.py", "--cfg-path", c.config(text, **kwargs), *args]


def truncated_tokens(c):
    data = write_tiny_latents(c.root / "broken")
    tokens = data / "train_tokens.npy"
    tokens.write_bytes(tokens.read_bytes()[:100])
    return train(c, data=data)


def short_labels(c):
    data = write_tiny_latents(c.root / "short")
    np.save(data / "train_labels.npy", np.zeros(10, dtype=np.int64))
    return train(c, data=data)


def unlabelled(c):
    return train(c, data=write_tiny_latents(c.root / "unlabelled", classes=0))


def out_of_vocabulary(c):
    data = write_tiny_latents(c.root / "oov")
    tokens = np.load(data / "train_tokens.npy")
    tokens[3, 1, 1] = 9
    np.save(data / "train_tokens.npy", tokens)
    return train(c, data=data)


def run_dir_in_use(c):
    (c.runs / "tiny").mkdir(parents=True)
    lock = RunDirLock(c.runs / "tiny").__enter__()
    c.releases.append(lambda: lock.__exit__(None, None, None))
    c.ignored.add("runs/tiny/.lock")
    return train(c)


def bomb(c):
    return c.inpaint(write_bomb(c.root / "bomb.png"), "--block", 0, 0, 2, 2)


CASES = {
    # --- train.py: config values, checked where they are read ------------------------------
    "lr-inf": (lambda c: train(c, edited(learning_rate="inf")),
               "trainer.learning_rate: expected a finite float > 0, got inf"),
    "lr-zero": (lambda c: train(c, edited(learning_rate="0.0")), "trainer.learning_rate: expected float > 0"),
    "betas": (lambda c: train(c, edited(trainer__betas="[0.9, 1.0]")), "trainer.betas[1]: expected float in [0, 1)"),
    "betas-one": (lambda c: train(c, edited(trainer__betas="[0.9]")), "trainer.betas: expected list"),
    "dropout": (lambda c: train(c, edited(net__attn_dropout="1.0")), "net.attn_dropout: expected float in [0, 1)"),
    "ff-dropout": (lambda c: train(c, edited(net__ff_dropout="-0.1")), "net.ff_dropout"),
    "warmup": (lambda c: train(c, edited(trainer__warmup_steps="-1")), "trainer.warmup_steps: expected int >= 0"),
    "min-lr-ratio": (lambda c: train(c, edited(trainer__min_lr_ratio="1.5")), "trainer.min_lr_ratio: expected float in [0, 1]"),
    "grad-clip": (lambda c: train(c, edited(trainer__grad_clip="-1.0")), "trainer.grad_clip: expected float >= 0"),
    "dim-head": (lambda c: train(c, edited(net__dim_head="0")), "net.dim_head: expected int >= 1, got 0"),
    "weight-decay": (lambda c: train(c, edited(trainer__weight_decay="nan")), "trainer.weight_decay: expected a finite"),
    "eval-batches": (lambda c: train(c, edited(eval_batches="-1")), "trainer.eval_batches: expected int >= 0"),
    "nb-batches": (lambda c: train(c, edited(trainer__nb_batches="[10, -1]")), "trainer.nb_batches[1]"),
    "huge-int": (lambda c: train(c, edited(max_steps=str(2**70))), "trainer.max_steps: expected an integer that fits in 64 bits"),
    "too-large": (lambda c: train(c, edited(dim="4000000")), "[net] is too large"),
    "unknown-key": (lambda c: train(c, edited(trainer__learning_rat="1e-3")), "unknown key 'trainer.learning_rat'"),
    "wrong-type": (lambda c: train(c, edited(batch_size="'8'")), "trainer.batch_size: expected int, got '8'"),
    "ema": (lambda c: train(c, edited(ema_decay="1.0")), "trainer.ema_decay: expected float in [0, 1)"),
    "unroll": (lambda c: train(c, edited(unroll_steps="0")), "unroll_steps: expected int >= 1"),
    "escape-dotdot": (lambda c: train(c, edited(exp_name="'../escaped'")), "trainer.exp_name"),
    "escape-absolute": (lambda c: train(c, edited(exp_name="'/tmp/escaped'")), "trainer.exp_name"),
    "bad-toml": (lambda c: train(c, "[trainer\n"), "invalid TOML"),
    "missing-config": (lambda c: ["train.py", "--cfg-path", c.root / "nope.toml"], "nope.toml: config file not found"),
    # --- train.py: flags, datasets, outputs -----------------------------------------------------
    "max-steps-flag": (lambda c: train(c, TINY_CONFIG, "--max-steps", 0), "trainer.max_steps: expected int >= 1, got 0"),
    "devices-flag": (lambda c: train(c, TINY_CONFIG, "--devices", "many"), "--devices 'many'"),
    "unknown-flag": (lambda c: train(c, TINY_CONFIG, "--learning-rate", 1), "unrecognized arguments: --learning-rate"),
    "truncated-tokens": (truncated_tokens, "train_tokens.npy: unreadable"),
    "short-labels": (short_labels, "train_labels.npy: 10 labels for 64 rows"),
    "unlabelled": (unlabelled, "net.conditional = true but"),
    "oov-tokens": (out_of_vocabulary, "train_tokens.npy: token values in [0, 9], outside the codebook [0, 5)"),
    "missing-dataset": (lambda c: train(c, data=c.root / "nothing"), "nothing: not a latent dataset"),
    "runs-dir-is-a-file": (lambda c: c.file("runs") and train(c), "runs/tiny: run directory cannot be made"),
    "run-in-use": (run_dir_in_use, "runs/tiny: in use by another run (pid"),
    "resume-missing": (lambda c: train(c, TINY_CONFIG, "--resume", c.root / "nope.ckpt"), "nope.ckpt: checkpoint not found"),
    "resume-garbage": (lambda c: train(c, TINY_CONFIG, "--resume", c.file("junk.ckpt", b"junk")), "junk.ckpt: not a readable checkpoint"),
    "resume-other-net": (lambda c: train(c, edited(dim="48"), "--resume", c.prior.last), "net.dim = 32, but"),
    # --- sample.py ----------------------------------------------------------------------------------
    "device-bogus": (lambda c: c.sample("--device", "bogus"), "--device 'bogus': not a device"),
    "device-cuda": (lambda c: c.sample("--device", "cuda"), "--device 'cuda': CUDA is not available"),
    "vqgan-device": (lambda c: c.sample("--vqgan-device", "gpu9"), "--device 'gpu9'"),
    "latents-under-file": (lambda c: c.file("f") and c.sample("--save-latents", c.root / "f" / "x.npy"),
                           "f: directory of the --save-latents file is a file"),
    "latents-is-dir": (lambda c: c.sample("--save-latents", c.root), "--save-latents file is a directory"),
    "grid-is-dir": (lambda c: c.sample("--grid", c.root), "--grid file is a directory"),
    "grid-under-file": (lambda c: c.file("g") and c.sample("--grid", c.root / "g" / "grid.png"), "g: directory of the --grid file"),
    "out-dir-is-file": (lambda c: c.file("samples") and c.sample(), "samples: --out-dir is a file"),
    "nb-samples": (lambda c: c.sample("--nb-samples", 0), "--nb-samples must be >= 1"),
    "batch-size": (lambda c: c.sample("--batch-size", 0), "--batch-size must be >= 1"),
    "class-idx": (lambda c: c.sample("--class-idx", 7), "--class-idx 7: out of range"),
    "temperature": (lambda c: c.sample("--temperature", 0), "--temperature: expected float > 0"),
    "proportion": (lambda c: c.sample("--sample-proportion", 2), "--sample-proportion: expected float in (0, 1]"),
    "steps-flag": (lambda c: c.sample("--steps", "many"), "argument --steps: invalid int value: 'many'"),
    "guidance-untrained": (lambda c: c.sample("--guidance-scale", 2), "needs a class-conditional prior trained with "
                                                                      "net.cond_drop_prob > 0"),
    "prior-flag-of-another-type": (lambda c: c.sample("--top-k", 5), "--top-k: a sampling setting of autoregressive priors"),
    # --- inpaint.py -----------------------------------------------------------------------------------
    "bomb": (bomb, "bomb.png: unreadable image"),
    "mask-size": (lambda c: c.inpaint("--dataset-rows", 0, "--mask", Path(__file__).parents[2] / "docs" / "digits-samples.png"),
                  "mask is"),
    "row-range": (lambda c: c.inpaint("--dataset-rows", 999, "--block", 0, 0, 2, 2), "--dataset-rows 999: out of range"),
    "block-outside": (lambda c: c.inpaint("--dataset-rows", 0, "--block", 3, 3, 4, 4), "must lie inside the 4x4 grid"),
    "no-input": (lambda c: c.inpaint("--block", 0, 0, 2, 2), "give an image file or directory, or --dataset-rows"),
    # --- generate-discrete-mnist.py -------------------------------------------------------------------
    "dataset-out-is-file": (lambda c: ["generate-discrete-mnist.py", "digits", c.file("digits-out", b"x")],
                            "digits-out: exists and is not a directory"),
    "dataset-under-file": (lambda c: c.file("p") and ["generate-discrete-mnist.py", "digits", c.root / "p" / "d"],
                           "p: output directory is a file"),
    "eval-fraction": (lambda c: ["generate-discrete-mnist.py", "digits", c.root / "d", "--eval-fraction", "1.0"],
                      "too few to split"),
}


def snapshot(root):
    """Every file under root with its size and modification time (directories as such)."""
    return {str(p.relative_to(root)): (p.is_dir(), None if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns))
            for p in sorted(root.rglob("*"))}


def assert_refused(case, make, *fragments):
    """Run the command `make(case)` builds: exit status 2, one `error:` line with `fragments`, and
    no file under case.root (but case.ignored) nor under the shared tiny prior created or changed.
    Returns the CompletedProcess. The one runner of every bad-input table."""
    argv = make(case)
    before, prior_before = snapshot(case.root), snapshot(case.prior.root)
    try:
        proc = run_main(*argv)
    finally:
        for release in case.releases:
            release()
    assert_user_error(proc, *fragments)
    after = snapshot(case.root)
    for path in case.ignored:
        before.pop(path, None), after.pop(path, None)
    assert after == before, f"outputs changed: {set(after.items()) ^ set(before.items())}"
    assert snapshot(case.prior.root) == prior_before
    return proc


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(name, tmp_path, tiny_prior):
    assert_refused(Case(tmp_path, tiny_prior), *CASES[name])
    assert os.getcwd()  # the interpreter is still usable
