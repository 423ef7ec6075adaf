"""The SUNDAE sampler: a few parallel denoising steps from noise, with per-sample early stopping.

One sampler serves sample.py, inpaint.py, sample-interactive.py and the training sample grids.
"""
import dataclasses
from typing import Annotated, NamedTuple, Optional

import torch

from infra.config import NonNegativeFloat, PositiveFloat, PositiveInt, Range, UnitFloat, check_fields, ignored
from priors.categorical import sample_categorical
from priors.errors import PriorError
from priors.grids import cond_for, count, keep_mask_for, start_grid

OpenUnit = Annotated[float, Range(0, 1, low_open=True)]  # (0, 1]


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to sample: the [sampling] section of a config, passed to `sample` as it is.

    end_* default to their start value (a constant schedule). Values are checked on
    construction, so dataclasses.replace(cfg, steps=0) raises too.
    """

    steps: PositiveInt = 100  # at most this many model calls per sample
    temperature: PositiveFloat = 1.0
    end_temperature: Optional[PositiveFloat] = None
    sample_proportion: OpenUnit = 0.5  # probability that a position takes its newly drawn token
    end_sample_proportion: Optional[OpenUnit] = None
    min_steps: PositiveInt = 10  # no sample freezes before it has used this many steps
    early_stop: bool = True
    # Freezing rule: a step is "quiet" for a sample when it changes at most this fraction of its
    # tokens, and a sample freezes after `freeze_patience` quiet steps in a row. The paper's rule,
    # the default, is 0 and 1: freeze after one step that changes nothing.
    freeze_threshold: UnitFloat = 0.0
    freeze_patience: PositiveInt = 1
    nb_samples: PositiveInt = 16  # how many to draw by default (sample.py, training grids)
    # classifier-free guidance (priors trained with net.cond_drop_prob > 0): logits = uncond +
    # scale * (cond - uncond), the scale linear from guidance_scale to end_guidance_scale over the
    # steps; 1 is the conditional model alone
    guidance_scale: NonNegativeFloat = 1.0
    end_guidance_scale: Optional[NonNegativeFloat] = None
    sample_frequency: Optional[int] = ignored(None, "every evaluation draws a sample grid")

    def __post_init__(self):
        check_fields(self, "sampling")


def temperature_schedule(cfg):
    """(steps,) float64: the temperature of each step, linear from start to end inclusive."""
    end = cfg.temperature if cfg.end_temperature is None else cfg.end_temperature
    return torch.linspace(cfg.temperature, end, cfg.steps, dtype=torch.float64)


def guidance_schedule(cfg):
    """(steps,) float64: the guidance scale of each step, linear from start to end inclusive."""
    end = cfg.guidance_scale if cfg.end_guidance_scale is None else cfg.end_guidance_scale
    return torch.linspace(cfg.guidance_scale, end, cfg.steps, dtype=torch.float64)


def proportion_schedule(cfg):
    """(steps,) float64: the update proportion of each step, linear from start to end inclusive."""
    end = cfg.sample_proportion if cfg.end_sample_proportion is None else cfg.end_sample_proportion
    return torch.linspace(cfg.sample_proportion, end, cfg.steps, dtype=torch.float64)


class SampleResult(NamedTuple):
    tokens: torch.Tensor  # (N, h, w) final grids
    steps_used: torch.Tensor  # (N,) LongTensor, model steps each sample consumed
    history: Optional[list]  # [start, after step 1, ...], each (N, h, w); None unless requested


@torch.inference_mode()
def sample(
    model,
    start,
    cfg,
    *,
    num_tokens,
    nb_samples=None,
    cond=None,
    keep_mask=None,
    generator=None,
    device=None,
    return_history=False,
):
    """Sample token grids by iterated parallel denoising.

    model(tokens (A, h, w), cond (A, ...) or None, at=(A, h, w) bool) -> logits (K, V) at the
    True positions of `at`, in row-major order, V == num_tokens; pass the EMA model in eval mode. start: a shape, (h, w) with nb_samples or (N, h, w), to start
    from uniform random tokens; or a LongTensor, (h, w) with nb_samples or (N, h, w), to start
    from those tokens. keep_mask: bool, (h, w) or (N, h, w), True where the start tokens must be
    kept (inpainting); it needs start tokens, and the other positions start from uniform noise.
    The model always sees the whole grid, kept tokens included. cond: None or a tensor whose
    first dimension is N (e.g. (N,) class labels).

    Step t (0-based) picks each free position with probability proportion_t and replaces its
    token with a draw from softmax(model(x) / temperature_t) there. Freezing: a sample is frozen
    after step t if t + 1 >= min_steps and its last `freeze_patience` steps each changed at most
    `freeze_threshold` of its tokens (the paper: one step that changed none); a frozen sample
    leaves the batch (the model is called on the remaining rows only) and keeps its grid. With
    early_stop off nothing freezes and every sample uses `steps` steps.

    All randomness comes from `generator` (which must live on `device`), so a seeded CPU run is
    reproducible. device defaults to start's device for tensors, else CPU.
    """
    tokens, keep_mask = _starting_grid(start, num_tokens, nb_samples, keep_mask, generator, device)
    n = tokens.shape[0]
    device = tokens.device
    cond = cond_for(cond, n, device)

    temperatures = temperature_schedule(cfg).tolist()
    proportions = proportion_schedule(cfg).tolist()
    steps_used = torch.zeros(n, dtype=torch.long, device=device)
    quiet_run = torch.zeros(n, dtype=torch.long, device=device)  # quiet steps in a row, per sample
    active = torch.arange(n, device=device)  # indices of the samples still being denoised
    history = [tokens.clone()] if return_history else None

    for step in range(cfg.steps):
        current = tokens[active]  # (A, h, w)
        take = torch.rand(current.shape, generator=generator, device=device) < proportions[step]
        if keep_mask is not None:
            take &= ~keep_mask[active]
        # Logits and draws at the K positions this step updates only: the same distribution as
        # drawing everywhere and keeping the drawn positions, at a share of the head's and the
        # draw's cost (at 32x32 x 8192 they are ~30% of a step: bench/README.md).
        logits = model(current, None if cond is None else cond[active], at=take)  # (K, V)
        if logits.shape[-1] != num_tokens:
            raise PriorError(
                f"model gives {logits.shape[-1]} logits per position, expected num_tokens={num_tokens}"
            )
        updated = current.clone()
        updated[take] = sample_categorical(logits.float() / temperatures[step], generator=generator)

        tokens[active] = updated
        steps_used[active] += 1
        if return_history:
            history.append(tokens.clone())

        if cfg.early_stop:
            changed = (updated != current).flatten(1).float().mean(dim=1)  # (A,) fraction of tokens
            quiet_run[active] = torch.where(changed <= cfg.freeze_threshold, quiet_run[active] + 1, 0)
            if step + 1 >= cfg.min_steps:
                active = active[quiet_run[active] < cfg.freeze_patience]  # the one host sync per step
                if active.numel() == 0:
                    break

    return SampleResult(tokens, steps_used, history)


def _starting_grid(start, num_tokens, nb_samples, keep_mask, generator, device):
    """Resolve `start` and `keep_mask` to an (N, h, w) LongTensor and an (N, h, w) mask or None."""
    count("num_tokens", num_tokens)
    tokens, shape, device = start_grid(start, nb_samples, device)
    if tokens is not None and tokens.numel() and (tokens.min() < 0 or tokens.max() >= num_tokens):
        raise PriorError(f"start tokens must lie in [0, {num_tokens}), got values outside")
    if keep_mask is None:
        return (torch.randint(num_tokens, shape, generator=generator, device=device) if tokens is None
                else tokens), None
    keep_mask = keep_mask_for(keep_mask, tokens)
    noise = torch.randint(num_tokens, shape, generator=generator, device=device)
    return torch.where(keep_mask, tokens, noise), keep_mask
