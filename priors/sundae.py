"""SUNDAE, the paper's prior: step-unrolled denoising over a non-causal hourglass.

Training: corrupt a grid (per sample r ~ U[0, 1), each token replaced with probability r by a
uniform random token), denoise it, then keep denoising the model's own samples, T steps in all
(`unroll_steps`, default 2), and average the T cross-entropies against the clean grid.

Sampling: start from uniform random tokens (or from known tokens, for inpainting), and at each
step redraw a random proportion of the positions from softmax(logits / temperature), the
temperature and the proportion annealed over the steps; a sample freezes once its steps stop
changing it.
"""
import dataclasses
from typing import Annotated, NamedTuple, Optional

import torch
import torch.nn.functional as F
from einops import rearrange

from infra.config import PositiveFloat, PositiveInt, Range, UnitFloat, setting
from priors.base import Prior, SampleResult, StepLoss, denoiser
from priors.errors import PriorError
from priors.grids import (StepRecorder, checked_logits, cond_for, count, keep_mask_for, sample_categorical,
                          start_grid)
from priors.settings import ParallelSampling, PriorSettings, schedule

OpenUnit = Annotated[float, Range(0, 1, low_open=True)]  # (0, 1]


@dataclasses.dataclass(frozen=True)
class SundaeTraining(PriorSettings):
    """[prior] of a sundae prior. The original layout gives unroll_steps at the top of the file."""
    unroll_steps: PositiveInt = setting(2, "T, the denoising steps unrolled in training (1: plain denoising)")


@dataclasses.dataclass(frozen=True)
class SundaeSampling(ParallelSampling):
    """[sampling] of a sundae prior."""
    end_temperature: Optional[PositiveFloat] = setting(None, "the temperature at the last step (unset: constant)")
    sample_proportion: OpenUnit = setting(0.5, "probability that a position takes its newly drawn token")
    end_sample_proportion: Optional[OpenUnit] = setting(None, "the proportion at the last step (unset: constant)")
    min_steps: PositiveInt = setting(10, "no sample freezes before it has used this many steps")
    early_stop: bool = setting(True, "freeze each sample once its steps stop changing it (else run every step)")
    # The paper's rule, the default: freeze after one step that changes nothing.
    freeze_threshold: UnitFloat = setting(0.0, "a step is quiet when it changes at most this fraction of tokens")
    freeze_patience: PositiveInt = setting(1, "a sample freezes after this many quiet steps in a row")


# --- training ------------------------------------------------------------------------------------


def corrupt(tokens, num_tokens, generator=None, rate=None):
    """Corrupt a batch of token grids, each sample at its own rate.

    Per sample r ~ U[0, 1); each position independently, with probability r, becomes a token
    drawn uniformly from the vocabulary. A replacement may equal the original token (the paper's
    definition), so the expected fraction of changed positions is r * (1 - 1/num_tokens).

    tokens: (B, ...) integer tensor. rate: optional fixed r, a float or a (B,) tensor (for tests
    and ablations); drawn per sample when None. All randomness comes from `generator`, which must
    live on tokens' device. Returns a tensor of tokens' shape and dtype.
    """
    if num_tokens < 1:
        raise PriorError(f"num_tokens must be >= 1, got {num_tokens}")
    batch, device = tokens.shape[0], tokens.device
    if rate is None:
        rate = torch.rand(batch, generator=generator, device=device)
    rate = torch.as_tensor(rate, dtype=torch.float32, device=device).expand(batch)
    rate = rate.reshape(batch, *([1] * (tokens.dim() - 1)))  # (B,) -> (B, 1, ..., 1)

    replace = torch.rand(tokens.shape, generator=generator, device=device) < rate
    noise = torch.randint(num_tokens, tokens.shape, generator=generator, device=device, dtype=tokens.dtype)
    return torch.where(replace, noise, tokens)


class UnrolledLoss(NamedTuple):
    loss: torch.Tensor  # scalar, mean of step_losses; what the optimiser minimises
    accuracy: torch.Tensor  # scalar, mean of step_accuracies (no gradient)
    step_losses: torch.Tensor  # (T,) cross-entropy of each unroll step, still in the graph
    step_accuracies: torch.Tensor  # (T,) fraction of argmax predictions equal to the clean tokens


def unrolled_loss(model, tokens, unroll_steps=2, cond=None, generator=None, *, num_tokens):
    """Denoise a corrupted grid, then keep denoising the model's own samples, T steps in all.

    model(tokens (B, h, w), cond) -> logits (B, h, w, V). Step 1 sees corrupt(tokens); step t > 1
    sees a sample drawn from step t-1's logits. The sample is a discrete draw, so no gradient
    reaches earlier steps through it: each step is trained to denoise the kind of input the
    model itself produces at sampling time. Every step's target is the clean grid.

    Returns the mean loss and the mean accuracy over the T steps, plus both per step.
    unroll_steps=1 is plain (BERT-like) denoising. Cross-entropy is computed in float32 even
    under autocast. `generator` drives the corruption and the samples. num_tokens is the
    vocabulary size V (needed to corrupt before the model has run).
    """
    count("unroll_steps", unroll_steps)
    inputs = corrupt(tokens, num_tokens, generator=generator)
    step_losses, step_accuracies = [], []
    for step in range(unroll_steps):
        logits = checked_logits(model(inputs, cond), num_tokens)  # (B, h, w, V)
        step_losses.append(_cross_entropy(logits, tokens))
        with torch.no_grad():
            step_accuracies.append((logits.argmax(dim=-1) == tokens).float().mean())
        if step + 1 < unroll_steps:
            inputs = sample_categorical(logits, generator=generator)

    step_losses = torch.stack(step_losses)
    step_accuracies = torch.stack(step_accuracies)
    return UnrolledLoss(step_losses.mean(), step_accuracies.mean(), step_losses, step_accuracies)


def _cross_entropy(logits, targets):
    """Mean cross-entropy over all positions, in float32 whatever the autocast state."""
    with torch.autocast(logits.device.type, enabled=False):
        flat_logits = rearrange(logits.float(), "b ... v -> (b ...) v")
        return F.cross_entropy(flat_logits, targets.reshape(-1))


# --- sampling ------------------------------------------------------------------------------------


@torch.inference_mode()
def sample_sundae(model, start, settings, *, num_tokens, nb_samples=None, cond=None, keep_mask=None,
                  generator=None, device=None, return_history=False, on_step=None):
    """Sample token grids by iterated parallel denoising.

    model(tokens (A, h, w), cond (A, ...) or None, at=(A, h, w) bool) -> logits (K, V) at the
    True positions of `at`, in row-major order, V == num_tokens (pass the EMA model in eval mode,
    or a priors.base.Denoiser for guidance). start: a shape, (h, w) with nb_samples or (N, h, w),
    to start from uniform random tokens; or a LongTensor, (h, w) with nb_samples or (N, h, w), to
    start from those tokens. keep_mask: bool, (h, w) or (N, h, w), True where the start tokens
    must be kept (inpainting); it needs start tokens, and the other positions start from uniform
    noise. The model always sees the whole grid, kept tokens included. cond: None or a tensor
    whose first dimension is N (e.g. (N,) class labels).

    Step t (0-based) picks each free position with probability proportion_t and replaces its
    token with a draw from softmax(model(x) / temperature_t) there. Freezing: a sample is frozen
    after step t if t + 1 >= min_steps and its last `freeze_patience` steps each changed at most
    `freeze_threshold` of its tokens (the paper: one step that changed none); a frozen sample
    leaves the batch (the model is called on the remaining rows only) and keeps its grid. With
    early_stop off nothing freezes and every sample uses `steps` steps.

    All randomness comes from `generator` (which must live on `device`), so a seeded CPU run is
    reproducible. device defaults to start's device for tensors, else CPU.
    """
    denoise = denoiser(model)
    tokens, keep_mask = _starting_grid(start, num_tokens, nb_samples, keep_mask, generator, device)
    n = tokens.shape[0]
    device = tokens.device
    cond = cond_for(cond, n, device)

    temperatures = schedule(settings, "temperature").tolist()
    proportions = schedule(settings, "sample_proportion").tolist()
    steps_used = torch.zeros(n, dtype=torch.long, device=device)
    quiet_run = torch.zeros(n, dtype=torch.long, device=device)  # quiet steps in a row, per sample
    active = torch.arange(n, device=device)  # indices of the samples still being denoised
    record = StepRecorder(tokens, return_history, on_step)

    for step in range(settings.steps):
        current = tokens[active]  # (A, h, w)
        take = torch.rand(current.shape, generator=generator, device=device) < proportions[step]
        if keep_mask is not None:
            take &= ~keep_mask[active]
        # Logits and draws at the K positions this step updates only: the same distribution as
        # drawing everywhere and keeping the drawn positions, at a share of the head's and the
        # draw's cost (at 32x32 x 8192 they are ~30% of a step: bench/README.md).
        logits = checked_logits(denoise(current, None if cond is None else cond[active], step, at=take), num_tokens)
        updated = current.clone()
        updated[take] = sample_categorical(logits.float() / temperatures[step], generator=generator)

        tokens[active] = updated
        steps_used[active] += 1
        record(tokens)

        if settings.early_stop:
            changed = (updated != current).flatten(1).float().mean(dim=1)  # (A,) fraction of tokens
            quiet_run[active] = torch.where(changed <= settings.freeze_threshold, quiet_run[active] + 1, 0)
            if step + 1 >= settings.min_steps:
                active = active[quiet_run[active] < settings.freeze_patience]  # the one host sync per step
                if active.numel() == 0:
                    break

    return SampleResult(tokens, steps_used, record.frames)


def _starting_grid(start, num_tokens, nb_samples, keep_mask, generator, device):
    """Resolve `start` and `keep_mask` to an (N, h, w) LongTensor and an (N, h, w) mask or None."""
    count("num_tokens", num_tokens)
    tokens, shape, device = start_grid(start, nb_samples, device)
    if tokens is not None and tokens.numel() and (tokens.min() < 0 or tokens.max() >= num_tokens):
        raise PriorError(f"start tokens must lie in [0, {num_tokens}), got values outside")
    if keep_mask is None:
        return (torch.randint(num_tokens, shape, generator=generator, device=device) if tokens is None
                else tokens), None
    keep_mask = keep_mask_for(keep_mask, tokens)
    noise = torch.randint(num_tokens, shape, generator=generator, device=device)
    return torch.where(keep_mask, tokens, noise), keep_mask


# --- the prior -----------------------------------------------------------------------------------


class Sundae(Prior):
    name = "sundae"
    Training = SundaeTraining
    Sampling = SundaeSampling
    guidance = True
    compiles = True

    def _model(self):
        return self._hourglass(self.num_tokens)

    def loss(self, model, tokens, cond, generator):
        out = unrolled_loss(model, tokens, self.cfg.prior.unroll_steps, cond, generator, num_tokens=self.num_tokens)
        return StepLoss(out.loss, out.accuracy, {})

    def sampler(self, settings):
        return sample_sundae
