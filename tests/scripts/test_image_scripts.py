"""generate-latents.py and recon-vqgan.py end to end on a fixture VQ-GAN and a folder of images."""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from infra.images import image_transform, open_rgb, psnr
from latents.dataset import LatentDataset
from tests.helpers import assert_user_error, run_main, run_script, vqgan_fixture, write_bomb
from vqgan import load_vqgan


def smooth_image(rng, size, mode="RGB"):
    """A smooth random picture (so resizing is well behaved), in the given PIL mode."""
    h, w = size
    low = rng.random((4, 4, 3))
    img = Image.fromarray((low * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    if mode == "P":
        return img.convert("P", palette=Image.ADAPTIVE, colors=16)
    return img.convert(mode)


@pytest.fixture
def image_folder(tmp_path):
    """class_a/: 3 RGB images of odd sizes; class_b/: gray, RGBA, palette, one truncated PNG and
    one file that is not an image at all."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    (root / "class_a").mkdir(parents=True)
    (root / "class_b").mkdir()
    for i, size in enumerate([(40, 36), (32, 48), (64, 64)]):
        smooth_image(rng, size).save(root / "class_a" / f"a{i}.png")
    for mode in ("L", "RGBA", "P"):
        smooth_image(rng, (36, 36), mode).save(root / "class_b" / f"b_{mode}.png")
    good = root / "class_b" / "b_L.png"
    (root / "class_b" / "truncated.png").write_bytes(good.read_bytes()[:60])
    (root / "class_b" / "not_an_image.jpg").write_text("hello")
    return root


@pytest.fixture
def taming_f4():
    fixture = vqgan_fixture("taming-f4")
    return fixture / "config.yaml", fixture / "model.ckpt"


def encode_file(vqgan, path, flip=False):
    x = image_transform((32, 32))(open_rgb(path))[None]
    return vqgan.encode(x.flip(-1) if flip else x)[0].numpy()


@pytest.mark.slow
def test_generate_latents_matches_encode(tmp_path, image_folder, taming_f4):
    cfg, ckpt = taming_f4
    out = tmp_path / "latents"
    proc = run_script("generate-latents.py", "--cfg-path", cfg, "--ckpt-path", ckpt, "--dataset-in",
                      image_folder, "--latents-out", out, "--use-class", "--eval-fraction", "0.25",
                      "--nb-workers", "0", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "warning: 2 unreadable image(s) skipped" in proc.stderr
    assert "truncated.png: unreadable image (" in proc.stderr
    assert "not_an_image.jpg: unreadable image (cannot identify image file" in proc.stderr

    meta = json.loads((out / "meta.json").read_text())
    assert meta["codebook_size"] == 64 and meta["latent_shape"] == [8, 8]
    assert meta["class_names"] == ["class_a", "class_b"]
    assert len(meta["vqgan"]["checkpoint_sha256"]) == 64 and meta["vqgan"]["image_size"] == [32, 32]
    train, evaluation = LatentDataset(out, "train"), LatentDataset(out, "eval")
    assert train.tokens.dtype == np.uint16
    # 8 files, 2 unreadable; eval takes 2 of the 8 files, train flips its readable ones
    n_train_rows, n_eval_rows = len(train), len(evaluation)
    assert n_train_rows % 2 == 0 and n_train_rows // 2 + n_eval_rows <= 6 and n_eval_rows <= 2
    train_sources = set(meta["splits"]["train"]["sources"])
    assert not train_sources & set(meta["splits"]["eval"]["sources"])
    assert not any(meta["splits"]["eval"]["flipped"])

    vqgan = load_vqgan(cfg, ckpt)
    for ds in (train, evaluation):
        split = meta["splits"][ds.split]
        for i in range(len(ds)):
            tokens, label = ds[i]
            source, flipped = split["sources"][i], split["flipped"][i]
            np.testing.assert_array_equal(tokens.numpy(), encode_file(vqgan, source, flipped))
            assert ds.class_names[label] in source  # label is the class directory
    # each original is followed by its mirror
    assert meta["splits"]["train"]["flipped"][:2] == [False, True]


@pytest.mark.slow
def test_generate_latents_flat_no_aug_and_refusals(tmp_path, image_folder, taming_f4):
    cfg, ckpt = taming_f4
    out = tmp_path / "latents"
    common = ["--cfg-path", cfg, "--ckpt-path", ckpt, "--latents-out", out, "--nb-workers", "0"]
    proc = run_script("generate-latents.py", *common, "--dataset-in", image_folder / "class_a", "--no-aug")
    assert proc.returncode == 0, proc.stderr
    ds = LatentDataset(out, "train")
    assert len(ds) == 3 and ds.class_names is None and ds[0][1] == -1
    before = (out / "train_tokens.npy").read_bytes()

    # an existing dataset is refused without --overwrite, and left as it was
    proc = run_script("generate-latents.py", *common, "--dataset-in", image_folder / "class_a")
    assert_user_error(proc, str(out), "--overwrite")
    assert (out / "train_tokens.npy").read_bytes() == before
    proc = run_script("generate-latents.py", *common, "--dataset-in", image_folder / "class_a", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert len(LatentDataset(out, "train")) == 6  # flipped copies this time


@pytest.mark.slow
@pytest.mark.parametrize("case", ["empty", "resolution", "missing_config", "missing_ckpt", "bad_fraction"])
def test_generate_latents_bad_input(tmp_path, image_folder, taming_f4, case):
    cfg, ckpt = taming_f4
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    args = {"cfg": cfg, "ckpt": ckpt, "data": image_folder, "extra": []}
    expect = {
        "empty": ({"data": empty}, [str(empty), "no images"]),
        "resolution": ({"extra": ["--resolution", "30", "30"]}, ["30 30", "divisible", "4"]),
        "missing_config": ({"cfg": tmp_path / "nope.yaml"}, ["nope.yaml"]),
        "missing_ckpt": ({"ckpt": tmp_path / "nope.ckpt"}, ["nope.ckpt"]),
        "bad_fraction": ({"extra": ["--eval-fraction", "1.5"]}, ["--eval-fraction"]),
    }[case]
    args.update(expect[0])
    out = tmp_path / "out"
    proc = run_script("generate-latents.py", "--cfg-path", args["cfg"], "--ckpt-path", args["ckpt"],
                      "--dataset-in", args["data"], "--latents-out", out, "--nb-workers", "0", *args["extra"])
    assert_user_error(proc, *expect[1])
    assert not out.exists()  # nothing half-written


@pytest.mark.slow
def test_recon_vqgan_reports_psnr_and_usage(tmp_path, image_folder, taming_f4):
    cfg, ckpt = taming_f4
    out = tmp_path / "recon"
    proc = run_script("recon-vqgan.py", image_folder / "class_a", "--cfg-path", cfg, "--ckpt-path", ckpt,
                      "--out-dir", out, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "latent shape: (8, 8)" in proc.stdout
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 3
    with Image.open(pngs[0]) as im:  # original | reconstruction, 2 px padding around each
        assert im.size == (2 * 32 + 3 * 2, 32 + 2 * 2)

    vqgan = load_vqgan(cfg, ckpt)
    files = sorted((image_folder / "class_a").glob("*.png"))
    x = torch.stack([image_transform((32, 32))(open_rgb(p)) for p in files])
    tokens = vqgan.encode(x)
    expected = psnr(x, vqgan.decode(tokens))
    reported = [float(v) for v in re.findall(r"PSNR ([-\d.]+) dB", proc.stdout)]
    np.testing.assert_allclose(reported, expected.numpy(), atol=0.01)
    mean = float(re.search(r"mean PSNR: ([-\d.]+) dB", proc.stdout).group(1))
    assert abs(mean - expected.mean().item()) < 0.01
    used = len(torch.unique(tokens))
    assert f"codebook usage: {used}/64 codes" in proc.stdout

    alone = tmp_path / "alone"  # --recon-only: the reconstruction by itself, as uint8 PNG
    proc = run_main("recon-vqgan.py", image_folder / "class_a", "--cfg-path", cfg, "--ckpt-path", ckpt,
                    "--out-dir", alone, "--device", "cpu", "--recon-only")
    assert proc.returncode == 0, proc.stderr
    with Image.open(sorted(alone.glob("*.png"))[0]) as im:
        shown = torch.from_numpy(np.asarray(im.convert("RGB"))).permute(2, 0, 1).float()
    expected_pixels = ((vqgan.decode(tokens[:1])[0].clamp(-1, 1) + 1) * 127.5)
    assert shown.shape == (3, 32, 32) and (shown - expected_pixels).abs().max() <= 1.0


@pytest.mark.slow
def test_decompression_bombs_are_skipped_like_other_unreadable_images(tmp_path, image_folder, taming_f4):
    cfg, ckpt = taming_f4
    folder = image_folder / "class_a"
    write_bomb(folder / "bomb.png")
    proc = run_main("recon-vqgan.py", folder, "--cfg-path", cfg, "--ckpt-path", ckpt,
                    "--out-dir", tmp_path / "recon", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert f"warning: {folder / 'bomb.png'}: unreadable image (" in proc.stderr
    assert len(list((tmp_path / "recon").glob("*.png"))) == 3
    proc = run_main("generate-latents.py", "--cfg-path", cfg, "--ckpt-path", ckpt, "--dataset-in", folder,
                    "--latents-out", tmp_path / "latents", "--nb-workers", "0", "--device", "cpu", "--no-aug")
    assert proc.returncode == 0, proc.stderr
    assert "warning: 1 unreadable image(s) skipped" in proc.stderr and "bomb.png" in proc.stderr
    assert len(LatentDataset(tmp_path / "latents", "train")) == 3


def test_recon_vqgan_bad_checkpoint(tmp_path, image_folder, taming_f4):
    cfg, _ = taming_f4
    other = vqgan_fixture("taming-legacy") / "model.ckpt"  # another model's weights
    proc = run_script("recon-vqgan.py", image_folder, "--cfg-path", cfg, "--ckpt-path", other,
                      "--out-dir", tmp_path / "recon")
    assert_user_error(proc, "model.ckpt")
    assert not (tmp_path / "recon").exists()
