"""Bad inputs of the VQ-GAN and data scripts (generate-latents.py, recon-vqgan.py, train-vqgan.py,
generate-discrete-mnist.py, evaluate.py), in the table shape of tests/scripts/test_bad_inputs.py:
each ends with exit status 2, one `error:` line naming the flag, key or file, and no file created
or changed. The world is a tiny VQ-GAN (16x16 images -> 8x8 grids) made once per module; rows
that need monkeypatching, permissions or a successful run are separate tests below."""
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from evaluation.token_classifier import cache_file, split_sha256
from latents.dataset import LatentDataset
from tests.helpers import assert_user_error, run_main
from tests.scripts.test_bad_inputs import Case, snapshot
from tests.scripts.test_train_vqgan import smooth_images, tiny_config, write_config

pytestmark = pytest.mark.usefixtures("single_thread")


class Payload:
    """An object that is not a tensor or a plain container: torch's weights-only reader refuses it."""


@pytest.fixture(scope="module")
def tiny_vqgan(tmp_path_factory, single_thread):
    """tests.scripts.test_train_vqgan's tiny config, its untrained weights in a checkpoint shaped
    like train-vqgan.py's (seed 1), and six 16x16 images."""
    from vqgan.training import VQGANModule
    from vqgan.training_config import load_train_config

    root = tmp_path_factory.mktemp("tiny-vqgan")
    cfg = write_config(root / "vq.yaml", tiny_config())
    state = VQGANModule(load_train_config(cfg)).state_dict()
    checkpoint = {"state_dict": state, "optimizer_states": [{}, {}], "global_step": 6, "epoch": 0,
                  "hyper_parameters": {"config": yaml.safe_load(cfg.read_text()), "seed": 1}}
    torch.save(checkpoint, root / "vq.ckpt")
    return SimpleNamespace(root=root, cfg=cfg, ckpt=root / "vq.ckpt", checkpoint=checkpoint,
                           images=smooth_images(root / "images", 6, 16))


class World(Case):
    """Case's world (the tiny latent dataset in tmp_path) with the tiny VQ-GAN beside it; the
    trained tiny prior only for the rows that ask for it (training it costs seconds)."""

    def __init__(self, tmp_path, vq, request):
        super().__init__(tmp_path, None)
        self.vq, self.request = vq, request

    def tiny_prior(self):
        self.prior = self.request.getfixturevalue("tiny_prior")
        return self.prior

    def vq_config(self, edit):
        """The tiny VQ-GAN config with `edit(cfg)` applied, written in tmp_path."""
        cfg = tiny_config()
        edit(cfg)
        return write_config(self.root / "edited.yaml", cfg)

    def checkpoint(self, name="resume.ckpt", **changes):
        """The tiny VQ-GAN checkpoint with entries replaced (None: removed), written in tmp_path."""
        ckpt = {**self.vq.checkpoint, **changes}
        torch.save({k: v for k, v in ckpt.items() if v is not None}, self.root / name)
        return self.root / name

    def train(self, *args, cfg=None):
        return ["train-vqgan.py", "--cfg-path", cfg or self.vq.cfg, "--dataset", self.vq.images,
                "--run-dir", self.root / "run", *args]

    def latents(self, *args, cfg=None):
        return ["generate-latents.py", "--cfg-path", cfg or self.vq.cfg, "--ckpt-path", self.vq.ckpt,
                "--dataset-in", self.vq.images, "--latents-out", self.root / "latents-out", "--nb-workers", 0,
                "--device", "cpu", *args]

    def recon(self, *args):
        return ["recon-vqgan.py", self.vq.images, "--cfg-path", self.vq.cfg, "--ckpt-path", self.vq.ckpt,
                "--out-dir", self.root / "recon", "--device", "cpu", *args]

    def evaluate(self, *args):
        rng = np.random.default_rng(0)
        np.save(self.root / "samples.npy", rng.integers(0, 5, size=(8, 4, 4)))
        return ["evaluate.py", self.root / "samples.npy", "--dataset", self.data, *args]


def ddconfig(**values):
    return lambda cfg: cfg["model"]["params"]["ddconfig"].update(values)


def foreign_file_at_the_classifier_cache(c):
    """A copy of a prior checkpoint lying where the dataset's token classifier would be cached."""
    train = LatentDataset(c.data, "train")
    shutil.copyfile(c.tiny_prior().last, cache_file(c.data, split_sha256(train.tokens, train.labels)))
    return c.evaluate()


CASES = {
    # --- train-vqgan.py: --resume, checked before the run directory is touched ----------------
    "resume-pickled-payload": (lambda c: c.train("--resume", c.checkpoint(payload=Payload())),
                               "holds an object of tests.scripts.test_bad_inputs_vqgan.Payload"),
    "resume-other-seed": (lambda c: c.train("--resume", c.checkpoint(), "--seed", 5),
                          "--seed 5:", "resume.ckpt was trained with --seed 1"),
    "resume-no-seed": (lambda c: c.train("--resume", c.checkpoint(hyper_parameters={"config": {}})),
                       "records no seed (hyper_parameters.seed)"),
    "resume-bare-state-dict": (lambda c: c.train("--resume", c.checkpoint(optimizer_states=None)),
                               "not a training checkpoint of train-vqgan.py (no optimizer_states)"),
    "resume-garbage": (lambda c: c.train("--resume", c.file("junk.ckpt", b"junk")), "cannot read checkpoint"),
    "resume-missing": (lambda c: c.train("--resume", c.root / "nope.ckpt"), "checkpoint not found"),
    "nb-workers-train": (lambda c: c.train("--nb-workers", -1),
                         "argument --nb-workers: expected an integer >= 0, got -1"),
    # --- the VQ-GAN config: ranges, as the prior's TOML -------------------------------------------
    "dropout-one": (lambda c: c.train(cfg=c.vq_config(ddconfig(dropout=1.0))),
                    "ddconfig.dropout: expected float in [0, 1), got 1.0"),
    "dropout-negative": (lambda c: c.latents(cfg=c.vq_config(ddconfig(dropout=-0.5))), "ddconfig.dropout"),
    "attn-resolution-zero": (lambda c: c.train(cfg=c.vq_config(ddconfig(attn_resolutions=[0]))),
                             "ddconfig.attn_resolutions[0]: expected int >= 1"),
    "resolution-indivisible": (lambda c: c.train(cfg=c.vq_config(ddconfig(resolution=15))),
                               "ddconfig.resolution = 15", "divisible by the downsample factor 2"),
    # --- generate-latents.py ----------------------------------------------------------------------
    "batch-size-latents": (lambda c: c.latents("--batch-size", 0),
                           "argument --batch-size: expected an integer >= 1, got 0"),
    "nb-workers-latents": (lambda c: c.latents("--nb-workers", -1), "argument --nb-workers: expected an integer >= 0"),
    "resolution-negative": (lambda c: c.latents("--resolution", -16, 16),
                            "argument --resolution: expected an integer >= 1, got -16"),
    "resolution-huge": (lambda c: c.latents("--resolution", 100000, 100000),
                        "--resolution 100000 100000: a batch of 64 image(s)", "GiB of memory"),
    # --- recon-vqgan.py ---------------------------------------------------------------------------
    "resolution-zero": (lambda c: c.recon("--resolution", 0, 0),
                        "argument --resolution: expected an integer >= 1, got 0"),
    "resolution-indivisible-recon": (lambda c: c.recon("--resolution", 15, 16),
                                     "--resolution 15 16: both sides must be",
                                     "divisible by the VQ-GAN's downsample factor 2"),
    "batch-size-recon": (lambda c: c.recon("--batch-size", 0),
                         "argument --batch-size: expected an integer >= 1, got 0"),
    "recon-out-dir-is-file": (lambda c: c.file("recon", b"x") and c.recon(),
                              "recon: --out-dir is a file, expected a directory"),
    "recon-out-dir-under-file": (lambda c: c.file("f", b"x") and c.recon("--out-dir", c.root / "f" / "recon"),
                                 "--out-dir cannot be made, a parent is a file"),
    # --- generate-discrete-mnist.py ---------------------------------------------------------------
    "levels-one": (lambda c: ["generate-discrete-mnist.py", "digits", c.root / "d", "--levels", 1],
                   "--levels 1: digits has 17 gray levels; expected 2 to 17"),
    "levels-above-digits": (lambda c: ["generate-discrete-mnist.py", "digits", c.root / "d", "--levels", 18],
                            "--levels 18: digits has 17 gray levels"),
    "levels-above-mnist": (lambda c: ["generate-discrete-mnist.py", "mnist", c.root / "d", "--levels", 300],
                           "--levels 300: mnist has 256 gray levels"),
    # --- evaluate.py: a prior checkpoint is never a classifier cache ---------------------------
    "classifier-cache-is-a-checkpoint": (lambda c: c.evaluate("--classifier-cache", c.tiny_prior().last),
                                         "last.ckpt: is a file; give a directory"),
    "classifier-cache-foreign-file": (foreign_file_at_the_classifier_cache,
                                      "not a token-classifier cache", "never overwritten"),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(name, tmp_path, tiny_vqgan, request):
    make, *fragments = CASES[name]
    world = World(tmp_path, tiny_vqgan, request)
    argv = make(world)
    watched = [tmp_path, tiny_vqgan.root] + ([world.prior.root] if world.prior is not None else [])
    before = [snapshot(root) for root in watched]
    proc = run_main(*argv)
    assert_user_error(proc, *fragments)
    for root, was in zip(watched, before):
        now = snapshot(root)
        assert now == was, f"{root} changed: {set(now.items()) ^ set(was.items())}"


# --- rows that need more than argv ------------------------------------------------------------

def test_a_read_only_recon_out_dir_is_one_line(tmp_path, tiny_vqgan, request):
    out = tmp_path / "recon"
    out.mkdir()
    out.chmod(0o555)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running as root: a read-only mode does not stop root's writes")
        world = World(tmp_path, tiny_vqgan, request)
        proc = run_main(*world.recon())
        assert_user_error(proc, "recon: --out-dir is not writable")
        assert list(out.iterdir()) == []
    finally:
        out.chmod(0o755)


def test_the_resolution_is_bounded_by_memory_not_by_a_cap(tiny_vqgan, monkeypatch):
    import latents.encode
    from vqgan import load_vqgan

    vqgan = load_vqgan(tiny_vqgan.cfg, tiny_vqgan.ckpt)
    # float32 pixels (3 channels) plus one full-resolution convolution's input and output (ch = 32)
    need = latents.encode.batch_bytes(vqgan, (1024, 2048), 4)
    assert need == 4 * 4 * 1024 * 2048 * (3 + 2 * 32)
    monkeypatch.setattr(latents.encode, "memory_bytes", lambda: need)
    latents.encode.check_batch_fits(vqgan, (1024, 2048), 4, "cpu")  # exactly enough
    with pytest.raises(latents.encode.UserError, match=r"a batch of 8 image\(s\) at 1024x2048 needs at least "
                                                       r"4.2 GiB .* more than this machine's 2.1 GiB"):
        latents.encode.check_batch_fits(vqgan, (1024, 2048), 4, "cpu", copies=2)
    # on a GPU, the bound is that GPU's memory
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=need - 1))
    with pytest.raises(latents.encode.UserError, match=r"more than cuda:1's 2.1 GiB of memory"):
        latents.encode.check_batch_fits(vqgan, (1024, 2048), 4, "cuda:1")


def image_folder_with_unreadable(root, tiny_vqgan):
    shutil.copytree(tiny_vqgan.images, root)
    (root / "notes.png").write_text("not a picture")
    good = root / "img000.png"
    (root / "truncated.png").write_bytes(good.read_bytes()[:60])
    return root


def assert_skipped_on_stderr(proc, folder):
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert warnings[0].startswith(f"warning: {folder / 'notes.png'}: unreadable image (cannot identify image file")
    assert warnings[1].startswith(f"warning: {folder / 'truncated.png'}: unreadable image (")
    assert warnings[0].endswith("; skipped") and warnings[1].endswith("; skipped")
    assert warnings[2:] == ["warning: 2 unreadable image(s) skipped"]
    assert "warning" not in proc.stdout


def test_generate_latents_says_why_each_image_was_skipped_on_stderr(tmp_path, tiny_vqgan):
    folder = image_folder_with_unreadable(tmp_path / "images", tiny_vqgan)
    proc = run_main("generate-latents.py", "--cfg-path", tiny_vqgan.cfg, "--ckpt-path", tiny_vqgan.ckpt,
                    "--dataset-in", folder, "--latents-out", tmp_path / "latents", "--nb-workers", 0,
                    "--device", "cpu", "--no-aug")
    assert_skipped_on_stderr(proc, folder)
    assert len(LatentDataset(tmp_path / "latents", "train")) == 6


def test_recon_vqgan_says_why_each_image_was_skipped_on_stderr(tmp_path, tiny_vqgan):
    folder = image_folder_with_unreadable(tmp_path / "images", tiny_vqgan)
    proc = run_main("recon-vqgan.py", folder, "--cfg-path", tiny_vqgan.cfg, "--ckpt-path", tiny_vqgan.ckpt,
                    "--out-dir", tmp_path / "recon", "--device", "cpu")
    assert_skipped_on_stderr(proc, folder)
    assert len(list((tmp_path / "recon").glob("*.png"))) == 6


def test_train_vqgan_says_why_each_image_was_skipped_on_stderr(tmp_path, tiny_vqgan):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("img000.png", "img001.png"):
        shutil.copyfile(tiny_vqgan.images / name, folder / name)
    (folder / "notes.png").write_text("not a picture")
    proc = run_main("train-vqgan.py", "--cfg-path", tiny_vqgan.cfg, "--dataset", folder,
                    "--run-dir", tmp_path / "run")
    assert_user_error(proc, "1 training images, fewer than one batch")  # 2 images: one held out
    assert f"warning: {folder / 'notes.png'}: unreadable image (cannot identify image file" in proc.stderr
    assert "warning: 1 unreadable image(s) skipped" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_header_that_reads_with_pixels_that_do_not_is_named_on_stderr(tmp_path, capsys):
    from vqgan.training_data import CollateImages

    good = tmp_path / "good.png"
    Image.new("RGB", (16, 16)).save(good)
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.read_bytes()[:60])
    images = CollateImages([good, broken])([(0, torch.zeros(3, 16, 16)), (1, None)])
    assert images.shape == (1, 3, 16, 16)
    out, err = capsys.readouterr()
    assert err == f"warning: {broken}: unreadable image (its header read, its pixels failed to decode); skipped\n"
    assert out == ""
