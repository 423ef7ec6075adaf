"""The sampling scripts' flags are derived from the priors' Sampling settings: one flag per field,
checked by that field's rules, a start value alone makes a constant schedule, and a flag of
another prior is refused by name (with the right article: 'an absorbing prior')."""
import tomllib
from types import SimpleNamespace

import pytest
import torch

from generation.pretrained import TrainedPrior, add_prior_args, flag, sampling_from_args
from infra.cli import ArgumentParser
from infra.errors import UserError
from priors import PRIORS, prior_for
from priors.base import a_prior
from priors.settings import fields
from tests.helpers import TINY_CONFIG
from training.config import config_from_dict

REQUIRED = ["--cfg-path", "c.toml", "--resume", "c.ckpt"]


def parser():
    p = ArgumentParser("test")
    add_prior_args(p)
    return p


def trained(**sampling):
    table = tomllib.loads(TINY_CONFIG.format(runs="runs", data="data/tiny"))
    table["sampling"].update(sampling)
    cfg = config_from_dict(table)
    cfg.path = "tiny.toml"
    return SimpleNamespace(cfg=cfg, type=prior_for(cfg))


def test_every_sampling_setting_of_every_prior_is_a_flag_with_its_doc(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no line wrapping inside a doc
    text = " ".join(parser().format_help().split())
    for prior in PRIORS.values():
        for f in fields(prior.Sampling, flags_only=True):
            assert flag(f.name) in text and " ".join(f.metadata["doc"].split()) in text, f.name
    assert "--nb-samples" not in text  # how many to draw is each script's own flag
    assert "--no-early-stop" in text and "(autoregressive priors)" in text


def test_flags_override_the_config_and_a_start_alone_is_a_constant_schedule():
    prior = trained(temperature=1.0, end_temperature=0.7)
    args = parser().parse_args(REQUIRED + ["--temperature", "0.5", "--no-early-stop", "--steps", "3"])
    settings = sampling_from_args(prior, args)
    assert settings.temperature == 0.5 and settings.end_temperature is None  # constant, not 0.5 -> 0.7
    assert not settings.early_stop and settings.steps == 3 and settings.min_steps == 2  # the rest: the config's
    kept = sampling_from_args(prior, parser().parse_args(REQUIRED))
    assert kept == prior.cfg.sampling


@pytest.mark.parametrize("argv, message", [
    (["--top-k", "5"], "--top-k: a sampling setting of autoregressive priors, but tiny.toml trains a sundae prior"),
    (["--decoder", "maskgit"], "--decoder: a sampling setting of absorbing priors"),
    (["--steps", "0"], "--steps: expected int >= 1, got 0"),
    (["--freeze-threshold", "1.5"], "--freeze-threshold: expected float in [0, 1], got 1.5"),
])
def test_a_flag_is_checked_by_its_field_and_its_prior(argv, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        sampling_from_args(trained(), parser().parse_args(REQUIRED + argv))


def test_a_prior_takes_the_article_of_its_name():
    assert {name: a_prior(name) for name in PRIORS} == {
        "sundae": "a sundae prior", "absorbing": "an absorbing prior", "autoregressive": "an autoregressive prior"}
    assert a_prior("**absorbing**") == "an **absorbing** prior"  # Markdown emphasis (the web page)


def as_prior(kind, **net):
    """The tiny config under another prior (its [sampling] the defaults)."""
    table = tomllib.loads(TINY_CONFIG.format(runs="runs", data="data/tiny"))
    del table["unroll_steps"], table["sampling"]
    table["prior"], table["net"] = {"type": kind}, {**table["net"], **net}
    cfg = config_from_dict(table)
    cfg.path = "tiny.toml"
    return TrainedPrior(cfg=cfg, type=prior_for(cfg), model=None, vqgan=None, device=torch.device("cpu"))


def test_messages_name_a_prior_with_its_article():
    with pytest.raises(UserError, match="tiny.toml trains an absorbing prior"):
        sampling_from_args(as_prior("absorbing"), parser().parse_args(REQUIRED + ["--min-steps", "2"]))
    with pytest.raises(UserError, match="--compile: an autoregressive prior samples eagerly only"):
        as_prior("autoregressive", type="vanilla", depth=2).compile(4)
