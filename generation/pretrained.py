"""A trained prior ready to sample: config + EMA denoiser + (optional) VQ-GAN decoder, and the
sampling options the sampling scripts share."""
import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from infra.devices import check_compiler, default_device, resolve_device
from infra.precision import INFERENCE_PRECISIONS, check_precision, inference_precision
from training.checkpoint import load_denoiser
from training.config import Config, load_config, replace_section
from infra.errors import UserError
from priors.base import Bucketed, PriorType, prior_type
from latents.render import render_tokens
from vqgan import load_vqgan

PRIOR_SAMPLING_FLAGS = {"--decoder": "decoder", "--choice-temperature": "choice_temperature",
                        "--top-k": "top_k", "--top-p": "top_p"}
SAMPLING_FLAGS = [  # (flag, SamplingConfig field, type)
    ("--steps", "steps", int),
    ("--temperature", "temperature", float),
    ("--end-temperature", "end_temperature", float),
    ("--sample-proportion", "sample_proportion", float),
    ("--end-sample-proportion", "end_sample_proportion", float),
    ("--min-steps", "min_steps", int),
    ("--freeze-threshold", "freeze_threshold", float),
    ("--freeze-patience", "freeze_patience", int),
    ("--guidance-scale", "guidance_scale", float),
    ("--end-guidance-scale", "end_guidance_scale", float),
]


def add_prior_args(parser, sampling_flags=True):
    """The flags the sampling scripts share: the trained prior, its devices, the seed and (unless
    sampling_flags is off) the sampler's settings; unset sampling flags keep the config's."""
    parser.add_argument("--cfg-path", required=True, help="the TOML config the prior was trained with")
    parser.add_argument("--resume", required=True, help="training checkpoint (its EMA weights are used)")
    parser.add_argument("--device", default=None, help="device of the prior (default: cuda when available)")
    parser.add_argument("--vqgan-device", default="cpu", help="device of the VQ-GAN decoder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="32",
                        help="inference autocast (bf16 on CPU or GPU, 16 on GPU); draws stay float32")
    parser.add_argument("--compile", action="store_true",
                        help="sample through torch.compile (slow to start: for long jobs)")
    if sampling_flags:
        group = parser.add_argument_group("sampling (defaults: the config's [sampling])")
        for flag, field, kind in SAMPLING_FLAGS:
            group.add_argument(flag, type=kind, dest=field, default=None)
        group.add_argument("--no-early-stop", action="store_true", help="run every sample for all steps")
        group = parser.add_argument_group("the prior type's sampling settings (defaults: the config's [prior])")
        group.add_argument("--decoder", choices=["unleashing", "maskgit"], help="absorbing priors")
        group.add_argument("--choice-temperature", type=float, help="absorbing priors, MaskGIT decoder")
        group.add_argument("--top-k", type=int, help="autoregressive priors")
        group.add_argument("--top-p", type=float, help="autoregressive priors")


def sampling_config(section, args):
    """The config's [sampling] with the command line's overrides (checked like the file's)."""
    values = {field: getattr(args, field) for _, field, _ in SAMPLING_FLAGS if getattr(args, field, None) is not None}
    # A start value given on the command line without its end value means a constant schedule.
    for start, end in (("temperature", "end_temperature"), ("sample_proportion", "end_sample_proportion"),
                       ("guidance_scale", "end_guidance_scale")):
        if start in values and end not in values:
            values[end] = values[start]
    if getattr(args, "no_early_stop", False):
        values["early_stop"] = False
    return dataclasses.replace(section, **values)


def prior_from_args(args, max_batch=None):
    """The prior that add_prior_args' flags name, its [prior] sampling settings overridden, at
    --precision, compiled with --compile (for batches up to max_batch)."""
    overrides = {key: getattr(args, key, None) for key in PRIOR_SAMPLING_FLAGS.values()}
    prior = load_prior(args.cfg_path, args.resume, device=args.device or default_device(),
                       vqgan_device=args.vqgan_device, prior_overrides=overrides)
    check_precision(prior.device, args.precision)  # refused here, before any sampling
    prior.precision = args.precision
    if args.compile:
        check_compiler(prior.device, "--compile")
        prior.compile(max_batch or 256)
    return prior


@dataclass
class TrainedPrior:
    """A trained prior ready to sample: its config, its type (priors.base), its model (EMA
    weights, eval mode) and the VQ-GAN decoder of image datasets."""
    cfg: Config
    type: PriorType
    model: torch.nn.Module
    vqgan: Optional[torch.nn.Module]
    device: torch.device
    precision: str = "32"  # inference autocast: "32" | "bf16" | "16" (infra.precision)
    sampling_model: Optional[torch.nn.Module] = None  # the model the samplers call (compiled or not)

    def sample(self, start, sampling, **kwargs):
        """The prior type's sampler on this model (see PriorType.sample), at self.precision."""
        with inference_precision(self.device, self.precision):
            return self.type.sample(self.sampling_model or self.model, start, sampling, device=self.device, **kwargs)

    def compile(self, max_batch):
        """Sample through torch.compile (one graph per power-of-two batch up to max_batch)."""
        if self.type.name == "autoregressive":
            raise UserError("--compile: implemented for the sundae and absorbing priors (the "
                              "autoregressive sampler steps a KV cache)")
        self.sampling_model = Bucketed(self.model, max_batch)

    def check_sampling(self, sampling):
        """UserError, before any sampling, for settings this prior cannot sample with."""
        cond = torch.zeros(1, dtype=torch.long) if self.num_classes is not None else None
        self.type.guided(self.model, sampling, cond)

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
            raise UserError(f"--class-idx {class_idx}: the model in {self.cfg.path} is not class-conditional")
        if not 0 <= class_idx < self.num_classes:
            raise UserError(f"--class-idx {class_idx}: out of range, the model has classes "
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
        raise UserError(f"data.vocab_size = {cfg.data.vocab_size} but the VQ-GAN "
                          f"{cfg.vqgan.checkpoint} has {vqgan.codebook_size} codes")
    return vqgan


def load_prior(cfg_path, ckpt_path, device="cpu", vqgan_device=None, prior_overrides=None):
    """Load a config, its trained model (EMA weights) and its VQ-GAN decoder if it has one."""
    cfg = replace_section(load_config(cfg_path), "prior", **(prior_overrides or {}))
    if cfg.prior.misplaced():
        key, kind = cfg.prior.misplaced()
        raise UserError(f"--{key.replace('_', '-')}: a setting of {kind} priors, but {cfg_path} trains "
                          f"a {cfg.prior.type} prior")
    device = resolve_device(device)
    model = load_denoiser(ckpt_path, cfg, device=device)
    vqgan = load_config_vqgan(cfg, resolve_device(vqgan_device or "cpu"))
    return TrainedPrior(cfg=cfg, type=prior_type(cfg), model=model, vqgan=vqgan, device=device)

