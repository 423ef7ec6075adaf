"""Bad inputs on the sampling side (sample.py, inpaint.py), in the shape of test_bad_inputs.py:
each ends with exit status 2, one `error:` line naming what was wrong, and nothing created or
changed. An out-dir takes only more of the request that made it, one job at a time; the token
grids' file is refused before anything is made when it exists or no disk can hold it."""
import errno
import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest

from infra.runs import RunDirLock
from tests.helpers import REPO, assert_user_error, run_main
from tests.scripts.test_bad_inputs import Case, assert_refused

pytestmark = pytest.mark.usefixtures("single_thread")


def made_by(c, *args):
    """The out-dir (c.root / 'samples') as a finished run of `args` left it."""
    proc = run_main(*c.sample("--no-progress", *args))
    assert proc.returncode == 0, proc.stderr
    return c


def out_dir_in_use(c):
    (c.root / "samples").mkdir()
    lock = RunDirLock(c.root / "samples").__enter__()  # another job's
    c.releases.append(lambda: lock.__exit__(None, None, None))
    c.ignored.add("samples/.lock")
    return c.sample()


def unrecorded(c):
    c.file("samples/sample-000000.png", b"an earlier version's sample")
    return c.sample()


CASES = {
    # an out-dir takes only more of the request that made it
    "other-class": (lambda c: made_by(c, "--class-idx", 1).sample(
        "--class-idx", 0, "--temperature", 0.5, "--seed", 9, "--save-labels", c.root / "l.npy",
        "--npz", c.root / "s.npz"), "samples: made by --class-idx 1, not 0; choose another --out-dir"),
    "class-given": (lambda c: made_by(c).sample("--class-idx", 1),
                    "samples: made without --class-idx, not with --class-idx 1"),
    "other-temperature": (lambda c: made_by(c).sample("--temperature", 0.5),
                          "samples: made by --temperature 1.0, not 0.5"),
    "other-seed": (lambda c: made_by(c, "--seed", 3).sample("--seed", 4), "samples: made by --seed 3, not 4"),
    "more-samples": (lambda c: made_by(c).sample("--nb-samples", 8), "samples: made by --nb-samples 4, not 8"),
    "other-checkpoint": (lambda c: made_by(c).sample("--resume", c.prior.checkpoints / "step-0000010.ckpt"),
                         "samples: made by --resume"),
    "other-precision": (lambda c: made_by(c).sample("--precision", "bf16"),
                        "samples: made by --precision 32, not bf16"),
    "unrecorded-samples": (unrecorded, "samples: holds samples but no request.json"),
    "damaged-record": (lambda c: c.file("samples/request.json", b"{") and c.sample(), "request.json: unreadable"),
    # one job per out-dir (two identical commands at once: the second is refused)
    "out-dir-in-use": (out_dir_in_use, "samples: in use by another run (pid"),
    # the token grids' file: checked before the out-dir is made
    "latents-exist": (lambda c: c.file("g.npy", b"x") and c.sample("--save-latents", c.root / "g.npy"),
                      "g.npy: already exists; pick another --save-latents file"),
    "latents-exist-deep-out-dir": (lambda c: c.file("g.npy", b"x") and c.sample(
        "--save-latents", c.root / "g.npy", "--out-dir", c.root / "a" / "b"), "g.npy: already exists"),
    "latents-huge": (lambda c: c.sample("--nb-samples", 10**15, "--save-latents", c.root / "g.npy"),
                     "g.npy: the token grids need 33000000000008192 bytes in"),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_sampling_input_is_one_line_exit_2_and_writes_nothing(name, tmp_path, tiny_prior):
    assert_refused(Case(tmp_path, tiny_prior), *CASES[name])


def test_the_same_request_completes_its_out_dir_and_then_has_nothing_to_do(tmp_path, tiny_prior):
    c = made_by(Case(tmp_path, tiny_prior), "--class-idx", 1, "--batch-size", 2)
    recorded = json.loads((tmp_path / "samples" / "request.json").read_text())
    assert recorded["--class-idx"] == 1 and recorded["--batch-size"] == 2 and "last.ckpt" in recorded["--resume"]
    (tmp_path / "samples" / "sample-000003.png").unlink()
    proc = run_main(*c.sample("--no-progress", "--class-idx", 1, "--batch-size", 2,
                              "--save-labels", tmp_path / "l.npy"))
    assert proc.returncode == 0 and '"written_now": 1' in (tmp_path / "samples" / "summary.json").read_text()
    proc = run_main(*c.sample("--no-progress", "--class-idx", 1, "--batch-size", 2))
    assert proc.returncode == 0 and "nothing to do" in proc.stdout, proc.stderr
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "request.json", *(f"sample-{i:06d}.png" for i in range(4)), "summary.json"]


def test_a_second_identical_command_is_refused_in_one_line(tmp_path, tiny_prior):
    """Once the first has finished: refused before anything is made, its grids left as they are."""
    c = Case(tmp_path, tiny_prior)
    argv = c.sample("--no-progress", "--save-latents", tmp_path / "g.npy")
    assert run_main(*argv).returncode == 0
    grids = (tmp_path / "g.npy").read_bytes()
    assert_refused(c, lambda c: argv, "g.npy: already exists")
    assert (tmp_path / "g.npy").read_bytes() == grids


def test_a_second_command_while_the_first_samples_is_refused(tmp_path, tiny_prior, monkeypatch):
    """The out-dir is locked while a job samples: the second, started from the first's first
    batch, is refused in one line, and the first finishes."""
    from generation.pretrained import TrainedPrior

    c, seconds = Case(tmp_path, tiny_prior), []
    argv = c.sample("--no-progress", "--save-latents", tmp_path / "g.npy")
    real = TrainedPrior.sample

    def sample_and_start_another(self, *args, **kwargs):
        if not seconds:
            seconds.append(run_main(*argv))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(TrainedPrior, "sample", sample_and_start_another)
    assert run_main(*argv).returncode == 0
    assert_user_error(seconds[0], "samples: in use by another run (pid")
    assert (tmp_path / "g.npy").is_file() and not (tmp_path / "samples" / ".lock").exists()


def test_a_disk_too_small_for_the_grids_is_refused_before_anything_is_made(tmp_path, tiny_prior, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1000))
    proc = assert_refused(Case(tmp_path, tiny_prior), lambda c: c.sample("--save-latents", c.root / "g.npy"),
                    "g.npy: the token grids need")
    assert "which has 1000 bytes free" in proc.stderr


def test_a_disk_that_fills_while_the_grids_are_allocated_leaves_nothing(tmp_path, tiny_prior, monkeypatch):
    calls = []

    def full(fd, offset, length):
        calls.append(length)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    assert_refused(Case(tmp_path, tiny_prior),  # the out-dir and its new parent are removed again
             lambda c: c.sample("--save-latents", c.root / "g.npy", "--out-dir", c.root / "a" / "b"),
             "g.npy: no space left for the")
    assert calls  # allocated for real, not left sparse


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_a_torchscript_file_as_checkpoint_is_one_line_without_torch_warnings(tmp_path, tiny_prior):
    import torch

    torch.jit.script(torch.nn.Linear(2, 2)).save(tmp_path / "scripted.pt")
    with warnings.catch_warnings(record=True) as shown:  # what a script would print above its error line
        warnings.simplefilter("always")
        assert_refused(Case(tmp_path, tiny_prior), lambda c: c.sample("--resume", tmp_path / "scripted.pt"),
                 "scripted.pt: not a readable checkpoint")
    assert [str(w.message) for w in shown] == []


@pytest.mark.parametrize("script", ["sample.py", "inpaint.py"])
def test_arguments_are_parsed_before_lightning_is_imported(script):
    proc = subprocess.run([sys.executable, "-X", "importtime", str(REPO / script), "--bogus"], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert_user_error(proc, "the following arguments are required")
    assert "import time:" in proc.stderr and "pytorch_lightning" not in proc.stderr
