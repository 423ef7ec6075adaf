"""A trained prior ready to sample: config + EMA model + (optional) VQ-GAN decoder, and the flags
the sampling scripts share. The sampling flags are derived from the priors' Sampling settings
(priors.settings), one per field over every registered prior; a flag of another prior than the
config's is refused by name."""
import argparse
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from infra.config import check_value
from infra.devices import check_compiler, default_device, resolve_device
from infra.errors import UserError
from infra.precision import INFERENCE_PRECISIONS, check_precision, inference_precision
from latents.render import render_tokens
from priors import PRIORS, prior_for
from priors.base import Bucketed, Prior, a_prior
from priors.settings import field_kind, fields, with_overrides
from training.checkpoint import load_denoiser
from training.config import Config, load_config
from training.data import load_config_vqgan


def sampling_fields():
    """{field name: (the Sampling class that declares it first, its doc, the priors that take it)}
    over every registered prior's flag fields, in declaration order."""
    out = {}
    for name, prior in PRIORS.items():
        for f in fields(prior.Sampling, flags_only=True):
            cls, doc, owners = out.get(f.name, (prior.Sampling, f.metadata.get("doc", ""), []))
            out[f.name] = (cls, doc, owners + [name])
    return out


def flag(name):
    return f"--{name.replace('_', '-')}"


def add_prior_args(parser, sampling_flags=True):
    """The flags the sampling scripts share: the trained prior, its devices, the seed and (unless
    sampling_flags is off) the samplers' settings; unset sampling flags keep the config's."""
    parser.add_argument("--cfg-path", required=True, help="the TOML config the prior was trained with")
    parser.add_argument("--resume", required=True, help="training checkpoint (its EMA weights are used)")
    parser.add_argument("--device", default=None, help="device of the prior (default: cuda when available)")
    parser.add_argument("--vqgan-device", default="cpu", help="device of the VQ-GAN decoder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="32",
                        help="inference autocast (bf16 on CPU or GPU, 16 on GPU); draws stay float32")
    parser.add_argument("--compile", action="store_true",
                        help="sample through torch.compile (slow to start: for long jobs)")
    if not sampling_flags:
        return
    group = parser.add_argument_group("sampling (defaults: the config's [sampling]; each prior takes its own)")
    for name, (cls, doc, owners) in sampling_fields().items():
        kind, _ = field_kind(cls, name)
        which = "" if len(owners) == len(PRIORS) else f" ({' and '.join(owners)} priors)"
        if kind is bool:
            group.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction, default=None,
                               help=doc + which)
        elif isinstance(kind, tuple):
            group.add_argument(flag(name), dest=name, choices=kind, default=None, help=doc + which)
        else:
            group.add_argument(flag(name), dest=name, type=kind, default=None, help=doc + which)


def sampling_from_args(prior, args):
    """The config's [sampling] with the command line's sampling flags set, each checked by its
    field's rules and named by its flag; a flag of another prior is refused."""
    known = sampling_fields()
    given = {name: getattr(args, name) for name in known if getattr(args, name, None) is not None}
    hints = typing.get_type_hints(prior.type.Sampling, include_extras=True)
    for name, value in given.items():
        if name not in hints:
            raise UserError(f"{flag(name)}: a sampling setting of {' and '.join(known[name][2])} priors, but "
                            f"{prior.cfg.path} trains {a_prior(prior.type.name)}")
        check_value(value, hints[name], flag(name))
    return with_overrides(prior.cfg.sampling, given)


def prior_from_args(args, max_batch=None):
    """The prior that add_prior_args' flags name, at --precision, compiled with --compile (for
    batches up to max_batch)."""
    prior = load_prior(args.cfg_path, args.resume, device=args.device or default_device(),
                       vqgan_device=args.vqgan_device)
    check_precision(prior.device, args.precision)  # refused here, before any sampling
    prior.precision = args.precision
    if args.compile:
        check_compiler(prior.device, "--compile")
        prior.compile(max_batch or 256)
    return prior


@dataclass
class TrainedPrior:
    """A trained prior ready to sample: its config, its prior (priors.base.Prior), its model (EMA
    weights, eval mode) and the VQ-GAN decoder of image datasets."""
    cfg: Config
    type: Prior
    model: torch.nn.Module
    vqgan: Optional[torch.nn.Module]
    device: torch.device
    precision: str = "32"  # inference autocast: "32" | "bf16" | "16" (infra.precision)
    sampling_model: Optional[torch.nn.Module] = None  # the model the samplers call (compiled or not)
    checkpoint: Optional[Path] = None  # the file the weights came from (for the record of a bulk job)

    def sample(self, start, settings, **kwargs):
        """The prior's sampler on this model (see Prior.sample), at self.precision."""
        with inference_precision(self.device, self.precision):
            return self.type.sample(self.sampling_model or self.model, start, settings, device=self.device, **kwargs)

    def compile(self, max_batch):
        """Sample through torch.compile (one graph per power-of-two batch up to max_batch)."""
        if not self.type.compiles:
            raise UserError(f"--compile: {a_prior(self.type.name)} samples eagerly only; priors that compile: "
                            f"{', '.join(name for name, p in PRIORS.items() if p.compiles)}")
        self.sampling_model = Bucketed(self.model, max_batch)

    def check_sampling(self, settings):
        """UserError, before any sampling, for settings this prior cannot sample with."""
        self.type.check_sampling(settings)

    @property
    def latent_shape(self):
        return tuple(self.cfg.data.latent_shape)

    @property
    def num_tokens(self):
        return self.cfg.data.vocab_size

    @property
    def num_classes(self):
        return self.type.num_classes

    def check_class(self, class_idx):
        if class_idx is None:
            return
        if self.num_classes is None:
            raise UserError(f"--class-idx {class_idx}: the model in {self.cfg.path} is not class-conditional")
        if not 0 <= class_idx < self.num_classes:
            raise UserError(f"--class-idx {class_idx}: out of range, the model has classes "
                            f"0..{self.num_classes - 1}")

    def render(self, tokens):
        """(B, h, w) tokens -> (B, 3, H, W) images in [-1, 1] on the CPU."""
        return render_tokens(tokens, self.num_tokens, self.vqgan)


def load_prior(cfg_path, ckpt_path, device="cpu", vqgan_device=None):
    """Load a config, its trained model (EMA weights) and its VQ-GAN decoder if it has one."""
    cfg = load_config(cfg_path)
    device = resolve_device(device)
    model = load_denoiser(ckpt_path, cfg, device=device)
    vqgan = load_config_vqgan(cfg, resolve_device(vqgan_device or "cpu"))
    return TrainedPrior(cfg=cfg, type=prior_for(cfg), model=model, vqgan=vqgan, device=device,
                        checkpoint=Path(ckpt_path))
