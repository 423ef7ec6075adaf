"""inpaint.py and sample-interactive.py on a tiny trained prior (token space, no VQ-GAN)."""
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from generation.inpainting import latent_keep_mask, masked_preview, read_mask_image, regenerate_mask
from generation.interactive import InteractiveSampler, MenuOptions, parse_value
from generation.pretrained import load_prior
from infra.errors import UserError
from latents.dataset import LatentDataset
from latents.render import tokens_to_gray
from priors.sundae import SundaeSampling
from tests.helpers import assert_user_error, run_main


def read_png_tokens(path, vocab, cell=4, padding=2):
    """The grids of a saved figure row back as tokens (gray renders, 4x4 pixels per token)."""
    image = np.asarray(Image.open(path).convert("L"), dtype=np.float64) / 255
    height = (image.shape[0] - 2 * padding) // cell
    tiles, x = [], padding
    while x + height * cell <= image.shape[1]:
        tile = image[padding:padding + height * cell:cell, x:x + height * cell:cell]
        tiles.append(np.rint(tile * (vocab - 1)).astype(int))
        x += height * cell + padding
    return tiles


def test_inpaint_dataset_rows_keep_known_tokens(tmp_path, tiny_prior):
    cfg, ckpt, data = tiny_prior.cfg, tiny_prior.last, tiny_prior.data
    out = tmp_path / "inpaint"
    proc = run_main("inpaint.py", "--dataset-rows", 0, 3, "--cfg-path", cfg, "--resume", ckpt,
                    "--block", 1, 1, 2, 3, "--nb-samples", 3, "--out-dir", out, "--steps", 4)
    assert proc.returncode == 0, proc.stderr
    assert "regenerating 6 of 16 latent positions" in proc.stdout
    keep = torch.ones(4, 4, dtype=torch.bool)
    keep[1:3, 1:4] = False
    eval_split = LatentDataset(data, "eval")
    for row in (0, 3):
        tiles = read_png_tokens(out / f"inpaint-eval-{row:05d}.png", vocab=5)
        assert len(tiles) == 2 + 3  # original | masked | 3 inpaintings
        original = eval_split[row][0].numpy()
        np.testing.assert_array_equal(tiles[0], original)
        for inpainting in tiles[2:]:
            np.testing.assert_array_equal(inpainting[keep.numpy()], original[keep.numpy()])


def test_inpaint_mask_image_convention(tmp_path, tiny_prior):
    """White regenerates, black keeps; token-space masks are in grid cells."""
    mask = np.zeros((4, 4), np.uint8)
    mask[0, :2] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    regen = read_mask_image(tmp_path / "mask.png", (4, 4))
    assert regen.sum() == 2 and regen[0, 0] and regen[0, 1] and not regen[1, 0]
    assert torch.equal(latent_keep_mask(regen, 1), ~regen)
    # f = 2: a latent is regenerated as soon as one pixel of its patch is
    pixel = torch.zeros(4, 6, dtype=torch.bool)
    pixel[3, 5] = True
    expected = torch.ones(2, 3, dtype=torch.bool)
    expected[1, 2] = False
    assert torch.equal(latent_keep_mask(pixel, 2), expected)
    with pytest.raises(UserError, match="exactly one"):
        regenerate_mask((4, 4), tmp_path / "mask.png", block=(0, 0, 1, 1))


def test_masked_preview_grays_regenerated_patches():
    image = torch.ones(3, 8, 8)
    keep = torch.tensor([[True, False], [True, True]])
    preview = masked_preview(image, keep)
    assert preview[:, :4, 4:].abs().max() == 0 and preview[:, 4:, :].min() == 1


@pytest.mark.parametrize("case", ["mask_size", "class", "checkpoint", "rows"])
def test_inpaint_bad_input(tmp_path, tiny_prior, case):
    cfg, ckpt = tiny_prior.cfg, tiny_prior.last
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(tmp_path / "mask.png")
    base = ["--cfg-path", cfg, "--resume", ckpt, "--out-dir", tmp_path / "out"]
    args, fragments = {
        "mask_size": (["--dataset-rows", 0, "--mask", tmp_path / "mask.png"], ["mask.png", "5x4", "4x4"]),
        "class": (["--dataset-rows", 0, "--block", 0, 0, 1, 1, "--class-idx", 7], ["--class-idx 7"]),
        "checkpoint": (["--dataset-rows", 0, "--block", 0, 0, 1, 1, "--resume", tmp_path / "no.ckpt"],
                       ["no.ckpt"]),
        "rows": (["--dataset-rows", 999, "--block", 0, 0, 1, 1], ["999"]),
    }[case]
    proc = run_main("inpaint.py", *base, *args)
    assert_user_error(proc, *fragments)
    assert not (tmp_path / "out").exists()


def scripted(answers):
    answers = iter(answers)

    def ask(prompt):
        try:
            return next(answers)
        except StopIteration:
            raise EOFError from None
    return ask


def test_interactive_menu(tmp_path, tiny_prior):
    cfg, ckpt = tiny_prior.cfg, tiny_prior.last
    prior = load_prior(cfg, ckpt)
    settings = SundaeSampling(steps=4, nb_samples=2, min_steps=2)
    said = []
    # the prompts in order: the prior's own sampling settings (those its config's [sampling] holds), then
    # the menu's options
    fields = [f.name for f in dataclasses.fields(SundaeSampling) if "ignored" not in f.metadata] + \
        ["history", "class_idx", "seed"]
    answers = {"nb_samples": ["3"], "temperature": ["abc", "0.9"], "end_temperature": ["zz", "none"],
               "sample_proportion": ["-1", ""], "history": ["yes"], "class_idx": ["9", ""]}
    edit = [a for name in fields for a in answers.get(name, [""])]
    session = InteractiveSampler(prior, settings, MenuOptions(), tmp_path / "inter", say=said.append, ask=scripted([
        "2",                     # repeat before any sample: refused politely
        "x",                     # not a menu choice: asked again
        "3", *edit,              # edit every setting (bad values re-asked)
        "1", "2", "4",
    ]))
    session.run()
    assert any("nothing sampled yet" in s for s in said)
    assert any("invalid choice 'x'" in s for s in said)
    assert any("'abc' is not a valid float" in s for s in said)
    assert any("'zz' is not a valid float (or none)" in s for s in said)
    assert any("sampling.sample_proportion: expected" in s for s in said)
    assert any("--class-idx 9" in s for s in said)  # out of range for 2 classes, re-asked
    assert session.settings.nb_samples == 3 and session.settings.temperature == 0.9
    assert session.settings.end_temperature is None and session.options.history
    files = sorted(p.name for p in (tmp_path / "inter").iterdir())
    assert files == ["sample-0000.gif", "sample-0000.png", "sample-0001.gif", "sample-0001.png"]
    # "repeat" reuses the seed: identical pictures
    assert (tmp_path / "inter/sample-0000.png").read_bytes() == (tmp_path / "inter/sample-0001.png").read_bytes()
    with Image.open(tmp_path / "inter/sample-0000.gif") as gif:
        assert gif.n_frames >= 2


def test_interactive_leaves_cleanly_on_ctrl_c(tmp_path, tiny_prior):
    cfg, ckpt = tiny_prior.cfg, tiny_prior.last
    settings = SundaeSampling(steps=2, nb_samples=1, min_steps=1)

    def interrupt(prompt):
        raise KeyboardInterrupt

    said = []
    InteractiveSampler(load_prior(cfg, ckpt), settings, MenuOptions(), tmp_path, ask=interrupt, say=said.append).run()
    assert said[-1].strip() == "bye"


def test_parse_value():
    assert parse_value(bool, " Yes ") is True and parse_value(int, "3") == 3
    assert parse_value(("unleashing", "maskgit"), "maskgit") == "maskgit"
    assert parse_value(float, "None", optional=True) is None
    for kind, text in ((int, "3.5"), (("unleashing", "maskgit"), "mask"), (float, "none")):
        with pytest.raises(UserError):
            parse_value(kind, text)


def test_gray_render_round_trip():
    tokens = torch.arange(16).reshape(1, 4, 4) % 5
    image = tokens_to_gray(tokens, 5, scale=1)
    assert torch.equal(((image[0, 0] + 1) / 2 * 4).round().long(), tokens[0])
