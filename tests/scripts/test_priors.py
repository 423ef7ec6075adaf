"""Every prior type round-trips through the scripts on digits: train.py, sample.py (npz),
inpaint.py, sample-interactive.py, with the one interface (priors.base.Prior) and no branching in the
scripts; wrong-prior checkpoints and masks a prior cannot inpaint are one-line errors."""

import numpy as np
import pytest
import torch

from priors import PRIORS, build_model
from tests.helpers import REPO, assert_user_error, run_main, shrunk_digits_config
from training.config import load_config

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIGS = {"sundae": "digits.toml", "absorbing": "digits-absorbing.toml", "autoregressive": "digits-ar.toml"}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("priors")
    assert run_main("generate-discrete-mnist.py", "digits", root / "digits").returncode == 0
    return root


@pytest.fixture(scope="module")
def trained(digits):
    """{prior type: (config path, last.ckpt)} for every prior, trained 30 steps."""
    runs = {}
    for kind, name in CONFIGS.items():
        cfg = digits / name
        cfg.write_text(shrunk_digits_config((REPO / "config" / name).read_text(), digits))
        proc = run_main("train.py", "--cfg-path", cfg)
        assert proc.returncode == 0, proc.stderr[-3000:]
        exp = load_config(cfg).trainer.exp_name
        runs[kind] = (cfg, digits / "runs" / exp / "checkpoints" / "last.ckpt")
    return runs


def test_the_registry_has_every_documented_prior():
    assert set(PRIORS) == set(CONFIGS)
    for kind, name in CONFIGS.items():
        cfg = load_config(REPO / "config" / name)
        assert cfg.prior.type == kind
        with torch.device("meta"):
            build_model(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_train_then_sample_then_inpaint(kind, trained, tmp_path):
    cfg, ckpt = trained[kind]
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["hyper_parameters"]["config"]["prior"]["type"] == kind  # checkpoints record the prior
    extra = {"absorbing": "eval/elbo_bits", "autoregressive": "eval/bits_per_token"}.get(kind)
    if extra:
        logs = (cfg.parent / "runs" / load_config(cfg).trainer.exp_name / "logs").rglob("metrics.csv")
        assert any(extra in log.read_text().splitlines()[0] for log in logs)

    proc = run_main("sample.py", "--cfg-path", cfg, "--resume", ckpt, "--nb-samples", 6, "--batch-size", 3,
                    "--class-balanced", "--out-dir", tmp_path / "s", "--npz", tmp_path / "s.npz",
                    "--save-latents", tmp_path / "s.npy", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    grids = np.load(tmp_path / "s.npy")
    assert grids.shape == (6, 8, 8) and grids.max() < 17  # never the absorbing mask token (17)
    assert np.load(tmp_path / "s.npz")["arr_1"].tolist() == [0, 1, 2, 3, 4, 5]

    # the bottom half regenerated: a raster-order prefix is known, so every prior can inpaint it
    proc = run_main("inpaint.py", "--dataset-rows", 0, 1, "--cfg-path", cfg, "--resume", ckpt, "--block", 4, 0, 4, 8,
                    "--nb-samples", 2, "--out-dir", tmp_path / "inpaint")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "inpaint").glob("*.png"))) == 2

    # an arbitrary mask (a hole in the middle): the autoregressive prior cannot, and says why
    proc = run_main("inpaint.py", "--dataset-rows", 0, "--cfg-path", cfg, "--resume", ckpt, "--block", 2, 2, 3, 3,
                    "--nb-samples", 2, "--out-dir", tmp_path / "hole")
    if kind == "autoregressive":
        assert_user_error(proc, "the autoregressive prior can only complete a raster-order prefix")
        assert not (tmp_path / "hole").exists()
    else:
        assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_a_checkpoint_of_another_prior_is_refused(trained, tmp_path):
    cfg, _ = trained["sundae"]
    _, other = trained["absorbing"]
    proc = run_main("sample.py", "--cfg-path", cfg, "--resume", other, "--out-dir", tmp_path / "s")
    assert_user_error(proc, "a checkpoint of an absorbing prior", "has prior.type = 'sundae'")
    proc = run_main("train.py", "--cfg-path", cfg, "--resume", other)
    assert_user_error(proc, "a checkpoint of an absorbing prior")


@pytest.mark.slow
def test_maskgit_decodes_the_same_absorbing_model(trained, tmp_path):
    cfg, ckpt = trained["absorbing"]
    proc = run_main("sample.py", "--cfg-path", cfg, "--resume", ckpt, "--decoder", "maskgit", "--steps", 8,
                    "--nb-samples", 4, "--out-dir", tmp_path / "m", "--save-latents", tmp_path / "m.npy", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mean steps used 8.0" in proc.stdout
    proc = run_main("sample.py", "--cfg-path", cfg, "--resume", ckpt, "--top-k", 5, "--out-dir", tmp_path / "x")
    assert_user_error(proc, "--top-k: a sampling setting of autoregressive priors", "trains an absorbing prior")
