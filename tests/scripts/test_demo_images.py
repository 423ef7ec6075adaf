"""The image pipeline demo's pieces: the crops of scikit-image's bundled photos, and the wiring
between scripts/demo_images.sh and the configs it trains (paths that must agree)."""
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO, run_main
from training.config import load_config
from vqgan.training_config import load_train_config

pytest.importorskip("skimage")


def test_crops_are_small_squares_and_the_held_out_photo_stays_out(tmp_path):
    out = tmp_path / "crops"
    proc = run_main("scripts/shipped_image_crops.py", out, "--size", 32, "--stride", 32, "--downscale", 4)
    assert proc.returncode == 0, proc.stderr
    train, held_out = sorted((out / "train").iterdir()), sorted((out / "heldout").iterdir())
    assert len(train) > 50 and held_out
    assert not any(p.name.startswith("chelsea") for p in train)
    assert all(p.name.startswith("chelsea") for p in held_out)
    with Image.open(train[0]) as image:
        assert image.size == (32, 32) and image.mode == "RGB"
    # chelsea is 451 x 300: a quarter is 112 x 75, which holds 3 x 2 crops of 32 at stride 32
    assert len(held_out) == 6
    # not constant: these are photographs
    assert np.asarray(Image.open(held_out[0])).std() > 5


def shell_vars(text):
    return dict(re.findall(r"^([A-Z_]+)=([^\s(]+)", text, flags=re.M))


def test_demo_script_paths_agree_with_its_configs():
    script = (REPO / "scripts" / "demo_images.sh").read_text()
    v = shell_vars(script)
    prior = load_config(REPO / v["PRIOR_CFG"])
    assert prior.data.root == v["LATENTS"]
    assert Path(prior.vqgan.config) == Path(v["VQ_CFG"])
    assert Path(prior.vqgan.checkpoint) == Path(v["VQ_RUN"]) / "checkpoints" / "last.ckpt"
    assert Path(v["PRIOR_RUN"]) == Path(prior.trainer.runs_dir) / prior.trainer.exp_name
    vq = load_train_config(REPO / v["VQ_CFG"])
    assert prior.data.vocab_size == vq.model.n_embed
    assert vq.loss.perceptual_weight == 0  # no LPIPS weights ship: the demo must not need them
