"""Drawing tokens from logits, shared by the unrolled loss and the sampler."""
import torch


def sample_categorical(logits, generator=None):
    """Draw one token per position from softmax(logits); no gradient flows through the draw.

    logits: (..., V). Returns a LongTensor of shape logits.shape[:-1]. Inverse-CDF sampling: one
    uniform number per position and a binary search in the cumulative probabilities, several
    times faster than torch.multinomial for large vocabularies (8192 codes) and the same
    distribution. The softmax is taken in float32 so bf16/fp16 logits still give a proper one.
    """
    with torch.no_grad():
        cdf = logits.detach().float().softmax(dim=-1).cumsum(dim=-1)  # (..., V)
        # Scale by the last entry, not 1: float32 cumsums miss 1 by rounding.
        u = torch.rand((*cdf.shape[:-1], 1), generator=generator, device=cdf.device) * cdf[..., -1:]
        # right=True: the first index whose cdf exceeds u, so zero-probability tokens are never drawn.
        draws = torch.searchsorted(cdf, u, right=True).squeeze(-1)
    return draws.clamp_(max=logits.shape[-1] - 1)
