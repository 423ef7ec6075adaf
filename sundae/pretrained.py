"""A trained prior ready to sample: config + EMA denoiser + (optional) VQ-GAN decoder, and the
sampling options the sampling scripts share."""
import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from sundae.checkpoint import load_denoiser
from sundae.config import Config, load_config
from sundae.errors import SundaeError
from sundae.render import render_tokens
from sundae.sampler import SamplingConfig
from vqgan import load_vqgan

SAMPLING_FLAGS = [  # (flag, SamplingConfig field, type)
    ("--steps", "steps", int),
    ("--temperature", "temperature", float),
    ("--end-temperature", "end_temperature", float),
    ("--sample-proportion", "sample_proportion", float),
    ("--end-sample-proportion", "end_sample_proportion", float),
    ("--min-steps", "min_steps", int),
]


def add_sampling_args(parser):
    """The sampling flags of sample.py / inpaint.py; unset flags keep the config's [sampling]."""
    group = parser.add_argument_group("sampling (defaults: the config's [sampling])")
    for flag, field, kind in SAMPLING_FLAGS:
        group.add_argument(flag, type=kind, dest=field, default=None)
    group.add_argument("--no-early-stop", action="store_true", help="run every sample for all steps")


def sampling_config(section, args):
    """The config's [sampling] with the command line's overrides, as a plain SamplingConfig."""
    values = {f.name: getattr(section, f.name) for f in dataclasses.fields(SamplingConfig)}
    for _, field, _ in SAMPLING_FLAGS:
        if getattr(args, field, None) is not None:
            values[field] = getattr(args, field)
    # A start value given on the command line without its end value means a constant schedule.
    for start, end in (("temperature", "end_temperature"), ("sample_proportion", "end_sample_proportion")):
        if getattr(args, start, None) is not None and getattr(args, end, None) is None:
            values[end] = values[start]
    if getattr(args, "no_early_stop", False):
        values["early_stop"] = False
    return SamplingConfig(**values)


@dataclass
class Prior:
    cfg: Config
    model: torch.nn.Module
    vqgan: Optional[torch.nn.Module]
    device: torch.device

    @property
    def latent_shape(self):
        return tuple(self.cfg.data.latent_shape)

    @property
    def num_tokens(self):
        return self.cfg.data.vocab_size

    @property
    def num_classes(self):
        return self.cfg.net.num_classes if self.cfg.net.conditional else None

    def check_class(self, class_idx):
        if class_idx is None:
            return
        if self.num_classes is None:
            raise SundaeError(f"--class-idx {class_idx}: the model in {self.cfg.path} is not class-conditional")
        if not 0 <= class_idx < self.num_classes:
            raise SundaeError(f"--class-idx {class_idx}: out of range, the model has classes "
                              f"0..{self.num_classes - 1}")

    def render(self, tokens):
        """(B, h, w) tokens -> (B, 3, H, W) images in [-1, 1] on the CPU."""
        return render_tokens(tokens, self.num_tokens, self.vqgan)


def load_config_vqgan(cfg, device="cpu"):
    """The VQ-GAN a config's [vqgan] names (None without one), checked against data.vocab_size."""
    if cfg.vqgan is None:
        return None
    vqgan = load_vqgan(cfg.vqgan.config, cfg.vqgan.checkpoint, legacy_cfg=cfg.vqgan.legacy_cfg, device=device)
    if vqgan.codebook_size != cfg.data.vocab_size:
        raise SundaeError(f"data.vocab_size = {cfg.data.vocab_size} but the VQ-GAN "
                          f"{cfg.vqgan.checkpoint} has {vqgan.codebook_size} codes")
    return vqgan


def load_prior(cfg_path, ckpt_path, device="cpu", vqgan_device=None, load_decoder=True):
    """Load a config, its trained denoiser (EMA weights) and its VQ-GAN decoder if it has one."""
    cfg = load_config(cfg_path)
    device = torch.device(device)
    model = load_denoiser(ckpt_path, cfg, device=device)
    vqgan = load_config_vqgan(cfg, vqgan_device or "cpu") if load_decoder else None
    return Prior(cfg=cfg, model=model, vqgan=vqgan, device=device)
