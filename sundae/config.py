"""Training / sampling configuration: TOML in the original SUNDAE-VQGAN layout, parsed into typed
dataclasses. Defaults live here and only here; unknown keys and wrong types are errors that name
the key.

    unroll_steps = 2
    [trainer]   exp_name, batch_size, learning_rate, max_steps, checkpoint_frequency, ...
    [data]      root (+ split_sizes) or train_root/eval_root, vocab_size, latent_shape
    [vqgan]     config, checkpoint, latent_shape            (optional: image datasets only)
    [sampling]  steps, nb_samples, temperature, end_temperature, sample_proportion, ...
    [net]       type, dim, nb_heads, shorten_factor, depth, use_rotary, conditional, num_classes
"""
import dataclasses
import difflib
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from sundae.errors import SundaeError
from sundae.sampler import SamplingConfig


@dataclass
class TrainerConfig:
    exp_name: str = "sundae"
    batch_size: int = 32
    learning_rate: float = 1e-4
    max_steps: int = 10_000
    # Original layout: [train batches, eval batches] per epoch. Here the first entry is ignored
    # (training runs by steps) and the second is the number of batches of each evaluation.
    nb_batches: Optional[list[int]] = None
    eval_frequency: int = 500          # steps between evaluations (eval loss + sample grid)
    eval_batches: int = 10
    checkpoint_frequency: int = 1000   # steps between numbered checkpoints; `last.ckpt` too
    lr_scheduler_name: str = "constant"  # "constant" | "cosine" (linear warm-up, cosine decay)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0          # cosine decays to learning_rate * min_lr_ratio
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0             # max global grad norm; 0 disables clipping
    ema_decay: float = 0.999           # EMA of the weights used for sampling; 0 disables
    precision: str = "32"              # "32" | "bf16-mixed" | "16-mixed" (GPU)
    metric_names: list[str] = field(default_factory=lambda: ["accuracy"])
    log_frequency: int = 10
    runs_dir: str = "runs"


@dataclass
class DataConfig:
    root: Optional[str] = None         # a latent dataset dir; its eval split, else split_sizes
    split_sizes: Optional[list[float]] = None  # [train, eval] fractions of root's train split
    train_root: Optional[str] = None
    eval_root: Optional[str] = None
    vocab_size: Optional[int] = None   # checked against the dataset (and VQ-GAN codebook)
    vocabulary_size: Optional[int] = None  # alias used by some original configs
    sequence_length: Optional[int] = None  # original 1D key: h * w of a square grid
    latent_shape: Optional[list[int]] = None
    name: Optional[str] = None         # free-form label


@dataclass
class VQGANConfig:
    config: str = ""
    checkpoint: str = ""
    latent_shape: Optional[list[int]] = None
    legacy_cfg: Optional[bool] = None  # None: detect the Net2Net layout


@dataclass(frozen=True)
class SamplingSection(SamplingConfig):
    """[sampling]: the sampler's settings (validated by SamplingConfig) plus how many to draw."""
    nb_samples: int = 16
    sample_frequency: Optional[int] = None  # original key; here every evaluation samples


@dataclass
class NetConfig:
    type: str = "hourglass"            # "hourglass" | "vanilla" / "transformer"
    dim: int = 256
    nb_heads: int = 8
    dim_head: Optional[int] = None     # default dim // nb_heads
    depth: Union[int, list] = field(default_factory=lambda: [2, 8, 2])
    shorten_factor: Union[int, list[int]] = 4
    ff_mult: int = 4
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    use_rotary: bool = True
    updown_sample_type: str = "linear"
    attn_resampling: bool = True
    conditional: bool = False
    num_classes: Optional[int] = None
    use_scalenorm: bool = False        # original vanilla-config keys; accepted, not used
    use_glu: bool = False


@dataclass
class Config:
    unroll_steps: int = 2
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    vqgan: Optional[VQGANConfig] = None
    sampling: SamplingSection = field(default_factory=SamplingSection)
    net: NetConfig = field(default_factory=NetConfig)
    path: Optional[str] = None         # where it was loaded from (not a TOML key)

    @property
    def vocab_size(self):
        return self.data.vocab_size

    @property
    def latent_shape(self):
        return tuple(self.data.latent_shape)


# --- parsing ---------------------------------------------------------------------------------

def _type_name(tp):
    """`Optional[list[int]]` -> "list[int]": TOML has no null, so None is never worth naming."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(t) for t in typing.get_args(tp) if t is not type(None))
    if typing.get_origin(tp) is not None:  # a generic alias such as list[int]
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _check_value(value, tp, where):
    """Return `value` if it fits the annotation `tp` (ints are accepted as floats)."""
    origin = typing.get_origin(tp)
    if tp is typing.Any:
        return value
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _check_value(value, option, where)
            except SundaeError:
                pass
        raise SundaeError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(tp) or (typing.Any,)
            return [_check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise SundaeError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _build(cls, table, where):
    if not isinstance(table, dict):
        raise SundaeError(f"{where}: expected a [{where}] table, got {table!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "path"]
    kwargs = {}
    for key, value in table.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            section_name = f"[{where}] " if where else ""
            raise SundaeError(f"{section_name}unknown key '{key}'{hint}")
        tp = hints[key]
        section = _dataclass_in(tp)
        kwargs[key] = (_build(section, value, f"{where}.{key}" if where else key) if section
                       else _check_value(value, tp, f"{where}.{key}" if where else key))
    return cls(**kwargs)


def _dataclass_in(tp):
    options = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
    return next((t for t in options if dataclasses.is_dataclass(t)), None)


def config_from_dict(table, where="config"):
    """Build and validate a Config from a parsed TOML table."""
    cfg = _build(Config, table, "")
    _normalise_and_validate(cfg, where)
    return cfg


def load_config(path):
    """Read a TOML config file into a validated Config (SundaeError naming file and key)."""
    path = Path(path)
    try:
        table = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SundaeError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SundaeError(f"{path}: unreadable config ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise SundaeError(f"{path}: invalid TOML ({e})") from None
    try:
        cfg = config_from_dict(table)
    except SundaeError as e:
        raise SundaeError(f"{path}: {e}") from None
    cfg.path = str(path)
    return cfg


def _normalise_and_validate(cfg, where):
    def fail(msg):
        raise SundaeError(msg)

    data, net, tr, s = cfg.data, cfg.net, cfg.trainer, cfg.sampling
    if cfg.unroll_steps < 1:
        fail(f"unroll_steps: must be >= 1, got {cfg.unroll_steps}")

    # vocabulary: vocab_size, or the original alias vocabulary_size
    if data.vocabulary_size is not None:
        if data.vocab_size is not None and data.vocab_size != data.vocabulary_size:
            fail(f"data.vocab_size ({data.vocab_size}) and data.vocabulary_size "
                 f"({data.vocabulary_size}) disagree")
        data.vocab_size = data.vocabulary_size
    if data.vocab_size is None:
        fail("data.vocab_size: required (the codebook size of the latents)")
    if data.vocab_size < 2:
        fail(f"data.vocab_size: must be >= 2, got {data.vocab_size}")

    # latent grid: data.latent_shape, vqgan.latent_shape, or a square sequence_length
    shapes = {k: v for k, v in [("data.latent_shape", data.latent_shape),
                                ("vqgan.latent_shape", cfg.vqgan.latent_shape if cfg.vqgan else None)]
              if v is not None}
    for key, shape in shapes.items():
        if len(shape) != 2 or min(shape) < 1:
            fail(f"{key}: expected [h, w] with positive sides, got {shape}")
    if len({tuple(v) for v in shapes.values()}) > 1:
        fail(f"data.latent_shape {shapes['data.latent_shape']} and vqgan.latent_shape "
             f"{shapes['vqgan.latent_shape']} disagree")
    shape = next(iter(shapes.values()), None)
    if data.sequence_length is not None:
        side = math.isqrt(data.sequence_length)
        if shape is None:
            if side * side != data.sequence_length:
                fail(f"data.sequence_length: {data.sequence_length} is not a square grid; "
                     "give data.latent_shape = [h, w]")
            shape = [side, side]
        elif shape[0] * shape[1] != data.sequence_length:
            fail(f"data.sequence_length ({data.sequence_length}) disagrees with latent shape {shape}")
    if shape is None:
        fail("data.latent_shape: required ([h, w]; or vqgan.latent_shape, or data.sequence_length)")
    data.latent_shape = list(shape)

    if data.root is None and data.train_root is None:
        fail("data.root: required (a latent dataset directory), or data.train_root")
    if data.root is not None and data.train_root is not None:
        fail("data: give either root or train_root/eval_root, not both")
    if data.split_sizes is not None:
        if len(data.split_sizes) != 2 or min(data.split_sizes) < 0 or sum(data.split_sizes) <= 0:
            fail(f"data.split_sizes: expected [train, eval] non-negative, got {data.split_sizes}")
    if cfg.vqgan is not None and (not cfg.vqgan.config or not cfg.vqgan.checkpoint):
        fail("vqgan: needs both 'config' and 'checkpoint'")

    if net.type not in ("hourglass", "vanilla", "transformer"):
        fail(f"net.type: expected 'hourglass', 'vanilla' or 'transformer', got '{net.type}'")
    if net.dim < 1 or net.nb_heads < 1:
        fail("net.dim and net.nb_heads must be positive")
    if net.dim_head is None and net.dim % net.nb_heads:
        fail(f"net.dim ({net.dim}) must be divisible by net.nb_heads ({net.nb_heads}), or set dim_head")
    if net.updown_sample_type not in ("linear", "naive"):
        fail(f"net.updown_sample_type: expected 'linear' or 'naive', got '{net.updown_sample_type}'")
    if net.conditional and (net.num_classes is None or net.num_classes < 1):
        fail("net.num_classes: required (>= 1) when net.conditional = true")

    if tr.batch_size < 1 or tr.max_steps < 1 or tr.learning_rate <= 0:
        fail("trainer.batch_size, trainer.max_steps and trainer.learning_rate must be positive")
    if tr.checkpoint_frequency < 1 or tr.eval_frequency < 1 or tr.log_frequency < 1:
        fail("trainer.checkpoint_frequency, eval_frequency and log_frequency must be >= 1")
    if tr.lr_scheduler_name not in ("constant", "cosine"):
        fail(f"trainer.lr_scheduler_name: expected 'constant' or 'cosine', got '{tr.lr_scheduler_name}'")
    if tr.precision not in ("32", "bf16-mixed", "16-mixed"):
        fail(f"trainer.precision: expected '32', 'bf16-mixed' or '16-mixed', got '{tr.precision}'")
    if not 0.0 <= tr.ema_decay < 1.0:
        fail(f"trainer.ema_decay: must be in [0, 1), got {tr.ema_decay}")
    if tr.nb_batches is not None and len(tr.nb_batches) == 2:
        tr.eval_batches = tr.nb_batches[1]

    if s.nb_samples < 1:
        fail(f"sampling.nb_samples: must be >= 1, got {s.nb_samples}")
