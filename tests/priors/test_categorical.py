import math

import torch

from priors.grids import sample_categorical


def test_draws_follow_softmax():
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0, 0.5])
    n = 200_000
    g = torch.Generator().manual_seed(0)
    draws = sample_categorical(logits.expand(n, 5), generator=g)
    freq = torch.bincount(draws, minlength=5).double() / n
    p = logits.double().softmax(-1)
    # 5 standard errors of a binomial proportion
    assert ((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt()).all(), (freq, p)


def test_zero_probability_tokens_are_never_drawn():
    logits = torch.tensor([-math.inf, 0.0, -math.inf, 0.0, -math.inf]).expand(50_000, 5)
    draws = sample_categorical(logits, generator=torch.Generator().manual_seed(1))
    assert set(draws.unique().tolist()) == {1, 3}


def test_shape_dtype_seed_and_low_precision():
    logits = torch.randn(2, 3, 4, 7, dtype=torch.bfloat16)
    a = sample_categorical(logits, generator=torch.Generator().manual_seed(5))
    b = sample_categorical(logits, generator=torch.Generator().manual_seed(5))
    assert a.shape == (2, 3, 4) and a.dtype == torch.long and torch.equal(a, b)
    assert a.min() >= 0 and a.max() < 7


def test_no_gradient_through_the_draw():
    logits = torch.randn(4, 6, requires_grad=True)
    assert not sample_categorical(logits).requires_grad
