"""Classifier-free guidance: a null class in training, guided logits uncond + s (cond - uncond)
from one batched forward per step, a scale schedule that follows the step index, and sampling,
inpainting and freezing with it."""
import dataclasses
import tomllib

import pytest
import torch

from hourglass_transformer import HourglassTransformerLM
from infra.errors import UserError
from priors import prior_for
from priors.absorbing import AbsorbingSampling
from priors.base import Denoiser
from priors.settings import schedule
from priors.sundae import SundaeSampling
from tests.helpers import TINY_CONFIG
from training.config import config_from_dict


def cfg_with(**net):
    table = tomllib.loads(TINY_CONFIG.format(runs="runs", data="data/tiny"))
    table["net"].update(net)
    return config_from_dict(table)


class Recorder(torch.nn.Module):
    """Logits that depend only on the class: cond c gives logit c + 1 on token 0 (null: 0 logits)."""

    def __init__(self, vocab, null_class):
        super().__init__()
        self.vocab, self.null_class, self.calls = vocab, null_class, []

    def forward(self, tokens, cond, at=None):
        self.calls.append((tokens.shape[0], cond.tolist()))
        logits = torch.zeros(*tokens.shape, self.vocab)
        logits[..., 0] = torch.where(cond == self.null_class, 0.0, cond.float() + 1)[:, None, None]
        return logits if at is None else logits[at]


def test_guided_logits_at_selected_positions_are_the_full_guided_logits_there():
    torch.manual_seed(0)
    model = HourglassTransformerLM(num_tokens=7, dim=16, depth=2, heads=2, dim_head=8, num_classes=3).eval()
    tokens, cond = torch.randint(7, (4, 3, 3)), torch.tensor([0, 1, 0, 1])
    at = torch.rand(4, 3, 3, generator=torch.Generator().manual_seed(2)) < 0.5
    guided = Denoiser(model, torch.tensor([2.0]), null_class=2)
    with torch.no_grad():
        full, selected = guided(tokens, cond, 0), guided(tokens, cond, 0, at=at)
    assert torch.allclose(selected, full[at], atol=1e-5)


def test_guided_logits_from_one_batched_forward_at_the_steps_scale():
    model = Recorder(5, null_class=2)
    guided = Denoiser(model, torch.tensor([3.0, 0.5]), null_class=2)
    tokens, cond = torch.zeros(4, 2, 2, dtype=torch.long), torch.tensor([0, 1, 1, 0])
    first = guided(tokens, cond, 0)
    assert model.calls == [(8, [0, 1, 1, 0, 2, 2, 2, 2])]  # one forward: conditional, then null rows
    # uncond 0, cond c + 1: guided = 0 + 3 * (c + 1)
    assert torch.equal(first[..., 0], torch.tensor([3.0, 6.0, 6.0, 3.0])[:, None, None].expand(4, 2, 2))
    second = guided(tokens, cond, 1)
    assert torch.equal(second[..., 0][:, 0, 0], torch.tensor([0.5, 1.0, 1.0, 0.5]))  # step 1's scale
    assert torch.equal(guided(tokens, cond, 1), second)  # the step decides, not how many calls came before
    assert torch.equal(guided(tokens, cond, 0), first)


def test_the_null_class_is_one_more_embedding_and_dropped_at_the_set_rate():
    cfg = cfg_with(cond_drop_prob=0.25)
    prior = prior_for(cfg)
    assert prior.null_class == 2 and prior.build_model().class_emb.num_embeddings == 3
    assert prior_for(cfg_with()).build_model().class_emb.num_embeddings == 2
    labels = torch.zeros(40_000, dtype=torch.long)
    dropped = prior.drop_classes(labels, torch.Generator().manual_seed(0))
    rate = (dropped == 2).float().mean().item()
    assert abs(rate - 0.25) < 4 * (0.25 * 0.75 / 40_000) ** 0.5  # binomial: within 4 sd
    assert set(dropped.tolist()) == {0, 2}
    again = prior.drop_classes(labels, torch.Generator().manual_seed(0))
    assert torch.equal(again, dropped)  # from the step's generator: a resumed run drops the same


def test_guidance_needs_a_null_class_and_a_conditional_prior():
    sampling = SundaeSampling(steps=2, guidance_scale=2.0)
    with pytest.raises(UserError, match="net.cond_drop_prob > 0"):
        prior_for(cfg_with()).check_sampling(sampling)
    with pytest.raises(UserError, match="net.cond_drop_prob > 0"):
        prior_for(cfg_with()).sample(torch.nn.Identity(), (4, 4), sampling, nb_samples=1,
                                     cond=torch.zeros(1, dtype=torch.long))
    with pytest.raises(Exception, match="net.cond_drop_prob: classifier-free guidance needs net.conditional"):
        cfg_with(conditional=False, cond_drop_prob=0.1)
    model = torch.nn.Identity()
    assert prior_for(cfg_with(cond_drop_prob=0.1)).guided(model, SundaeSampling()) is model  # scale 1: off


class Opposed(torch.nn.Module):
    """Conditional rows put their mass on token 0, the null class's rows on token 1: guidance with
    scale s gives logits s * 20 on token 0 and (1 - s) * 20 on token 1."""

    def __init__(self, vocab, null_class):
        super().__init__()
        self.vocab, self.null_class = vocab, null_class

    def forward(self, tokens, cond, at=None):
        logits = torch.zeros(*tokens.shape, self.vocab)
        null = (cond == self.null_class)[:, None, None]
        logits[..., 0] = torch.where(null, 0.0, 20.0)
        logits[..., 1] = torch.where(null, 20.0, 0.0)
        return logits if at is None else logits[at]


def guided_prior(kind):
    cfg = cfg_with(cond_drop_prob=0.1)
    cfg = dataclasses.replace(cfg, prior=dataclasses.replace(cfg.prior, type=kind))
    return prior_for(cfg)


@pytest.mark.parametrize("kind, settings", [
    ("sundae", lambda **s: SundaeSampling(steps=8, min_steps=2, sample_proportion=1.0, **s)),
    ("absorbing", lambda **s: AbsorbingSampling(steps=8, **s)),
    ("absorbing", lambda **s: AbsorbingSampling(steps=8, decoder="maskgit", **s)),
], ids=["sundae", "unleashing", "maskgit"])
def test_guided_sampling_follows_the_scale_and_keeps_known_tokens(kind, settings):
    prior = guided_prior(kind)
    model = Opposed(5, prior.null_class)
    start = torch.full((3, 4, 4), 4)
    keep = torch.zeros(4, 4, dtype=torch.bool)
    keep[:2] = True
    outcomes = {}
    for scale in (3.0, 0.0):  # guided towards the class (token 0), or the null class alone (token 1)
        result = prior.sample(model, start, settings(guidance_scale=scale), nb_samples=3,
                              cond=torch.tensor([0, 1, 0]), keep_mask=keep, generator=torch.Generator().manual_seed(1))
        assert torch.equal(result.tokens[:, :2], start[:, :2])  # known tokens kept
        outcomes[scale] = result.tokens[:, 2:]
    assert (outcomes[3.0] == 0).all() and (outcomes[0.0] == 1).all()


def test_guided_sundae_sampling_freezes_once_nothing_changes():
    prior = guided_prior("sundae")
    model = Opposed(5, prior.null_class)
    settings = SundaeSampling(steps=8, min_steps=2, sample_proportion=1.0, guidance_scale=3.0, end_guidance_scale=1.0)
    frozen = prior.sample(model, (4, 4), settings, nb_samples=3, cond=torch.tensor([0, 1, 0]),
                          generator=torch.Generator().manual_seed(1))
    # step 1 sets every token to 0, step 2 changes nothing: frozen after min_steps, not at the budget
    assert (frozen.tokens == 0).all() and (frozen.steps_used == 2).all()
    running = prior.sample(model, (4, 4), dataclasses.replace(settings, early_stop=False), nb_samples=3,
                           cond=torch.tensor([0, 1, 0]), generator=torch.Generator().manual_seed(1))
    assert torch.equal(running.tokens, frozen.tokens) and (running.steps_used == 8).all()


@pytest.mark.parametrize("decoder", ["maskgit", "unleashing"])
def test_the_guidance_scale_follows_the_step_not_the_count_of_model_calls(monkeypatch, decoder):
    """The absorbing samplers skip the model on steps that decode nothing; each call must still
    use its own step's scale (MaskGIT on two unknown tokens over 6 steps decodes at steps 0 and 5
    only; Unleashing at the random steps where a token is revealed)."""
    prior = guided_prior("absorbing")
    settings = AbsorbingSampling(steps=6, decoder=decoder, guidance_scale=4.0, end_guidance_scale=1.5)
    received = []

    def recording_mix(conditional, unconditional, scale):
        received.append(scale)
        return unconditional + scale * (conditional - unconditional)

    monkeypatch.setattr(Denoiser, "mix", staticmethod(recording_mix))
    for seed in range(20):  # until a call comes after a skipped step
        received.clear()
        result = prior.sample(Opposed(5, prior.null_class), (1, 2), settings, nb_samples=1, cond=torch.tensor([0]),
                              generator=torch.Generator().manual_seed(seed), return_history=True)
        steps = [k for k in range(6) if not torch.equal(result.history[k], result.history[k + 1])]
        if steps != list(range(len(steps))):
            break
    assert steps != list(range(len(steps))), "no seed skipped a step before a call"
    if decoder == "maskgit":
        assert steps == [0, 5]
    scales = schedule(settings, "guidance_scale").tolist()
    assert received == pytest.approx([scales[k] for k in steps])
