"""The VQ-GAN training config: a taming-transformers YAML, plus one section of our own.

    model:
      base_learning_rate: 4.5e-6          # taming: lr = base * batch_size * processes
      target: taming.models.vqgan.VQModel
      params:
        embed_dim, n_embed, ddconfig       # the network (read by vqgan.config)
        lossconfig:
          target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
          params: {disc_start, disc_weight, codebook_weight, perceptual_weight, ...}
    data:
      params: {batch_size, num_workers}    # taming's; its dataset targets are ignored
    training:                              # ours: taming ignores this section
      max_steps, eval_every, adaptive_weight_max, diffaug, restart_dead_codes, ...

Read with the one config reader (infra.config), the file parsed once. Everything taming
reads stays where taming reads it, with taming's meaning, so the same file
also builds the model in taming's own code; what taming does not have lives under `training:`
(unknown keys inside `lossconfig.params` would make taming's constructor fail).
"""
from dataclasses import dataclass, field
from typing import Annotated, Literal, Optional

from omegaconf import OmegaConf

from infra.config import (ConfigError, Length, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Precision,
                          Probability, Range, build, field_names, read_yaml, section)
from vqgan.config import VQ_TARGETS, VQGANConfig, config_from_dict
from vqgan.discriminator import PatchDiscriminator
from vqgan.errors import VQGANError

LOSS_TARGET = "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"
# Latent datasets store indices as uint16 up to 2**16 codes, else int32 (latents.dataset)
MAX_CODES = 2**31


@dataclass(frozen=True)
class LossConfig:
    """`model.params.lossconfig.params`: taming's VQLPIPSWithDiscriminator arguments."""

    disc_start: NonNegativeInt  # step at which the discriminator and the GAN term switch on
    codebook_weight: NonNegativeFloat = 1.0
    pixelloss_weight: NonNegativeFloat = 1.0  # taming accepts and ignores it; here it weights L1
    perceptual_weight: NonNegativeFloat = 1.0  # LPIPS; 0 (or no local weights) switches it off
    disc_num_layers: NonNegativeInt = 3
    disc_in_channels: PositiveInt = 3
    disc_ndf: PositiveInt = 64
    disc_factor: NonNegativeFloat = 1.0  # multiplies both GAN terms once switched on
    disc_weight: NonNegativeFloat = 1.0  # multiplies the adaptive weight
    disc_loss: Literal["hinge", "vanilla"] = "hinge"
    disc_conditional: Literal[False] = False  # only False is supported
    use_actnorm: Literal[False] = False  # only False is supported


@dataclass(frozen=True)
class DataParams:
    """The two keys of taming's `data.params` we use."""

    batch_size: PositiveInt = 8
    num_workers: NonNegativeInt = 0


@dataclass(frozen=True)
class TrainingConfig:
    """The `training:` section (ours)."""

    max_steps: PositiveInt = 100_000
    eval_every: PositiveInt = 1000  # steps between evaluations on the held-out images
    checkpoint_every: PositiveInt = 5000  # steps between numbered checkpoints (last.ckpt too)
    log_every: PositiveInt = 50
    eval_fraction: Annotated[float, Range(0, 1, low_open=True, high_open=True)] = 0.05  # held out
    max_eval_images: PositiveInt = 256  # held-out images used at each evaluation
    recon_images: NonNegativeInt = 8  # originals and reconstructions in each logged grid
    # Unleashing Transformers' fix: the adaptive GAN weight is clamped to [0, this]
    # (taming clamps at 1e4, which in practice never binds)
    adaptive_weight_max: NonNegativeFloat = 1.0
    diffaug: bool = True  # DiffAugment of the discriminator's real and fake inputs
    diffaug_translation: Probability = 0.125  # largest shift, as a fraction of the side
    restart_dead_codes: bool = False  # re-seed codes unused over a window from encoder outputs
    codebook_window: Optional[PositiveInt] = None  # steps per usage window; None: one data pass
    lpips_weights: Optional[str] = None  # local LPIPS weights (see vqgan.lpips); never downloaded
    scale_lr: bool = True  # taming's rule: lr = base_learning_rate * batch_size * processes
    adam_betas: Annotated[list[Probability], Length(2)] = field(default_factory=lambda: [0.5, 0.9])
    precision: Precision = "32"


@dataclass(frozen=True)
class VQGANTrainConfig:
    model: VQGANConfig
    base_learning_rate: float
    loss: LossConfig
    data: DataParams
    training: TrainingConfig
    source: str
    raw: dict = field(compare=False, repr=False)  # the parsed YAML, for checkpoint metadata

    @property
    def resolution(self) -> int:
        return self.model.ddconfig.resolution


@dataclass(frozen=True)
class _ModelKeys:
    base_learning_rate: PositiveFloat


@dataclass(frozen=True)
class _LossKeys:
    target: str
    params: dict


def load_train_config(path) -> VQGANTrainConfig:
    """Read and validate a training YAML (parsed once); VQGANError naming the file and key."""
    raw = read_yaml(path)
    model = config_from_dict(raw, source=str(path))
    if model.key_prefix:
        raise VQGANError(f"{path}: a combined (Net2Net) config; train-vqgan.py trains the "
                         "VQ-GAN itself and needs its own config (model.target a VQModel)")
    try:
        return train_config_from_dict(raw, model, str(path))
    except ConfigError as e:
        raise VQGANError(str(e)) from None


def train_config_from_dict(raw, model: VQGANConfig, source="<dict>") -> VQGANTrainConfig:
    def fail(message):
        raise ConfigError(f"{source}: {message}")

    if model.quantizer != "vq" or model.target not in VQ_TARGETS:
        fail(f"model.target {model.target!r}: train-vqgan.py trains a vector-quantized VQModel "
             f"({', '.join(VQ_TARGETS)})")
    if model.n_embed > MAX_CODES:
        fail(f"model.params.n_embed = {model.n_embed} does not fit a latent dataset's int32 "
             f"token dtype; at most {MAX_CODES} codes")
    keys = build(_ModelKeys, section(raw, "model", source, only=field_names(_ModelKeys)), "model", source)
    loss_keys = build(_LossKeys, section(raw, "model.params.lossconfig", source, only=field_names(_LossKeys)),
                      "model.params.lossconfig", source)
    if loss_keys.target != LOSS_TARGET:
        fail(f"model.params.lossconfig.target must be {LOSS_TARGET}, got {loss_keys.target!r}")
    loss = build(LossConfig, loss_keys.params, "model.params.lossconfig.params", source)
    data = build(DataParams, section(raw, "data.params", source, optional=True, only=field_names(DataParams)),
                 "data.params", source)
    training = build(TrainingConfig, section(raw, "training", source, optional=True), "training", source)
    _validate(loss, model, fail)
    plain = OmegaConf.to_container(raw, resolve=False) if OmegaConf.is_config(raw) else dict(raw)
    return VQGANTrainConfig(model=model, base_learning_rate=keys.base_learning_rate, loss=loss, data=data,
                            training=training, source=source, raw=plain)


def _validate(loss, model, fail):
    """The checks that involve the architecture too."""
    lp = "model.params.lossconfig.params"
    dd = model.ddconfig
    if dd.resolution % dd.downsample_factor:
        fail(f"model.params.ddconfig.resolution = {dd.resolution}: training crops images to it, so it must be "
             f"divisible by the downsample factor {dd.downsample_factor} (2 ** (len(ch_mult) - 1))")
    if loss.disc_in_channels != model.ddconfig.out_ch:
        fail(f"{lp}.disc_in_channels = {loss.disc_in_channels} but the decoder makes "
             f"{model.ddconfig.out_ch}-channel images (ddconfig.out_ch)")
    if PatchDiscriminator.output_size(model.ddconfig.resolution, loss.disc_num_layers) < 1:
        fail(f"{lp}.disc_num_layers = {loss.disc_num_layers} is too deep for "
             f"{model.ddconfig.resolution}x{model.ddconfig.resolution} images; use fewer layers")
