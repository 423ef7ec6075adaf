"""Bad inputs of train.py (and what it reads and writes): each is one `error:` line, exit status 2,
checked before the run directory is touched, so nothing is written, replaced or deleted. The
table has the shape of test_bad_inputs.py's; the cases that need a patched function, a real
process or a signal follow it."""
import argparse
import errno
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.helpers import (ONE_THREAD_ENV, REPO, TINY_CONFIG, assert_user_error, load_checkpoint, run_main,
                           write_tiny_latents)
from tests.scripts.test_bad_inputs import Case, assert_refused, edited, train

pytestmark = pytest.mark.usefixtures("single_thread")


def finished_run(c):
    """The tiny prior's finished run (checkpoints, config, logs, samples) copied into c.runs."""
    shutil.copytree(c.prior.run_dir, c.runs / "tiny")
    return c.runs / "tiny"


def batch_over_split_overwriting(c):
    finished_run(c)
    return train(c, edited(batch_size="5000"), "--overwrite")


def dataset_with(c, name, split="train", change=lambda labels: labels):
    """The tiny dataset with `split`'s labels replaced by change(labels)."""
    data = write_tiny_latents(c.root / name)
    path = data / f"{split}_labels.npy"
    np.save(path, change(np.load(path)))
    return train(c, data=data)


def empty_eval_split(c):
    data = write_tiny_latents(c.root / "empty")
    np.save(data / "eval_tokens.npy", np.zeros((0, 4, 4), np.int64))
    np.save(data / "eval_labels.npy", np.zeros(0, np.int64))
    return train(c, data=data)


def set_row(labels, row, value):
    labels = labels.copy()
    labels[row] = value
    return labels


def link_out_of_runs(c):
    (c.root / "elsewhere").mkdir()
    c.runs.mkdir()
    (c.runs / "link").symlink_to(c.root / "elsewhere")
    return train(c, edited(exp_name="'link/x'"))


def pickled_object(c):
    path = c.root / "objects.ckpt"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1)}, path)
    return train(c, TINY_CONFIG, "--resume", path)


CASES = {
    # a batch larger than the training split: refused before the run directory is claimed
    "batch-over-split": (lambda c: train(c, edited(batch_size="5000")),
                         "c.toml: trainer.batch_size = 5000: the training split has"),
    "batch-over-split-overwrite": (batch_over_split_overwriting, "trainer.batch_size = 5000: the training split"),
    # labels, checked when a split opens (both splits)
    "label-out-of-range": (lambda c: dataset_with(c, "l10", change=lambda y: set_row(y, 5, 2)),
                           "train_labels.npy: label 2 at row 5; expected integer class indices in [0, 2)"),
    "label-negative": (lambda c: dataset_with(c, "lneg", change=lambda y: set_row(y, 0, -1)),
                       "train_labels.npy: label -1 at row 0"),
    "label-float": (lambda c: dataset_with(c, "lfloat", change=lambda y: y + 0.5),
                    "train_labels.npy: float64 values; expected integer class indices in [0, 2)"),
    "eval-label-out-of-range": (lambda c: dataset_with(c, "leval", "eval", lambda y: set_row(y, 3, 7)),
                                "eval_labels.npy: label 7 at row 3"),
    # flags
    "nb-workers": (lambda c: train(c, TINY_CONFIG, "--nb-workers", -1),
                   "argument --nb-workers: expected an integer >= 0, got -1"),
    "nb-workers-word": (lambda c: train(c, TINY_CONFIG, "--nb-workers", "two"),
                        "argument --nb-workers: expected an integer >= 0, got 'two'"),
    # sizes beyond any machine's memory, refused from the settings before a model is built
    "depth-huge": (lambda c: train(c, edited(depth="[0, 100000000, 0]")), "c.toml: [net] is too large to train"),
    "heads-huge": (lambda c: train(c, edited(nb_heads="100000000")), "[net] is too large to train"),
    # settings that contradict each other
    "min-steps": (lambda c: train(c, edited(min_steps="7")),
                  "sampling.min_steps = 7 is more than sampling.steps = 6"),
    "warmup-over-max-steps": (lambda c: train(c, edited(trainer__warmup_steps="21")),
                              "trainer.warmup_steps = 21 is more than trainer.max_steps = 20"),
    # a run directory that leaves runs_dir through a symbolic link
    "exp-name-through-link": (link_out_of_runs, "trainer.exp_name = 'link/x'"),
    # float16 on the CPU, from the flag or from the config
    "fp16-cpu-flag": (lambda c: train(c, TINY_CONFIG, "--precision", "16-mixed", "--accelerator", "cpu"),
                      "--precision 16-mixed: float16 autocast needs a GPU; on the CPU use --precision bf16-mixed"),
    "fp16-cpu-config": (lambda c: train(c, edited(trainer__precision="'16-mixed'"), "--accelerator", "cpu"),
                        "c.toml: trainer.precision = '16-mixed': float16 autocast needs a GPU"),
    "empty-split": (empty_eval_split, "eval_tokens.npy: the 'eval' split is empty (0 rows)"),
    # checkpoints that are not ours, said plainly
    "resume-empty": (lambda c: train(c, TINY_CONFIG, "--resume", c.file("empty.ckpt")),
                     "empty.ckpt: empty file (0 bytes), not a checkpoint"),
    "resume-pickled-object": (pickled_object, "objects.ckpt: holds Python objects other than tensors and plain "
                                              "containers (argparse.Namespace); not loaded, for safety"),
    # usage mistakes
    "bogus-flag": (lambda c: train(c, TINY_CONFIG, "--bogus"), "unrecognized arguments: --bogus"),
    "no-config-flag": (lambda c: ["train.py"], "the following arguments are required: --cfg-path"),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_training_input_is_one_line_exit_2_and_writes_nothing(name, tmp_path, tiny_prior):
    proc = assert_refused(Case(tmp_path, tiny_prior), *CASES[name])
    assert "weights_only" not in proc.stderr  # torch's advice to load unsafely is never echoed


# --- sizes that a 16 GiB machine cannot train, refused at once ----------------------------------

@pytest.mark.parametrize("change, parameters", [(dict(depth="[0, 1000000, 0]"), "12,"),
                                                (dict(nb_heads="100000"), "1,")])
def test_a_config_too_large_for_memory_is_refused_at_once_with_the_estimate_and_the_limit(
        tmp_path, tiny_prior, monkeypatch, change, parameters):
    monkeypatch.setattr("training.memory.memory_bytes", lambda: 16 * 2**30)
    c = Case(tmp_path, tiny_prior)
    proc = run_main(*train(c, edited(**change)))
    assert_user_error(proc, "c.toml: [net] is too large to train with trainer.batch_size = 8: a step needs at least",
                      f"({parameters}", "more than this machine's 16.0 GiB")
    assert not c.runs.exists()  # no run directory, so no .lock either


# --- SIGTERM -------------------------------------------------------------------------------------

def test_sigterm_saves_says_where_and_exits_143(tmp_path):
    c = Case(tmp_path, None)
    cfg = c.config(edited(max_steps="100000", eval_frequency="100000", checkpoint_frequency="2"))
    checkpoints = c.runs / "tiny" / "checkpoints"
    env = {**os.environ, **ONE_THREAD_ENV, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), "--cfg-path", str(cfg)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (checkpoints / "step-0000002.ckpt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no first checkpoint"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if "SIGTERM at step" in line]
    assert len(lines) == 1, stderr[-3000:]
    step = load_checkpoint(checkpoints / "last.ckpt")["global_step"]
    assert step >= 2  # saved at the step it stopped, a resume loses nothing
    assert lines[0] == (f"training stopped by SIGTERM at step {step}; the last checkpoint is "
                        f"{checkpoints / 'last.ckpt'} (step {step})")
    assert not (c.runs / "tiny" / ".lock").exists()


@pytest.mark.parametrize("sigterm, world_size, saved", [(True, 1, True), (False, 1, False), (True, 2, False)])
def test_the_batch_during_which_sigterm_arrived_is_saved_in_a_one_process_run(tmp_path, sigterm, world_size, saved):
    from types import SimpleNamespace

    from infra.runs import LastCheckpoint

    writes = []
    trainer = SimpleNamespace(global_step=7, max_steps=100, received_sigterm=sigterm, world_size=world_size,
                              save_checkpoint=writes.append)
    last = LastCheckpoint(tmp_path / "last.ckpt", every_n_steps=5)  # step 7: no regular save
    last.on_train_batch_end(trainer, None, None, None, 0)
    assert writes == ([tmp_path / "last.ckpt"] if saved else [])
    assert last.saved_step == (7 if saved else None)


# --- a full disk during a checkpoint save ------------------------------------------------------

def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_previous_checkpoint_survives(tmp_path, tiny_prior,
                                                                                      monkeypatch):
    c = Case(tmp_path, tiny_prior)
    cfg = c.config()
    real_save, saves = torch.save, []

    def fill_the_disk_at_the_third_save(obj, f, *args, **kwargs):  # last.ckpt, step 10, then last.ckpt of step 20
        saves.append(obj.get("global_step"))
        if len(saves) == 3:
            f.write(b"the first bytes")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fill_the_disk_at_the_third_save)
    proc = run_main("train.py", "--cfg-path", cfg)
    monkeypatch.undo()
    last = c.runs / "tiny" / "checkpoints" / "last.ckpt"
    assert_user_error(proc, f"{last}: could not be written (no space left on device); any earlier version is left")
    assert saves == [10, 10, 20]
    assert load_checkpoint(last)["global_step"] == 10
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt", "step-0000010.ckpt"]  # no temp file
    assert not (c.runs / "tiny" / ".lock").exists()


def test_torchs_zip_writer_failure_on_a_full_disk_says_no_space(tmp_path, monkeypatch):
    from infra.errors import UserError
    from infra.runs import AtomicCheckpointIO

    def zip_writer_fails(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing "
                           "file data/0: file write failed")

    monkeypatch.setattr(torch, "save", zip_writer_fails)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(UserError, match=r"last.ckpt: could not be written \(no space left on device\)"):
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(2)}, tmp_path / "last.ckpt")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 0, 10**9))
    with pytest.raises(UserError, match=r"could not be written \(\[enforce fail"):  # space left: torch's words
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(2)}, tmp_path / "last.ckpt")
    assert os.listdir(tmp_path) == []


# --- a usage mistake is answered before torch or Lightning is imported -----------------------

@pytest.mark.parametrize("args", [["--cfg-path", "config/digits.toml", "--bogus"], []], ids=["bogus-flag", "no-flag"])
def test_usage_mistakes_import_neither_torch_nor_lightning(args):
    proc = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "train.py"), *args], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    imported = {line.rpartition("|")[2].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "argparse" in imported  # the listing is there
    assert not {name for name in imported if name.split(".")[0] in ("torch", "pytorch_lightning", "lightning")}
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
