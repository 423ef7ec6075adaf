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

Everything taming reads stays where taming reads it, with taming's meaning, so the same file
also builds the model in taming's own code; what taming does not have lives under `training:`
(unknown keys inside `lossconfig.params` would make taming's constructor fail).
"""
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vqgan.config import VQ_TARGETS, VQGANConfig, read_config
from vqgan.discriminator import PatchDiscriminator
from vqgan.errors import VQGANError

LOSS_TARGET = "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"
# Latent datasets store indices as uint16 up to 2**16 codes, else int32 (sundae.latents)
MAX_CODES = 2**31
PRECISIONS = ("32", "bf16-mixed", "16-mixed")


@dataclass(frozen=True)
class LossConfig:
    """`model.params.lossconfig.params`: taming's VQLPIPSWithDiscriminator arguments."""

    disc_start: int  # step at which the discriminator and the GAN term switch on
    codebook_weight: float = 1.0
    pixelloss_weight: float = 1.0  # taming accepts and ignores it; here it weights the L1 term
    perceptual_weight: float = 1.0  # LPIPS; 0 (or no local weights) switches it off
    disc_num_layers: int = 3
    disc_in_channels: int = 3
    disc_ndf: int = 64
    disc_factor: float = 1.0  # multiplies both GAN terms once switched on
    disc_weight: float = 1.0  # multiplies the adaptive weight
    disc_loss: str = "hinge"  # "hinge" | "vanilla"
    disc_conditional: bool = False  # only False is supported
    use_actnorm: bool = False  # only False is supported


@dataclass(frozen=True)
class DataParams:
    """The two keys of taming's `data.params` we use."""

    batch_size: int = 8
    num_workers: int = 0


@dataclass(frozen=True)
class TrainingConfig:
    """The `training:` section (ours)."""

    max_steps: int = 100_000
    eval_every: int = 1000  # steps between evaluations on the held-out images
    checkpoint_every: int = 5000  # steps between numbered checkpoints (last.ckpt too)
    log_every: int = 50
    eval_fraction: float = 0.05  # of --dataset's images held out (unless --eval-dataset)
    max_eval_images: int = 256  # held-out images used at each evaluation
    recon_images: int = 8  # originals and reconstructions in each logged grid
    # Unleashing Transformers' fix: the adaptive GAN weight is clamped to [0, this]
    # (taming clamps at 1e4, which in practice never binds)
    adaptive_weight_max: float = 1.0
    diffaug: bool = True  # DiffAugment of the discriminator's real and fake inputs
    diffaug_translation: float = 0.125  # largest shift, as a fraction of the side
    restart_dead_codes: bool = False  # re-seed codes unused over a window from encoder outputs
    codebook_window: Optional[int] = None  # steps per usage window; None: one pass over the data
    lpips_weights: Optional[str] = None  # local LPIPS weights (see vqgan.lpips); never downloaded
    scale_lr: bool = True  # taming's rule: lr = base_learning_rate * batch_size * processes
    adam_betas: list[float] = field(default_factory=lambda: [0.5, 0.9])
    precision: str = "32"


@dataclass(frozen=True)
class TrainConfig:
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


def load_train_config(path) -> TrainConfig:
    """Read and validate a training YAML; VQGANError naming the file and key on any mistake."""
    model = read_config(path)
    source = str(path)
    if model.key_prefix:
        raise VQGANError(f"{source}: a combined (Net2Net) config; train-vqgan.py trains the "
                         "VQ-GAN itself and needs its own config (model.target a VQModel)")
    raw = OmegaConf.load(Path(path))  # read_config has already parsed this file once
    return train_config_from_dict(raw, model, source)


def train_config_from_dict(raw, model: VQGANConfig, source="<dict>") -> TrainConfig:
    def fail(message):
        raise VQGANError(f"{source}: {message}")

    if model.quantizer != "vq" or model.target not in VQ_TARGETS:
        fail(f"model.target {model.target!r}: train-vqgan.py trains a vector-quantized VQModel "
             f"({', '.join(VQ_TARGETS)})")
    if model.n_embed > MAX_CODES:
        fail(f"model.params.n_embed = {model.n_embed} does not fit a latent dataset's int32 "
             f"token dtype; at most {MAX_CODES} codes")

    params = _section(raw, ("model", "params"), source)
    loss_node = _section(params, ("lossconfig",), source, "model.params")
    target = _plain(loss_node, "target", source, "model.params.lossconfig.target")
    if target != LOSS_TARGET:
        fail(f"model.params.lossconfig.target must be {LOSS_TARGET}, got {target!r}")
    loss_params = _section(loss_node, ("params",), source, "model.params.lossconfig")
    loss = _build(LossConfig, loss_params, "model.params.lossconfig.params", source)
    data_params = _section(raw, ("data", "params"), source, optional=True)
    data = _build(DataParams, {k: data_params[k] for k in ("batch_size", "num_workers") if k in data_params},
                  "data.params", source)
    training = _build(TrainingConfig, _section(raw, ("training",), source, optional=True), "training", source)
    base_lr = _plain(_section(raw, ("model",), source), "base_learning_rate", source,
                     "model.base_learning_rate")

    if isinstance(base_lr, bool) or not isinstance(base_lr, (int, float)) or base_lr <= 0:
        fail(f"model.base_learning_rate must be a positive number, got {base_lr!r}")
    _validate(loss, data, training, model, fail)
    plain = OmegaConf.to_container(raw, resolve=False) if OmegaConf.is_config(raw) else dict(raw)
    return TrainConfig(model=model, base_learning_rate=float(base_lr), loss=loss, data=data,
                       training=training, source=source, raw=plain)


def _validate(loss, data, training, model, fail):
    lp = "model.params.lossconfig.params"
    if loss.disc_conditional or loss.use_actnorm:
        fail(f"{lp}: disc_conditional and use_actnorm must be false (not supported)")
    if loss.disc_loss not in ("hinge", "vanilla"):
        fail(f"{lp}.disc_loss must be 'hinge' or 'vanilla', got {loss.disc_loss!r}")
    if loss.disc_in_channels != model.ddconfig.out_ch:
        fail(f"{lp}.disc_in_channels = {loss.disc_in_channels} but the decoder makes "
             f"{model.ddconfig.out_ch}-channel images (ddconfig.out_ch)")
    if loss.disc_num_layers < 0 or loss.disc_ndf < 1:
        fail(f"{lp}: disc_num_layers must be >= 0 and disc_ndf >= 1, got "
             f"{loss.disc_num_layers} and {loss.disc_ndf}")
    if PatchDiscriminator.output_size(model.ddconfig.resolution, loss.disc_num_layers) < 1:
        fail(f"{lp}.disc_num_layers = {loss.disc_num_layers} is too deep for "
             f"{model.ddconfig.resolution}x{model.ddconfig.resolution} images; use fewer layers")
    for key in ("codebook_weight", "pixelloss_weight", "perceptual_weight", "disc_factor", "disc_weight"):
        if getattr(loss, key) < 0:
            fail(f"{lp}.{key} must be >= 0, got {getattr(loss, key)}")
    if data.batch_size < 1 or data.num_workers < 0:
        fail(f"data.params: batch_size must be >= 1 and num_workers >= 0, got "
             f"{data.batch_size} and {data.num_workers}")
    for key in ("max_steps", "eval_every", "checkpoint_every", "log_every", "max_eval_images"):
        if getattr(training, key) < 1:
            fail(f"training.{key} must be >= 1, got {getattr(training, key)}")
    if training.codebook_window is not None and training.codebook_window < 1:
        fail(f"training.codebook_window must be >= 1 (or null), got {training.codebook_window}")
    if not 0 < training.eval_fraction < 1:
        fail(f"training.eval_fraction must be in (0, 1), got {training.eval_fraction}")
    if training.recon_images < 0 or training.adaptive_weight_max < 0:
        fail("training.recon_images and training.adaptive_weight_max must be >= 0")
    if not 0 <= training.diffaug_translation < 1:
        fail(f"training.diffaug_translation must be in [0, 1), got {training.diffaug_translation}")
    if len(training.adam_betas) != 2 or not all(0 <= b < 1 for b in training.adam_betas):
        fail(f"training.adam_betas must be two numbers in [0, 1), got {training.adam_betas}")
    if training.precision not in PRECISIONS:
        fail(f"training.precision must be one of {', '.join(PRECISIONS)}, got {training.precision!r}")


# --- typed reading --------------------------------------------------------------------------

def _section(node, keys, source, where="", optional=False):
    """The mapping at node[keys[0]][keys[1]]..., as plain Python; {} when absent and optional."""
    path = where
    for key in keys:
        path = f"{path}.{key}" if path else key
        value = _plain(node, key, source, path)
        if value is None:
            if optional:
                return {}
            raise VQGANError(f"{source}: missing key '{path}'")
        if not isinstance(value, dict):
            raise VQGANError(f"{source}: '{path}' must be a mapping, got {value!r}")
        node = value
    return node


def _plain(node, key, source, path):
    """node[key] as plain Python (interpolations resolved), or None when absent."""
    try:
        value = node.get(key)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
    except OmegaConfBaseException as e:
        raise VQGANError(f"{source}: cannot resolve '{path}': {e}") from None
    return value


def _build(cls, mapping, where, source):
    """A `cls` from a mapping: unknown keys and wrong types name the key."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in mapping.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise VQGANError(f"{source}: unknown key '{where}.{key}'{hint}; expected one of "
                             f"{', '.join(fields)}")
        values[key] = _typed(value, hints[key], f"{where}.{key}", source)
    missing = [name for name, f in fields.items() if name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise VQGANError(f"{source}: missing key '{where}.{missing[0]}'")
    return cls(**values)


def _typed(value, tp, path, source):
    """`value` if it fits the annotation `tp` (ints pass as floats, bools never as numbers)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        (inner,) = [t for t in options if t is not type(None)]
        return _typed(value, inner, path, source)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, list):
            return [_typed(v, item, f"{path}[{i}]", source) for i, v in enumerate(value)]
    elif ok.get(tp):
        return float(value) if tp is float else value
    name = getattr(tp, "__name__", str(tp)).replace("typing.", "")
    raise VQGANError(f"{source}: '{path}' must be {name}, got {value!r}")
