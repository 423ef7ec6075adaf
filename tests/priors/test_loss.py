import math

import pytest
import torch
from torch import nn

from infra.errors import UserError
from priors.sundae import corrupt, unrolled_loss


class TableModel(nn.Module):
    """logits[b, i, j] = table[tokens[b, i, j]]; records every input, cond and output."""

    def __init__(self, table):
        super().__init__()
        self.table = nn.Parameter(table.clone())
        self.inputs, self.conds, self.outputs = [], [], []

    def forward(self, tokens, cond):
        logits = self.table[tokens]  # (B, h, w) -> (B, h, w, V)
        if logits.requires_grad:
            logits.retain_grad()
        self.inputs.append(tokens.clone())
        self.conds.append(cond)
        self.outputs.append(logits)
        return logits


class ConstantModel(nn.Module):
    """The same logits vector at every position, whatever the input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, tokens, cond):
        return self.logits.expand(*tokens.shape, -1)


def manual_cross_entropy(logits, targets):
    """Mean over positions of -log softmax(logits)[target], in float64."""
    log_probs = logits.double().log_softmax(dim=-1)
    return -log_probs.gather(-1, targets.unsqueeze(-1)).mean().item()


def test_plain_denoising_value_computed_by_hand():
    # p(token 1) = 3/4 everywhere; half the targets are 1, half 0.
    model = ConstantModel(torch.tensor([0.0, math.log(3.0)]))
    tokens = torch.tensor([[[0, 1], [1, 0]]])
    result = unrolled_loss(model, tokens, unroll_steps=1, num_tokens=2)
    expected = (math.log(4 / 3) + math.log(4)) / 2
    assert result.loss.item() == pytest.approx(expected, rel=1e-6)
    assert result.accuracy.item() == pytest.approx(0.5)  # argmax is always token 1
    assert result.step_losses.shape == (1,)


def test_two_step_loss_and_accuracy_match_a_float64_reference():
    vocab = 5
    table = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0))
    model = TableModel(table)
    tokens = torch.randint(vocab, (3, 4, 6), generator=torch.Generator().manual_seed(1))
    result = unrolled_loss(model, tokens, 2, generator=torch.Generator().manual_seed(2), num_tokens=vocab)

    assert len(model.inputs) == 2
    step_losses = [manual_cross_entropy(table[x], tokens) for x in model.inputs]
    step_accuracies = [(table[x].argmax(-1) == tokens).double().mean().item() for x in model.inputs]
    assert result.step_losses.tolist() == pytest.approx(step_losses, rel=1e-5)
    assert result.loss.item() == pytest.approx(sum(step_losses) / 2, rel=1e-5)
    assert result.step_accuracies.tolist() == pytest.approx(step_accuracies)
    assert result.accuracy.item() == pytest.approx(sum(step_accuracies) / 2)


def test_first_step_sees_the_corrupted_grid_and_later_steps_the_models_samples():
    vocab = 6
    # Peaked rows: token v is mapped to (v + 1) % V with probability ~1, so a draw is predictable.
    table = 50.0 * torch.eye(vocab).roll(1, dims=1)
    model = TableModel(table)
    tokens = torch.randint(vocab, (2, 5, 5), generator=torch.Generator().manual_seed(3))
    unrolled_loss(model, tokens, 3, generator=torch.Generator().manual_seed(4), num_tokens=vocab)

    expected_first = corrupt(tokens, vocab, generator=torch.Generator().manual_seed(4))
    assert torch.equal(model.inputs[0], expected_first)
    assert torch.equal(model.inputs[1], (model.inputs[0] + 1) % vocab)
    assert torch.equal(model.inputs[2], (model.inputs[1] + 1) % vocab)


def test_no_gradient_flows_from_a_later_step_into_earlier_logits():
    vocab = 4
    model = TableModel(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(5)))
    tokens = torch.randint(vocab, (2, 3, 3), generator=torch.Generator().manual_seed(6))
    result = unrolled_loss(model, tokens, 2, generator=torch.Generator().manual_seed(7), num_tokens=vocab)
    first_logits, second_logits = model.outputs
    assert model.inputs[1].dtype == torch.long and not model.inputs[1].requires_grad

    result.step_losses[1].backward(retain_graph=True)
    # Step 2's loss does not depend on step 1's logits. (Zeros rather than None: the stacked
    # step_losses route a zero gradient back to every step.)
    assert first_logits.grad is None or torch.all(first_logits.grad == 0)
    assert second_logits.grad is not None and second_logits.grad.abs().sum() > 0

    result.step_losses[0].backward()
    assert first_logits.grad is not None and first_logits.grad.abs().sum() > 0


def test_loss_trains_the_model_parameters():
    model = TableModel(torch.zeros(3, 3))
    tokens = torch.randint(3, (2, 4, 4), generator=torch.Generator().manual_seed(8))
    unrolled_loss(model, tokens, 2, generator=torch.Generator().manual_seed(9), num_tokens=3).loss.backward()
    assert model.table.grad.abs().sum() > 0


def test_conditioning_reaches_every_step():
    model = TableModel(torch.zeros(3, 3))
    labels = torch.tensor([2, 0])
    unrolled_loss(model, torch.zeros(2, 2, 2, dtype=torch.long), 3, cond=labels, num_tokens=3)
    assert len(model.conds) == 3 and all(c is labels for c in model.conds)


def test_cross_entropy_is_float32_under_bf16_autocast():
    vocab = 7
    embed = nn.Embedding(vocab, 16)
    head = nn.Linear(16, vocab)
    outputs = []

    def model(tokens, cond):
        outputs.append(head(embed(tokens)))
        return outputs[-1]

    tokens = torch.randint(vocab, (2, 4, 4), generator=torch.Generator().manual_seed(10))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = unrolled_loss(model, tokens, 1, generator=torch.Generator().manual_seed(11), num_tokens=vocab)
    assert outputs[0].dtype == torch.bfloat16  # the model did run in bf16
    assert result.loss.dtype == torch.float32
    assert result.loss.item() == pytest.approx(manual_cross_entropy(outputs[0], tokens), rel=1e-5)


@pytest.mark.parametrize("steps", [0, -1, 1.5, True])
def test_bad_unroll_steps_is_an_error(steps):
    with pytest.raises(UserError, match="unroll_steps"):
        unrolled_loss(ConstantModel(torch.zeros(2)), torch.zeros(1, 2, 2, dtype=torch.long), steps, num_tokens=2)


def test_vocabulary_mismatch_is_an_error():
    with pytest.raises(UserError, match="num_tokens=3"):
        unrolled_loss(ConstantModel(torch.zeros(2)), torch.zeros(1, 2, 2, dtype=torch.long), 1, num_tokens=3)
