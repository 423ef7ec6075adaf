import pytest
import torch

from infra.errors import UserError
from priors.sundae import corrupt


def test_fraction_changed_matches_a_fixed_rate():
    vocab, rate = 10, 0.3
    tokens = torch.randint(vocab, (4, 64, 64), generator=torch.Generator().manual_seed(0))
    noisy = corrupt(tokens, vocab, generator=torch.Generator().manual_seed(1), rate=rate)
    changed = (noisy != tokens).float().mean().item()
    # A replacement equals the original with probability 1/V, so it shows as unchanged.
    expected = rate * (1 - 1 / vocab)
    std = (expected * (1 - expected) / tokens.numel()) ** 0.5
    assert abs(changed - expected) < 5 * std


def test_per_sample_rates_are_uniform_on_the_unit_interval():
    vocab, batch = 16, 2000
    tokens = torch.zeros(batch, 32, 32, dtype=torch.long)
    noisy = corrupt(tokens, vocab, generator=torch.Generator().manual_seed(2))
    changed = (noisy != tokens).flatten(1).float().mean(dim=1)  # (B,)
    rate_estimates = (changed / (1 - 1 / vocab)).sort().values
    uniform_quantiles = (torch.arange(batch) + 0.5) / batch
    # Kolmogorov-Smirnov distance to U[0, 1]; 0.03 is the 5% critical value for n=2000,
    # doubled to absorb the per-sample estimation noise.
    assert (rate_estimates - uniform_quantiles).abs().max().item() < 0.06


def test_replacement_tokens_are_uniform_over_the_vocabulary():
    vocab = 8
    tokens = torch.zeros(16, 64, 64, dtype=torch.long)  # the original token 0 is a valid draw too
    noisy = corrupt(tokens, vocab, generator=torch.Generator().manual_seed(3), rate=1.0)
    counts = torch.bincount(noisy.flatten(), minlength=vocab).double()
    expected = noisy.numel() / vocab
    chi_square = ((counts - expected) ** 2 / expected).sum().item()
    assert chi_square < 40  # 7 degrees of freedom: P(chi2 > 40) < 1e-6


def test_rate_zero_is_identity_and_shape_dtype_are_kept():
    tokens = torch.randint(5, (3, 7), dtype=torch.int32)
    noisy = corrupt(tokens, 5, rate=0.0)
    assert noisy.dtype == torch.int32 and noisy.shape == tokens.shape
    assert torch.equal(noisy, tokens)


def test_per_sample_rate_tensor():
    tokens = torch.zeros(2, 50, 50, dtype=torch.long)
    noisy = corrupt(tokens, 100, generator=torch.Generator().manual_seed(4), rate=torch.tensor([0.0, 1.0]))
    assert torch.equal(noisy[0], tokens[0])
    assert (noisy[1] != 0).float().mean().item() > 0.95


def test_same_generator_seed_gives_same_corruption():
    tokens = torch.randint(12, (4, 8, 8))
    first = corrupt(tokens, 12, generator=torch.Generator().manual_seed(5))
    second = corrupt(tokens, 12, generator=torch.Generator().manual_seed(5))
    other = corrupt(tokens, 12, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_empty_vocabulary_is_an_error():
    with pytest.raises(UserError, match="num_tokens"):
        corrupt(torch.zeros(1, 2, 2, dtype=torch.long), 0)
