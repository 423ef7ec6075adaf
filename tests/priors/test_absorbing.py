"""Absorbing diffusion (Unleashing Transformers) and MaskGIT decoding: forward process, loss
weights, ELBO, both samplers, inpainting, and a real backbone."""
import math

import pytest
import torch
import torch.nn.functional as F

import priors.absorbing
from hourglass_transformer import HourglassTransformerLM
from infra.errors import UserError
from priors.absorbing import (
    AbsorbingSampling,
    absorbing_loss,
    elbo_bits_per_token,
    loss_per_sample,
    mask_tokens,
    maskgit_schedule,
    sample_absorbing,
    sample_maskgit,
    sample_timesteps,
)
from priors.grids import masked_start

V = 5  # vocabulary; the mask token is V
MASK = V


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def unleashing(**settings):
    return AbsorbingSampling(**settings)


def maskgit(**settings):
    return AbsorbingSampling(decoder="maskgit", **settings)


def constant_model(token):
    """All mass on `token` everywhere, whatever the input."""
    return lambda tokens, cond: (F.one_hot(torch.full_like(tokens, token), V).float() - 1) * 1e4


class TableModel:
    """Fixed random logits per input token (mask included): some structure, some randomness."""

    def __init__(self, seed=0):
        self.table = 2 * torch.randn(V + 1, V, generator=gen(seed))

    def __call__(self, tokens, cond):
        return self.table[tokens]


def binomial_tolerance(p, n, sds=5.0):
    return sds * math.sqrt(p * (1 - p) / n) + 1e-12


# --- forward process and loss --------------------------------------------------------------------


def test_forward_process_masks_each_token_with_probability_t_over_T():
    T, per_t, side = 10, 4, 32
    t = torch.arange(1, T + 1).repeat_interleave(per_t)  # (40,)
    tokens = torch.randint(0, V, (len(t), side, side), generator=gen(1))
    noisy, mask = mask_tokens(tokens, t, T, mask_id=MASK, generator=gen(2))
    assert torch.equal(noisy == MASK, mask)
    assert torch.equal(noisy[~mask], tokens[~mask])  # unmasked tokens are untouched
    n = per_t * side * side
    for step in range(1, T + 1):
        rate = mask[t == step].float().mean().item()
        p = step / T
        assert abs(rate - p) <= binomial_tolerance(p, n), (step, rate, p)
    # The rate is per sample: rows with small t are masked less than rows with large t.
    assert mask[t == 1].float().mean() < mask[t == T - 1].float().mean()


def test_timesteps_are_uniform_on_1_to_T():
    T, n = 8, 40_000
    t = sample_timesteps(n, T, generator=gen(3))
    assert t.min() == 1 and t.max() == T
    counts = torch.bincount(t, minlength=T + 1)[1:].float()
    assert ((counts / n - 1 / T).abs() <= binomial_tolerance(1 / T, n)).all(), counts


def test_loss_weights_match_a_hand_computed_case():
    T = 4
    # Two samples of a 1 x 3 grid over V = 3 tokens, with fixed logits, t and mask.
    logits = torch.tensor([
        [[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 3.0]]],
        [[[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.0, -1.0, 1.0]]],
    ])  # (2, 1, 3, 3)
    tokens = torch.tensor([[[0, 2, 2]], [[1, 0, 2]]])
    mask = torch.tensor([[[True, True, False]], [[True, True, True]]])
    t = torch.tensor([1, 3])

    def neg_log_softmax(row, target):
        return math.log(sum(math.exp(v) for v in row)) - row[target]

    # Cross-entropy summed over the masked positions only (sample 0's third position is not masked).
    ce0 = neg_log_softmax([2.0, 0.0, 0.0], 0) + neg_log_softmax([0.0, 1.0, 0.0], 2)
    ce1 = (neg_log_softmax([0.0, 0.0, 0.0], 1) + neg_log_softmax([1.0, 2.0, 3.0], 0)
           + neg_log_softmax([0.0, -1.0, 1.0], 2))
    n_tokens = 3
    reweighted = [(1 - 1 / 4) * ce0 / (n_tokens * math.log(2)), (1 - 3 / 4) * ce1 / (n_tokens * math.log(2))]
    elbo = [4 / 1 * ce0 / (n_tokens * math.log(2)), 4 / 3 * ce1 / (n_tokens * math.log(2))]

    got = loss_per_sample(logits, tokens, mask, t, num_timesteps=T, loss_type="reweighted_elbo")
    assert got.tolist() == pytest.approx(reweighted, rel=1e-6)
    got = loss_per_sample(logits, tokens, mask, t, num_timesteps=T, loss_type="elbo")
    assert got.tolist() == pytest.approx(elbo, rel=1e-6)


class FixedLogits:
    """Logits that depend on the position only; records its inputs."""

    def __init__(self, shape, seed=0):
        self.logits = torch.randn(*shape, V, generator=gen(seed))
        self.inputs = []

    def __call__(self, tokens, cond):
        self.inputs.append(tokens.clone())
        return self.logits.expand(tokens.shape[0], *self.logits.shape).clone().requires_grad_()


@pytest.mark.parametrize("loss_type", ["reweighted_elbo", "elbo"])
def test_absorbing_loss_draws_t_then_the_mask_and_weights_them(loss_type):
    tokens = torch.randint(0, V, (6, 3, 4), generator=gen(4))
    model = FixedLogits((3, 4))
    out = absorbing_loss(model, tokens, generator=gen(5), num_tokens=V, num_timesteps=7, loss_type=loss_type)

    replay = gen(5)  # the same draws in the documented order: t, then the mask
    t = sample_timesteps(6, 7, generator=replay)
    noisy, mask = mask_tokens(tokens, t, 7, mask_id=MASK, generator=replay)
    assert torch.equal(model.inputs[0], noisy)
    logits = model.logits.expand(6, 3, 4, V)
    expected = loss_per_sample(logits, tokens, mask, t, num_timesteps=7, loss_type=loss_type).mean()
    expected_elbo = loss_per_sample(logits, tokens, mask, t, num_timesteps=7, loss_type="elbo").mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.elbo_bits.item() == pytest.approx(expected_elbo.item(), rel=1e-6)
    hits = ((logits.argmax(-1) == tokens) & mask).sum() / mask.sum()
    assert out.accuracy.item() == pytest.approx(hits.item())
    assert out.loss.requires_grad


def test_T_defaults_to_the_number_of_tokens():
    tokens = torch.randint(0, V, (64, 2, 3), generator=gen(6))
    model = FixedLogits((2, 3))
    absorbing_loss(model, tokens, generator=gen(7), num_tokens=V)
    replay = gen(7)
    t = sample_timesteps(64, 6, generator=replay)
    noisy, _ = mask_tokens(tokens, t, 6, mask_id=MASK, generator=replay)
    assert torch.equal(model.inputs[0], noisy)


def test_elbo_of_a_uniform_model_is_log2_V_bits_per_token():
    # E[#masked at t] = N t/T, so sum_t E[CE(t)]/t = N log V: the ELBO is exactly log2 V bits/token.
    tokens = torch.randint(0, V, (400, 4, 4), generator=gen(8))
    uniform = lambda x, cond: torch.zeros(*x.shape, V)
    for all_timesteps in (False, True):
        bits = elbo_bits_per_token(uniform, tokens, generator=gen(9), num_tokens=V, num_timesteps=16,
                                   all_timesteps=all_timesteps)
        assert bits.shape == (400,)
        sd_of_mean = bits.std().item() / math.sqrt(len(bits))
        assert abs(bits.mean().item() - math.log2(V)) <= 5 * sd_of_mean + 1e-6, (all_timesteps, bits.mean())


def test_elbo_of_a_model_that_knows_the_answer_is_zero():
    tokens = torch.randint(0, V, (8, 4, 4), generator=gen(10))
    oracle = lambda x, cond: (F.one_hot(tokens, V).float() - 1) * 1e4
    bits = elbo_bits_per_token(oracle, tokens, generator=gen(11), num_tokens=V, all_timesteps=True)
    assert bits.abs().max() < 1e-4


def test_loss_errors_are_one_line():
    tokens = torch.zeros(2, 2, 2, dtype=torch.long)
    with pytest.raises(UserError, match="loss_type"):
        absorbing_loss(FixedLogits((2, 2)), tokens, num_tokens=V, loss_type="mlm")
    with pytest.raises(UserError, match="expected num_tokens=4") as e:
        absorbing_loss(FixedLogits((2, 2)), tokens, num_tokens=4)
    assert "\n" not in str(e.value)


# --- Unleashing's sampler ------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 5, 16, 40])
def test_unleashing_sampler_with_a_constant_model_fills_every_position(steps):
    out = sample_absorbing(constant_model(3), (4, 4), unleashing(steps=steps), num_tokens=V, nb_samples=3,
                           generator=gen(12))
    assert (out.tokens == 3).all()
    assert ((out.steps_used >= 1) & (out.steps_used <= steps)).all()


def test_unleashing_sampler_unmasks_at_rate_one_over_t():
    # After step k of S, each position is still masked with probability (S - k - 1)/S.
    steps, side, n = 4, 48, 2
    out = sample_absorbing(TableModel(), (side, side), unleashing(steps=steps), num_tokens=V, nb_samples=n,
                           generator=gen(13), return_history=True)
    assert len(out.history) == steps + 1
    for k, grid in enumerate(out.history[1:]):
        p = (steps - k - 1) / steps
        rate = (grid == MASK).float().mean().item()
        assert abs(rate - p) <= binomial_tolerance(p, n * side * side), (k, rate, p)
    for before, after in zip(out.history, out.history[1:]):  # decoded tokens never change
        decoded = before != MASK
        assert torch.equal(after[decoded], before[decoded])
    assert (out.steps_used == steps).all()  # every step unmasks something on a large grid


def test_unleashing_sampler_skips_forwards_that_unmask_nothing():
    calls = []

    def model(tokens, cond):
        calls.append(tokens.shape[0])
        return torch.zeros(*tokens.shape, V)

    out = sample_absorbing(model, (2, 2), unleashing(steps=50), num_tokens=V, nb_samples=3, generator=gen(14))
    assert (out.tokens != MASK).all()
    assert sum(calls) == out.steps_used.sum().item() < 3 * 50


def test_unleashing_inpainting_keeps_known_tokens_and_sees_them():
    start = torch.randint(0, V, (4, 4, 4), generator=gen(15))
    keep = torch.rand(4, 4, 4, generator=gen(16)) < 0.4
    seen = []

    def model(tokens, cond):
        seen.append(tokens.clone())
        return TableModel()(tokens, cond)

    out = sample_absorbing(model, start, unleashing(steps=8), num_tokens=V, keep_mask=keep, generator=gen(17),
                           return_history=True)
    assert torch.equal(out.tokens[keep], start[keep])
    assert (out.tokens != MASK).all() and (out.tokens < V).all()
    assert torch.equal(out.history[0], torch.where(keep, start, MASK))
    assert all(torch.equal(grid[keep], start[keep]) for grid in out.history)
    first = seen[0]  # the first forward sees the known tokens and masks elsewhere
    assert ((first == MASK) | (first < V)).all()


# --- MaskGIT -------------------------------------------------------------------------------------


def test_maskgit_schedule_is_the_clamped_cosine():
    # floor(64 cos(pi/2 k/8)), k = 1..7: 64 * (.981, .924, .831, .707, .556, .383, .195); then 0.
    assert maskgit_schedule(torch.tensor([64]), 8).tolist() == [[62, 59, 53, 45, 35, 24, 12, 0]]
    # Fewer tokens than steps: one decoded at a time, one kept masked until the last step.
    assert maskgit_schedule(torch.tensor([3]), 8).tolist() == [[2, 1, 1, 1, 1, 1, 1, 0]]
    assert maskgit_schedule(torch.tensor([0]), 4).tolist() == [[0, 0, 0, 0]]
    assert maskgit_schedule(torch.tensor([10]), 1).tolist() == [[0]]


@pytest.mark.parametrize("steps", [1, 8, 16])
def test_maskgit_with_a_constant_model_fills_every_position(steps):
    out = sample_maskgit(constant_model(2), (4, 4), maskgit(steps=steps), num_tokens=V, nb_samples=3,
                         generator=gen(18))
    assert (out.tokens == 2).all()


def test_maskgit_keeps_exactly_the_scheduled_number_masked_and_never_remasks():
    start = torch.randint(0, V, (4, 6, 6), generator=gen(19))
    keep = torch.zeros(4, 6, 6, dtype=torch.bool)
    keep[1, :2] = True  # sample 1 knows 12 tokens, sample 2 knows all but 5, others none
    keep[2] = True
    keep[2, 0, :5] = False
    steps = 10
    out = sample_maskgit(TableModel(1), start, maskgit(steps=steps), keep_mask=keep, num_tokens=V,
                         generator=gen(20), return_history=True)
    schedule = maskgit_schedule((~keep).flatten(1).sum(1), steps)
    assert schedule[:, 0].tolist() == [35, 23, 4, 35]
    assert len(out.history) == steps + 1
    for k in range(steps):
        before, after = out.history[k], out.history[k + 1]
        assert torch.equal((after == MASK).flatten(1).sum(1), schedule[:, k]), k
        decoded = before != MASK
        assert torch.equal(after[decoded], before[decoded]), k  # nothing decoded is re-masked or changed
    assert torch.equal(out.tokens[keep], start[keep])
    assert (out.tokens < V).all()
    # Sample 2 has 5 unknown tokens over 10 steps: it runs the model only when it decodes some.
    assert out.steps_used.tolist() == [steps, steps, 5, steps]


def peaked_model(margins):
    """Position p puts logit margins[p] on token p % V and 0 elsewhere: its draw's confidence
    grows with the margin."""

    def model(tokens, cond):
        h, w = tokens.shape[1:]
        target = torch.arange(h * w).reshape(h, w) % V
        logits = F.one_hot(target, V).float() * margins.reshape(h, w, 1)
        return logits.expand(tokens.shape[0], h, w, V)

    return model


def test_maskgit_keeps_the_most_confident_draws_without_choice_noise():
    margins = 8 + 0.25 * torch.randperm(16, generator=gen(21)).float()
    out = sample_maskgit(peaked_model(margins), (4, 4), maskgit(steps=4, choice_temperature=0.0), num_tokens=V,
                         nb_samples=2, generator=gen(22), return_history=True)
    decoded = (out.history[1] != MASK).flatten(1)  # (2, 16) after the first step
    n_decoded = 16 - maskgit_schedule(torch.tensor([16]), 4)[0, 0].item()
    expected = torch.zeros(16, dtype=torch.bool)
    expected[margins.topk(n_decoded).indices] = True
    assert torch.equal(decoded, expected.expand(2, 16))
    # With strong Gumbel noise the first step's choice is mostly random instead.
    noisy = sample_maskgit(peaked_model(margins), (4, 4), maskgit(steps=4, choice_temperature=1e3), num_tokens=V,
                           nb_samples=8, generator=gen(23), return_history=True)
    assert not torch.equal((noisy.history[1] != MASK).flatten(1), expected.expand(8, 16))


def test_maskgit_anneals_the_choice_noise_to_zero(monkeypatch):
    scales = []
    original = priors.absorbing._gumbel_noise

    def recording(shape, scale, generator, device):
        scales.append(scale)
        return original(shape, scale, generator, device)

    monkeypatch.setattr(priors.absorbing, "_gumbel_noise", recording)
    sample_maskgit(TableModel(), (4, 4), maskgit(steps=4, choice_temperature=2.0), num_tokens=V, nb_samples=1,
                   generator=gen(27))
    assert scales == pytest.approx([2.0 * 3 / 4, 2.0 * 2 / 4, 2.0 * 1 / 4, 0.0])


def test_sampler_arguments_are_checked():
    with pytest.raises(UserError, match="keep_mask needs start tokens"):
        sample_maskgit(TableModel(), (2, 2), maskgit(), keep_mask=torch.ones(2, 2, dtype=torch.bool),
                       nb_samples=1, num_tokens=V)
    with pytest.raises(UserError, match="steps"):
        sample_absorbing(TableModel(), (2, 2), unleashing(steps=0), nb_samples=1, num_tokens=V)
    with pytest.raises(UserError, match="choice_temperature"):
        sample_maskgit(TableModel(), (2, 2), maskgit(choice_temperature=-1.0), nb_samples=1, num_tokens=V)
    with pytest.raises(UserError, match=r"in \[0, 5\]"):
        sample_maskgit(TableModel(), torch.full((1, 2, 2), 6), maskgit(), num_tokens=V)


def test_masked_start_reads_the_mask_token_as_unknown():
    start = torch.tensor([[1, MASK], [MASK, 4]])
    tokens, known = masked_start(start, mask_id=MASK, nb_samples=2)
    assert tokens.shape == (2, 2, 2) and torch.equal(known[0], start != MASK)
    tokens, known = masked_start(start.clamp(max=4), mask_id=MASK, nb_samples=1,
                                 keep_mask=torch.tensor([[True, False], [False, False]]))
    assert tokens[0].tolist() == [[1, MASK], [MASK, MASK]]


# --- on the real backbone ------------------------------------------------------------------------


def test_on_the_hourglass_backbone_with_a_mask_token(single_thread):
    torch.manual_seed(0)
    model = HourglassTransformerLM(num_tokens=V + 1, num_outputs=V, dim=32, depth=(1, 1, 1), heads=2,
                                   dim_head=8, ff_mult=2, num_classes=2)
    data = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 0], [3, 4, 0, 1]]).expand(16, 4, 4)
    cond = torch.zeros(16, dtype=torch.long)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = gen(24)
    first = None
    for _ in range(40):
        out = absorbing_loss(model, data, cond, g, num_tokens=V)
        optimiser.zero_grad()
        out.loss.backward()
        optimiser.step()
        first = out.elbo_bits.item() if first is None else first
    model.eval()
    bits = elbo_bits_per_token(model, data, cond, gen(25), num_tokens=V, all_timesteps=True).mean().item()
    assert bits < 0.5 * first
    for sampler, settings in ((sample_absorbing, unleashing(steps=8)), (sample_maskgit, maskgit(steps=6))):
        out = sampler(model, (4, 4), settings, num_tokens=V, nb_samples=3, cond=torch.zeros(3, dtype=torch.long),
                      generator=gen(26))
        assert out.tokens.shape == (3, 4, 4) and (out.tokens < V).all() and (out.tokens >= 0).all()
