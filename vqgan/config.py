"""The VQ-GAN architecture, read from a taming-transformers or latent-diffusion YAML config.

Supported layouts (`model.target`):
  - `taming.models.vqgan.VQModel`, `taming.models.vqgan.GumbelVQ`,
    `ldm.models.autoencoder.VQModel` / `VQModelInterface`: autoencoder arguments in `model.params`;
  - "legacy" combined configs (taming's `Net2NetTransformer`, LDM diffusion models): the
    autoencoder is `model.params.first_stage_config`, and its checkpoint keys carry the
    prefix `first_stage_model.`.

Only the arguments that shape the network are read; `lossconfig`, `data`, `lightning`,
`ckpt_path` and the like are ignored and never opened.
"""
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vqgan.errors import VQGANError

VQ_TARGETS = (
    "taming.models.vqgan.VQModel",
    "ldm.models.autoencoder.VQModel",
    "ldm.models.autoencoder.VQModelInterface",
)
GUMBEL_TARGETS = ("taming.models.vqgan.GumbelVQ",)
LEGACY_PREFIX = "first_stage_model."
ATTN_TYPES = ("vanilla", "linear", "none")


@dataclass(frozen=True)
class DDConfig:
    """Encoder/decoder shape: the `ddconfig` block of a taming/LDM config."""

    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    attn_resolutions: tuple[int, ...]
    resolution: int  # nominal: places attention, never limits the input size
    z_channels: int
    in_channels: int = 3
    out_ch: int = 3
    dropout: float = 0.0
    resamp_with_conv: bool = True
    attn_type: str = "vanilla"  # LDM only: "vanilla" | "linear" | "none"
    tanh_out: bool = False  # LDM only

    @property
    def num_levels(self) -> int:
        return len(self.ch_mult)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (self.num_levels - 1)


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
    path = Path(path)
    if not path.is_file():
        raise VQGANError(f"config not found (or not a file): {path}")
    try:
        raw = OmegaConf.load(path)
    except (OSError, UnicodeDecodeError) as e:
        raise VQGANError(f"cannot read config {path}: {e}") from None
    except yaml.YAMLError as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VQGANError(f"invalid YAML in config {path}: {first_line}") from None
    return config_from_dict(raw, source=str(path), legacy_cfg=legacy_cfg)


def config_from_dict(raw, source="<dict>", legacy_cfg=None) -> VQGANConfig:
    """Parse a whole config (a dict or DictConfig with a top-level `model:`), as in a YAML file."""
    if not _is_mapping(raw):
        raise VQGANError(f"{source}: expected a mapping with a 'model' key at the top level")
    reader = _Reader(source)
    model = reader.mapping(raw, "model", "")
    params = reader.mapping(model, "params", "model")
    if legacy_cfg is None:
        legacy_cfg = "first_stage_config" in params
    if legacy_cfg:
        first_stage = reader.mapping(params, "first_stage_config", "model.params")
        target = reader.value(first_stage, "target", "model.params.first_stage_config", str)
        ae_params = reader.mapping(first_stage, "params", "model.params.first_stage_config")
        where, prefix = "model.params.first_stage_config.params", LEGACY_PREFIX
    else:
        target = reader.value(model, "target", "model", str)
        ae_params, where, prefix = params, "model.params", ""
    return _autoencoder_config(reader, target, ae_params, where, prefix)


def _autoencoder_config(reader, target, params, where, prefix) -> VQGANConfig:
    if target not in VQ_TARGETS + GUMBEL_TARGETS:
        hint = " (a combined config? try legacy_cfg / --legacy-cfg)" if not prefix else ""
        raise VQGANError(
            f"{reader.source}: unsupported autoencoder target {target!r}{hint}; "
            f"expected one of {', '.join(VQ_TARGETS + GUMBEL_TARGETS)}"
        )
    if params.get("remap") is not None:
        raise VQGANError(f"{reader.source}: {where}.remap is not supported (remapped codebooks)")
    ddconfig = _ddconfig(reader, reader.mapping(params, "ddconfig", where), f"{where}.ddconfig")
    gumbel = target in GUMBEL_TARGETS
    config = VQGANConfig(
        ddconfig=ddconfig,
        n_embed=reader.positive_int(params, "n_embed", where),
        embed_dim=reader.positive_int(params, "embed_dim", where),
        quantizer="gumbel" if gumbel else "vq",
        kl_weight=float(reader.value(params, "kl_weight", where, (int, float), 1e-8)),
        key_prefix=prefix,
        target=target,
        source=reader.source,
    )
    if gumbel and config.embed_dim != ddconfig.z_channels:
        # GumbelQuantize projects the quant_conv output (embed_dim channels) with a conv built
        # for z_channels inputs, so any other combination fails in the reference code as well.
        raise VQGANError(
            f"{reader.source}: GumbelVQ needs {where}.embed_dim == ddconfig.z_channels, "
            f"got {config.embed_dim} and {ddconfig.z_channels}"
        )
    return config


def _ddconfig(reader, dd, where) -> DDConfig:
    ch = reader.positive_int(dd, "ch", where)
    ch_mult = reader.int_list(dd, "ch_mult", where, default=(1, 2, 4, 8), positive=True)
    if not ch_mult:
        raise VQGANError(f"{reader.source}: {where}.ch_mult must not be empty")
    for width in (ch * m for m in ch_mult):
        if width % 32:  # every width passes a 32-group GroupNorm
            raise VQGANError(
                f"{reader.source}: {where}.ch * ch_mult gives {width} channels; "
                "every level width must be a multiple of 32"
            )
    if reader.value(dd, "double_z", where, bool, False):
        raise VQGANError(f"{reader.source}: {where}.double_z must be false for a VQ model")
    if reader.value(dd, "give_pre_end", where, bool, False):
        raise VQGANError(f"{reader.source}: {where}.give_pre_end: true is not supported")
    attn_type = reader.value(dd, "attn_type", where, str, "vanilla")
    if reader.value(dd, "use_linear_attn", where, bool, False):
        attn_type = "linear"  # LDM lets this flag override attn_type
    if attn_type not in ATTN_TYPES:
        raise VQGANError(
            f"{reader.source}: {where}.attn_type must be one of {ATTN_TYPES}, got {attn_type!r}"
        )
    return DDConfig(
        ch=ch,
        ch_mult=ch_mult,
        num_res_blocks=reader.positive_int(dd, "num_res_blocks", where),
        attn_resolutions=reader.int_list(dd, "attn_resolutions", where, default=()),
        resolution=reader.positive_int(dd, "resolution", where),
        z_channels=reader.positive_int(dd, "z_channels", where),
        in_channels=reader.positive_int(dd, "in_channels", where),
        out_ch=reader.positive_int(dd, "out_ch", where),
        dropout=float(reader.value(dd, "dropout", where, (int, float), 0.0)),
        resamp_with_conv=reader.value(dd, "resamp_with_conv", where, bool, True),
        attn_type=attn_type,
        tanh_out=reader.value(dd, "tanh_out", where, bool, False),
    )


_MISSING = object()


def _is_mapping(value):
    return isinstance(value, dict) or OmegaConf.is_dict(value)


class _Reader:
    """Typed look-ups whose errors name the config file and the full key path."""

    def __init__(self, source):
        self.source = source

    def value(self, mapping, key, where, kind, default=_MISSING):
        path = f"{where}.{key}" if where else key
        value = self._lookup(mapping, key, path)
        if value is None:
            if default is _MISSING:
                raise VQGANError(f"{self.source}: missing key '{path}'")
            return default
        if kind is dict:
            if not _is_mapping(value):
                raise VQGANError(f"{self.source}: '{path}' must be a mapping, got {value!r}")
            return value
        # bool is an int subclass: `ch: true` must not pass as 1
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise VQGANError(f"{self.source}: '{path}' must be {names}, got {value!r}")
        return value

    def _lookup(self, mapping, key, path):
        """The value at `key`, or None. Interpolations (`${...}`) resolve here, so only the
        keys we read must resolve; sub-mappings stay OmegaConf nodes until read in turn."""
        try:
            value = mapping.get(key)
            if OmegaConf.is_list(value):
                value = OmegaConf.to_container(value, resolve=True)
        except OmegaConfBaseException as e:
            raise VQGANError(f"{self.source}: cannot resolve '{path}': {e}") from None
        return value

    def mapping(self, mapping, key, where):
        return self.value(mapping, key, where, dict)

    def positive_int(self, mapping, key, where):
        value = self.value(mapping, key, where, int)
        if value <= 0:
            raise VQGANError(f"{self.source}: '{where}.{key}' must be positive, got {value}")
        return value

    def int_list(self, mapping, key, where, default, positive=False):
        values = self.value(mapping, key, where, (list, tuple), default)
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        if not ok or (positive and any(v <= 0 for v in values)):
            kind = "positive integers" if positive else "integers"
            raise VQGANError(
                f"{self.source}: '{where}.{key}' must be a list of {kind}, got {values!r}"
            )
        return tuple(values)
