"""The priors over token grids, one small interface, one registry.

Every prior says how to build its model, its training loss on a batch, and how to sample (with
known tokens kept, for inpainting). Training, sampling, inpainting, the interactive menu and the
metrics while training go through this interface only:

    prior = prior_type(cfg)                                  # from [prior] type
    model = prior.build_model()
    out = prior.loss(model, tokens, cond, generator)         # .loss, .accuracy, .extra {name: value}
    result = prior.sample(model, start, sampling, ...)       # SampleResult(tokens, steps_used, history)

- "sundae": step-unrolled denoising (the paper): a non-causal hourglass over V tokens, trained
  with `unroll_steps` unrolled denoising steps, sampled by iterated parallel denoising.
- "absorbing": absorbing-state discrete diffusion (Unleashing Transformers): the same hourglass
  reading V + 1 tokens (a mask token) and predicting V; reweighted-ELBO training; Unleashing's
  sampler or MaskGIT's confidence decoding (`[prior] decoder`).
- "autoregressive": a causal raster-order transformer (Taming Transformers; `net.type =
  "vanilla"`), teacher-forced cross-entropy; sampling with temperature, top-k, top-p and a KV
  cache; inpainting completes what comes after a known raster prefix only.
"""
from typing import NamedTuple, Optional

import torch

from hourglass_transformer import HourglassError, HourglassTransformerLM
from hourglass_transformer.causal import CausalTransformerLM
from infra.devices import check_fits_in_memory
from priors.absorbing import absorbing_loss, sample_absorbing, sample_maskgit
from priors.autoregressive import autoregressive_loss, check_raster_prefix, sample_autoregressive
from priors.errors import PriorError
from priors.loss import unrolled_loss
from priors.sundae import guidance_schedule, sample


class StepLoss(NamedTuple):
    loss: torch.Tensor  # scalar: what the optimiser minimises
    accuracy: torch.Tensor  # scalar: argmax predictions equal to the clean tokens (where predicted)
    extra: dict  # {name: scalar tensor} logged beside them (e.g. the ELBO in bits per token)


class Guided(torch.nn.Module):
    """Classifier-free guidance around a conditional model, for the samplers: one batched forward
    of [x with its classes; x with the null class] per call, giving uncond + s * (cond - uncond),
    with s the step's scale (call k of the sampler is its step k)."""

    def __init__(self, model, scales, null_class):
        super().__init__()
        self.model, self.scales, self.null_class, self.calls = model, scales.tolist(), null_class, 0

    def forward(self, tokens, cond, at=None):  # (A, h, w), (A,) -> (A, h, w, V); with at (K, V)
        null = torch.full_like(cond, self.null_class)
        both = None if at is None else torch.cat([at, at])  # the first K selected rows are the conditional's
        conditional, unconditional = self.model(torch.cat([tokens, tokens]), torch.cat([cond, null]),
                                                at=both).chunk(2)
        scale = self.scales[min(self.calls, len(self.scales) - 1)]
        self.calls += 1
        return unconditional + scale * (conditional - unconditional)


class PriorType:
    """The interface; each prior fills it in for one `[prior] type`."""

    name = None

    def __init__(self, cfg):
        self.cfg = cfg
        self.num_tokens = cfg.data.vocab_size
        net = cfg.net
        self.num_classes = net.num_classes if net.conditional else None
        # the null class of classifier-free guidance: one more class embedding, id num_classes
        self.null_class = net.num_classes if net.conditional and net.cond_drop_prob > 0 else None

    @property
    def model_classes(self):
        return None if self.num_classes is None else self.num_classes + (self.null_class is not None)

    def drop_classes(self, labels, generator):
        """Training labels with each replaced by the null class with probability cond_drop_prob
        (drawn from the step's generator, so a resumed run drops the same ones)."""
        if self.null_class is None:
            return labels
        drop = torch.rand(labels.shape, generator=generator, device=labels.device) < self.cfg.net.cond_drop_prob
        return torch.where(drop, torch.full_like(labels, self.null_class), labels)

    def guided(self, model, sampling, cond):
        """`model`, or the guided model when the sampling settings ask for guidance."""
        if sampling.guidance_scale == 1 and sampling.end_guidance_scale in (None, 1):
            return model
        if cond is None or self.null_class is None:
            raise PriorError("sampling.guidance_scale: classifier-free guidance needs a class-conditional "
                              "prior trained with net.cond_drop_prob > 0")
        if self.name == "autoregressive":
            raise PriorError("sampling.guidance_scale: classifier-free guidance is implemented for the "
                              "sundae and absorbing priors")
        return Guided(model, guidance_schedule(sampling), self.null_class)

    def build_model(self):
        with torch.device("meta"):  # count first: shapes only, no memory
            check_fits_in_memory(sum(p.numel() for p in self._model().parameters()),
                                 f"{self.cfg.path or 'config'}: [net]")
        return self._model()

    def _model(self):
        raise NotImplementedError

    def loss(self, model, tokens, cond, generator):
        raise NotImplementedError

    def sample(self, model, start, sampling, *, nb_samples=None, cond=None, keep_mask=None, generator=None,
               device=None, return_history=False):
        raise NotImplementedError

    def check_keep_mask(self, keep_mask):
        """PriorError (one line) for a keep-mask this prior cannot inpaint; any mask by default."""

    def check_grid(self, model):
        """HourglassError when the latent grid cannot be pooled by the model's hourglass levels."""
        if isinstance(model, HourglassTransformerLM):
            model.level_grids(*self.cfg.data.latent_shape)

    def _hourglass(self, num_tokens, num_outputs=None):
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


class Sundae(PriorType):
    name = "sundae"

    def _model(self):
        return self._hourglass(self.num_tokens)

    def loss(self, model, tokens, cond, generator):
        out = unrolled_loss(model, tokens, self.cfg.unroll_steps, cond, generator, num_tokens=self.num_tokens)
        return StepLoss(out.loss, out.accuracy, {})

    def sample(self, model, start, sampling, **kwargs):
        model = self.guided(model, sampling, kwargs.get("cond"))
        return sample(model, start, sampling, num_tokens=self.num_tokens, **kwargs)


class Absorbing(PriorType):
    name = "absorbing"

    def _model(self):  # reads V + 1 tokens (the mask is token V), predicts V
        return self._hourglass(self.num_tokens + 1, num_outputs=self.num_tokens)

    def loss(self, model, tokens, cond, generator):
        p = self.cfg.prior
        out = absorbing_loss(model, tokens, cond, generator, num_tokens=self.num_tokens,
                             num_timesteps=p.num_timesteps, loss_type=p.loss_type or "reweighted_elbo")
        return StepLoss(out.loss, out.accuracy, {"elbo_bits": out.elbo_bits})

    def sample(self, model, start, sampling, **kwargs):
        p = self.cfg.prior
        model = self.guided(model, sampling, kwargs.get("cond"))
        if (p.decoder or "unleashing") == "maskgit":
            choice = 4.5 if p.choice_temperature is None else p.choice_temperature
            return sample_maskgit(model, start, num_tokens=self.num_tokens, steps=sampling.steps,
                                  temperature=sampling.temperature, choice_temperature=choice, **kwargs)
        return sample_absorbing(model, start, num_tokens=self.num_tokens, steps=sampling.steps,
                                temperature=sampling.temperature, **kwargs)


class Autoregressive(PriorType):
    name = "autoregressive"

    def _model(self):
        net = self.cfg.net
        if net.type == "hourglass" or not isinstance(net.depth, int):
            raise PriorError("net.type: the autoregressive prior is a causal vanilla stack; set "
                              "net.type = 'vanilla' and an int net.depth (a causal hourglass is not implemented)")
        try:
            return CausalTransformerLM(
                num_tokens=self.num_tokens, dim=net.dim, depth=net.depth, heads=net.nb_heads,
                dim_head=net.dim_head, ff_mult=net.ff_mult, attn_dropout=net.attn_dropout,
                ff_dropout=net.ff_dropout, rotary_pos_emb=net.use_rotary, rotary_coords=net.rotary_coords,
                num_classes=self.model_classes, max_grid=tuple(self.cfg.data.latent_shape))
        except HourglassError as e:
            raise PriorError(f"[net]: {e}") from None

    def loss(self, model, tokens, cond, generator):
        out = autoregressive_loss(model, tokens, cond, num_tokens=self.num_tokens)
        return StepLoss(out.loss, out.accuracy, {"bits_per_token": out.bits_per_token})

    def sample(self, model, start, sampling, **kwargs):
        p = self.cfg.prior
        self.guided(model, sampling, kwargs.get("cond"))  # refused: not implemented with a KV cache
        return sample_autoregressive(model, start, num_tokens=self.num_tokens, temperature=sampling.temperature,
                                     top_k=p.top_k, top_p=p.top_p, use_cache=p.use_cache is not False, **kwargs)

    def check_keep_mask(self, keep_mask):
        check_raster_prefix(keep_mask if keep_mask.dim() == 3 else keep_mask[None])


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


PRIOR_TYPES = {kind.name: kind for kind in (Sundae, Absorbing, Autoregressive)}


def prior_type(cfg) -> PriorType:
    return PRIOR_TYPES[cfg.prior.type](cfg)


def build_denoiser(cfg, device: Optional[str] = None):
    """The model a config's [prior] and [net] describe."""
    model = prior_type(cfg).build_model()
    return model if device is None else model.to(device)
