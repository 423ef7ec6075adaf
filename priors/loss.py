"""The step-unrolled denoising loss that SUNDAE trains on."""
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange

from priors.categorical import sample_categorical
from priors.corruption import corrupt
from priors.errors import PriorError


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
    if isinstance(unroll_steps, bool) or not isinstance(unroll_steps, int) or unroll_steps < 1:
        raise PriorError(f"unroll_steps must be an integer >= 1, got {unroll_steps!r}")

    inputs = corrupt(tokens, num_tokens, generator=generator)
    step_losses, step_accuracies = [], []
    for step in range(unroll_steps):
        logits = model(inputs, cond)  # (B, h, w, V)
        if logits.shape[-1] != num_tokens:
            raise PriorError(
                f"model gives {logits.shape[-1]} logits per position, expected num_tokens={num_tokens}"
            )
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
