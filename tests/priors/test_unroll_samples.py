"""The unroll feeds step t > 1 a *sample* of step t-1's logits, not their argmax:
with a model that is not peaked, the step-2 inputs vary with the generator's seed."""
import pytest
import torch
from torch import nn

import priors.sundae
from hourglass_transformer import HourglassTransformerLM
from priors.sundae import unrolled_loss

pytestmark = pytest.mark.usefixtures("single_thread")

V = 5
PROBS = torch.tensor([0.3, 0.25, 0.2, 0.15, 0.1])  # argmax 0, but 70% of the mass elsewhere


class Recorder(nn.Module):
    """Wraps a model and records every input grid it receives."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.inputs = []

    def forward(self, tokens, cond=None):
        self.inputs.append(tokens.clone())
        return self.model(tokens, cond)


class FixedLogits(nn.Module):
    """log PROBS at every position, whatever the input: its argmax never depends on the input."""

    def forward(self, tokens, cond=None):
        return PROBS.log().expand(*tokens.shape, V)


def step_two_inputs(model, seed, tokens, num_tokens):
    recorder = Recorder(model)
    unrolled_loss(recorder, tokens, 2, generator=torch.Generator().manual_seed(seed), num_tokens=num_tokens)
    assert len(recorder.inputs) == 2
    return recorder.inputs[1]


def test_step_two_inputs_are_draws_from_the_step_one_logits():
    tokens = torch.zeros(8, 16, 16, dtype=torch.long)
    inputs = [step_two_inputs(FixedLogits(), seed, tokens, V) for seed in range(4)]
    for i in range(4):
        for j in range(i):
            assert not torch.equal(inputs[i], inputs[j]), f"seeds {i} and {j} gave the same step-2 inputs"
    # ...with the model's distribution, not its mode (8 * 256 draws per seed: sd of a frequency ~0.01)
    freqs = torch.bincount(torch.cat(inputs).flatten(), minlength=V).double() / (4 * tokens.numel())
    torch.testing.assert_close(freqs, PROBS.double(), rtol=0, atol=0.03)


def test_the_check_above_fails_when_the_unroll_feeds_the_argmax(monkeypatch):
    monkeypatch.setattr(priors.sundae, "sample_categorical", lambda logits, generator=None: logits.argmax(-1))
    tokens = torch.zeros(8, 16, 16, dtype=torch.long)
    a, b = (step_two_inputs(FixedLogits(), seed, tokens, V) for seed in (0, 1))
    assert torch.equal(a, b) and (a == 0).all()


def test_on_the_backbone_step_two_inputs_vary_with_the_seed_and_are_mostly_not_the_argmax():
    """At initialisation the hourglass's logits are nearly flat: a draw is the argmax ~1/13 of the time."""
    torch.manual_seed(0)
    vocab = 13
    model = HourglassTransformerLM(num_tokens=vocab, dim=32, depth=(1, 1, 1), heads=2, dim_head=8, ff_mult=2).eval()
    recorder = Recorder(model)
    tokens = torch.randint(0, vocab, (4, 8, 8), generator=torch.Generator().manual_seed(1))
    step_two = []
    for seed in (0, 1):
        recorder.inputs.clear()
        with torch.no_grad():
            unrolled_loss(recorder, tokens, 2, generator=torch.Generator().manual_seed(seed), num_tokens=vocab)
        first, second = recorder.inputs
        with torch.no_grad():
            argmax = model(first).argmax(-1)
        assert (second == argmax).float().mean() < 0.3  # argmax feeding would give 1.0
        step_two.append(second)
    assert (step_two[0] != step_two[1]).float().mean() > 0.5
