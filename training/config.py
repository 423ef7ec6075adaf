"""The run's configuration: TOML in the original SUNDAE-VQGAN layout, read by the one config
reader (infra.config) into these dataclasses. Defaults, ranges and each key's one-line
documentation live here and in the priors' settings (priors.settings), and only there; the
README's config reference is generated from them (scripts/config_reference.py).

    [trainer]    exp_name, batch_size, learning_rate, max_steps, checkpoint_frequency, ...
    [data]       root (+ split_sizes) or train_root/eval_root, vocab_size, latent_shape
    [vqgan]      config, checkpoint, latent_shape             (image datasets only)
    [net]        type, dim, nb_heads, shorten_factor, depth, use_rotary, conditional, ...
    [prior]      type ('sundae' | 'absorbing' | 'autoregressive') and that prior's training settings
    [sampling]   that prior's sampling settings (SUNDAE: steps, temperature, sample_proportion, ...)
    [evaluation] every, nb_samples, batch_size, reference_stats    (metrics while training)

`[prior]` and `[sampling]` are read with the classes of the prior that `prior.type` names
(priors.PRIORS): a key of another prior is an error naming it. The original layout's top-level
`unroll_steps` is the sundae prior's `[prior] unroll_steps`. Sampling keys in `[prior]` (where
earlier versions read decoder, choice_temperature, top_k, top_p, use_cache) are moved to
`[sampling]` with a deprecation line.
"""
import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Annotated, Literal, Optional, Union

from infra.config import (Built, ConfigError, Length, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt,
                          Precision, Probability, Range, UnitFloat, build, did_you_mean, field_names, ignored,
                          read_toml, setting)
from priors import DEFAULT_PRIOR, PRIORS
from priors.base import a_prior
from priors.settings import PriorSettings, SamplingSettings

Shape2D = Annotated[list[PositiveInt], Length(2)]


@dataclass
class TrainerConfig:
    """[trainer]: the optimisation and the run directory."""
    exp_name: str = setting("sundae", "the run directory is runs_dir/exp_name")
    batch_size: PositiveInt = setting(32, "per device")
    learning_rate: PositiveFloat = setting(1e-4, "AdamW learning rate (the peak, with a schedule)")
    max_steps: PositiveInt = setting(10_000, "optimiser steps")
    nb_batches: Optional[list[NonNegativeInt]] = setting(
        None, "original layout: [train, eval] batches per epoch; the second sets eval_batches")
    eval_frequency: PositiveInt = setting(500, "steps between evaluations (eval loss and a sample grid)")
    eval_batches: NonNegativeInt = setting(10, "batches of each evaluation (0: no evaluation)")
    checkpoint_frequency: PositiveInt = setting(1000, "steps between numbered checkpoints (and last.ckpt)")
    lr_scheduler_name: Literal["constant", "cosine"] = setting("constant", "cosine: warm-up, then decay")
    warmup_steps: NonNegativeInt = setting(0, "linear warm-up steps")
    min_lr_ratio: UnitFloat = setting(0.0, "cosine decays to learning_rate * min_lr_ratio")
    weight_decay: NonNegativeFloat = setting(0.0, "AdamW decay of the weight matrices (norms, biases: none)")
    betas: Annotated[list[Probability], Length(2)] = setting(doc="AdamW betas", factory=lambda: [0.9, 0.999])
    grad_clip: NonNegativeFloat = setting(1.0, "max global gradient norm (0: no clipping)")
    ema_decay: Probability = setting(0.999, "EMA of the weights, which sampling uses (0: no EMA)")
    precision: Precision = setting("32", "'bf16-mixed' or '16-mixed' on a GPU")
    compile: Union[bool, Literal["auto"]] = setting(
        False, "torch.compile the training step (faster after a one-off compile; the last bits differ); "
               "'auto': if a C++ compiler is found")
    metric_names: Optional[list[str]] = ignored(None, "loss and accuracy are always logged")
    log_frequency: PositiveInt = setting(10, "steps between logged training metrics")
    runs_dir: str = setting("runs", "where run directories are made")


@dataclass
class DataConfig:
    """[data]: the latent dataset (latents.dataset) and its vocabulary and grid."""
    root: Optional[str] = setting(None, "a latent dataset directory: its eval split, else split_sizes of train")
    split_sizes: Optional[list[NonNegativeFloat]] = setting(
        None, "[train, eval] (or the original [train, eval, test]) fractions or counts of root's train "
              "split, grouped by source image (default [0.95, 0.05])")
    train_root: Optional[str] = setting(None, "instead of root: a dataset whose train split trains")
    eval_root: Optional[str] = setting(None, "with train_root: a dataset whose train split evaluates")
    vocab_size: Optional[Annotated[int, Range(low=2)]] = setting(None, "the codebook size (required)")
    vocabulary_size: Optional[Annotated[int, Range(low=2)]] = setting(None, "original layout: vocab_size")
    sequence_length: Optional[PositiveInt] = setting(None, "original layout: h * w of a square grid")
    latent_shape: Optional[Shape2D] = setting(None, "[h, w] of the token grids (or vqgan.latent_shape)")
    name: Optional[str] = setting(None, "a free-form label")


@dataclass
class VQGANSection:
    """[vqgan]: the decoder of an image dataset (taming / latent-diffusion files)."""
    config: str = setting(doc="the VQ-GAN's YAML config")
    checkpoint: str = setting(doc="its checkpoint (.ckpt, .pth, .safetensors)")
    latent_shape: Optional[Shape2D] = setting(None, "[h, w] of its token grids")
    legacy_cfg: Optional[bool] = setting(None, "a combined Net2Net config (default: detected)")


@dataclass
class NetConfig:
    """[net]: the denoiser (hourglass_transformer). The original's keys keep their meaning; the
    architecture switches default to ours, with the original's selectable."""
    type: Literal["hourglass", "vanilla", "transformer"] = setting(
        "hourglass", "'hourglass', or 'vanilla' (= 'transformer') for a flat stack of int depth")
    dim: PositiveInt = setting(256, "model width")
    nb_heads: PositiveInt = setting(8, "attention heads")
    dim_head: PositiveInt = setting(64, "width of one head (a multiple of 4 with 2D rotary, of 2 with 1D)")
    depth: Union[NonNegativeInt, list] = setting(
        doc="[pre, valley, post] layers of an hourglass (nested for more levels), or an int", factory=lambda: [2, 8, 2])
    shorten_factor: Union[PositiveInt, list[PositiveInt]] = setting(
        4, "k per level: tokens pooled into one (a perfect square for 2D resampling)")
    ff_mult: PositiveInt = setting(4, "feed-forward width / dim")
    attn_dropout: Probability = setting(0.0, "dropout of the attention weights")
    ff_dropout: Probability = setting(0.0, "dropout inside the feed-forwards")
    use_rotary: bool = setting(True, "rotary positions (false: learned row + column embeddings)")
    rotary_layout: Literal["2d", "1d"] = setting("2d", "'2d': axial (rows, columns); '1d': over the raster order")
    rotary_coords: Literal["integer", "normalized"] = setting(
        "integer", "'integer': token indices; 'normalized': the original's coordinates on [-1, 1]")
    updown_sample_type: Literal["linear", "naive"] = setting("linear", "patch pooling: learned or mean")
    attn_resampling: bool = setting(True, "attention in the down/up-sampling (false: linear projections alone)")
    attn_resampling_type: Literal["ours", "original"] = setting(
        "ours", "'ours': attention-only resampling; 'original': full transformer layers")
    resampling_layout: Literal["2d", "1d"] = setting(
        "2d", "'2d': sqrt(k) x sqrt(k) patches; '1d': runs of k raster-order tokens (the paper's 1D hourglass)")
    conditional: bool = setting(False, "class-conditional (the dataset's labels)")
    num_classes: Optional[PositiveInt] = setting(None, "required when conditional")
    cond_drop_prob: Probability = setting(
        0.0, "classifier-free guidance: training labels replaced by a null class with this probability")
    use_scalenorm: bool = ignored(False, "every block uses LayerNorm")
    use_glu: bool = ignored(False, "feed-forwards use GELU")

    def check(self, fail):
        """The [net] checks that involve more than one key; `fail(message)` raises."""
        multiple = 4 if self.rotary_layout == "2d" else 2
        if self.use_rotary and self.dim_head % multiple:
            fail(f"net.dim_head: expected a multiple of {multiple} with use_rotary = true and "
                 f"rotary_layout = {self.rotary_layout!r}, got {self.dim_head}")
        if self.conditional and self.num_classes is None:
            fail("net.num_classes: required (>= 1) when net.conditional = true")
        if self.cond_drop_prob > 0 and not self.conditional:
            fail("net.cond_drop_prob: classifier-free guidance needs net.conditional = true")


@dataclass
class EvaluationSection:
    """[evaluation]: sample quality of the EMA model, measured during training (training.quality):
    token datasets in the classifier feature space of evaluate.py, image datasets by FID."""
    every: PositiveInt = setting(1, "at every every-th evaluation, and at max_steps when that is one")
    nb_samples: PositiveInt = setting(1000, "samples scored (class-balanced for conditional priors)")
    batch_size: PositiveInt = setting(250, "sampling batch")
    reference_stats: Optional[str] = setting(
        None, "images: an Inception statistics file of the reference set (evaluate.py --save-stats)")
    inception_weights: Optional[str] = setting(None, "images: else $INCEPTION_WEIGHTS or torch hub's cache")
    precision: Literal["32", "bf16", "16"] = setting("32", "sampling autocast")


@dataclass
class Config:
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    vqgan: Optional[VQGANSection] = None
    # [prior] and [sampling] are read with the classes of the prior that prior.type names
    sampling: SamplingSettings = field(default_factory=lambda: PRIORS[DEFAULT_PRIOR].Sampling())
    net: NetConfig = field(default_factory=NetConfig)
    prior: PriorSettings = field(default_factory=lambda: PRIORS[DEFAULT_PRIOR].Training(type=DEFAULT_PRIOR))
    evaluation: Optional[EvaluationSection] = None
    path: Optional[str] = field(default=None, init=False)  # the file it came from

    @property
    def vocab_size(self):
        return self.data.vocab_size

    @property
    def latent_shape(self):
        return tuple(self.data.latent_shape)


SECTIONS = {"trainer": TrainerConfig, "data": DataConfig, "vqgan": VQGANSection, "net": NetConfig,
            "evaluation": EvaluationSection}  # and [prior], [sampling]: the prior's (PRIORS)


def load_config(path, warn=True):
    """Read a TOML config file into a validated Config; ConfigError naming file and key."""
    cfg = config_from_dict(read_toml(path), source=str(path), warn=warn)
    cfg.path = str(path)
    return cfg


def config_from_dict(table, source="config", warn=True):
    """Build and validate a Config from a parsed TOML table."""
    known = set(field_names(Config)) | {"unroll_steps"}  # the original layout's place of [prior] unroll_steps
    for key in table:
        if key not in known:
            raise ConfigError(f"{source}: unknown key '{key}'{did_you_mean(str(key), known)}")
    report = Built()
    rest = {k: v for k, v in table.items() if k not in ("prior", "sampling", "unroll_steps")}
    cfg = build(Config, rest, source=source, report=report)
    cfg.prior, cfg.sampling = read_prior_sections(table, source, report)
    if warn:
        order = field_names(Config)
        for key, reason in sorted(report.ignored, key=lambda item: order.index(item[0].split(".")[0])):
            print(f"warning: {source}: {key} is accepted for compatibility and ignored ({reason})",
                  file=sys.stderr)
        for note in report.notes:
            print(f"warning: {source}: {note}", file=sys.stderr)
    _normalise_and_validate(cfg, source)
    return cfg


def read_prior_sections(table, source, report):
    """(prior settings, sampling settings) of the prior that `[prior] type` names in `table`;
    a key that belongs to another prior is named as such."""
    def fail(msg):
        raise ConfigError(f"{source}: {msg}")

    prior_table, sampling_table = (_table(table.get(name, {}), name, source) for name in ("prior", "sampling"))
    kind = prior_table.pop("type", DEFAULT_PRIOR)
    if not isinstance(kind, str) or kind not in PRIORS:
        fail(f"prior.type: expected one of {', '.join(map(repr, PRIORS))}, got {kind!r}")
    prior = PRIORS[kind]

    def check_owner(key, section, where):  # a key of another prior: name the prior it belongs to
        owners = [name for name, other in PRIORS.items() if key in field_names(getattr(other, section))]
        if key not in field_names(getattr(prior, section)) and owners:
            fail(f"{where}: a setting of {' and '.join(owners)} priors, but prior.type = {kind!r}")

    if "unroll_steps" in table:  # the original layout's place for the sundae prior's unroll_steps
        check_owner("unroll_steps", "Training", "unroll_steps")
        if "unroll_steps" in prior_table:
            fail("unroll_steps: given at the top and in [prior]; keep one")
        prior_table["unroll_steps"] = table["unroll_steps"]
    for key in [k for k in prior_table if k in field_names(prior.Sampling) and k not in field_names(prior.Training)]:
        if key in sampling_table:
            fail(f"prior.{key}: a sampling setting, given in [prior] and [sampling]; keep sampling.{key}")
        report.notes.append(f"prior.{key} is a sampling setting now: read as sampling.{key} (move it there)")
        sampling_table[key] = prior_table.pop(key)
    for key in prior_table:
        check_owner(key, "Training", f"prior.{key}")
    for key in sampling_table:
        check_owner(key, "Sampling", f"sampling.{key}")
    return (build(prior.Training, {"type": kind, **prior_table}, "prior", source, report),
            build(prior.Sampling, sampling_table, "sampling", source, report))


def _table(value, name, source):
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {name}: expected a table of keys, got {value!r}")
    return dict(value)


def _normalise_and_validate(cfg, source):
    """The checks that involve more than one key; fills the derived values."""
    def fail(msg):
        raise ConfigError(f"{source}: {msg}")

    data, net, tr = cfg.data, cfg.net, cfg.trainer

    # vocabulary: vocab_size, or the original alias vocabulary_size
    if data.vocabulary_size is not None:
        if data.vocab_size is not None and data.vocab_size != data.vocabulary_size:
            fail(f"data.vocab_size ({data.vocab_size}) and data.vocabulary_size "
                 f"({data.vocabulary_size}) disagree")
        data.vocab_size = data.vocabulary_size
    if data.vocab_size is None:
        fail("data.vocab_size: required (the codebook size of the latents)")

    # latent grid: data.latent_shape, vqgan.latent_shape, or a square sequence_length
    shapes = {k: v for k, v in [("data.latent_shape", data.latent_shape),
                                ("vqgan.latent_shape", cfg.vqgan.latent_shape if cfg.vqgan else None)]
              if v is not None}
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
    if data.split_sizes is not None and (len(data.split_sizes) not in (2, 3) or data.split_sizes[0] <= 0
                                         or data.split_sizes[1] <= 0):
        fail(f"data.split_sizes: expected [train, eval] or [train, eval, test] with train and eval > 0, "
             f"got {data.split_sizes}")

    net.check(fail)
    prior = PRIORS[cfg.prior.type]
    if net.type not in prior.net_types:
        fail(f"net.type: {a_prior(prior.name)} takes net.type {' or '.join(map(repr, prior.net_types))}, "
             f"got {net.type!r}")
    if cfg.evaluation is not None and cfg.vqgan is not None and cfg.evaluation.reference_stats is None:
        fail("evaluation.reference_stats: required for an image dataset (an Inception statistics file "
             "of the reference images: evaluate.py IMAGES --save-stats FILE)")

    # the file's own run only: a --max-steps inside the warm-up runs a first segment, resumed later
    if tr.warmup_steps > tr.max_steps:
        fail(f"trainer.warmup_steps = {tr.warmup_steps} is more than trainer.max_steps = {tr.max_steps}: "
             "training would end during the warm-up; expected warmup_steps <= max_steps")
    min_steps, steps = getattr(cfg.sampling, "min_steps", None), getattr(cfg.sampling, "steps", None)
    if min_steps is not None and steps is not None and min_steps > steps:
        fail(f"sampling.min_steps = {min_steps} is more than sampling.steps = {steps}: early stopping "
             "could never freeze a sample; expected min_steps <= steps")

    parts = PurePath(tr.exp_name).parts
    if not tr.exp_name or PurePath(tr.exp_name).is_absolute() or ".." in parts:
        fail(f"trainer.exp_name: expected a relative path inside trainer.runs_dir (no '..'), "
             f"got {tr.exp_name!r}")
    if tr.nb_batches is not None and len(tr.nb_batches) == 2:
        tr.eval_batches = tr.nb_batches[1]


def run_dir(cfg):
    """Where a config's training run writes: runs_dir/exp_name, which must stay inside runs_dir
    with symlinks resolved (exp_name has no '..', but a link under runs_dir may point anywhere)."""
    runs = Path(cfg.trainer.runs_dir)
    path = runs / cfg.trainer.exp_name
    if not path.resolve().is_relative_to(runs.resolve()):
        raise ConfigError(f"{cfg.path or 'config'}: trainer.exp_name = {cfg.trainer.exp_name!r}: {path} leads "
                          f"to {path.resolve()}, outside trainer.runs_dir {runs.resolve()} (through a "
                          "symbolic link); choose another exp_name")
    return path


def replace_section(cfg, name, **values):
    """A copy of cfg whose section `name` has `values` (from the command line) set and checked."""
    section = getattr(cfg, name)
    merged = {**{f.name: getattr(section, f.name) for f in dataclasses.fields(section) if f.init},
              **{k: v for k, v in values.items() if v is not None}}
    new = dataclasses.replace(cfg, **{name: build(type(section), merged, where=name, source="command line")})
    new.path = cfg.path
    return new
