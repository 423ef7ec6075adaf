"""Drawing tokens from logits, shared by the unrolled loss and the sampler."""
import torch
from einops import rearrange


def sample_categorical(logits, generator=None):
    """Draw one token per position from softmax(logits); no gradient flows through the draw.

    logits: (..., V). Returns a LongTensor of shape logits.shape[:-1]. The softmax is taken in
    float32 so that bf16/fp16 logits still give a proper distribution.
    """
    with torch.no_grad():
        probs = logits.detach().float().softmax(dim=-1)
        flat = rearrange(probs, "... v -> (...) v")  # multinomial wants rows of probabilities
        draws = torch.multinomial(flat, 1, generator=generator)  # (P, 1)
    return draws.view(logits.shape[:-1])
