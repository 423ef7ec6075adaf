"""The SUNDAE corruption process: replace a random fraction of tokens with uniform noise."""
import torch

from priors.errors import PriorError


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
    noise = torch.randint(
        num_tokens, tokens.shape, generator=generator, device=device, dtype=tokens.dtype
    )
    return torch.where(replace, noise, tokens)
