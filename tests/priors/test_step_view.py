"""Every prior's sampler hands its grids to on_step as each step ends: the same frames, in the same
order, as the history it returns, and the same samples as a run without the callback."""
import dataclasses
import tomllib

import pytest
import torch

from bench.configs import with_prior
from priors import PRIORS, prior_for
from tests.helpers import TINY_CONFIG
from training.config import config_from_dict


@pytest.mark.parametrize("name", PRIORS)
def test_on_step_sees_every_frame_of_the_history_as_it_comes(name):
    base = config_from_dict(tomllib.loads(TINY_CONFIG.format(runs="runs", data="data/tiny")))
    net = {} if "hourglass" in PRIORS[name].net_types else {"type": PRIORS[name].net_types[0], "depth": 2}
    cfg = with_prior(base, name, net)
    prior = prior_for(cfg)
    torch.manual_seed(0)
    model = prior.build_model().eval()
    settings = cfg.sampling
    if hasattr(settings, "steps"):  # the parallel samplers: a few steps
        settings = dataclasses.replace(settings, steps=4)
    cond = torch.tensor([0, 1, 1])

    def run(**kwargs):
        return prior.sample(model, cfg.data.latent_shape, settings, nb_samples=3, cond=cond,
                            generator=torch.Generator().manual_seed(1), **kwargs)

    seen = []
    streamed = run(return_history=True, on_step=lambda tokens: seen.append((tokens, tokens.clone())))
    assert len(seen) == len(streamed.history) >= 2
    for (frame, copy_when_called), kept in zip(seen, streamed.history):
        assert torch.equal(frame, copy_when_called)  # not written over after the call
        assert torch.equal(frame, kept)
    assert torch.equal(seen[-1][0], streamed.tokens)
    assert torch.equal(run().tokens, streamed.tokens)  # the callback draws nothing
