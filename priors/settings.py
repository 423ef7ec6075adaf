"""The settings every prior declares once, as frozen dataclasses: `[prior]` (how it trains) and
`[sampling]` (how it samples). The config reader builds them, and the sampling scripts derive
their flags and the interactive menu its fields from them.

A field `end_<name>` beside a field `<name>` makes <name> a schedule: linear from <name> at the
first step to end_<name> at the last; an end left unset (None) is the start value (constant).
"""
import dataclasses
import typing
from typing import Annotated, Literal, Optional, Union

import torch

from infra.config import NonNegativeFloat, PositiveFloat, PositiveInt, check_fields, ignored, setting


@dataclasses.dataclass(frozen=True)
class PriorSettings:
    """[prior]: which prior learns the latents; each prior's subclass adds its training settings."""
    type: str = setting("sundae", "the prior: 'sundae', 'absorbing' or 'autoregressive' (priors.PRIORS)")

    def __post_init__(self):
        check_fields(self, "prior")


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """[sampling]: what every prior's sampler takes; each prior's subclass adds its own."""
    nb_samples: PositiveInt = setting(16, "how many samples sample.py and the training grids draw by default",
                                      flag=False)
    temperature: PositiveFloat = setting(1.0, "softmax temperature of the draws")
    sample_frequency: Optional[int] = ignored(None, "every evaluation draws a sample grid")

    def __post_init__(self):
        check_fields(self, "sampling")


@dataclasses.dataclass(frozen=True)
class ParallelSampling(SamplingSettings):
    """Samplers that update many positions per step over a budget of steps, with classifier-free
    guidance: logits = uncond + s (cond - uncond), s following its schedule over the steps."""
    steps: PositiveInt = setting(100, "model calls per sample, at most")
    guidance_scale: NonNegativeFloat = setting(
        1.0, "classifier-free guidance scale (1: the conditional model alone; needs net.cond_drop_prob > 0)")
    end_guidance_scale: Optional[NonNegativeFloat] = setting(None, "the guidance scale at the last step (unset: constant)")

    @property
    def guides(self):
        return self.guidance_scale != 1 or self.end_guidance_scale not in (None, 1)


def schedule(settings, name, steps=None):
    """(steps,) float64: settings.<name> linearly to settings.end_<name> (inclusive), over
    `steps` (default settings.steps); an unset end is the start value."""
    start, end = getattr(settings, name), getattr(settings, f"end_{name}")
    return torch.linspace(start, start if end is None else end, steps or settings.steps, dtype=torch.float64)


def scheduled(cls):
    """The names of a settings class's schedules (the fields with an end_ field)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return [name for name in names if f"end_{name}" in names]


def with_overrides(settings, values):
    """`settings` with `values` set and checked; a start value given without its end value makes
    a constant schedule (the end is unset), not a ramp to the old end."""
    values = dict(values)
    for name in scheduled(type(settings)):
        if name in values and f"end_{name}" not in values:
            values[f"end_{name}"] = None
    return dataclasses.replace(settings, **values)


def fields(cls, flags_only=False):
    """The settable fields of a settings class (the ignored compatibility keys left out); with
    flags_only, those that are also command-line flags."""
    return [f for f in dataclasses.fields(cls) if f.init and "ignored" not in f.metadata
            and not (flags_only and f.metadata.get("flag") is False)]


def field_kind(cls, name):
    """(kind, optional) of a settings field: kind is int, float, bool, str or a tuple of the
    allowed values of a Literal; optional when None is allowed (an unset end of a schedule)."""
    tp = typing.get_type_hints(cls, include_extras=True)[name]
    optional = False
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin is Union:
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            optional, tp = optional or len(args) < len(typing.get_args(tp)), args[0]
        elif origin is Literal:
            return typing.get_args(tp), optional
        else:
            return tp, optional
