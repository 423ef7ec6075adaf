"""generation/web.py's plain functions: the controls derived from each prior's Sampling settings,
reading them back, masks from paint and presets, pictures, sampling and inpainting on the tiny
prior, and user mistakes as one-line errors shown on the page."""
import dataclasses
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from generation.inpainting import load_inputs
from generation.interactive import MenuOptions, render_partial
from generation.pretrained import load_prior
from generation.web import (GUIDANCE, MAX_SAMPLES, PRESETS, SHOWN_SIDE, as_text, build_page, cells_of_pixels, controls,
                            enlarged, frame_indices, grid_of, inpaint_picture, inpainting_figure, keep_mask,
                            painted_keep, picture_pixels, read_controls, row_picture, sample_batch, sample_live, shown,
                            shows, upload_picture)
from infra.errors import UserError
from latents.dataset import LatentDataset
from priors import PRIORS
from priors.autoregressive import check_raster_prefix
from priors.settings import field_kind, fields
from tests.helpers import vqgan_fixture

pytestmark = pytest.mark.usefixtures("single_thread")


def fake_prior(prior_class, num_classes=2, guides=True, latent_shape=(4, 4), check_keep_mask=lambda keep: None):
    """What the controls and masks read of a prior, for any registered prior class."""
    prior_type = SimpleNamespace(guidance=prior_class.guidance, null_class=num_classes if guides else None,
                                 check_keep_mask=check_keep_mask)
    return SimpleNamespace(type=prior_type, num_classes=num_classes, latent_shape=latent_shape, vqgan=None,
                           check_sampling=lambda s: None, check_class=lambda c: None)


@pytest.fixture(scope="module")
def prior(tiny_prior):
    return load_prior(tiny_prior.cfg, tiny_prior.last)


def page_values(page_controls):
    """The controls' starting values as the page sends them."""
    return [c.value if c.kind is bool else as_text(c.value) for c in page_controls]


# --- controls ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRIORS)
def test_the_controls_are_the_priors_own_sampling_fields(name):
    cls = PRIORS[name].Sampling
    settings, options = cls(), MenuOptions(seed=5)
    shown_controls = controls(fake_prior(PRIORS[name]), settings, options)
    assert [c.name for c in shown_controls] == ["class_idx", "seed"] + [f.name for f in fields(cls)]
    for c in shown_controls:
        holder = MenuOptions if c.name in ("class_idx", "seed") else cls
        assert c.holder is holder and (c.kind, c.optional) == field_kind(holder, c.name)
        assert c.value == getattr(options if holder is MenuOptions else settings, c.name)
    # read back unchanged: every field parses from the text the page shows
    assert read_controls(fake_prior(PRIORS[name]), shown_controls, page_values(shown_controls), settings,
                         options) == (settings, options)


@pytest.mark.parametrize("name", PRIORS)
def test_no_guidance_nor_class_controls_for_a_prior_that_cannot_use_them(name):
    cls = PRIORS[name].Sampling
    names = [c.name for c in controls(fake_prior(PRIORS[name], num_classes=None, guides=False), cls(), MenuOptions())]
    assert names == ["seed"] + [f.name for f in fields(cls) if f.name not in GUIDANCE]


def test_read_controls_parses_and_checks_each_value(prior):
    settings, options = prior.cfg.sampling, MenuOptions()
    page = controls(prior, settings, options)
    names = [c.name for c in page]

    def read(**changes):
        values = page_values(page)
        for name, value in changes.items():
            values[names.index(name)] = value
        return read_controls(prior, page, values, settings, options)

    s, o = read(temperature="0.5", end_temperature="2", class_idx="1", seed="9", early_stop=False)
    assert (s.temperature, s.end_temperature, s.early_stop, o.class_idx, o.seed) == (0.5, 2.0, False, 1, 9)
    assert read(end_temperature="none")[0].end_temperature is None
    for changes, fragment in (({"temperature": "abc"}, "temperature: 'abc' is not a valid float"),
                              ({"temperature": "0"}, "sampling.temperature: expected float > 0"),
                              ({"steps": "2.5"}, "steps: '2.5' is not a valid int"),
                              ({"class_idx": "7"}, "--class-idx 7: out of range"),
                              ({"nb_samples": str(MAX_SAMPLES + 1)}, f"nb_samples: at most {MAX_SAMPLES}")):
        with pytest.raises(UserError, match=fragment):
            read(**changes)


# --- masks -------------------------------------------------------------------------------------


def layer(height, width, painted=()):
    """An RGBA paint layer, opaque at the (y, x) pixels given; paint colour without alpha elsewhere."""
    pixels = np.zeros((height, width, 4), np.uint8)
    pixels[..., 0] = 255  # a colour with alpha 0 is not paint
    for y, x in painted:
        pixels[y, x, 3] = 255
    return pixels


def test_a_cell_is_regenerated_when_any_painted_pixel_falls_in_it():
    # a 32x32 picture of a 4x4 grid: 8 pixels per cell
    keep = painted_keep([layer(32, 32, [(9, 30)]), layer(32, 32, [(0, 0)])], (4, 4))
    expected = torch.ones(4, 4, dtype=torch.bool)
    expected[1, 3] = expected[0, 0] = False
    assert torch.equal(keep, expected)
    assert painted_keep([], (4, 4)).all() and painted_keep([layer(32, 32)], (4, 4)).all()
    # a non-square 2x3 grid of cells of f = 2 pixels: the model reads 4x6 pixels; shown twice as large
    assert torch.equal(painted_keep([layer(4, 6, [(3, 5)])], (2, 3), f=2), torch.tensor([[1, 1, 1], [1, 1, 0]]).bool())
    assert torch.equal(painted_keep([layer(8, 12, [(3, 7)])], (2, 3), f=2), torch.tensor([[1, 0, 1], [1, 1, 1]]).bool())
    for layers in ([layer(32, 32), layer(16, 16)], [layer(32, 32)[..., :3]]):
        with pytest.raises(UserError, match="painting: every layer must be an RGBA image the size of the picture"):
            painted_keep(layers, (4, 4))


def test_paint_on_an_upload_follows_the_crop_the_model_reads():
    # 48 x 30 pixels onto a 4 x 4 grid: scaled to 6 x 4 cells, the centre 4 rows kept (pixel rows 8..39)
    rows, cols = cells_of_pixels((48, 30), (4, 4), 1)
    assert list(rows[[0, 7, 8, 15, 16, 39, 40, 47]]) == [-1, -1, 0, 0, 1, 3, -1, -1]
    assert list(cols[[0, 6, 7, 29]]) == [0, 0, 1, 3]
    keep = painted_keep([layer(48, 30, [(3, 0), (44, 29), (20, 29)])], (4, 4))  # two of them cropped off
    assert (~keep).nonzero().tolist() == [[1, 3]]
    # the picture the page shows for a row: whole cells
    rows, _ = cells_of_pixels((384, 384), (4, 4), 1)
    assert (np.bincount(rows) == 96).all()


def test_presets_and_masks_that_keep_everything():
    prior = fake_prior(PRIORS["sundae"], latent_shape=(4, 6))
    bottom = keep_mask(prior, "bottom half", [])
    assert bottom[:2].all() and not bottom[2:].any()
    centre = keep_mask(prior, "centre box", [])
    assert (~centre).sum() == 2 * 3 and not centre[1:3, 1:4].any()
    assert (~keep_mask(prior, "painted region", [layer(8, 12, [(0, 0)])])).sum() == 1
    with pytest.raises(UserError, match="keeps every cell"):
        keep_mask(prior, "painted region", [layer(8, 12)])
    with pytest.raises(UserError, match="not one of"):
        keep_mask(prior, "left half", [])
    # a prior that completes raster prefixes only refuses the centre box, not the bottom half
    raster = fake_prior(PRIORS["autoregressive"], check_keep_mask=check_raster_prefix)
    keep_mask(raster, "bottom half", [])
    with pytest.raises(UserError, match="raster-order prefix"):
        keep_mask(raster, "centre box", [])
    assert set(PRESETS) == {"painted region", "bottom half", "centre box"}


# --- sampling and inpainting on the tiny prior ---------------------------------------------------


def test_sample_batch_keeps_its_steps_and_draws_grids(prior):
    settings = dataclasses.replace(prior.cfg.sampling, nb_samples=4, steps=5, min_steps=5)
    drawn = sample_batch(prior, settings, MenuOptions(seed=3))
    assert drawn.tokens.shape == (4, 4, 4) and len(drawn.history) == 6
    assert np.array_equal(drawn.history[-1].numpy(), drawn.tokens) and (drawn.steps_used == 5).all()
    assert np.array_equal(sample_batch(prior, settings, MenuOptions(seed=3)).tokens, drawn.tokens)
    grid = grid_of(prior, drawn.tokens)  # 2 x 2 grids of 16 pixels, 2 pixels apart
    assert grid.shape == (38, 38, 3) and grid.dtype == np.uint8
    assert enlarged(grid).shape == (38 * (SHOWN_SIDE // 38), 38 * (SHOWN_SIDE // 38), 3)
    assert frame_indices(6) == [0, 1, 2, 3, 4, 5]
    assert frame_indices(101, most=5) == [0, 25, 50, 75, 100] and frame_indices(1) == [0]


def test_steps_are_shown_while_the_sampler_runs(prior, monkeypatch):
    """A sampler slower than the page's refresh: every step reaches the page before the draw ends,
    as the tokens of that step; then the Drawn."""
    from generation import web

    slow = dataclasses.replace(prior.cfg.sampling, nb_samples=2, steps=6, min_steps=6)
    events = []

    def on_step_slowly(tokens):
        events.append("step")
        web.time.sleep(4 * web.FRAME_SECONDS)  # the page refreshes in between

    real = web.sample_batch
    monkeypatch.setattr(web, "sample_batch", lambda p, s, o, on_step: real(
        p, s, o, lambda t: (on_step(t), on_step_slowly(t))))
    seen = []
    for k, item in sample_live(prior, slow, MenuOptions(seed=3)):
        events.append("shown")
        seen.append((k, item))
    (*live, (final_k, drawn)) = seen
    assert final_k is None and len(drawn.history) == 7
    assert [k for k, _ in live] == list(range(len(live))) and len(live) >= 5  # in order, few missed
    for k, tokens in live:
        assert torch.equal(tokens, drawn.history[k])
    assert events.index("shown") < len(events) - 1 - events[::-1].index("step")  # shown before the end


def test_a_mistake_in_the_sampler_reaches_the_page(prior, monkeypatch):
    from generation import web

    def broken(*args):
        raise UserError("sampling.steps: expected int >= 1")

    monkeypatch.setattr(web, "sample_batch", broken)
    with pytest.raises(UserError, match="sampling.steps"):
        list(sample_live(prior, prior.cfg.sampling, MenuOptions()))


def test_cells_not_drawn_yet_render_gray(prior):
    tokens = torch.tensor([[[0, 4], [5, 2]]])  # 5: not drawn yet (the vocabulary is 0..4)
    image = render_partial(prior, tokens)[0]  # 4 pixels per cell
    assert image[:, 4:, :4].abs().max() == 0  # gray
    assert torch.equal(image[:, :4], prior.render(tokens.clamp(max=4))[0, :, :4])


def test_inpainting_a_dataset_row_keeps_the_known_cells(prior, tiny_prior):
    picture = row_picture(prior, 3)
    row_tokens, label = LatentDataset(tiny_prior.data, "eval")[3]
    assert torch.equal(picture.tokens, row_tokens) and picture.label == label
    keep = keep_mask(prior, "bottom half", [])
    settings = dataclasses.replace(prior.cfg.sampling, nb_samples=3)
    tokens = inpaint_picture(prior, picture, keep, settings, MenuOptions(seed=1))
    assert tokens.shape == (3, 4, 4) and (tokens[:, keep] == row_tokens[keep]).all()
    figure = inpainting_figure(prior, picture, keep, tokens)
    assert figure.shape == (2 + 16 + 2, 5 * (16 + 2) + 2, 3)
    with pytest.raises(UserError, match="--dataset-rows 99: out of range"):
        row_picture(prior, 99)


def test_an_upload_is_read_as_inpaint_py_reads_the_file(prior, tmp_path):
    pixels = (np.random.default_rng(0).random((40, 30, 4)) * 255).astype(np.uint8)
    pixels[..., 3] = 255
    picture = upload_picture(prior, pixels, tmp_path)
    Image.fromarray(pixels).convert("RGB").save(tmp_path / "same.png")
    assert torch.equal(picture.tokens, load_inputs(prior, images=tmp_path / "same.png")[0][1])
    shown_pixels = picture_pixels(picture)
    assert shown_pixels.shape == (384, 384, 3)  # 16 pixels, 24 times
    assert shows(np.dstack([shown_pixels, np.full(shown_pixels.shape[:2], 255, np.uint8)]), picture)
    assert not shows(shown_pixels[::2, ::2], picture) and not shows(None, picture)
    for bad, fragment in ((pixels.astype(np.float32), "expected an 8-bit"), (pixels[:2, :3], "2x3 pixels is smaller"),
                          (pixels[..., :2], "expected an 8-bit")):
        with pytest.raises(UserError, match=fragment):
            upload_picture(prior, bad, tmp_path)


def test_an_upload_through_a_vqgan_is_painted_in_cells_of_its_factor(tmp_path):
    from vqgan import load_vqgan

    fixture = vqgan_fixture("taming-f4")
    prior = fake_prior(PRIORS["sundae"], latent_shape=(8, 8))
    prior.vqgan = load_vqgan(fixture / "config.yaml", fixture / "model.ckpt")
    pixels = (np.random.default_rng(1).random((48, 40, 3)) * 255).astype(np.uint8)
    picture = upload_picture(prior, pixels, tmp_path)
    assert picture.tokens.shape == (8, 8) and tuple(picture.image.shape) == (3, 32, 32)  # 8 cells of 4 pixels
    shown_pixels = picture_pixels(picture)  # 12 times: 48 shown pixels a cell
    assert shown_pixels.shape == (384, 384, 3) and shows(shown_pixels, picture)
    keep = keep_mask(prior, "painted region", [layer(384, 384, [(47, 48), (383, 0)])])
    assert (~keep).nonzero().tolist() == [[0, 1], [7, 0]]


# --- the page ----------------------------------------------------------------------------------


def test_user_errors_are_shown_on_the_page_without_a_trace():
    def refuse(x):
        raise UserError(f"value {x}: wrong")

    def refuse_later(x):
        yield 1
        raise UserError(f"value {x}: wrong")

    with pytest.raises(gr.Error, match="value 3: wrong") as e:
        shown(refuse)(3)
    assert not e.value.print_exception
    stream = shown(refuse_later)(4)
    assert next(stream) == 1
    with pytest.raises(gr.Error, match="value 4: wrong"):
        next(stream)


def test_the_page_builds_with_one_input_per_control(prior, tmp_path):
    page = build_page(prior, prior.cfg.sampling, MenuOptions(), tmp_path)
    ids = {block.elem_id for block in page.blocks.values()}
    expected = {f"control-{c.name}" for c in controls(prior, prior.cfg.sampling, MenuOptions())}
    assert expected <= ids and {"generate", "step-view", "editor", "inpaint"} <= ids
    assert not page.analytics_enabled
