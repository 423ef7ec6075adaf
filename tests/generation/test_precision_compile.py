"""Inference precision and compiled sampling: bf16 gives valid grids with the same sampling
logic, float16 is refused on the CPU, and the compiled sampler draws the eager sampler's tokens."""
import tomllib

import pytest
import torch

from generation.pretrained import TrainedPrior
from infra.errors import UserError
from infra.precision import inference_precision
from priors import prior_for
from priors.base import Bucketed
from priors.sundae import SundaeSampling
from tests.helpers import TINY_CONFIG
from training.config import config_from_dict

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_prior(kind="sundae", **net):
    table = tomllib.loads(TINY_CONFIG.format(runs="runs", data="data/tiny"))
    table["net"].update(net)
    sundae_only = {"unroll_steps": table.pop("unroll_steps"), "min_steps": table["sampling"].pop("min_steps")}
    table["prior"] = {"type": kind}
    if kind == "sundae":
        table["prior"]["unroll_steps"], table["sampling"]["min_steps"] = sundae_only.values()
    cfg = config_from_dict(table)
    torch.manual_seed(0)
    kind_ = prior_for(cfg)
    return TrainedPrior(cfg=cfg, type=kind_, model=kind_.build_model().eval(), vqgan=None, device=torch.device("cpu"))


@pytest.mark.parametrize("kind, settings", [("sundae", dict(steps=8, min_steps=3)), ("absorbing", dict(steps=8))])
def test_bf16_sampling_gives_valid_grids_with_the_same_logic(kind, settings):
    prior = tiny_prior(kind)
    sampling = prior.type.Sampling(**settings)
    keep = torch.zeros(4, 4, dtype=torch.bool)
    keep[0] = True
    start = torch.randint(5, (4, 4))
    results = {}
    for precision in ("32", "bf16"):
        prior.precision = precision
        results[precision] = prior.sample(start, sampling, nb_samples=6, cond=torch.tensor([0, 1] * 3),
                                          keep_mask=keep, generator=torch.Generator().manual_seed(3))
    for result in results.values():
        assert result.tokens.shape == (6, 4, 4) and result.tokens.dtype == torch.long
        assert 0 <= result.tokens.min() and result.tokens.max() < 5
        assert torch.equal(result.tokens[:, 0], start[0].expand(6, 4))  # kept tokens, whatever the precision
        assert ((result.steps_used >= (3 if kind == "sundae" else 1)) & (result.steps_used <= 8)).all()
    # The same logic with the same random numbers: bf16 moves the logits by ~1%, so a draw differs
    # only where its uniform number falls near a bin edge of the CDF, and the grids mostly agree.
    agree = (results["32"].tokens == results["bf16"].tokens).float().mean().item()
    assert agree > 0.8, agree


def test_the_model_really_runs_in_bf16_and_the_draw_in_float32():
    prior = tiny_prior()
    seen = []
    hook = prior.model.to_logits.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    prior.precision = "bf16"
    prior.sample((4, 4), SundaeSampling(steps=2), nb_samples=2, cond=torch.tensor([0, 1]))
    hook.remove()
    assert seen and all(dtype == torch.bfloat16 for dtype in seen)


def test_float16_needs_a_gpu():
    with pytest.raises(UserError, match="--precision 16: float16 autocast needs a GPU"):
        with inference_precision("cpu", "16"):
            pass


@pytest.mark.slow
def test_compiled_sampling_draws_the_eager_tokens():
    prior = tiny_prior()
    sampling = SundaeSampling(steps=6, min_steps=2)
    eager = prior.sample((4, 4), sampling, nb_samples=5, cond=torch.tensor([0, 1, 0, 1, 0]),
                         generator=torch.Generator().manual_seed(7))
    prior.sampling_model = Bucketed(prior.model, max_batch=8)
    compiled = prior.sample((4, 4), sampling, nb_samples=5, cond=torch.tensor([0, 1, 0, 1, 0]),
                            generator=torch.Generator().manual_seed(7))
    assert torch.equal(compiled.tokens, eager.tokens) and torch.equal(compiled.steps_used, eager.steps_used)


def test_buckets_pad_the_batch_to_powers_of_two_and_slice_back():
    calls = []

    class Echo(torch.nn.Module):
        def forward(self, tokens, cond=None):
            calls.append(tokens.shape[0])
            return tokens.float()[..., None]

    bucketed = Bucketed(Echo(), max_batch=8)
    bucketed.compiled = bucketed.compiled._orig_mod  # the padding logic, without compiling
    for a in (8, 5, 3, 1):
        x = torch.arange(a * 4).reshape(a, 2, 2)
        assert torch.equal(bucketed(x, torch.zeros(a, dtype=torch.long))[..., 0], x.float())
    assert calls == [8, 8, 4, 1]
