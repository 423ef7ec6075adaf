"""Classifier-free guidance: a null class in training, guided logits uncond + s (cond - uncond)
from one batched forward per step, a scale schedule, and inpainting and freezing with it."""
import dataclasses
import tomllib

import pytest
import torch

from hourglass_transformer import HourglassTransformerLM
from training.config import config_from_dict
from infra.errors import UserError
from priors.base import Guided, prior_type
from priors.sundae import SamplingConfig
from tests.helpers import TINY_CONFIG


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
    with torch.no_grad():
        full = Guided(model, torch.tensor([2.0]), null_class=2)(tokens, cond)
        selected = Guided(model, torch.tensor([2.0]), null_class=2)(tokens, cond, at=at)
    assert torch.allclose(selected, full[at], atol=1e-5)


def test_guided_logits_from_one_batched_forward():
    model = Recorder(5, null_class=2)
    guided = Guided(model, torch.tensor([3.0, 0.5]), null_class=2)
    tokens, cond = torch.zeros(4, 2, 2, dtype=torch.long), torch.tensor([0, 1, 1, 0])
    first = guided(tokens, cond)
    assert model.calls == [(8, [0, 1, 1, 0, 2, 2, 2, 2])]  # one forward: conditional, then null rows
    # uncond 0, cond c + 1: guided = 0 + 3 * (c + 1)
    assert torch.equal(first[..., 0], torch.tensor([3.0, 6.0, 6.0, 3.0])[:, None, None].expand(4, 2, 2))
    second = guided(tokens, cond)
    assert torch.equal(second[..., 0][:, 0, 0], torch.tensor([0.5, 1.0, 1.0, 0.5]))  # the schedule's next scale
    assert torch.equal(guided(tokens, cond), second)  # the last scale holds after the schedule


def test_the_null_class_is_one_more_embedding_and_dropped_at_the_set_rate():
    cfg = cfg_with(cond_drop_prob=0.25)
    prior = prior_type(cfg)
    assert prior.null_class == 2 and prior.build_model().class_emb.num_embeddings == 3
    assert prior_type(cfg_with()).build_model().class_emb.num_embeddings == 2
    labels = torch.zeros(40_000, dtype=torch.long)
    dropped = prior.drop_classes(labels, torch.Generator().manual_seed(0))
    rate = (dropped == 2).float().mean().item()
    assert abs(rate - 0.25) < 4 * (0.25 * 0.75 / 40_000) ** 0.5  # binomial: within 4 sd
    assert set(dropped.tolist()) == {0, 2}
    again = prior.drop_classes(labels, torch.Generator().manual_seed(0))
    assert torch.equal(again, dropped)  # from the step's generator: a resumed run drops the same


def test_guidance_needs_a_null_class_and_a_conditional_prior():
    sampling = SamplingConfig(steps=2, guidance_scale=2.0)
    with pytest.raises(UserError, match="net.cond_drop_prob > 0"):
        prior_type(cfg_with()).guided(torch.nn.Identity(), sampling, torch.zeros(1, dtype=torch.long))
    with pytest.raises(Exception, match="net.cond_drop_prob: classifier-free guidance needs net.conditional"):
        cfg_with(conditional=False, cond_drop_prob=0.1)
    model = torch.nn.Identity()
    assert prior_type(cfg_with(cond_drop_prob=0.1)).guided(model, SamplingConfig(), None) is model  # scale 1: off


@pytest.mark.parametrize("kind", ["sundae", "absorbing"])
def test_guided_sampling_keeps_known_tokens_and_freezes(kind):
    cfg = cfg_with(cond_drop_prob=0.1)
    cfg = dataclasses.replace(cfg, prior=dataclasses.replace(cfg.prior, type=kind))
    prior = prior_type(cfg)
    torch.manual_seed(0)
    model = prior.build_model().eval()
    start = torch.randint(5, (3, 4, 4))
    keep = torch.zeros(4, 4, dtype=torch.bool)
    keep[:2] = True
    sampling = SamplingConfig(steps=8, min_steps=2, guidance_scale=3.0, end_guidance_scale=1.0)
    result = prior.sample(model, start, sampling, nb_samples=3, cond=torch.tensor([0, 1, 0]), keep_mask=keep,
                          generator=torch.Generator().manual_seed(1))
    assert torch.equal(result.tokens[:, :2], start[:, :2]) and result.tokens.max() < 5
    assert (result.steps_used <= 8).all() and (result.steps_used >= 1).all()
