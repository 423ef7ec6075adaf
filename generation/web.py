"""The web page behind `sample-interactive.py --web`: sample with the prior's own settings and
watch the grid being denoised step by step, inpaint a dataset row or an uploaded picture, and
download the images (PNG) and the tokens (.npy).

The work is done by plain functions over arrays (controls, read_controls, sample_batch,
frame_indices, keep_mask, inpaint_picture, ...); build_page only wires them to gradio. A user
mistake raises UserError in them and is shown on the page (gr.Error), never as a stack trace.
Nothing is fetched from outside: the theme uses system fonts, and analytics are off.
"""
import dataclasses
import functools
import inspect
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

import gradio as gr
import numpy as np
import torch
from einops import repeat
from PIL import Image

from generation.inpainting import figure_row, inpaint, load_inputs
from generation.interactive import MenuOptions, draw, grid_columns, grid_image, parse_value, render_partial
from generation.masks import block_mask
from infra.errors import UserError
from priors.base import a_prior
from priors.settings import field_kind, fields

MAX_SAMPLES = 64  # one request never ties the server up for long
MAX_FRAMES = 32  # frames of the step view replayed after a draw too fast to watch (evenly spaced)
FRAME_SECONDS = 0.05  # the step view shows the newest step at most this often
SHOWN_SIDE = 384  # pictures and grids are shown enlarged (whole pixels) to about this many pixels
GUIDANCE = ("guidance_scale", "end_guidance_scale")  # shown only to a prior trained to guide
PAGE_SKIPS = ("history",)  # MenuOptions the page does not show: it always keeps the steps
PAGE_DOCS = {"nb_samples": "the batch: grids per draw, completions per inpainting"}  # the page's own words

# System fonts only: gradio's default theme would load font files.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "SFMono-Regular", "monospace"])

PRESETS = {  # name -> (h, w) -> the (h, w) cells to regenerate; None: the painted region
    "painted region": None,
    "bottom half": lambda h, w: block_mask(h, w, h // 2, 0, h - h // 2, w),
    "centre box": lambda h, w: block_mask(h, w, h // 4, w // 4, max(1, h // 2), max(1, w // 2)),
}


# --- controls --------------------------------------------------------------------------------


class Control(NamedTuple):
    """One setting on the page: a field of the prior's Sampling or of MenuOptions."""
    name: str
    holder: type  # the dataclass that declares it
    kind: object  # int, float, bool, str or a tuple of allowed values (priors.settings.field_kind)
    optional: bool  # None allowed (an unset end of a schedule), typed as 'none'
    doc: str
    value: object  # the starting value


def can_guide(prior):
    """Whether the trained prior samples with classifier-free guidance (net.cond_drop_prob > 0)."""
    return prior.type.guidance and prior.type.null_class is not None


def controls(prior, settings, options):
    """The page's settings: the MenuOptions it uses (the class of a conditional prior, the seed),
    then every field of the prior's own Sampling settings; each starts at its value in `options`
    or `settings`."""
    skip = {type(settings): () if can_guide(prior) else GUIDANCE,
            MenuOptions: PAGE_SKIPS + (() if prior.num_classes is not None else ("class_idx",))}
    out = []
    for values in (options, settings):
        cls = type(values)
        for f in fields(cls):
            if f.name not in skip[cls]:
                kind, optional = field_kind(cls, f.name)
                doc = PAGE_DOCS.get(f.name, f.metadata.get("doc", ""))
                out.append(Control(f.name, cls, kind, optional, doc, getattr(values, f.name)))
    return out


def as_text(value):
    return "none" if value is None else str(value)


def read_controls(prior, controls, values, settings, options):
    """(settings, options) from the controls' values as the page sends them (text, a choice or a
    checkbox), each parsed as the terminal menu parses it and checked; UserError names the field."""
    changes = {MenuOptions: {}, type(settings): {}}
    for control, value in zip(controls, values, strict=True):
        try:
            changes[control.holder][control.name] = (
                value if isinstance(value, bool) else parse_value(control.kind, as_text(value), control.optional))
        except UserError as e:
            raise UserError(f"{control.name}: {e}") from None
    settings = dataclasses.replace(settings, **changes[type(settings)])  # checks each value
    options = dataclasses.replace(options, **changes[MenuOptions])
    prior.check_sampling(settings)
    if options.class_idx != -1:
        prior.check_class(options.class_idx)
    if settings.nb_samples > MAX_SAMPLES:
        raise UserError(f"nb_samples: at most {MAX_SAMPLES} on this page, got {settings.nb_samples} "
                        "(sample.py draws any number)")
    return settings, options


# --- sampling --------------------------------------------------------------------------------


class Drawn(NamedTuple):
    tokens: np.ndarray  # (N, h, w) final grids
    steps_used: np.ndarray  # (N,)
    history: list  # [start, after step 1, ...], each an (N, h, w) tensor
    seconds: float  # the sampler's time


@torch.inference_mode()
def sample_batch(prior, settings, options, on_step=None):
    """One batch as the menu draws it, with its steps: a Drawn; on_step(tokens) as each step ends."""
    start = time.perf_counter()
    result = draw(prior, settings, options.class_idx, options.seed, history=True, on_step=on_step)
    seconds = time.perf_counter() - start
    return Drawn(result.tokens.cpu().numpy(), result.steps_used.cpu().numpy(),
                 [step.cpu() for step in result.history], seconds)


def sample_live(prior, settings, options):
    """Draw one batch in a worker thread; yield (k, tokens of step k) while it runs, the newest
    step at most every FRAME_SECONDS (a fast sampler's steps are skipped, not queued), then
    (None, Drawn). The sampler's error, a user's mistake included, is raised here."""
    newest, outcome = {"step": -1, "tokens": None}, {}

    def on_step(tokens):
        newest["tokens"], newest["step"] = tokens.cpu(), newest["step"] + 1

    def work():
        try:
            outcome["drawn"] = sample_batch(prior, settings, options, on_step)
        except BaseException as e:  # handed to the page's thread, which shows or raises it
            outcome["error"] = e

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    shown = -1
    while worker.is_alive():
        worker.join(FRAME_SECONDS)
        step, tokens = newest["step"], newest["tokens"]
        if step > shown and worker.is_alive():
            shown = step
            yield step, tokens
    if "error" in outcome:
        raise outcome["error"]
    yield None, outcome["drawn"]


@torch.inference_mode()
def grid_of(prior, tokens):
    """(N, h, w) tokens (cells not drawn yet allowed) -> one grid, an (H, W, 3) uint8 array."""
    tokens = torch.as_tensor(tokens)
    return grid_image(render_partial(prior, tokens), grid_columns(len(tokens)))


def frame_indices(nb_frames, most=MAX_FRAMES):
    """Which of nb_frames history frames the step view streams: evenly spaced, first and last
    included."""
    return sorted(set(np.linspace(0, nb_frames - 1, min(nb_frames, most)).round().astype(int).tolist()))


def summary(drawn, options):
    used = drawn.steps_used
    return (f"steps used: mean {used.mean():.1f}, max {int(used.max())} · sampled in {drawn.seconds:.2f} s "
            f"· seed {options.seed}")


def save_downloads(directory, stem, image, tokens):
    """[PNG of `image` (H, W, 3 uint8), .npy of `tokens`] written in a new folder under `directory`."""
    folder = Path(tempfile.mkdtemp(dir=directory))
    png, npy = folder / f"{stem}.png", folder / f"{stem}-tokens.npy"
    Image.fromarray(image).save(png)
    np.save(npy, np.asarray(tokens, dtype=np.int64))
    return [str(png), str(npy)]


# --- inpainting ------------------------------------------------------------------------------


class Picture(NamedTuple):
    """A grid to inpaint: its name, (h, w) tokens, (3, H, W) image in [-1, 1] and class."""
    name: str
    tokens: torch.Tensor
    image: torch.Tensor
    label: int


def row_picture(prior, row):
    """Row `row` of the config's dataset (its eval split when it has one)."""
    return Picture(*load_inputs(prior, dataset_rows=[int(row)])[0])


def upload_picture(prior, array, workdir):
    """An uploaded picture ((H, W), (H, W, 3) or (H, W, 4) uint8), read as inpaint.py reads an
    image file: encoded by the VQ-GAN, or gray levels on the grid of a token-space config."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise UserError(f"picture: expected an 8-bit gray, RGB or RGBA image, got {array.dtype} "
                        f"of shape {array.shape}")
    h, w = prior.latent_shape
    if array.shape[0] < h or array.shape[1] < w:
        raise UserError(f"picture: {array.shape[0]}x{array.shape[1]} pixels is smaller than the model's "
                        f"{h}x{w} grid")
    path = Path(tempfile.mkdtemp(dir=workdir)) / "upload.png"
    Image.fromarray(array).convert("RGB").save(path)
    name, tokens, image, label = load_inputs(prior, images=path)[0]
    return Picture("upload", tokens, image, label)


def enlarged(pixels, side=SHOWN_SIDE):
    """(H, W, 3) uint8 -> (sH, sW, 3), each pixel repeated s times so that the longer side is about
    `side` pixels (small grids stay sharp on the page; painted pixels map back by whole cells)."""
    scale = max(1, side // max(pixels.shape[:2]))
    return repeat(pixels, "h w c -> (h sh) (w sw) c", sh=scale, sw=scale)


def picture_pixels(picture):
    """The picture as the page shows it for painting: (H, W, 3) uint8, enlarged."""
    return enlarged(grid_image(picture.image[None], nrow=1, padding=0))


def shows(background, picture):
    """Whether the editor's background is `picture` as the page showed it (else it is an upload)."""
    if background is None or picture is None:
        return False
    pixels = picture_pixels(picture)
    return background.shape[:2] == pixels.shape[:2] and np.array_equal(background[..., :3], pixels)


def pixels_per_cell(prior):
    """The side of a grid cell in the pictures the model reads: the VQ-GAN's factor, or 1."""
    return prior.vqgan.downsample_factor if prior.vqgan is not None else 1


def cells_of_pixels(size, target, f):
    """For a picture of `size` (H, W) fitted to `target` (H', W') pixels as image files are read
    (scaled to cover, centre-cropped: infra.images.image_transform), with cells of f x f pixels:
    the cell row of each pixel row and the cell column of each pixel column (-1: cropped off)."""
    scale = max(target[0] / size[0], target[1] / size[1])
    out = []
    for n, t in zip(size, target):
        covered = max(t, round(n * scale))
        offset = int(round((covered - t) / 2.0))
        at = np.floor((np.arange(n) + 0.5) * covered / n - offset).astype(np.int64)  # each pixel's centre
        out.append(np.where((at >= 0) & (at < t), at // f, -1))
    return out


def painted_keep(layers, latent_shape, f=1):
    """The editor's paint layers ((H, W, 4) RGBA, the picture's size) -> (h, w) keep-mask, the
    picture fitted to the grid as the model reads it (cells of f x f pixels): a cell is
    regenerated when any painted pixel falls in it."""
    h, w = latent_shape
    keep = torch.ones(h, w, dtype=torch.bool)
    if not layers:
        return keep
    shape = layers[0].shape[:2]
    if any(layer.ndim != 3 or layer.shape[:2] != shape or layer.shape[2] != 4 for layer in layers):
        raise UserError("painting: every layer must be an RGBA image the size of the picture")
    painted = np.any([layer[..., 3] > 0 for layer in layers], axis=0)  # colour without alpha is no paint
    rows, cols = cells_of_pixels(shape, (h * f, w * f), f)
    ys, xs = np.nonzero(painted)
    inside = (rows[ys] >= 0) & (cols[xs] >= 0)
    keep[torch.from_numpy(rows[ys][inside]), torch.from_numpy(cols[xs][inside])] = False
    return keep


def keep_mask(prior, preset, layers):
    """(h, w) keep-mask of a preset, or of the painted region; UserError when it keeps every cell
    or the prior cannot complete it."""
    if preset not in PRESETS:
        raise UserError(f"mask: '{preset}' is not one of {', '.join(PRESETS)}")
    shape = prior.latent_shape
    keep = painted_keep(layers, shape, pixels_per_cell(prior)) if PRESETS[preset] is None else ~PRESETS[preset](*shape)
    if keep.all():
        raise UserError("mask: it keeps every cell, so there is nothing to regenerate; paint the region "
                        "to regenerate on the picture, or choose a preset")
    prior.type.check_keep_mask(keep[None])  # e.g. a prior that completes raster prefixes only
    return keep


@torch.inference_mode()
def inpaint_picture(prior, picture, keep, settings, options):
    """settings.nb_samples completions of `picture`, the kept cells fixed: (K, h, w) tokens. The
    class is options.class_idx, or the picture's own when that is -1."""
    cond = None
    if prior.num_classes is not None:
        cond = options.class_idx if options.class_idx >= 0 else picture.label
    g = torch.Generator(device=prior.device).manual_seed(options.seed)
    return inpaint(prior, picture.tokens, keep, settings, settings.nb_samples, cond=cond, generator=g).cpu()


@torch.inference_mode()
def inpainting_figure(prior, picture, keep, tokens):
    """original | masked | completions, one row: an (H, W, 3) uint8 array."""
    return grid_image(figure_row(picture.image.cpu(), keep, prior.render(tokens)), nrow=len(tokens) + 2)


# --- the page --------------------------------------------------------------------------------


def shown(fn):
    """`fn` (a function or a generator function) with its UserErrors shown on the page."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args):
            try:
                yield from fn(*args)
            except UserError as e:
                raise gr.Error(str(e), print_exception=False) from None
        return stream

    @functools.wraps(fn)
    def call(*args):
        try:
            return fn(*args)
        except UserError as e:
            raise gr.Error(str(e), print_exception=False) from None
    return call


def describe(prior):
    h, w = prior.latent_shape
    parts = [f"{a_prior(f'**{prior.type.name}**')} over {h}x{w} grids of {prior.num_tokens} tokens",
             "decoded by its VQ-GAN" if prior.vqgan is not None else "shown as gray levels"]
    if prior.num_classes is not None:
        parts.append(f"classes 0..{prior.num_classes - 1}")
    if prior.type.guidance and not can_guide(prior):
        parts.append("no guidance (trained with net.cond_drop_prob = 0)")
    return f"`{prior.cfg.path}`: " + ", ".join(parts) + "."


def widget(control):
    """The gradio input of one control: a checkbox, a choice, or text parsed as the menu's."""
    named = dict(label=control.name, info=control.doc, elem_id=f"control-{control.name}")
    if control.kind is bool:
        return gr.Checkbox(value=control.value, **named)
    if isinstance(control.kind, tuple):
        choices = list(control.kind) + (["none"] if control.optional else [])
        return gr.Dropdown(choices, value=as_text(control.value), **named)
    return gr.Textbox(value=as_text(control.value), max_lines=1, **named)


def build_page(prior, settings, options, workdir):
    """The gradio Blocks for a loaded prior (generation.pretrained.TrainedPrior), its controls
    starting at `settings` and `options`; downloads are written under `workdir`."""
    settings_controls = controls(prior, settings, options)
    workdir = str(workdir)

    def read(values):
        return read_controls(prior, settings_controls, values, settings, options)

    @shown
    def sample_job(*values):
        s, o = read(values)
        yield gr.skip(), gr.skip(), gr.skip(), "sampling ...", gr.skip(), None
        started, live = time.perf_counter(), 0
        for k, drawn in sample_live(prior, s, o):
            if k is not None:  # the grid as it is now, while the sampler runs
                live += 1
                yield (gr.skip(), enlarged(grid_of(prior, drawn)), gr.Slider(maximum=max(k, 1), value=k),
                       f"step {k} · {time.perf_counter() - started:.2f} s", gr.skip(), gr.skip())
        last = len(drawn.history) - 1
        # a draw faster than the page's refresh showed few of its steps: replay them
        for k in frame_indices(len(drawn.history)) if live < min(len(drawn.history), MAX_FRAMES) // 2 else [last]:
            yield (gr.skip(), enlarged(grid_of(prior, drawn.history[k])), gr.Slider(maximum=last, value=k),
                   f"step {k} of {last} · sampled in {drawn.seconds:.2f} s", gr.skip(), gr.skip())
            time.sleep(FRAME_SECONDS)
        grid = grid_of(prior, drawn.tokens)
        yield (enlarged(grid), gr.skip(), gr.skip(), summary(drawn, o),
               save_downloads(workdir, f"samples-seed{o.seed}", grid, drawn.tokens), drawn.history)

    @shown
    def show_step(history, k):
        if not history:
            raise UserError("step: sample first")
        return enlarged(grid_of(prior, history[min(int(k), len(history) - 1)]))

    @shown
    def load_row(row):
        if row is None:
            raise UserError("dataset row: give a row number")
        picture = row_picture(prior, row)
        return picture_pixels(picture), picture, f"picture: {picture.name} (class {picture.label})"

    @shown
    def inpaint_job(picture, editor, preset, *values):
        s, o = read(values)
        background = (editor or {}).get("background")
        if background is None:
            raise UserError("picture: load a dataset row or upload a picture first")
        if not shows(background, picture):  # an upload
            picture = upload_picture(prior, background, workdir)
        keep = keep_mask(prior, preset, (editor or {}).get("layers") or [])
        start = time.perf_counter()
        tokens = inpaint_picture(prior, picture, keep, s, o)
        seconds = time.perf_counter() - start
        figure = inpainting_figure(prior, picture, keep, tokens)
        files = save_downloads(workdir, f"inpainting-{picture.name}-seed{o.seed}", figure, tokens.numpy())
        status = (f"{picture.name}: regenerated {int((~keep).sum())} of {keep.numel()} cells, "
                  f"{len(tokens)} completions in {seconds:.2f} s")
        return enlarged(figure, 3 * SHOWN_SIDE), files, status

    with gr.Blocks(title="SUNDAE-VQGAN sampler", analytics_enabled=False) as page:
        gr.Markdown(f"## SUNDAE-VQGAN sampler\n{describe(prior)}")
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                inputs = [widget(c) for c in settings_controls]
            with gr.Column(scale=3):
                with gr.Tab("Sample"):
                    sample_button = gr.Button("Generate", variant="primary", elem_id="generate")
                    sample_status = gr.Markdown(elem_id="sample-status")
                    with gr.Row():
                        grid = gr.Image(label="samples", format="png", interactive=False, elem_id="grid")
                        with gr.Column():
                            step_view = gr.Image(label="step by step", format="png", interactive=False,
                                                 elem_id="step-view")
                            step = gr.Slider(0, 1, value=0, step=1, label="step", elem_id="step")
                    sample_files = gr.File(label="downloads", file_count="multiple", elem_id="sample-files")
                    history = gr.State(None)
                with gr.Tab("Inpaint"):
                    with gr.Row():
                        row = gr.Number(value=0, precision=0, label="dataset row", elem_id="row")
                        row_button = gr.Button("Load row", elem_id="load-row")
                    editor = gr.ImageEditor(label="picture: paint the region to regenerate, or upload one",
                                            type="numpy", image_mode="RGBA", format="png", transforms=(),
                                            sources=("upload", "clipboard"), layers=False, elem_id="editor")
                    preset = gr.Radio(list(PRESETS), value="painted region", label="mask", elem_id="preset")
                    picture_status = gr.Markdown(elem_id="picture-status")
                    inpaint_button = gr.Button("Inpaint", variant="primary", elem_id="inpaint")
                    inpaint_status = gr.Markdown(elem_id="inpaint-status")
                    figure = gr.Image(label="original | masked | completions", format="png", interactive=False,
                                      elem_id="figure")
                    inpaint_files = gr.File(label="downloads", file_count="multiple", elem_id="inpaint-files")
                    picture = gr.State(None)
        # one job at a time on the model, whichever button started it (a second waits its turn)
        one = dict(concurrency_id="model", concurrency_limit=1)
        sample_button.click(sample_job, inputs, [grid, step_view, step, sample_status, sample_files, history], **one)
        step.input(show_step, [history, step], step_view, **one)
        row_button.click(load_row, row, [editor, picture, picture_status], **one)
        inpaint_button.click(inpaint_job, [picture, editor, preset, *inputs], [figure, inpaint_files, inpaint_status],
                             **one)
    return page


def serve(page, host, port, workdir):
    """Serve the page until Ctrl-C; one job at a time on the model."""
    page.queue().launch(
        server_name=host, server_port=port, theme=THEME, footer_links=[], allowed_paths=[str(workdir)],
        show_error=False)
