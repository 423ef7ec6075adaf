"""train.py end to end on a tiny dataset: learning, checkpoints, resume, DDP; and sample.py on its
checkpoint. Most runs go through `run_main` (the scripts' own main and error handling, in this
interpreter); the ones that must be real processes use `run_script`."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from infra.errors import UserError
from infra.images import to_unit
from infra.runs import AtomicCheckpointIO
from latents.render import tokens_to_gray
from tests.helpers import (ONE_THREAD_ENV, REPO, TINY_CONFIG, assert_user_error, metrics, run_main, run_script,
                           write_tiny_config)
from tests.helpers import load_checkpoint as load
from training.checkpoint import load_denoiser
from training.config import load_config

pytestmark = pytest.mark.usefixtures("single_thread")


def expect_ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstderr:\n{proc.stderr[-4000:]}"
    return proc


def renamed(text, exp_name):
    return text.replace("exp_name = 'tiny'", f"exp_name = '{exp_name}'")


# --- the run directory -----------------------------------------------------------------------

def test_numbered_checkpoints_every_checkpoint_frequency_plus_last(tiny_prior):
    names = sorted(p.name for p in tiny_prior.checkpoints.iterdir())
    assert names == ["last.ckpt", "step-0000010.ckpt", "step-0000020.ckpt"]
    for name, step in (("step-0000010.ckpt", 10), ("step-0000020.ckpt", 20), ("last.ckpt", 20)):
        ckpt = load(tiny_prior.checkpoints / name)
        assert ckpt["global_step"] == step
        # the EMA in a checkpoint has seen every optimiser step of its model
        assert ckpt["state_dict"]["ema.n_averaged"].item() == step
        assert ckpt["hyper_parameters"]["seed"] == 3 and "rng_states" in ckpt
        assert ckpt["optimizer_states"] and ckpt["lr_schedulers"][0]["last_epoch"] == step
    assert not list(tiny_prior.checkpoints.glob(".*"))  # no temporary files left by atomic writes


def test_run_dir_holds_a_copy_of_the_config(tiny_prior):
    assert (tiny_prior.run_dir / "config.toml").read_bytes() == tiny_prior.cfg.read_bytes()


def test_each_eval_logs_eval_loss_and_saves_a_sample_grid(tiny_prior):
    assert [step for step, _ in metrics(tiny_prior.run_dir, "eval/loss")] == [9, 19]  # after steps 10, 20
    assert all(0 < loss < math.log(5) + 0.5 for _, loss in metrics(tiny_prior.run_dir, "eval/loss"))
    assert len(metrics(tiny_prior.run_dir, "eval/ema_accuracy")) == 2
    grids = sorted(p.name for p in (tiny_prior.run_dir / "samples").iterdir())
    assert grids == ["step-0000010.png", "step-0000020.png"]
    with Image.open(tiny_prior.run_dir / "samples" / grids[-1]) as image:
        # 4 samples in a 2 x 2 grid of 16 x 16 gray renders (4 x 4 tokens, scale 4), 2 px padding
        assert image.size == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2)


def test_sampling_weights_are_the_ema(tiny_prior):
    cfg = load_config(tiny_prior.cfg)
    state = load(tiny_prior.last)["state_dict"]
    model = load_denoiser(tiny_prior.last, cfg)
    name, weight = next(iter(model.state_dict().items()))
    assert torch.equal(weight, state[f"ema.module.{name}"])
    assert not torch.equal(state[f"ema.module.{name}"], state[f"model.{name}"])


def test_existing_run_dir_with_checkpoints_is_refused(tiny_prior):
    before = {p.name: p.stat().st_mtime_ns for p in tiny_prior.checkpoints.iterdir()}
    proc = run_main("train.py", "--cfg-path", tiny_prior.cfg, "--seed", 3)
    assert_user_error(proc, str(tiny_prior.checkpoints), "--resume", "--overwrite")
    assert {p.name: p.stat().st_mtime_ns for p in tiny_prior.checkpoints.iterdir()} == before


def test_no_save_writes_no_checkpoints(tmp_path):
    cfg = write_tiny_config(tmp_path, renamed(TINY_CONFIG, "nosave"))
    expect_ok(run_main("train.py", "--cfg-path", cfg, "--max-steps", 3, "--no-save"))
    run_dir = tmp_path / "runs" / "nosave"
    assert (run_dir / "logs" / "version_0" / "metrics.csv").is_file()
    assert not list(run_dir.rglob("*.ckpt")) and not (run_dir / "checkpoints").exists()


def test_last_checkpoint_is_the_final_step_and_overwrite_starts_over(tmp_path):
    """max_steps 7 is no multiple of checkpoint_frequency 10: last.ckpt must still be step 7,
    and --overwrite must replace it, not write last-v1.ckpt beside it."""
    cfg = write_tiny_config(tmp_path, renamed(TINY_CONFIG, "odd"))
    ckpts = tmp_path / "runs" / "odd" / "checkpoints"
    for steps in (7, 3):
        expect_ok(run_main("train.py", "--cfg-path", cfg, "--max-steps", steps, "--overwrite"))
        assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt"]
        assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == steps


# --- learning and resuming ------------------------------------------------------------------

@pytest.mark.slow
def test_tiny_model_overfits_tiny_dataset(tmp_path):
    # Each class of the tiny dataset is one fixed 4x4 pattern (5% noise): a conditional model can
    # learn to restore it from any corruption. The loss starts at ~log(5) = 1.61.
    text = (renamed(TINY_CONFIG, "overfit").replace("max_steps = 20", "max_steps = 100")
            .replace("eval_frequency = 10", "eval_frequency = 100"))
    cfg = write_tiny_config(tmp_path, text)
    expect_ok(run_main("train.py", "--cfg-path", cfg, "--no-save"))
    run_dir = tmp_path / "runs" / "overfit"
    loss = [value for _, value in metrics(run_dir, "train/loss")]
    accuracy = [value for _, value in metrics(run_dir, "train/accuracy")]
    assert len(loss) == 100
    first, last = np.mean(loss[:5]), np.mean(loss[-10:])
    assert first > 1.2 and last < 0.3 * first, (first, last)
    assert np.mean(accuracy[:5]) < 0.5 and np.mean(accuracy[-10:]) > 0.85
    [(_, eval_loss)] = metrics(run_dir, "eval/loss")
    assert eval_loss < 0.3 * first  # the held-out rows follow the same patterns


@pytest.mark.slow
def test_resume_continues_identically(tiny_prior, tmp_path):
    # The tiny run did 20 steps straight; here 10 steps, stop, then --resume for the other 10.
    # Batches cross epoch boundaries (64 rows / 8 = 8 steps per epoch) and an eval at step 10.
    cfg = tmp_path / "half.toml"
    cfg.write_text(renamed(tiny_prior.cfg.read_text(), "half"))
    expect_ok(run_main("train.py", "--cfg-path", cfg, "--seed", 3, "--max-steps", 10))
    checkpoints = tiny_prior.root / "runs" / "half" / "checkpoints"
    assert load(checkpoints / "last.ckpt")["global_step"] == 10
    expect_ok(run_main("train.py", "--cfg-path", cfg, "--seed", 3, "--resume", checkpoints / "last.ckpt"))

    straight, resumed = load(tiny_prior.last), load(checkpoints / "last.ckpt")
    assert resumed["global_step"] == 20
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    assert any(k.startswith("ema.module.") for k in straight["state_dict"])
    for key, value in straight["state_dict"].items():  # model and EMA weights, EMA count
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)
    for key, value in straight["optimizer_states"][0]["state"].items():
        torch.testing.assert_close(resumed["optimizer_states"][0]["state"][key], value, rtol=0, atol=1e-6)
    assert resumed["lr_schedulers"] == straight["lr_schedulers"]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt", "step-0000010.ckpt",
                                                             "step-0000020.ckpt"]


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"),
                                     RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos")])
def test_interrupted_checkpoint_write_leaves_the_previous_one_intact(tmp_path, monkeypatch, failure):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "w": torch.arange(4.0)}, path)
    before = path.read_bytes()

    def save_then_fail(obj, f, *args, **kwargs):
        f.write(b"the first bytes of a checkpoint")
        f.flush()
        raise failure  # a full disk, as the OS or as torch's zip writer reports it

    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(UserError, match=r"last.ckpt: could not be written \(.*\); any earlier version is left"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(4)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.ckpt"]  # the partial temporary file is gone
    assert load(path)["global_step"] == 1

    io.save_checkpoint({"global_step": 2, "w": torch.zeros(4)}, path)  # and a good write replaces it
    assert load(path)["global_step"] == 2 and os.listdir(tmp_path) == ["last.ckpt"]


@pytest.mark.slow
def test_two_process_cpu_ddp(tmp_path):
    cfg = write_tiny_config(tmp_path, renamed(TINY_CONFIG, "ddp"))
    proc = run_script("train.py", "--cfg-path", cfg, "--devices", 2, "--accelerator", "cpu",
                      "--max-steps", 4, env=ONE_THREAD_ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    output = proc.stdout + proc.stderr
    assert "MEMBER: 2/2" in output and "gloo" in output
    ckpt = load(tmp_path / "runs" / "ddp" / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4 and ckpt["state_dict"]["ema.n_averaged"].item() == 4


# --- sample.py on the tiny run's checkpoint -------------------------------------------------

def sample_cli(run, *args):
    return run_main("sample.py", "--cfg-path", run.cfg, "--resume", run.last, "--device", "cpu",
                    "--no-progress", *args)


def png_pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def gray_render(tokens, vocab_size):
    """(h, w) tokens -> the (H, W, 3) uint8 pixels sample.py writes for them with no VQ-GAN."""
    image = to_unit(tokens_to_gray(torch.as_tensor(tokens[None], dtype=torch.long), vocab_size))[0]
    return (image * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.mark.slow
def test_bulk_sampling_saves_the_rendered_latents_and_resumes_without_overwriting(tiny_prior, tmp_path):
    out = tmp_path / "samples"
    files = [out / f"sample-{i:06d}.png" for i in range(6)]
    expect_ok(sample_cli(tiny_prior, "--nb-samples", 6, "--batch-size", 2, "--out-dir", out,
                         "--save-latents", tmp_path / "latents.npy"))
    latents = np.load(tmp_path / "latents.npy")
    assert latents.shape == (6, 4, 4) and latents.dtype == np.uint16 and latents.max() < 5
    assert all(p.is_file() for p in files) and not (tmp_path / "latents.npy.partial").exists()
    for path, grid in zip(files, latents):
        np.testing.assert_array_equal(png_pixels(path), gray_render(grid, 5))

    # Interrupt: batch 1 (samples 2, 3) lost entirely, batch 2 half written (sample 5 missing).
    first_bytes = {p: p.read_bytes() for p in files}
    for p in files:
        os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    for i in (2, 3, 5):
        files[i].unlink()
    proc = expect_ok(sample_cli(tiny_prior, "--nb-samples", 6, "--batch-size", 2, "--out-dir", out,
                                "--save-latents", tmp_path / "again.npy"))
    assert all(p.read_bytes() == first_bytes[p] for p in files)  # re-created identically
    assert [files[i].stat().st_mtime_ns == 1_000_000_000 for i in range(6)] == \
        [True, True, False, False, True, False]  # and the surviving files never rewritten
    np.testing.assert_array_equal(np.load(tmp_path / "again.npy"), latents)
    assert '"written_now": 3' in (out / "summary.json").read_text(), proc.stdout

    proc = expect_ok(sample_cli(tiny_prior, "--nb-samples", 6, "--batch-size", 2, "--out-dir", out))
    assert "nothing to do" in proc.stdout


def test_sample_missing_checkpoint_exits_2(tiny_prior, tmp_path):
    proc = run_script("sample.py", "--cfg-path", tiny_prior.cfg, "--resume", tmp_path / "missing.ckpt",
                      "--out-dir", tmp_path / "out", env=ONE_THREAD_ENV)
    assert_user_error(proc, "missing.ckpt", "not found")


def test_sample_checkpoint_of_another_config_exits_2(tiny_prior, tmp_path):
    other = tmp_path / "wider.toml"
    other.write_text(tiny_prior.cfg.read_text().replace("dim = 32", "dim = 48"))
    proc = run_main("sample.py", "--cfg-path", other, "--resume", tiny_prior.last, "--out-dir", tmp_path / "out")
    assert_user_error(proc, "last.ckpt", "net.dim = 32", "wider.toml has 48")


def test_sample_class_index_out_of_range_exits_2(tiny_prior, tmp_path):
    proc = sample_cli(tiny_prior, "--class-idx", 2, "--out-dir", tmp_path / "out")
    assert_user_error(proc, "--class-idx 2", "0..1")
    assert not (tmp_path / "out").exists()


def test_sample_output_dir_that_cannot_be_made_exits_2(tiny_prior, tmp_path):
    (tmp_path / "a-file").write_text("")
    proc = sample_cli(tiny_prior, "--out-dir", tmp_path / "a-file" / "samples")
    assert_user_error(proc, "a-file/samples: --out-dir cannot be made, a parent is a file")


def test_sample_bad_count_exits_2(tiny_prior, tmp_path):
    assert_user_error(sample_cli(tiny_prior, "--nb-samples", 0, "--out-dir", tmp_path), "--nb-samples must be >= 1")


def test_a_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    text = renamed(TINY_CONFIG, "diverge").replace("learning_rate = 3e-3", "learning_rate = 1e30") \
        .replace("checkpoint_frequency = 10", "checkpoint_frequency = 1").replace("ema_decay = 0.9", "ema_decay = 0.0")
    cfg = write_tiny_config(tmp_path, text)
    proc = run_main("train.py", "--cfg-path", cfg)
    assert_user_error(proc, "the training loss is", "not finite", "no checkpoint of it was written")
    step = int(proc.stderr.split("error: step ")[1].split(":")[0])
    checkpoints = tmp_path / "runs" / "diverge" / "checkpoints"
    last = load(checkpoints / "last.ckpt")
    assert 1 <= last["global_step"] < step
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values() if t.is_floating_point())
    assert sorted(p.name for p in checkpoints.glob("step-*")) == [f"step-{s:07d}.ckpt" for s in range(1, step)]


@pytest.mark.slow
def test_torchrun_writes_the_samples_of_one_process_and_resumes(tiny_prior, tmp_path):
    """2 CPU processes (gloo) write the same PNGs, grids and npz as one process for the same seed
    and global indices, with one merged summary; a torchrun re-run completes a damaged set."""
    common = ["--cfg-path", tiny_prior.cfg, "--resume", tiny_prior.last, "--nb-samples", 10,
              "--batch-size", 3, "--seed", 4, "--count-offset", 5, "--no-progress"]
    expect_ok(run_main("sample.py", *common, "--out-dir", tmp_path / "one", "--npz", tmp_path / "one.npz",
                       "--save-latents", tmp_path / "one.npy"))

    def torchrun():
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               str(REPO / "sample.py"), *map(str, common), "--out-dir", str(tmp_path / "two"),
                               "--npz", str(tmp_path / "two.npz"), "--save-latents", str(tmp_path / "two.npy")],
                              env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return proc

    proc = torchrun()
    names = [f"sample-{i:06d}.png" for i in range(5, 15)]
    assert sorted(p.name for p in (tmp_path / "two").glob("*.png")) == names
    for name in names:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    np.testing.assert_array_equal(np.load(tmp_path / "two.npy"), np.load(tmp_path / "one.npy"))
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    np.testing.assert_array_equal(two["arr_0"], one["arr_0"])
    np.testing.assert_array_equal(two["arr_1"], one["arr_1"])
    assert two["arr_0"].shape == (10, 16, 16, 3) and two["arr_0"].dtype == np.uint8
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["sampled_now"] == 10 and sum(summary["steps_histogram"].values()) == 10
    assert proc.stdout.count("wrote") == 3  # rank 0 alone reports (npz, grids, folder)

    # resume under torchrun: a lost PNG of each process's batches, and the grids file not yet made
    for name in ("sample-000005.png", "sample-000009.png"):
        (tmp_path / "two" / name).unlink()
    (tmp_path / "two.npy").unlink()
    (tmp_path / "two.npz").unlink()
    torchrun()
    for name in names:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    np.testing.assert_array_equal(np.load(tmp_path / "two.npy"), np.load(tmp_path / "one.npy"))
    np.testing.assert_array_equal(np.load(tmp_path / "two.npz")["arr_0"], one["arr_0"])


def test_npz_labels_are_the_classes_the_samples_were_drawn_for(tiny_prior, tmp_path):
    expect_ok(run_main("sample.py", "--cfg-path", tiny_prior.cfg, "--resume", tiny_prior.last, "--nb-samples", 6,
                       "--batch-size", 4, "--class-idx", 1, "--out-dir", tmp_path / "s", "--npz", tmp_path / "s.npz",
                       "--no-progress"))
    with np.load(tmp_path / "s.npz") as data:
        assert sorted(data.files) == ["arr_0", "arr_1"] and data["arr_1"].tolist() == [1] * 6
        first = np.asarray(Image.open(tmp_path / "s" / "sample-000000.png").convert("RGB"))
        np.testing.assert_array_equal(data["arr_0"][0], first)


def test_evaluation_section_logs_sample_quality_while_training(tmp_path):
    text = renamed(TINY_CONFIG, "quality") + "\n[evaluation]\n    every = 2\n    nb_samples = 12\n    batch_size = 8\n"
    cfg = write_tiny_config(tmp_path, text)
    proc = expect_ok(run_main("train.py", "--cfg-path", cfg))
    run_dir = tmp_path / "runs" / "quality"
    for column in ("eval/fd", "eval/precision", "eval/recall", "eval/coverage", "eval/cond_accuracy", "eval/mean_steps"):
        assert [step for step, _ in metrics(run_dir, column)] == [19], column  # evaluations 1, 2: only the 2nd
    assert all(0 <= v <= 1 for _, v in metrics(run_dir, "eval/cond_accuracy"))
    assert 2 <= metrics(run_dir, "eval/mean_steps")[0][1] <= 6  # min_steps 2, steps 6
    assert "step 20: fd " in proc.stdout
    cached = sorted((tmp_path / "latents").glob("evaluation-classifier-*.pt"))
    assert len(cached) == 1  # trained on the train split, cached under its content's name
    # evaluate.py on the same train split finds the same classifier: same key, nothing retrained
    np.save(tmp_path / "grids.npy", np.zeros((8, 4, 4), dtype=np.int64))
    proc = expect_ok(run_main("evaluate.py", tmp_path / "grids.npy", "--dataset", tmp_path / "latents"))
    assert f"token classifier: {cached[0]}" in proc.stdout and "retraining" not in proc.stdout
    assert sorted((tmp_path / "latents").glob("evaluation-classifier-*.pt")) == cached


def test_class_balanced_samples_and_their_labels_file(tiny_prior, tmp_path):
    expect_ok(run_main("sample.py", "--cfg-path", tiny_prior.cfg, "--resume", tiny_prior.last, "--nb-samples", 9,
                       "--batch-size", 2, "--class-balanced", "--out-dir", tmp_path / "s",
                       "--save-labels", tmp_path / "labels.npy", "--save-latents", tmp_path / "grids.npy",
                       "--no-progress"))
    assert np.load(tmp_path / "labels.npy").tolist() == [0, 1, 0, 1, 0, 1, 0, 1, 0]
    proc = run_main("evaluate.py", tmp_path / "grids.npy", "--dataset", tiny_prior.data, "--labels",
                    tmp_path / "labels.npy", "--sampling-summary", tmp_path / "s" / "summary.json",
                    "--classifier-cache-dir", tmp_path / "classifiers")
    assert proc.returncode == 0, proc.stderr
    assert "sampling: mean " in proc.stdout and "of at most 6 model calls per sample" in proc.stdout


def test_classifier_free_guidance_end_to_end(tmp_path):
    text = renamed(TINY_CONFIG, "cfg").replace("    num_classes = 2\n", "    num_classes = 2\n    cond_drop_prob = 0.2\n")
    cfg = write_tiny_config(tmp_path, text.replace("max_steps = 20", "max_steps = 10"))
    expect_ok(run_main("train.py", "--cfg-path", cfg))
    ckpt = tmp_path / "runs" / "cfg" / "checkpoints" / "last.ckpt"
    assert load(ckpt)["state_dict"]["model.class_emb.weight"].shape[0] == 3  # the null class
    proc = expect_ok(run_main("sample.py", "--cfg-path", cfg, "--resume", ckpt, "--nb-samples", 4, "--class-idx", 1,
                              "--guidance-scale", 3, "--end-guidance-scale", 1, "--out-dir", tmp_path / "s",
                              "--no-progress"))
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["sampling"]["guidance_scale"] == 3 and summary["sampling"]["end_guidance_scale"] == 1
    assert "4 samples" in proc.stdout


@pytest.mark.slow
def test_compiled_training_follows_the_eager_run_and_saves_the_same_keys(tmp_path):
    losses, states = {}, {}
    for compiled in (False, True):
        name = f"compile-{compiled}"
        text = renamed(TINY_CONFIG, name).replace("[trainer]", f"[trainer]\n    compile = {str(compiled).lower()}")
        cfg = write_tiny_config(tmp_path, text)
        expect_ok(run_main("train.py", "--cfg-path", cfg, "--max-steps", 6))
        run_dir = tmp_path / "runs" / name
        losses[compiled] = [value for _, value in metrics(run_dir, "train/loss")]
        states[compiled] = load(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
        load_denoiser(run_dir / "checkpoints" / "last.ckpt", load_config(cfg))  # loads as any checkpoint
    assert states[True].keys() == states[False].keys()  # no compiled wrapper in the checkpoint
    assert len(losses[True]) == len(losses[False]) > 0
    # the same steps on the same batches: equal up to compiled kernels' rounding
    assert np.allclose(losses[True], losses[False], rtol=1e-4, atol=1e-5), (losses[True], losses[False])
    for key, value in states[False].items():
        assert torch.allclose(states[True][key].float(), value.float(), rtol=1e-3, atol=1e-5), key


@pytest.fixture
def no_cpp_compiler():
    """torch.compile's CPU backend looking for a C++ compiler that does not exist (its own search,
    uncached around the test)."""
    from torch._inductor import config as inductor_config
    from torch._inductor.cpp_builder import cpp_compiler_search

    cpp_compiler_search.cache_clear()
    with inductor_config.patch({"cpp.cxx": ("no-such-c++-compiler",)}):
        yield
    cpp_compiler_search.cache_clear()


@pytest.mark.usefixtures("no_cpp_compiler")
def test_compile_without_a_cpp_compiler_is_one_line_before_anything_is_written(tmp_path):
    text = renamed(TINY_CONFIG, "no-cxx").replace("[trainer]", "[trainer]\n    compile = true")
    cfg = write_tiny_config(tmp_path, text)
    assert_user_error(run_main("train.py", "--cfg-path", cfg, "--max-steps", 2),
                      "[trainer] compile = true", "no C++ compiler", "set it to false")
    assert not (tmp_path / "runs" / "no-cxx").exists()


@pytest.mark.usefixtures("no_cpp_compiler")
def test_compile_auto_without_a_cpp_compiler_trains_eagerly_and_says_so(tmp_path):
    text = renamed(TINY_CONFIG, "auto").replace("[trainer]", "[trainer]\n    compile = 'auto'")
    proc = expect_ok(run_main("train.py", "--cfg-path", write_tiny_config(tmp_path, text), "--max-steps", 2))
    assert "training step: eager ([trainer] compile = 'auto' and torch.compile found no C++ compiler)" in proc.stdout
    saved = load(tmp_path / "runs" / "auto" / "checkpoints" / "last.ckpt")["hyper_parameters"]["config"]
    assert saved["trainer"]["compile"] is False  # the checkpoint records the step that ran


def test_compile_auto_compiles_where_a_cpp_compiler_is_found():
    from torch._inductor.cpp_builder import get_cpp_compiler

    from training.module import resolve_compile

    try:
        get_cpp_compiler()
    except Exception:
        pytest.skip("this machine has no C++ compiler for torch.compile (the eager fallback is tested above)")
    said = []
    assert resolve_compile("auto", "cpu", "c.toml", log=said.append) is True
    assert said == ["training step: compiled ([trainer] compile = 'auto' and torch.compile found a C++ compiler)"]
    assert resolve_compile(False, "cpu", "c.toml", log=said.append) is False and len(said) == 1


def test_compile_check_passes_where_torch_finds_a_compiler():
    from torch._inductor.cpp_builder import get_cpp_compiler

    from infra.devices import check_compiler

    try:
        get_cpp_compiler()
    except Exception:
        pytest.skip("this machine has no C++ compiler for torch.compile (the refusal is tested above)")
    check_compiler("cpu", "x")  # no error
    check_compiler("meta", "x")  # not the CPU: nothing to check


@pytest.mark.usefixtures("no_cpp_compiler")
def test_sample_compile_without_a_cpp_compiler_is_one_line(tiny_prior, tmp_path):
    out = tmp_path / "samples"
    assert_user_error(run_main("sample.py", "--cfg-path", tiny_prior.cfg, "--resume", tiny_prior.last,
                               "--nb-samples", 2, "--compile", "--out-dir", out, "--no-progress"),
                      "--compile", "no C++ compiler")
    assert not out.exists()
