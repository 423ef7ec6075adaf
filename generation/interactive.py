"""The terminal menu behind sample-interactive.py: sample, repeat, edit parameters, exit.

The menu reads with an injectable `ask` function so tests can drive it with scripted answers.
"""
import dataclasses
import math
from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import make_grid

from infra.errors import UserError
from infra.files import atomic_path
from infra.images import save_png, to_unit
from priors.sundae import SamplingConfig

MENU = """
  1) sample
  2) repeat last sample (same seed)
  3) edit parameters
  4) exit"""


@dataclasses.dataclass
class Params:
    steps: int
    nb_samples: int
    temperature: float
    end_temperature: float
    sample_proportion: float
    end_sample_proportion: float
    min_steps: int
    early_stop: bool = True
    freeze_threshold: float = 0.0
    freeze_patience: int = 1
    guidance_scale: float = 1.0
    end_guidance_scale: float = 1.0
    history: bool = False
    class_idx: int = -1  # -1: random classes (conditional models)
    seed: int = 0

    @classmethod
    def from_sampling(cls, s, seed=0):
        """The menu's starting values: a config's [sampling], end values made explicit."""
        return cls(steps=s.steps, nb_samples=s.nb_samples, temperature=s.temperature,
                   end_temperature=s.end_temperature or s.temperature,
                   sample_proportion=s.sample_proportion,
                   end_sample_proportion=s.end_sample_proportion or s.sample_proportion,
                   min_steps=s.min_steps, early_stop=s.early_stop, freeze_threshold=s.freeze_threshold,
                   freeze_patience=s.freeze_patience, guidance_scale=s.guidance_scale,
                   end_guidance_scale=s.guidance_scale if s.end_guidance_scale is None else s.end_guidance_scale,
                   seed=seed)

    def sampling(self):
        fields = {f.name for f in dataclasses.fields(SamplingConfig) if f.init}
        return SamplingConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in fields})


def parse_value(kind, text):
    """Text typed at the prompt -> a value of `kind` (UserError when it does not parse)."""
    text = text.strip()
    try:
        if kind is bool:
            if text.lower() in ("y", "yes", "true", "1", "on"):
                return True
            if text.lower() in ("n", "no", "false", "0", "off"):
                return False
            raise ValueError
        return kind(text)
    except ValueError:
        raise UserError(f"'{text}' is not a valid {kind.__name__}") from None


class InteractiveSampler:
    def __init__(self, prior, params, out_dir, ask=input, say=print):
        self.prior, self.params, self.out_dir = prior, params, Path(out_dir)
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
                    self.sample(seed=self.params.seed + self.count)
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
        """Ask for every parameter in turn; Enter keeps the current value, bad input is re-asked."""
        for field in dataclasses.fields(Params):
            while True:
                current = getattr(self.params, field.name)
                answer = self.ask(f"{field.name} [{current}]: ")
                if not answer.strip():
                    break
                try:
                    value = parse_value(field.type, answer)
                    candidate = dataclasses.replace(self.params, **{field.name: value})
                    self.validate(candidate)
                except UserError as e:
                    self.say(f"  {e}; try again")
                    continue
                self.params = candidate
                break

    def validate(self, params):
        params.sampling()  # SamplingConfig checks the sampler's own fields, nb_samples included
        if params.class_idx != -1:
            self.prior.check_class(params.class_idx)

    def sample(self, seed):
        p, prior = self.params, self.prior
        g = torch.Generator(device=prior.device).manual_seed(seed)
        cond = None
        if prior.num_classes is not None:
            cond = (torch.full((p.nb_samples,), p.class_idx, device=prior.device) if p.class_idx >= 0
                    else torch.randint(prior.num_classes, (p.nb_samples,), generator=g, device=prior.device))
        result = prior.sample(prior.latent_shape, p.sampling(), nb_samples=p.nb_samples, cond=cond,
                              generator=g, return_history=p.history)
        nrow = max(1, int(math.sqrt(p.nb_samples)))
        path = self.out_dir / f"sample-{self.count:04d}.png"
        save_png(prior.render(result.tokens), path, nrow=nrow)
        self.say(f"wrote {path} (steps used: mean {result.steps_used.float().mean():.1f}, "
                 f"max {int(result.steps_used.max())}; seed {seed})")
        if p.history:
            gif = path.with_suffix(".gif")
            save_history_gif([prior.render(step) for step in result.history], gif, nrow)
            self.say(f"wrote {gif} ({len(result.history)} frames)")
        self.count += 1
        self.last_seed = seed


def save_history_gif(frames, path, nrow, ms_per_frame=120):
    """Animate a list of (B, 3, H, W) batches in [-1, 1] as a GIF of image grids, atomically."""
    images = []
    for batch in frames:
        grid = make_grid(to_unit(batch), nrow=nrow, padding=2)  # (3, H', W') in [0, 1]
        array = (grid.permute(1, 2, 0) * 255).round().byte().numpy()
        images.append(Image.fromarray(array))
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=ms_per_frame, loop=0)
