"""The prior's configuration: TOML in the original SUNDAE-VQGAN layout, read by the one config
reader (infra.config) into these dataclasses. Defaults and ranges live here and only here.

    unroll_steps = 2
    [trainer]   exp_name, batch_size, learning_rate, max_steps, checkpoint_frequency, ...
    [data]      root (+ split_sizes) or train_root/eval_root, vocab_size, latent_shape
    [vqgan]     config, checkpoint, latent_shape            (optional: image datasets only)
    [sampling]  steps, nb_samples, temperature, end_temperature, sample_proportion, ...
    [net]       type, dim, nb_heads, shorten_factor, depth, use_rotary, conditional, num_classes
                (+ dim_head, rotary_layout, rotary_coords, attn_resampling_type, resampling_layout)
    [prior]     type ('sundae' | 'absorbing' | 'autoregressive') and that type's settings
    [evaluation] every, nb_samples, batch_size, reference_stats  (optional: metrics while training)
"""
import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Annotated, Literal, Optional, Union

from infra.config import (Built, ConfigError, Length, NonNegativeFloat, NonNegativeInt, PositiveFloat,
                          PositiveInt, Precision, Probability, Range, UnitFloat, build, ignored, read_toml)
from priors.sundae import SamplingConfig

Shape2D = Annotated[list[PositiveInt], Length(2)]


@dataclass
class TrainerConfig:
    exp_name: str = "sundae"           # the run directory is runs_dir/exp_name
    batch_size: PositiveInt = 32       # per device
    learning_rate: PositiveFloat = 1e-4
    max_steps: PositiveInt = 10_000
    # Original layout: [train batches, eval batches] per epoch. Here the first entry is ignored
    # (training runs by steps) and the second is the number of batches of each evaluation.
    nb_batches: Optional[list[NonNegativeInt]] = None
    eval_frequency: PositiveInt = 500  # steps between evaluations (eval loss + sample grid)
    eval_batches: NonNegativeInt = 10  # 0: no evaluation
    checkpoint_frequency: PositiveInt = 1000  # steps between numbered checkpoints; last.ckpt too
    lr_scheduler_name: Literal["constant", "cosine"] = "constant"  # cosine: warm-up, then decay
    warmup_steps: NonNegativeInt = 0
    min_lr_ratio: UnitFloat = 0.0      # cosine decays to learning_rate * min_lr_ratio
    weight_decay: NonNegativeFloat = 0.0
    betas: Annotated[list[Probability], Length(2)] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: NonNegativeFloat = 1.0  # max global grad norm; 0 disables clipping
    ema_decay: Probability = 0.999     # EMA of the weights used for sampling; 0 disables
    precision: Precision = "32"        # "bf16-mixed" / "16-mixed" on a GPU
    # torch.compile the denoiser for the training steps (not evaluation or sampling): a one-off
    # compile (about a minute on a CPU) for faster steps; numerics differ from eager in the last bits
    compile: bool = False
    metric_names: Optional[list[str]] = ignored(None, "loss and accuracy are always logged")
    log_frequency: PositiveInt = 10
    runs_dir: str = "runs"


@dataclass
class DataConfig:
    root: Optional[str] = None         # a latent dataset dir; its eval split, else split_sizes
    # Fractions (or counts) [train, eval] or the original [train, eval, test]: rows of root's
    # train split are divided in these proportions, grouped by source image (infra.data.split_groups).
    split_sizes: Optional[list[NonNegativeFloat]] = None
    train_root: Optional[str] = None
    eval_root: Optional[str] = None
    vocab_size: Optional[Annotated[int, Range(low=2)]] = None  # checked against dataset and VQ-GAN
    vocabulary_size: Optional[Annotated[int, Range(low=2)]] = None  # alias of original configs
    sequence_length: Optional[PositiveInt] = None  # original 1D key: h * w of a square grid
    latent_shape: Optional[Shape2D] = None
    name: Optional[str] = None         # free-form label


@dataclass
class VQGANSection:
    """[vqgan]: the decoder of an image dataset (taming / latent-diffusion files)."""
    config: str
    checkpoint: str
    latent_shape: Optional[Shape2D] = None
    legacy_cfg: Optional[bool] = None  # None: detect the Net2Net layout


@dataclass
class NetConfig:
    """[net]: the denoiser (hourglass_transformer.HourglassTransformerLM). The original's keys keep
    their meaning; the architecture switches below default to ours, with the original selectable:

    dim_head              width of one attention head; 64 as in the original and the hourglass
                          reference (the attention's inner width is nb_heads * dim_head, not dim).
    attn_resampling_type  "ours": down, the pooled vector attends to its patch; up, each token
                          attends to the pre-valley tokens of its patch; both attention-only.
                          "original": each resampling block is a full transformer layer (attention
                          + feed-forward) and up-sampling attends to the patch's valley output.
    resampling_layout     "2d": pool sqrt(k) x sqrt(k) patches; "1d": pool runs of k consecutive
                          tokens of the raster-flattened grid (the paper's 1D hourglass).
    use_rotary            true: rotary positions; false: learned absolute row + column embeddings.
    rotary_layout         "2d": axial (rows, columns); "1d": over the raster order (index r*w + c).
    rotary_coords         "integer": token indices, RoPE frequencies; "normalized": the original's
                          coordinates on [-1, 1] with "pixel" frequencies up to (tokens per side)/2.
    """
    type: Literal["hourglass", "vanilla", "transformer"] = "hourglass"
    dim: PositiveInt = 256
    nb_heads: PositiveInt = 8
    dim_head: PositiveInt = 64  # a multiple of 4 with 2D rotary, of 2 with 1D rotary
    depth: Union[NonNegativeInt, list] = field(default_factory=lambda: [2, 8, 2])
    shorten_factor: Union[PositiveInt, list[PositiveInt]] = 4  # k per level; perfect squares for "2d"
    ff_mult: PositiveInt = 4
    attn_dropout: Probability = 0.0
    ff_dropout: Probability = 0.0
    use_rotary: bool = True
    rotary_layout: Literal["2d", "1d"] = "2d"
    rotary_coords: Literal["integer", "normalized"] = "integer"
    updown_sample_type: Literal["linear", "naive"] = "linear"
    attn_resampling: bool = True
    attn_resampling_type: Literal["ours", "original"] = "ours"
    resampling_layout: Literal["2d", "1d"] = "2d"
    conditional: bool = False
    num_classes: Optional[PositiveInt] = None
    # classifier-free guidance: in training each label is replaced by a null class (id num_classes)
    # with this probability, so [sampling] guidance_scale can mix conditional and unconditional
    cond_drop_prob: Probability = 0.0
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
class PriorSection:
    """[prior]: which prior learns the latents (priors.base), and the settings of that type only."""
    type: Literal["sundae", "absorbing", "autoregressive"] = "sundae"
    # absorbing diffusion (Unleashing Transformers)
    loss_type: Optional[Literal["reweighted_elbo", "elbo"]] = None  # default "reweighted_elbo"
    num_timesteps: Optional[PositiveInt] = None  # T of the forward process; default h * w
    decoder: Optional[Literal["unleashing", "maskgit"]] = None  # default "unleashing"
    choice_temperature: Optional[NonNegativeFloat] = None  # MaskGIT's Gumbel scale; default 4.5
    # autoregressive (Taming Transformers)
    top_k: Optional[PositiveInt] = None  # default: no top-k filtering
    top_p: Optional[Annotated[float, Range(0, 1, low_open=True)]] = None  # default: no nucleus filtering
    use_cache: Optional[bool] = None  # the KV cache when sampling; default true

    OPTIONS = {"sundae": (), "absorbing": ("loss_type", "num_timesteps", "decoder", "choice_temperature"),
               "autoregressive": ("top_k", "top_p", "use_cache")}

    def misplaced(self):
        """(key, its type) of the first setting given that belongs to another prior type, or None."""
        return next(((key, kind) for kind, keys in self.OPTIONS.items() if kind != self.type
                     for key in keys if getattr(self, key) is not None), None)


@dataclass
class EvaluationSection:
    """[evaluation]: sample quality of the EMA model, measured during training (training.quality).
    Token datasets are scored in the classifier feature space of evaluate.py (eval/fd,
    eval/precision, eval/recall, ...); image datasets by FID against `reference_stats`."""
    every: PositiveInt = 1             # at every `every`-th evaluation (every eval_frequency steps), and at max_steps when that is an evaluation step
    nb_samples: PositiveInt = 1000     # class-balanced for conditional priors
    batch_size: PositiveInt = 250
    reference_stats: Optional[str] = None    # images: an Inception statistics file (evaluate.py --save-stats)
    inception_weights: Optional[str] = None  # images: else $INCEPTION_WEIGHTS or torch hub's cache
    precision: Literal["32", "bf16", "16"] = "32"  # sampling autocast (infra.precision)


@dataclass
class Config:
    unroll_steps: PositiveInt = 2      # T, the number of unrolled denoising steps
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    vqgan: Optional[VQGANSection] = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    net: NetConfig = field(default_factory=NetConfig)
    prior: PriorSection = field(default_factory=PriorSection)
    evaluation: Optional[EvaluationSection] = None
    path: Optional[str] = field(default=None, init=False)  # the file it came from

    @property
    def vocab_size(self):
        return self.data.vocab_size

    @property
    def latent_shape(self):
        return tuple(self.data.latent_shape)


def load_config(path, warn=True):
    """Read a TOML config file into a validated Config; ConfigError naming file and key."""
    cfg = config_from_dict(read_toml(path), source=str(path), warn=warn)
    cfg.path = str(path)
    return cfg


def config_from_dict(table, source="config", warn=True):
    """Build and validate a Config from a parsed TOML table."""
    report = Built()
    cfg = build(Config, table, source=source, report=report)
    if warn:
        for key, reason in report.ignored:
            print(f"warning: {source}: {key} is accepted for compatibility and ignored ({reason})",
                  file=sys.stderr)
    _normalise_and_validate(cfg, source)
    return cfg


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
    if cfg.prior.misplaced():
        key, kind = cfg.prior.misplaced()
        fail(f"prior.{key}: a setting of type = '{kind}', but prior.type = '{cfg.prior.type}'")
    if cfg.prior.type == "autoregressive" and net.type == "hourglass":
        fail("net.type: prior.type = 'autoregressive' is a causal vanilla stack; set net.type = 'vanilla' "
             "and an int net.depth (a causal hourglass is not implemented)")
    if cfg.evaluation is not None and cfg.vqgan is not None and cfg.evaluation.reference_stats is None:
        fail("evaluation.reference_stats: required for an image dataset (an Inception statistics file "
             "of the reference images: evaluate.py IMAGES --save-stats FILE)")

    parts = PurePath(tr.exp_name).parts
    if not tr.exp_name or PurePath(tr.exp_name).is_absolute() or ".." in parts:
        fail(f"trainer.exp_name: expected a relative path inside trainer.runs_dir (no '..'), "
             f"got {tr.exp_name!r}")
    if tr.nb_batches is not None and len(tr.nb_batches) == 2:
        tr.eval_batches = tr.nb_batches[1]


def run_dir(cfg):
    """Where a config's training run writes: runs_dir/exp_name."""
    return Path(cfg.trainer.runs_dir) / cfg.trainer.exp_name


def replace_section(cfg, name, **values):
    """A copy of cfg whose section `name` has `values` (from the command line) set and checked."""
    section = getattr(cfg, name)
    merged = {**{f.name: getattr(section, f.name) for f in dataclasses.fields(section)},
              **{k: v for k, v in values.items() if v is not None}}
    new = dataclasses.replace(cfg, **{name: build(type(section), merged, where=name, source="command line")})
    new.path = cfg.path
    return new
