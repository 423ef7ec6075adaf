"""What a prior is: a model built from [net], a training loss, samplers with one signature, its
settings ([prior] and [sampling], priors.settings) and its capabilities as attributes.

    prior = PRIORS[cfg.prior.type](cfg)                       # the registry: priors/__init__.py
    model = prior.build_model()
    out = prior.loss(model, tokens, cond, generator)          # StepLoss(loss, accuracy, extra)
    result = prior.sample(model, start, cfg.sampling, nb_samples=..., cond=..., keep_mask=...,
                          generator=..., device=..., return_history=..., on_step=...)  # SampleResult

Training, sampling, inpainting, the interactive menu and the metrics while training go through
this interface only; none of them tests a prior's name.
"""
from typing import ClassVar, NamedTuple, Optional

import torch

from hourglass_transformer import HourglassError, HourglassTransformerLM
from infra.devices import check_fits_in_memory
from priors.errors import PriorError
from priors.settings import PriorSettings, SamplingSettings, schedule


class StepLoss(NamedTuple):
    loss: torch.Tensor  # scalar: what the optimiser minimises
    accuracy: torch.Tensor  # scalar: argmax predictions equal to the clean tokens (where predicted)
    extra: dict  # {name: scalar tensor} logged beside them (e.g. the ELBO in bits per token)


class SampleResult(NamedTuple):
    tokens: torch.Tensor  # (N, h, w) final grids
    steps_used: torch.Tensor  # (N,) LongTensor, model calls each sample consumed
    history: Optional[list]  # [start, after step 1, ...], each (N, h, w); None unless requested


class Denoiser:
    """What the parallel samplers call at step k: `model`'s logits, or with classifier-free
    guidance uncond + s_k (cond - uncond) from one batched forward of [x with its classes; x with
    the null class], s_k the guidance schedule at step k (the step, not the count of calls: a
    sampler may skip calls on steps that decode nothing)."""

    def __init__(self, model, scales=None, null_class=None):
        self.model, self.null_class = model, null_class
        self.scales = None if scales is None else scales.tolist()

    def __call__(self, tokens, cond, step, at=None):  # (A, h, w), (A,) -> (A, h, w, V); with at (K, V)
        if self.scales is None:
            return self.model(tokens, cond) if at is None else self.model(tokens, cond, at=at)
        null = torch.full_like(cond, self.null_class)
        both = None if at is None else torch.cat([at, at])  # the first K selected rows are the conditional's
        conditional, unconditional = self.model(torch.cat([tokens, tokens]), torch.cat([cond, null]),
                                                at=both).chunk(2)
        return self.mix(conditional, unconditional, self.scales[step])

    @staticmethod
    def mix(conditional, unconditional, scale):
        return unconditional + scale * (conditional - unconditional)


def denoiser(model):
    """A sampler's `model` argument as a Denoiser (a bare model: no guidance)."""
    return model if isinstance(model, Denoiser) else Denoiser(model)


def a_prior(name):
    """'a sundae prior', 'an absorbing prior', 'an autoregressive prior': a prior's name in a
    sentence, with the article its first letter takes."""
    first = name.lstrip("*_`")[:1].lower()  # a name in Markdown emphasis takes its letter's article
    return f"{'an' if first and first in 'aeiou' else 'a'} {name} prior"


class Prior:
    """The interface; each prior module fills it in for one `[prior] type` (priors/__init__.py)."""

    name: ClassVar[str]
    Training: ClassVar[type] = PriorSettings  # its [prior] section
    Sampling: ClassVar[type] = SamplingSettings  # its [sampling] section
    # capabilities
    net_types: ClassVar[tuple] = ("hourglass", "vanilla", "transformer")  # the [net] types it can use
    guidance: ClassVar[bool] = False  # classifier-free guidance when sampling (its Sampling has guidance_scale)
    compiles: ClassVar[bool] = False  # sampling through torch.compile (Bucketed)
    inpaints: ClassVar[str] = "any mask"  # which keep-masks it can complete: "any mask" or "raster prefix"

    def __init__(self, cfg):
        self.cfg = cfg
        self.num_tokens = cfg.data.vocab_size
        net = cfg.net
        self.num_classes = net.num_classes if net.conditional else None
        # the null class of classifier-free guidance: one more class embedding, id num_classes
        self.null_class = net.num_classes if net.conditional and net.cond_drop_prob > 0 else None

    # --- model ----------------------------------------------------------------------------------

    @property
    def model_classes(self):
        return None if self.num_classes is None else self.num_classes + (self.null_class is not None)

    def build_model(self):
        with torch.device("meta"):  # count first: shapes only, no memory
            check_fits_in_memory(sum(p.numel() for p in self._model().parameters()),
                                 f"{self.cfg.path or 'config'}: [net]")
        return self._model()

    def _model(self):
        raise NotImplementedError

    def _hourglass(self, num_tokens, num_outputs=None):
        """The non-causal backbone of [net] (an hourglass, or a vanilla stack for an int depth)."""
        net = self.cfg.net
        flat = isinstance(net.depth, int)
        if net.type == "hourglass" and flat:
            raise PriorError(f"net.depth: an hourglass net takes [pre, valley, post], got {net.depth!r}")
        if net.type != "hourglass" and not flat:
            raise PriorError(f"net.depth: a {net.type} net takes an int depth, got {net.depth!r}")
        try:
            return HourglassTransformerLM(
                num_tokens=num_tokens, num_outputs=num_outputs, dim=net.dim, depth=net.depth,
                shorten_factor=net.shorten_factor, heads=net.nb_heads, dim_head=net.dim_head,
                ff_mult=net.ff_mult, attn_dropout=net.attn_dropout, ff_dropout=net.ff_dropout,
                updown_sample_type=net.updown_sample_type, attn_resampling=net.attn_resampling,
                attn_resampling_type=net.attn_resampling_type, resampling_layout=net.resampling_layout,
                rotary_pos_emb=net.use_rotary, rotary_coords=net.rotary_coords, rotary_layout=net.rotary_layout,
                num_classes=self.model_classes, max_grid=tuple(self.cfg.data.latent_shape))
        except HourglassError as e:  # e.g. a shorten factor that is not a perfect square
            raise PriorError(f"[net]: {e}") from None

    def check_grid(self, model):
        """HourglassError when the latent grid cannot be pooled by the model's hourglass levels."""
        if isinstance(model, HourglassTransformerLM):
            model.level_grids(*self.cfg.data.latent_shape)

    # --- training -------------------------------------------------------------------------------

    def loss(self, model, tokens, cond, generator) -> StepLoss:
        raise NotImplementedError

    def drop_classes(self, labels, generator):
        """Training labels with each replaced by the null class with probability cond_drop_prob
        (drawn from the step's generator, so a resumed run drops the same ones)."""
        if self.null_class is None:
            return labels
        drop = torch.rand(labels.shape, generator=generator, device=labels.device) < self.cfg.net.cond_drop_prob
        return torch.where(drop, torch.full_like(labels, self.null_class), labels)

    # --- sampling -------------------------------------------------------------------------------

    def sample(self, model, start, settings, *, nb_samples=None, cond=None, keep_mask=None, generator=None,
               device=None, return_history=False, on_step=None) -> SampleResult:
        """Grids from `model` (the EMA model in eval mode) with this prior's `settings` (its
        Sampling). start: a shape, (h, w) with nb_samples or (N, h, w), or start tokens with a
        keep_mask (True = known, kept) to inpaint; cond: (N,) classes of a conditional prior;
        on_step(tokens): called with the start and the grids after each step, as they come."""
        self.check_sampling(settings)  # the keep-mask is checked by the sampler, which resolves it
        return self.sampler(settings)(self.guided(model, settings), start, settings, num_tokens=self.num_tokens,
                                      nb_samples=nb_samples, cond=cond, keep_mask=keep_mask, generator=generator,
                                      device=device, return_history=return_history, on_step=on_step)

    def sampler(self, settings):
        """The sampling function for these settings: f(model, start, settings, *, num_tokens,
        nb_samples, cond, keep_mask, generator, device, return_history, on_step) -> SampleResult."""
        raise NotImplementedError

    def check_sampling(self, settings):
        """PriorError, before any sampling, for settings this prior cannot sample with."""
        if not isinstance(settings, self.Sampling):
            raise PriorError(f"{a_prior(self.name)} samples with {self.Sampling.__name__}, got "
                             f"{type(settings).__name__}")
        if self.guidance and settings.guides and self.null_class is None:
            raise PriorError("sampling.guidance_scale: classifier-free guidance needs a class-conditional "
                             "prior trained with net.cond_drop_prob > 0")

    def guided(self, model, settings):
        """`model` for the sampler: wrapped in the guidance Denoiser when the settings guide."""
        if self.guidance and settings.guides:
            return Denoiser(model, schedule(settings, "guidance_scale"), self.null_class)
        return model

    def check_keep_mask(self, keep_mask):
        """PriorError (one line) for an (N, h, w) keep-mask this prior cannot inpaint, for scripts
        to refuse a mask before any work; any mask by default."""


class Bucketed(torch.nn.Module):
    """A compiled model for the samplers, whose batch shrinks as samples freeze: the batch is
    padded up to the next power of two (at most `max_batch`), so torch.compile builds one graph
    per bucket (log2 of the batch) instead of one per batch size."""

    def __init__(self, model, max_batch):
        super().__init__()
        self.compiled = torch.compile(model, dynamic=False)
        self.max_batch = max_batch

    def forward(self, tokens, cond=None, at=None):  # (A, h, w) -> (A, h, w, V); with at (K, V)
        a = tokens.shape[0]
        size = min(self.max_batch, 1 << (a - 1).bit_length())
        if size > a:
            tokens = torch.cat([tokens, tokens[:1].expand(size - a, *tokens.shape[1:])])
            cond = None if cond is None else torch.cat([cond, cond[:1].expand(size - a)])
        # the whole head inside the graph: a data-dependent K would recompile at every step
        logits = self.compiled(tokens, cond)[:a]
        return logits if at is None else logits[at]
