"""Absorbing-state discrete diffusion (Unleashing Transformers) and MaskGIT's confidence decoding.

Vocabulary: the codebook has V tokens 0..V-1 and the mask token is V. The denoiser reads grids
with values in [0, V] and gives logits over the V real tokens:

    model(tokens (B, h, w) in [0, V], cond or None) -> logits (B, h, w, V)

`HourglassTransformerLM(num_tokens=V + 1, num_outputs=V, ...)` is one such model.

Forward process q(x_t | x_0): t ~ U{1..T} per sample, then every token is replaced by the mask
independently with probability t/T (so x_T is all masks). T defaults to the number of tokens
h*w, as in Unleashing (256 steps for 16x16 latents).

Training loss (Unleashing's `_train_loss`, samb-t/unleashing-transformers,
models/absorbing_diffusion.py lines 85-117 at commit 069cceb): with N = h*w and
CE(t) = sum over the masked positions of -log p(x_0[i] | x_t) in nats,

    elbo:            vb(t) = CE(t) / t / pt / (N ln 2),  pt = 1/T for uniform t,  = T/t * CE(t) / (N ln 2)
    reweighted_elbo: (1 - t/T) * CE(t) / (N ln 2)        (no 1/pt: the repo leaves it out)

each averaged over the batch. E_t[vb(t)] is the ELBO in bits per token (x_T is deterministic, so
the prior term is 0). The paper's appendix B writes the reweighting as (T - t + 1)/T; the code,
which trained the published models, uses 1 - t/T, and so do we (t = T then carries no weight).

Samplers (both return priors.base.SampleResult; known tokens start unmasked and never change):

- `sample_absorbing`, Unleashing's `sample`: S steps counting t = S, S-1, ..., 1; at step t each
  still-masked position is unmasked with probability 1/t (the last step unmasks the rest), and
  takes a draw from softmax(logits / temperature). This is the T-step reverse chain evenly skipped
  down to S steps: the masked fraction goes t/S -> (t-1)/S, in a random order.
- `sample_maskgit`, MaskGIT's confidence decoding (google-research/maskgit,
  maskgit/libml/parallel_decode.py and mask_schedule.py): every step draws all masked positions,
  keeps the most confident draws and re-masks the rest so that
      floor(N0 * cos(pi/2 * (k + 1) / S))
  positions stay masked after step k (N0 = masked at the start; see `maskgit_schedule` for the
  clamps), with Gumbel noise choice_temperature * (1 - (k + 1)/S) on the log-confidences.
"""
import dataclasses
import math
from typing import Literal, NamedTuple, Optional

import torch
import torch.nn.functional as F
from einops import rearrange

from infra.config import NonNegativeFloat, PositiveInt, setting
from priors.base import Prior, SampleResult, StepLoss, denoiser
from priors.errors import PriorError
from priors.grids import StepRecorder, checked_logits, cond_for, count, masked_start, sample_categorical
from priors.settings import ParallelSampling, PriorSettings

LOSS_TYPES = ("reweighted_elbo", "elbo")
MASKGIT_CHOICE_TEMPERATURE = 4.5  # maskgit_class_cond_config.py
NO_MASK_LOGIT = " (the mask token gets no logit: build the backbone with num_outputs=V)"


@dataclasses.dataclass(frozen=True)
class AbsorbingTraining(PriorSettings):
    """[prior] of an absorbing prior."""
    loss_type: Literal["reweighted_elbo", "elbo"] = setting(
        "reweighted_elbo", "Unleashing's reweighted ELBO (1 - t/T) or the plain ELBO (T/t)")
    num_timesteps: Optional[PositiveInt] = setting(None, "T of the forward process (default: h * w)")


@dataclasses.dataclass(frozen=True)
class AbsorbingSampling(ParallelSampling):
    """[sampling] of an absorbing prior: `steps` is S, the steps of the reverse chain."""
    decoder: Literal["unleashing", "maskgit"] = setting(
        "unleashing", "Unleashing's random-order unmasking, or MaskGIT's confidence decoding (8-16 steps)")
    choice_temperature: Optional[NonNegativeFloat] = setting(
        None, f"maskgit decoder: the Gumbel noise scale on confidences (default {MASKGIT_CHOICE_TEMPERATURE})")

    def __post_init__(self):
        super().__post_init__()
        if self.choice_temperature is not None and self.decoder != "maskgit":
            raise PriorError(f"sampling.choice_temperature: a setting of the maskgit decoder, but "
                             f"sampling.decoder = {self.decoder!r}")


# --- forward process -----------------------------------------------------------------------------


def sample_timesteps(batch, num_timesteps, *, generator=None, device=None):
    """(batch,) LongTensor of t ~ U{1..T}, one per sample."""
    count("num_timesteps", num_timesteps)
    return torch.randint(1, num_timesteps + 1, (batch,), generator=generator, device=device)


def mask_tokens(tokens, t, num_timesteps, *, mask_id, generator=None):
    """Sample q(x_t | x_0): mask each token independently with probability t/T.

    tokens (B, h, w) long, t (B,) long in [1, T] -> (noisy (B, h, w) with mask_id where masked,
    mask (B, h, w) bool, True where masked).
    """
    rate = t.float() / num_timesteps  # (B,), exactly 1 at t = T
    mask = torch.rand(tokens.shape, generator=generator, device=tokens.device) < rate[:, None, None]
    return torch.where(mask, torch.full_like(tokens, mask_id), tokens), mask


# --- loss ----------------------------------------------------------------------------------------


class AbsorbingLoss(NamedTuple):
    loss: torch.Tensor  # scalar, what the optimiser minimises (bits per token, weighted)
    accuracy: torch.Tensor  # scalar, argmax accuracy on the masked positions (no gradient)
    elbo_bits: torch.Tensor  # scalar, this batch's one-draw ELBO estimate in bits per token (no gradient)


def loss_per_sample(logits, tokens, mask, t, *, num_timesteps, loss_type="reweighted_elbo"):
    """(B,) per-sample loss in bits per token from the denoiser's logits on x_t.

    logits (B, h, w, V), tokens (B, h, w) the clean x_0, mask (B, h, w) True where x_t is masked,
    t (B,). "elbo": T/t * CE / (N ln 2); "reweighted_elbo": (1 - t/T) * CE / (N ln 2), with CE
    the cross-entropy summed over the masked positions and N = h*w (see the module docstring).
    """
    if loss_type not in LOSS_TYPES:
        raise PriorError(f"absorbing loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    ce = _masked_cross_entropy_sum(logits, tokens, mask)  # (B,) nats
    n = tokens[0].numel()
    t = t.to(ce.dtype)
    if loss_type == "elbo":
        weight = num_timesteps / t  # 1/t / pt with pt = 1/T
    else:
        weight = 1 - t / num_timesteps
    return weight * ce / (n * math.log(2))


def absorbing_loss(
    model, tokens, cond=None, generator=None, *, num_tokens, num_timesteps=None, loss_type="reweighted_elbo"
):
    """Draw t (uniform), then the mask, from `generator`; denoise; return the weighted loss.

    model(x_t (B, h, w) in [0, V], cond) -> logits (B, h, w, V), V = num_tokens; mask id = V.
    num_timesteps: T, default h*w. The ELBO estimate comes with every loss type.
    """
    count("num_tokens", num_tokens)
    t_steps = _timesteps(num_timesteps, tokens)
    t = sample_timesteps(tokens.shape[0], t_steps, generator=generator, device=tokens.device)
    noisy, mask = mask_tokens(tokens, t, t_steps, mask_id=num_tokens, generator=generator)
    logits = checked_logits(model(noisy, cond), num_tokens, NO_MASK_LOGIT)
    loss = loss_per_sample(logits, tokens, mask, t, num_timesteps=t_steps, loss_type=loss_type)
    with torch.no_grad():
        elbo = loss if loss_type == "elbo" else loss_per_sample(
            logits, tokens, mask, t, num_timesteps=t_steps, loss_type="elbo")
        hits = (logits.argmax(dim=-1) == tokens) & mask
        accuracy = hits.sum() / mask.sum().clamp(min=1)
    return AbsorbingLoss(loss.mean(), accuracy.float(), elbo.mean().detach())


@torch.no_grad()
def elbo_bits_per_token(
    model, tokens, cond=None, generator=None, *, num_tokens, num_timesteps=None, all_timesteps=False
):
    """(B,) the validation ELBO in bits per token, an upper bound on -log2 p(x_0) / N.

    Default: one t ~ U{1..T} and one mask per sample, T/t * CE(t) / (N ln 2), an unbiased
    one-forward estimate (Unleashing's `vb_loss`; average it over a validation set). With
    all_timesteps, the sum over every t = 1..T of CE(t)/t / (N ln 2) (T forwards, one mask draw
    each; Unleashing's `elbo`): exact in t, random only in the masks.
    """
    count("num_tokens", num_tokens)
    t_steps = _timesteps(num_timesteps, tokens)
    b, n = tokens.shape[0], tokens[0].numel()
    if not all_timesteps:
        t = sample_timesteps(b, t_steps, generator=generator, device=tokens.device)
        noisy, mask = mask_tokens(tokens, t, t_steps, mask_id=num_tokens, generator=generator)
        logits = checked_logits(model(noisy, cond), num_tokens, NO_MASK_LOGIT)
        return loss_per_sample(logits, tokens, mask, t, num_timesteps=t_steps, loss_type="elbo")
    total = torch.zeros(b, dtype=torch.float32, device=tokens.device)
    for step in range(1, t_steps + 1):
        t = torch.full((b,), step, dtype=torch.long, device=tokens.device)
        noisy, mask = mask_tokens(tokens, t, t_steps, mask_id=num_tokens, generator=generator)
        logits = checked_logits(model(noisy, cond), num_tokens, NO_MASK_LOGIT)
        total += _masked_cross_entropy_sum(logits, tokens, mask) / step
    return total / (n * math.log(2))


def _masked_cross_entropy_sum(logits, tokens, mask):
    """(B,) cross-entropy in nats summed over the masked positions, in float32 under autocast."""
    with torch.autocast(logits.device.type, enabled=False):
        flat = rearrange(logits.float(), "b h w v -> b v (h w)")
        ce = F.cross_entropy(flat, rearrange(tokens, "b h w -> b (h w)"), reduction="none")  # (B, N)
        return (ce * rearrange(mask, "b h w -> b (h w)")).sum(dim=1)


# --- Unleashing's sampler ------------------------------------------------------------------------


@torch.inference_mode()
def sample_absorbing(model, start, settings, *, num_tokens, nb_samples=None, cond=None, keep_mask=None,
                     generator=None, device=None, return_history=False, on_step=None):
    """Unmask a grid in a random order over S = settings.steps steps (Unleashing Transformers' sampler).

    model(x (A, h, w) in [0, V], cond) -> logits (A, h, w, V), or a priors.base.Denoiser.
    start/nb_samples/keep_mask: see `priors.grids.masked_start` (a shape starts fully masked).
    Step k (0-based) has t = S - k: each still-masked position is unmasked with probability 1/t
    and takes a draw from softmax(model(x) / temperature); known positions never change. The
    model runs only on the samples that unmask something this step, so steps_used counts each
    sample's forwards (<= S). cond: None or a tensor with one row per sample. All randomness comes from
    `generator` (on `device`). history: [start, after step 1, ...], mask id = num_tokens.
    """
    count("num_tokens", num_tokens)
    denoise, steps, temperature = denoiser(model), settings.steps, settings.temperature
    mask_id = num_tokens
    tokens, _ = masked_start(start, mask_id=mask_id, nb_samples=nb_samples, keep_mask=keep_mask, device=device)
    n, device = tokens.shape[0], tokens.device
    cond = cond_for(cond, n, device)
    steps_used = torch.zeros(n, dtype=torch.long, device=device)
    record = StepRecorder(tokens, return_history, on_step)

    for step in range(steps):
        t = steps - step
        masked = tokens == mask_id
        reveal = masked & (torch.rand(tokens.shape, generator=generator, device=device) < 1.0 / t)
        active = reveal.flatten(1).any(dim=1).nonzero().squeeze(1)  # (A,) the one host sync per step
        if active.numel():
            logits = checked_logits(denoise(tokens[active], None if cond is None else cond[active], step),
                                    num_tokens, NO_MASK_LOGIT)
            draws = sample_categorical(logits.float() / temperature, generator=generator)  # (A, h, w)
            tokens[active] = torch.where(reveal[active], draws, tokens[active])
            steps_used[active] += 1
        record(tokens)
    return SampleResult(tokens, steps_used, record.frames)


# --- MaskGIT's confidence decoding ---------------------------------------------------------------


def maskgit_schedule(num_unknown, steps):
    """(N, steps) LongTensor: how many positions stay masked after each step, from (N,) counts.

    raw_k = floor(N0 * cos(pi/2 * (k + 1) / steps)) (MaskGIT's cosine schedule), then, as in
    MaskGIT's decode, each step before the last decodes at least one position and leaves at least
    one masked: n_k = min(n_{k-1}, max(1, min(n_{k-1} - 1, raw_k))), n_{-1} = N0; the last step
    decodes everything left, n_{steps-1} = 0.
    """
    count("steps", steps)
    num_unknown = num_unknown.to(torch.long)
    ratios = torch.arange(1, steps + 1, dtype=torch.float64, device=num_unknown.device) / steps  # (S,)
    raw = torch.floor(num_unknown[:, None].double() * torch.cos(math.pi / 2 * ratios)).long()  # (N, S)
    out, previous = torch.empty_like(raw), num_unknown
    for k in range(steps):
        if k == steps - 1:
            current = torch.zeros_like(previous)
        else:
            current = torch.minimum(previous, torch.clamp(torch.minimum(previous - 1, raw[:, k]), min=1))
        out[:, k] = current
        previous = current
    return out


@torch.inference_mode()
def sample_maskgit(model, start, settings, *, num_tokens, nb_samples=None, cond=None, keep_mask=None,
                   generator=None, device=None, return_history=False, on_step=None):
    """MaskGIT's confidence decoding with the same denoiser: many tokens per step, surest first.

    Step k (0-based, ratio r = (k + 1)/steps): draw every masked position from
    softmax(model(x) / temperature); its confidence is the draw's log-probability under that
    distribution plus choice_temperature * (1 - r) * Gumbel noise; known and already decoded
    positions count as infinitely confident. The `maskgit_schedule(...)[:, k]` least confident
    draws are masked again; all others are decoded for good (nothing decoded is ever re-masked).
    A sample runs the model only at the steps that decode some of its positions (steps_used).
    start/nb_samples/keep_mask: see `priors.grids.masked_start`; known tokens count as decoded from the start.
    MaskGIT's defaults: 8-16 steps, choice_temperature 4.5 (maskgit_class_cond_config.py).
    """
    count("num_tokens", num_tokens)
    denoise, steps, temperature = denoiser(model), settings.steps, settings.temperature
    choice_temperature = (MASKGIT_CHOICE_TEMPERATURE if settings.choice_temperature is None
                          else settings.choice_temperature)
    mask_id = num_tokens
    tokens, known = masked_start(start, mask_id=mask_id, nb_samples=nb_samples, keep_mask=keep_mask, device=device)
    n, device = tokens.shape[0], tokens.device
    cond = cond_for(cond, n, device)
    remaining = (~known).flatten(1).sum(dim=1)  # (N,)
    schedule = maskgit_schedule(remaining, steps)  # (N, S)
    steps_used = torch.zeros(n, dtype=torch.long, device=device)
    record = StepRecorder(tokens, return_history, on_step)

    for step in range(steps):
        ratio = (step + 1) / steps
        target = schedule[:, step]  # (N,) masked after this step
        active = (target < remaining).nonzero().squeeze(1)  # samples that decode something now
        if active.numel():
            current = tokens[active]  # (A, h, w)
            logits = checked_logits(denoise(current, None if cond is None else cond[active], step),
                                    num_tokens, NO_MASK_LOGIT)
            logits = logits.float() / temperature
            unknown = current == mask_id
            draws = torch.where(unknown, sample_categorical(logits, generator=generator), current)
            log_probs = logits.log_softmax(dim=-1).gather(-1, draws[..., None]).squeeze(-1)  # (A, h, w)
            noise = _gumbel_noise(current.shape, choice_temperature * (1 - ratio), generator, device)
            confidence = log_probs + noise  # (A, h, w)
            confidence = torch.where(unknown, confidence, torch.full_like(confidence, math.inf))
            remask = _lowest(rearrange(confidence, "a h w -> a (h w)"), target[active])  # (A, h*w)
            remask = rearrange(remask, "a (h w) -> a h w", h=current.shape[1])
            tokens[active] = torch.where(remask, torch.full_like(draws, mask_id), draws)
            steps_used[active] += 1
        remaining = target
        record(tokens)
    return SampleResult(tokens, steps_used, record.frames)


def _gumbel_noise(shape, scale, generator, device):
    """scale * standard Gumbel noise -log(-log u), u ~ U(0, 1) kept away from 0 and 1."""
    u = torch.rand(shape, generator=generator, device=device).clamp_(1e-20, 1 - 1e-7)
    return scale * -torch.log(-torch.log(u))


def _lowest(scores, counts):
    """(A, L) bool, True at the counts[a] smallest scores of each row (ties: the earlier position)."""
    order = scores.argsort(dim=1, stable=True)
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    ranks = torch.empty_like(order).scatter_(1, order, positions)  # ranks[a, i] = rank of position i
    return ranks < counts[:, None]


# --- checks --------------------------------------------------------------------------------------


def _timesteps(num_timesteps, tokens):
    if tokens.dim() != 3:
        raise PriorError(f"tokens must be (B, h, w), got shape {tuple(tokens.shape)}")
    if num_timesteps is None:
        return tokens[0].numel()
    count("num_timesteps", num_timesteps)
    return num_timesteps


# --- the prior -----------------------------------------------------------------------------------


class Absorbing(Prior):
    name = "absorbing"
    Training = AbsorbingTraining
    Sampling = AbsorbingSampling
    guidance = True
    compiles = True

    def _model(self):  # reads V + 1 tokens (the mask is token V), predicts V
        return self._hourglass(self.num_tokens + 1, num_outputs=self.num_tokens)

    def loss(self, model, tokens, cond, generator):
        p = self.cfg.prior
        out = absorbing_loss(model, tokens, cond, generator, num_tokens=self.num_tokens,
                             num_timesteps=p.num_timesteps, loss_type=p.loss_type)
        return StepLoss(out.loss, out.accuracy, {"elbo_bits": out.elbo_bits})

    def sampler(self, settings):
        return sample_maskgit if settings.decoder == "maskgit" else sample_absorbing
