"""The terminal menu behind sample-interactive.py: sample, repeat, edit parameters, exit; and
what it shares with the web page (generation/web.py): its options, the parsing of typed values,
one seeded draw and the drawing of grids.

The menu reads with an injectable `ask` function so tests can drive it with scripted answers.
"""
import dataclasses
import math
from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import make_grid

from generation.inpainting import masked_preview
from infra.errors import UserError
from infra.files import atomic_path
from infra.images import save_png, to_unit
from priors.settings import field_kind, fields

MENU = """
  1) sample
  2) repeat last sample (same seed)
  3) edit parameters
  4) exit"""


@dataclasses.dataclass(frozen=True)
class MenuOptions:
    """What the menu adds to the prior's sampling settings."""
    history: bool = dataclasses.field(default=False, metadata={"doc": "also save a GIF of the sampling steps"})
    class_idx: int = dataclasses.field(default=-1, metadata={"doc": "class of every sample; -1: random classes"})
    seed: int = dataclasses.field(default=0, metadata={"doc": "seed of the draws"})


def parse_value(kind, text, optional=False):
    """Text typed at the prompt -> a value of `kind` (int, float, bool, str or a tuple of
    allowed values); 'none' unsets an optional value. UserError when it does not parse."""
    text = text.strip()
    try:
        if optional and text.lower() == "none":
            return None
        if isinstance(kind, tuple):
            if text in kind:
                return text
            raise ValueError
        if kind is bool:
            if text.lower() in ("y", "yes", "true", "1", "on"):
                return True
            if text.lower() in ("n", "no", "false", "0", "off"):
                return False
            raise ValueError
        return kind(text)
    except ValueError:
        expected = f"one of {', '.join(kind)}" if isinstance(kind, tuple) else f"valid {kind.__name__}"
        raise UserError(f"'{text}' is not a {expected}{' (or none)' if optional else ''}") from None


class InteractiveSampler:
    """The menu over a trained prior: `settings` are the prior's own sampling settings (the ones
    its config's [sampling] holds), edited field by field, beside the menu's options."""

    def __init__(self, prior, settings, options, out_dir, ask=input, say=print):
        self.prior, self.settings, self.options, self.out_dir = prior, settings, options, Path(out_dir)
        self.ask, self.say = ask, say
        self.count = 0
        self.last_seed = None

    def run(self):
        """The menu loop; returns on 'exit', end of input, or Ctrl-C."""
        try:
            while True:
                choice = self.ask_choice()
                if choice == 4:
                    return
                if choice == 1:
                    self.sample(seed=self.options.seed + self.count)
                elif choice == 2:
                    if self.last_seed is None:
                        self.say("nothing sampled yet")
                    else:
                        self.sample(seed=self.last_seed)
                elif choice == 3:
                    self.edit()
        except (EOFError, KeyboardInterrupt):
            self.say("\nbye")

    def ask_choice(self):
        while True:
            self.say(MENU)
            answer = self.ask("choice> ").strip()
            if answer in ("1", "2", "3", "4"):
                return int(answer)
            self.say(f"invalid choice '{answer}': type 1, 2, 3 or 4")

    def edit(self):
        """Ask for every setting in turn; Enter keeps the current value, bad input is re-asked."""
        for name, holder in [(f.name, "settings") for f in fields(type(self.settings))] + \
                            [(f.name, "options") for f in dataclasses.fields(MenuOptions)]:
            while True:
                current = getattr(getattr(self, holder), name)
                unset = " (= start)" if current is None and name.startswith("end_") else ""
                answer = self.ask(f"{name} [{current}{unset}]: ")
                if not answer.strip():
                    break
                try:
                    kind, optional = field_kind(type(getattr(self, holder)), name)
                    value = parse_value(kind, answer, optional)
                    candidate = dataclasses.replace(getattr(self, holder), **{name: value})  # checks the value
                    if name == "class_idx" and value != -1:
                        self.prior.check_class(value)
                except UserError as e:
                    self.say(f"  {e}; try again")
                    continue
                setattr(self, holder, candidate)
                break

    def sample(self, seed):
        s, prior = self.settings, self.prior
        result = draw(prior, s, self.options.class_idx, seed, history=self.options.history)
        nrow = grid_columns(s.nb_samples)
        path = self.out_dir / f"sample-{self.count:04d}.png"
        save_png(prior.render(result.tokens), path, nrow=nrow)
        self.say(f"wrote {path} (steps used: mean {result.steps_used.float().mean():.1f}, "
                 f"max {int(result.steps_used.max())}; seed {seed})")
        if self.options.history:
            gif = path.with_suffix(".gif")
            save_history_gif([render_partial(prior, step) for step in result.history], gif, nrow)
            self.say(f"wrote {gif} ({len(result.history)} frames)")
        self.count += 1
        self.last_seed = seed


def draw(prior, settings, class_idx, seed, history=False, on_step=None):
    """One batch of settings.nb_samples grids (a SampleResult): class class_idx for every sample
    of a conditional prior (-1: random classes), draws seeded by `seed`; on_step(tokens) as each
    step ends."""
    g = torch.Generator(device=prior.device).manual_seed(seed)
    n, cond = settings.nb_samples, None
    if prior.num_classes is not None:
        cond = (torch.full((n,), class_idx, device=prior.device) if class_idx >= 0
                else torch.randint(prior.num_classes, (n,), generator=g, device=prior.device))
    return prior.sample(prior.latent_shape, settings, nb_samples=n, cond=cond, generator=g, return_history=history,
                        on_step=on_step)


def grid_columns(n):
    """Columns of a grid of n samples: about square."""
    return max(1, int(math.sqrt(n)))


def render_partial(prior, tokens):
    """(B, h, w) tokens, some maybe not drawn yet (ids >= the vocabulary: an absorbing prior's
    mask, an autoregressive prior's unvisited cells) -> (B, 3, H, W) images in [-1, 1], those
    cells gray."""
    known = tokens < prior.num_tokens
    images = prior.render(torch.where(known, tokens, 0))
    return torch.stack([masked_preview(image, keep) for image, keep in zip(images, known.cpu())])


def grid_image(batch, nrow, padding=2):
    """A (B, 3, H, W) batch in [-1, 1] as one grid, an (H', W', 3) uint8 array."""
    grid = make_grid(to_unit(batch.float().cpu()), nrow=nrow, padding=padding)  # (3, H', W') in [0, 1]
    return (grid.permute(1, 2, 0) * 255).round().byte().numpy()


def save_history_gif(frames, path, nrow, ms_per_frame=120):
    """Animate a list of (B, 3, H, W) batches in [-1, 1] as a GIF of image grids, atomically."""
    images = [Image.fromarray(grid_image(batch, nrow)) for batch in frames]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=ms_per_frame, loop=0)
