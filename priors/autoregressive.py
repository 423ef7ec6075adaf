"""The autoregressive prior (Taming Transformers): teacher-forced loss and raster-order sampling.

The model is a causal LM over the raster order of the grid, such as
hourglass_transformer.causal.CausalTransformerLM:

    model(tokens (B, h, w), cond) -> logits (B, h, w, V)        # teacher forcing: logits[i] from tokens < i
    model.new_cache(h, w, device=...) -> cache
    model.forward_step(tokens (B, n), cond, cache=None | cache, grid=(h, w)) -> (B, n (+1), V)

Sampling draws one token per step, in raster order, from softmax(logits / temperature) filtered
by top-k then top-p. With the KV cache each step feeds one token; without it each step re-runs
the whole prefix. Both paths draw exactly one uniform number per sample per step from the
generator, so under one seed they give the same tokens. Inpainting is causal only: the known
tokens must be a raster-order prefix of each grid.
"""
import dataclasses
import math
from typing import Annotated, NamedTuple, Optional

import torch
import torch.nn.functional as F
from einops import rearrange

from hourglass_transformer import HourglassError
from hourglass_transformer.causal import CausalTransformerLM
from infra.config import PositiveInt, Range, setting
from priors.base import Prior, SampleResult, StepLoss
from priors.errors import PriorError
from priors.grids import (StepRecorder, checked_logits, cond_for, count, is_real, masked_start,
                          sample_categorical)
from priors.settings import SamplingSettings


@dataclasses.dataclass(frozen=True)
class AutoregressiveSampling(SamplingSettings):
    """[sampling] of an autoregressive prior: a grid takes h * w forwards, one token each."""
    top_k: Optional[PositiveInt] = setting(None, "draw from the k most probable tokens only (default: all)")
    top_p: Optional[Annotated[float, Range(0, 1, low_open=True)]] = setting(
        None, "draw from the smallest set of tokens whose probability reaches p (default: all)")
    use_cache: bool = setting(True, "feed one token per step through the KV cache (off: re-run the prefix)")


class AutoregressiveLoss(NamedTuple):
    loss: torch.Tensor  # scalar, mean next-token cross-entropy in nats, what the optimiser minimises
    accuracy: torch.Tensor  # scalar, fraction of argmax predictions equal to the tokens (no gradient)
    bits_per_token: torch.Tensor  # scalar, loss / ln 2 (no gradient): the exact NLL, comparable with ELBOs


def autoregressive_loss(model, tokens, cond=None, *, num_tokens):
    """Teacher-forced cross-entropy over every position of the grid.

    model(tokens (B, h, w), cond) -> logits (B, h, w, V), logits[:, r, c] predicting tokens[:, r, c]
    from the tokens before it in raster order (the shift is the model's). Computed in float32.
    """
    logits = checked_logits(model(tokens, cond), num_tokens)
    with torch.autocast(logits.device.type, enabled=False):
        loss = F.cross_entropy(rearrange(logits.float(), "b h w v -> (b h w) v"), tokens.reshape(-1))
    with torch.no_grad():
        accuracy = (logits.argmax(dim=-1) == tokens).float().mean()
    return AutoregressiveLoss(loss, accuracy, loss.detach() / math.log(2))


def filter_logits(logits, *, top_k=None, top_p=None):
    """Set the logits outside the top-k, then outside the top-p nucleus, to -inf.  (..., V) -> (..., V)

    top_k: keep the k largest logits. top_p: keep the smallest set of most probable tokens whose
    probability (after top-k, renormalised) sums to at least p; the most probable token is always
    kept. None leaves that filter off.
    """
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise PriorError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
        if top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[..., -1:]  # (..., 1)
            logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None:
        if not (is_real(top_p) and 0 < top_p <= 1):
            raise PriorError(f"top_p must be a number in (0, 1] or None, got {top_p!r}")
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.float().softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # (..., V) mass of the more probable tokens
        drop_sorted = mass_before >= top_p  # the set before already reaches p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, -math.inf)
    return logits


def check_raster_prefix(known):
    """(N, h, w) bool -> (N,) LongTensor: how many leading raster positions each grid keeps.

    Raises the one-line PriorError when some grid keeps a position after an unknown one.
    """
    flat = rearrange(known, "n h w -> n (h w)")
    lengths = flat.long().cumprod(dim=1).sum(dim=1)  # (N,) length of the all-True prefix
    beyond = flat & (torch.arange(flat.shape[1], device=flat.device) >= lengths[:, None])
    if bool(beyond.any()):
        sample, index = (int(i) for i in beyond.nonzero()[0])
        w, gap = known.shape[2], int(lengths[sample])
        raise PriorError(
            "the autoregressive prior can only complete a raster-order prefix; keep_mask keeps "
            f"position {divmod(index, w)} of sample {sample} after the unknown position {divmod(gap, w)} "
            "(keep whole rows from the top, then the start of the next row; use the sundae or absorbing "
            "prior for other masks)")
    return lengths


@torch.inference_mode()
def sample_autoregressive(model, start, settings, *, num_tokens, nb_samples=None, cond=None, keep_mask=None,
                          generator=None, device=None, return_history=False, on_step=None):
    """Sample grids token by token in raster order, from the first unknown position on.

    start: a shape, (h, w) with nb_samples or (N, h, w), to sample whole grids; or a LongTensor
    (h, w) with nb_samples or (N, h, w) and a keep_mask (True = known) whose True entries form a
    raster-order prefix of each grid (see priors.grids.masked_start; values == num_tokens
    mark unknown positions when keep_mask is None). Known tokens are fed, never drawn over.
    settings: temperature, then top-k and top-p filtering of the logits, in that order.
    use_cache: feed one token per step through the model's KV cache; off, every step re-runs the
    model on the whole prefix (same tokens under one seed, for testing and benchmarks).
    steps_used: the model forwards each sample took (h*w - the shortest prefix in the batch).
    history: [start, after each step], unknown positions = num_tokens.
    """
    count("num_tokens", num_tokens)
    temperature, top_k, top_p = settings.temperature, settings.top_k, settings.top_p
    tokens, known = masked_start(start, mask_id=num_tokens, nb_samples=nb_samples, keep_mask=keep_mask, device=device)
    n, h, w = tokens.shape
    device = tokens.device
    cond = cond_for(cond, n, device)
    prefix = check_raster_prefix(known)  # (N,)
    first = int(prefix.min())  # the first position some sample must draw
    flat = rearrange(tokens, "n h w -> n (h w)").clone()  # (N, h*w), filled in place
    known_flat = rearrange(known, "n h w -> n (h w)")
    record = StepRecorder(tokens, return_history, on_step)
    cache = model.new_cache(h, w, device=device) if settings.use_cache else None

    for i in range(first, h * w):
        if cache is None:  # re-run the prefix: start + cells 0..i-1 -> logits for cells 0..i
            logits = model.forward_step(flat[:, :i], cond, grid=(h, w))[:, -1]
        elif i == first:  # fill the cache with the common known prefix
            logits = model.forward_step(flat[:, :i], cond, cache=cache)[:, -1]
        else:  # feed the token drawn last step
            logits = model.forward_step(flat[:, i - 1:i], cond, cache=cache)[:, -1]
        logits = filter_logits(checked_logits(logits, num_tokens).float() / temperature, top_k=top_k, top_p=top_p)
        draws = sample_categorical(logits, generator=generator)  # (N,)
        flat[:, i] = torch.where(known_flat[:, i], flat[:, i], draws)
        record(rearrange(flat, "n (h w) -> n h w", h=h))
    steps_used = torch.full((n,), h * w - first, dtype=torch.long, device=device)
    return SampleResult(rearrange(flat, "n (h w) -> n h w", h=h), steps_used, record.frames)


# --- the prior -----------------------------------------------------------------------------------


class Autoregressive(Prior):
    name = "autoregressive"
    Sampling = AutoregressiveSampling
    net_types = ("vanilla", "transformer")  # a causal hourglass is not implemented
    inpaints = "raster prefix"

    def _model(self):
        net = self.cfg.net
        if net.type not in self.net_types or not isinstance(net.depth, int):
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

    def sampler(self, settings):
        return sample_autoregressive

    def check_keep_mask(self, keep_mask):
        check_raster_prefix(keep_mask)
