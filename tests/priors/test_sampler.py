import dataclasses

import pytest
import torch
import torch.nn.functional as F

import priors.sundae
from infra.config import ConfigError
from infra.errors import UserError
from priors.settings import schedule
from priors.sundae import SundaeSampling, sample_sundae

VOCAB = 5


def at_positions(logits, at):
    """What a denoiser returns for the sampler: the logits at the positions it updates."""
    return logits if at is None else logits[at]


class StubModel:
    """All mass on next_token(tokens); records batch sizes, inputs and conds of every call."""

    def __init__(self, next_token):
        self.next_token = next_token
        self.batch_sizes, self.inputs, self.conds = [], [], []

    def __call__(self, tokens, cond, at=None):
        assert torch.is_inference_mode_enabled()
        self.batch_sizes.append(tokens.shape[0])
        self.inputs.append(tokens.clone())
        self.conds.append(None if cond is None else cond.clone())
        # 0 on the chosen token, -1e4 elsewhere: a one-hot distribution at any temperature used here.
        return at_positions((F.one_hot(self.next_token(tokens), VOCAB).float() - 1) * 1e4, at)  # (K, V)


def identity_model():
    return StubModel(lambda tokens: tokens)


def countdown_model():
    """Every token moves one step towards 0, so a grid starting at k changes for k steps."""
    return StubModel(lambda tokens: (tokens - 1).clamp(min=0))


def uniform_model():
    """Uniform logits: every draw is fresh noise, so free positions keep changing."""
    return lambda tokens, cond, at=None: at_positions(torch.zeros(*tokens.shape, VOCAB), at)


class TableModel:
    """Fixed random logits per input token: a model with some structure and some randomness."""

    def __init__(self, seed=0):
        self.table = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(seed))

    def __call__(self, tokens, cond, at=None):
        return at_positions(3.0 * self.table[tokens], at)


# --- config and schedules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("steps", 0),
        ("steps", 2.5),
        ("temperature", 0.0),
        ("temperature", -1.0),
        ("end_temperature", 0.0),
        ("sample_proportion", 0.0),
        ("sample_proportion", 1.5),
        ("end_sample_proportion", -0.1),
        ("min_steps", 0),
        ("early_stop", "yes"),
    ],
)
def test_bad_sampling_values_are_errors_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=f"sampling.{field}: expected .*, got {value!r}"):
        SundaeSampling(**{field: value})
    with pytest.raises(ConfigError, match=f"sampling.{field}: expected"):
        dataclasses.replace(SundaeSampling(), **{field: value})


def test_schedules_are_linear_from_start_to_end():
    cfg = SundaeSampling(steps=4, temperature=1.0, end_temperature=0.7, sample_proportion=0.5, end_sample_proportion=0.2)
    assert schedule(cfg, "temperature").tolist() == pytest.approx([1.0, 0.9, 0.8, 0.7], abs=1e-12)
    assert schedule(cfg, "sample_proportion").tolist() == pytest.approx([0.5, 0.4, 0.3, 0.2], abs=1e-12)


def test_schedules_default_to_constant_and_single_step_uses_start():
    cfg = SundaeSampling(steps=3, temperature=0.8, sample_proportion=0.3)
    assert schedule(cfg, "temperature").tolist() == pytest.approx([0.8] * 3)
    assert schedule(cfg, "sample_proportion").tolist() == pytest.approx([0.3] * 3)
    single = SundaeSampling(steps=1, temperature=1.0, end_temperature=0.5)
    assert schedule(single, "temperature").tolist() == [1.0]


def test_sampler_divides_logits_by_the_scheduled_temperature(monkeypatch):
    seen = []
    draw = priors.sundae.sample_categorical

    def recording_draw(logits, generator=None):
        seen.append(logits.clone())
        return draw(logits, generator=generator)

    monkeypatch.setattr(priors.sundae, "sample_categorical", recording_draw)
    model = TableModel()
    cfg = SundaeSampling(steps=3, temperature=1.0, end_temperature=0.5, sample_proportion=1.0, early_stop=False)
    result = sample_sundae(model, (2, 3), cfg, num_tokens=VOCAB, nb_samples=2, return_history=True,
                    generator=torch.Generator().manual_seed(0))
    for step, temperature in enumerate([1.0, 0.75, 0.5]):  # proportion 1: every position, row-major
        assert torch.allclose(seen[step], model(result.history[step], None).flatten(0, 2) / temperature)


def test_drawing_only_at_updated_positions_keeps_the_step_distribution():
    # The sampler asks for logits and draws only where it updates. One step from known tokens must
    # still move token u to v with probability (1 - p) [u == v] + p softmax(logits(u) / tau)[v].
    model, p, tau = TableModel(seed=3), 0.5, 0.8
    cfg = SundaeSampling(steps=1, temperature=tau, sample_proportion=p, early_stop=False)
    start = torch.randint(VOCAB, (8, 64, 64), generator=torch.Generator().manual_seed(4))
    after = sample_sundae(model, start, cfg, num_tokens=VOCAB, generator=torch.Generator().manual_seed(5)).tokens
    expected = (1 - p) * torch.eye(VOCAB) + p * (model.table * 3.0 / tau).softmax(-1)
    for u in range(VOCAB):
        moved = after[start == u]  # ~6500 positions: frequencies within 0.007 (1 sd)
        seen = torch.bincount(moved, minlength=VOCAB).float() / moved.numel()
        assert torch.allclose(seen, expected[u], atol=0.03), (u, seen, expected[u])


def test_sampler_updates_the_scheduled_proportion_of_positions():
    # The stub always proposes a different token, so a position changes iff it was updated.
    model = StubModel(lambda tokens: (tokens + 1) % VOCAB)
    cfg = SundaeSampling(steps=3, sample_proportion=0.8, end_sample_proportion=0.2, early_stop=False)
    result = sample_sundae(model, (64, 64), cfg, num_tokens=VOCAB, nb_samples=8, return_history=True,
                    generator=torch.Generator().manual_seed(1))
    for step, proportion in enumerate([0.8, 0.5, 0.2]):
        changed = (result.history[step + 1] != result.history[step]).float().mean().item()
        assert changed == pytest.approx(proportion, abs=0.02)  # 32768 positions: std < 0.003


# --- freezing --------------------------------------------------------------------------------------


def test_unchanging_samples_freeze_exactly_at_min_steps():
    model = identity_model()
    cfg = SundaeSampling(steps=20, min_steps=5)
    result = sample_sundae(model, (4, 4), cfg, num_tokens=VOCAB, nb_samples=6, return_history=True)
    assert result.steps_used.tolist() == [5] * 6
    assert model.batch_sizes == [6] * 5
    assert len(result.history) == 6  # the start plus one grid per step
    assert torch.equal(result.tokens, result.history[0])


def test_without_early_stop_every_sample_runs_all_steps():
    model = identity_model()
    cfg = SundaeSampling(steps=12, min_steps=2, early_stop=False)
    result = sample_sundae(model, (3, 3), cfg, num_tokens=VOCAB, nb_samples=4)
    assert result.steps_used.tolist() == [12] * 4
    assert model.batch_sizes == [4] * 12


def test_frozen_samples_leave_the_batch_and_conditioning_follows_them():
    # Sample i starts filled with start_values[i] and changes for that many steps; it is frozen
    # after the first step that changes nothing, so it uses start_values[i] + 1 steps.
    start_values = torch.tensor([2, 0, 3, 1])
    start = start_values[:, None, None].expand(4, 3, 5)
    labels = torch.tensor([100, 101, 102, 103])
    model = countdown_model()
    cfg = SundaeSampling(steps=10, sample_proportion=1.0, min_steps=1)
    result = sample_sundae(model, start, cfg, num_tokens=VOCAB, cond=labels)

    assert result.steps_used.tolist() == [3, 1, 4, 2]
    assert model.batch_sizes == [4, 3, 2, 1]
    assert [c.tolist() for c in model.conds] == [[100, 101, 102, 103], [100, 102, 103], [100, 102], [102]]
    # Each row the model saw belongs to the sample its label names: at call c, sample i's grid
    # has counted down to max(start_values[i] - c, 0).
    for call, (tokens, conds) in enumerate(zip(model.inputs, model.conds)):
        for row, label in zip(tokens, conds):
            assert (row == (start_values[label - 100] - call).clamp(min=0)).all()
    assert torch.equal(result.tokens, torch.zeros_like(start))


def test_min_steps_holds_back_freezing_of_samples_that_settle_early():
    model = countdown_model()
    start = torch.tensor([0, 3])[:, None, None].expand(2, 2, 2)
    cfg = SundaeSampling(steps=10, sample_proportion=1.0, min_steps=3)
    result = sample_sundae(model, start, cfg, num_tokens=VOCAB)
    assert result.steps_used.tolist() == [3, 4]
    assert model.batch_sizes == [2, 2, 2, 1]


# --- inpainting ------------------------------------------------------------------------------------


def test_kept_positions_never_change_and_the_model_sees_them():
    generator = torch.Generator().manual_seed(2)
    start = torch.randint(VOCAB, (3, 6, 7), generator=generator)
    keep = torch.rand(3, 6, 7, generator=generator) < 0.5
    calls = []

    def model(tokens, cond, at=None):
        calls.append(tokens.clone())
        return at_positions(torch.zeros(*tokens.shape, VOCAB), at)

    cfg = SundaeSampling(steps=6, sample_proportion=1.0, early_stop=False)
    result = sample_sundae(model, start, cfg, num_tokens=VOCAB, keep_mask=keep, return_history=True, generator=generator)
    for grid in result.history + calls:
        assert torch.equal(grid[keep], start[keep])
    assert (result.tokens[~keep] != start[~keep]).float().mean() > 0.5  # the free part was redrawn


def test_single_grid_and_mask_are_broadcast_to_nb_samples():
    start = torch.arange(12).reshape(3, 4) % VOCAB
    keep = torch.zeros(3, 4, dtype=torch.bool)
    keep[0] = True
    cfg = SundaeSampling(steps=4, early_stop=False)
    result = sample_sundae(uniform_model(), start, cfg, num_tokens=VOCAB, nb_samples=5, keep_mask=keep,
                    generator=torch.Generator().manual_seed(3))
    assert result.tokens.shape == (5, 3, 4)
    assert torch.equal(result.tokens[:, 0], start[0].expand(5, 4))
    assert not torch.equal(result.tokens[0], result.tokens[1])  # independent samples


def test_start_tokens_are_not_modified_in_place():
    start = torch.zeros(2, 3, 3, dtype=torch.long)
    sample_sundae(uniform_model(), start, SundaeSampling(steps=2), num_tokens=VOCAB)
    assert torch.equal(start, torch.zeros(2, 3, 3, dtype=torch.long))


# --- determinism and results -------------------------------------------------------------------------


def test_same_seed_same_samples_on_cpu():
    cfg = SundaeSampling(steps=8, min_steps=2, temperature=1.0, end_temperature=0.5)

    def run(seed):
        return sample_sundae(TableModel(), (4, 4), cfg, num_tokens=VOCAB, nb_samples=6,
                      generator=torch.Generator().manual_seed(seed))

    first, second, other = run(0), run(0), run(1)
    assert torch.equal(first.tokens, second.tokens)
    assert torch.equal(first.steps_used, second.steps_used)
    assert not torch.equal(first.tokens, other.tokens)


def test_result_shapes_and_history():
    cfg = SundaeSampling(steps=7, min_steps=2)
    result = sample_sundae(TableModel(), (3, 2, 5), cfg, num_tokens=VOCAB, return_history=True,
                    generator=torch.Generator().manual_seed(4))
    assert result.tokens.shape == (3, 2, 5) and result.tokens.dtype == torch.long
    assert result.steps_used.shape == (3,) and result.steps_used.dtype == torch.long
    assert ((result.tokens >= 0) & (result.tokens < VOCAB)).all()
    assert len(result.history) == int(result.steps_used.max()) + 1
    assert torch.equal(result.history[-1], result.tokens)
    assert sample_sundae(TableModel(), (2, 2), cfg, num_tokens=VOCAB, nb_samples=1).history is None


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(start=(2, 2)), "nb_samples"),
        (dict(start=(3, 2, 2), nb_samples=4), "start shape"),
        (dict(start=(2, 2), nb_samples=2, keep_mask=torch.ones(2, 2, dtype=torch.bool)), "keep_mask needs start"),
        (dict(start=torch.zeros(2, 3, 3, dtype=torch.long), keep_mask=torch.ones(3, 4, dtype=torch.bool)), "keep_mask of shape"),
        (dict(start=torch.full((1, 2, 2), VOCAB)), "start tokens must lie"),
        (dict(start=(2, 2), nb_samples=3, cond=torch.zeros(2)), "cond must have one row per sample"),
        (dict(start=(2, 2), nb_samples=1, num_tokens=VOCAB + 1), "num_tokens=6"),
    ],
)
def test_bad_arguments_are_errors(kwargs, message):
    kwargs = {"num_tokens": VOCAB, **kwargs}
    with pytest.raises(UserError, match=message):
        sample_sundae(uniform_model(), settings=SundaeSampling(steps=2), **kwargs)


class OneRestlessPosition(torch.nn.Module):
    """Logits certain of a fixed target grid, except position (0, 0): uniform over a large
    vocabulary, so it changes at almost every step (1 of 16 tokens, 6.25%)."""

    def __init__(self, vocab=1000):
        super().__init__()
        self.vocab = vocab
        self.target = torch.arange(16).reshape(4, 4) % vocab

    def forward(self, tokens, cond=None, at=None):
        logits = torch.full((*tokens.shape, self.vocab), -1e4)
        logits.scatter_(-1, self.target.expand_as(tokens)[..., None], 0.0)
        logits[:, 0, 0] = 0.0
        return at_positions(logits, at)


def test_the_papers_freezing_rule_rarely_fires_when_one_token_keeps_moving_and_the_quiet_rule_does():
    model = OneRestlessPosition()
    base = SundaeSampling(steps=30, min_steps=2, sample_proportion=1.0)
    paper = sample_sundae(model, (4, 4), base, num_tokens=1000, nb_samples=8, generator=torch.Generator().manual_seed(0))
    assert paper.steps_used.float().mean() > 25  # a step changes nothing with probability 1/1000
    quiet = dataclasses.replace(base, freeze_threshold=0.07, freeze_patience=3)
    result = sample_sundae(model, (4, 4), quiet, num_tokens=1000, nb_samples=8, generator=torch.Generator().manual_seed(0))
    # step 1 moves every token to the target; steps 2, 3, 4 move one token each: frozen after step 4
    assert result.steps_used.tolist() == [4] * 8
    assert (result.tokens[:, 1:] == model.target[1:]).all()
    stricter = dataclasses.replace(quiet, freeze_threshold=0.05)  # one token of 16 is 6.25%: never quiet
    assert sample_sundae(model, (4, 4), stricter, num_tokens=1000, nb_samples=2,
                  generator=torch.Generator().manual_seed(0)).steps_used.tolist() == [30, 30]
