"""The VQ-GAN architecture, read from a taming-transformers or latent-diffusion YAML config.

Supported layouts (`model.target`):
  - `taming.models.vqgan.VQModel`, `taming.models.vqgan.GumbelVQ`,
    `ldm.models.autoencoder.VQModel` / `VQModelInterface`: autoencoder arguments in `model.params`;
  - "legacy" combined configs (taming's `Net2NetTransformer`, LDM diffusion models): the
    autoencoder is `model.params.first_stage_config`, and its checkpoint keys carry the
    prefix `first_stage_model.`.

Only the arguments that shape the network are read (with the one config reader, infra.config);
`lossconfig`, `data`, `lightning`, `ckpt_path` and the like are ignored and never opened.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from omegaconf import OmegaConf

from infra.config import (ConfigError, NonNegativeFloat, PositiveInt, Probability, build, field_names, node_at,
                          read_yaml, section)
from vqgan.errors import VQGANError

VQ_TARGETS = (
    "taming.models.vqgan.VQModel",
    "ldm.models.autoencoder.VQModel",
    "ldm.models.autoencoder.VQModelInterface",
)
GUMBEL_TARGETS = ("taming.models.vqgan.GumbelVQ",)
LEGACY_PREFIX = "first_stage_model."


@dataclass(frozen=True)
class DDConfig:
    """Encoder/decoder shape: the `ddconfig` block of a taming/LDM config."""

    ch: PositiveInt
    num_res_blocks: PositiveInt
    resolution: PositiveInt  # nominal: places attention, never limits the input size
    z_channels: PositiveInt
    in_channels: PositiveInt
    out_ch: PositiveInt
    ch_mult: tuple[PositiveInt, ...] = (1, 2, 4, 8)
    attn_resolutions: tuple[PositiveInt, ...] = ()
    dropout: Probability = 0.0  # [0, 1): a dropout of 1 zeroes every activation
    resamp_with_conv: bool = True
    attn_type: Literal["vanilla", "linear", "none"] = "vanilla"  # LDM only
    use_linear_attn: bool = False  # LDM: overrides attn_type with "linear"
    tanh_out: bool = False  # LDM only
    double_z: bool = False  # must be false for a VQ model
    give_pre_end: bool = False  # not supported

    @property
    def num_levels(self) -> int:
        return len(self.ch_mult)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (self.num_levels - 1)


@dataclass(frozen=True)
class AutoencoderParams:
    """The keys of `model.params` that shape the autoencoder (taming's other keys are ignored)."""

    n_embed: PositiveInt  # codebook size
    embed_dim: PositiveInt
    kl_weight: NonNegativeFloat = 1e-8  # GumbelVQ's prior weight, training only
    remap: str | None = None  # not supported


@dataclass(frozen=True)
class VQGANConfig:
    """Everything needed to build a `VQGAN`, plus where its weights sit in a checkpoint."""

    ddconfig: DDConfig
    n_embed: int  # codebook size
    embed_dim: int
    quantizer: str = "vq"  # "vq" (VectorQuantizer2) | "gumbel" (GumbelQuantize)
    beta: float = 0.25  # commitment weight, training only
    kl_weight: float = 1e-8  # Gumbel prior weight, training only
    key_prefix: str = ""  # "first_stage_model." for legacy combined checkpoints
    target: str = VQ_TARGETS[0]
    source: str = field(default="<dict>", compare=False)  # the file it came from, for messages


def read_config(path, legacy_cfg=None) -> VQGANConfig:
    """Parse a taming/LDM YAML file. `legacy_cfg`: None detects the layout, True forces the
    combined Net2Net layout, False forces the plain one."""
    try:
        raw = read_yaml(path)
    except ConfigError as e:
        raise VQGANError(str(e)) from None
    return config_from_dict(raw, source=str(path), legacy_cfg=legacy_cfg)


def config_from_dict(raw, source="<dict>", legacy_cfg=None) -> VQGANConfig:
    """The autoencoder of a whole parsed config (a dict or OmegaConf node with `model:`)."""
    try:
        return _autoencoder_config(raw, source, legacy_cfg)
    except ConfigError as e:  # the VQ-GAN stage reports its config mistakes as VQGANErrors
        raise VQGANError(str(e)) from None


def _autoencoder_config(raw, source, legacy_cfg):
    if not (isinstance(raw, dict) or OmegaConf.is_dict(raw)):
        raise ConfigError(f"{source}: expected a mapping with a 'model' key at the top level")
    section(raw, "model.params", source, only=[])  # it must be there, whatever the layout
    if legacy_cfg is None:
        legacy_cfg = node_at(raw, "model.params.first_stage_config", source) is not None
    where, prefix = "model", ""
    if legacy_cfg:
        where, prefix = "model.params.first_stage_config", LEGACY_PREFIX
    target = section(raw, where, source, only=["target"]).get("target")
    if target not in VQ_TARGETS + GUMBEL_TARGETS:
        hint = " (a combined config? try legacy_cfg / --legacy-cfg)" if not prefix else ""
        raise ConfigError(
            f"{source}: {where}.target: unsupported autoencoder target {target!r}{hint}; "
            f"expected one of {', '.join(VQ_TARGETS + GUMBEL_TARGETS)}")
    where = f"{where}.params"
    ae = build(AutoencoderParams, section(raw, where, source, only=field_names(AutoencoderParams)),
               where, source)
    if ae.remap is not None:
        raise ConfigError(f"{source}: {where}.remap is not supported (remapped codebooks)")
    dd = build(DDConfig, section(raw, f"{where}.ddconfig", source, only=field_names(DDConfig)),
               f"{where}.ddconfig", source)
    _check_ddconfig(dd, f"{source}: {where}.ddconfig")
    if dd.use_linear_attn:
        dd = dataclasses.replace(dd, attn_type="linear")
    gumbel = target in GUMBEL_TARGETS
    if gumbel and ae.embed_dim != dd.z_channels:
        # GumbelQuantize projects the quant_conv output (embed_dim channels) with a conv built
        # for z_channels inputs, so any other combination fails in the reference code as well.
        raise ConfigError(f"{source}: GumbelVQ needs {where}.embed_dim == ddconfig.z_channels, "
                          f"got {ae.embed_dim} and {dd.z_channels}")
    return VQGANConfig(ddconfig=dd, n_embed=ae.n_embed, embed_dim=ae.embed_dim,
                       quantizer="gumbel" if gumbel else "vq", kl_weight=ae.kl_weight,
                       key_prefix=prefix, target=target, source=source)


def _check_ddconfig(dd, where):
    if not dd.ch_mult:
        raise ConfigError(f"{where}.ch_mult must not be empty")
    for width in (dd.ch * m for m in dd.ch_mult):
        if width % 32:  # every width passes a 32-group GroupNorm
            raise ConfigError(f"{where}.ch * ch_mult gives {width} channels; every level width "
                              "must be a multiple of 32")
    if dd.double_z:
        raise ConfigError(f"{where}.double_z must be false for a VQ model")
    if dd.give_pre_end:
        raise ConfigError(f"{where}.give_pre_end: true is not supported")
