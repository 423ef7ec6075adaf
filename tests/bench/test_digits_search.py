"""bench.digits_search and bench.ablations: every recipe writes a config the one reader
accepts, with the overrides it names; the report restricts, orders and relates rows to real data."""
import dataclasses
import json

import pytest

from bench import ablations, digits_search
from priors.absorbing import AbsorbingSampling
from priors.autoregressive import AutoregressiveSampling
from tests.helpers import REPO
from training.config import load_config

DIGITS = REPO / "config" / "digits.toml"


def written(tmp_path, name, overrides):
    """The config the search trains for a recipe: its overrides over the search's fixed base."""
    path = digits_search.write_config(DIGITS, digits_search.with_search_base(overrides), tmp_path / "c.toml", name,
                                      tmp_path / "runs", tmp_path / "d")
    return load_config(path, warn=False)


def test_recipes_override_the_fixed_search_base_not_the_shipped_config(tmp_path):
    # the recorded rows' "default": 6000 steps of the [2, 4, 2] hourglass at 1e-3 with attention in
    # its resampling, trained eagerly (as they were recorded), whatever ships
    default = written(tmp_path, "d", digits_search.RECIPES["default"])
    assert (default.trainer.max_steps, default.trainer.learning_rate, tuple(default.net.depth)) == (6000, 1e-3, (2, 4, 2))
    assert default.net.attn_resampling is True and default.trainer.compile is False
    loaded = digits_search.search_base_config()  # the same base, loaded (what the ablations start from)
    assert vars(loaded.trainer) | {"exp_name": None, "runs_dir": None} == vars(default.trainer) | {"exp_name": None,
                                                                                                 "runs_dir": None}
    assert vars(loaded.net) == vars(default.net)
    wide = written(tmp_path, "w", digits_search.RECIPES["wide"])
    assert (wide.net.dim, tuple(wide.net.depth), wide.trainer.max_steps) == (96, (2, 4, 2), 6000)


def test_the_shipped_recipe_is_config_digits_as_shipped(tmp_path):
    shipped, config = written(tmp_path, "s", digits_search.RECIPES[digits_search.SHIPPED]), load_config(DIGITS)
    for section in ("trainer", "net", "sampling", "data"):
        ours, theirs = vars(getattr(shipped, section)), vars(getattr(config, section))
        ignore = {"exp_name", "runs_dir", "root"}
        assert {k: v for k, v in ours.items() if k not in ignore} == {k: v for k, v in theirs.items() if k not in ignore}
    assert shipped.prior == config.prior  # the sundae prior, unroll_steps included


@pytest.mark.parametrize("recipe", list(digits_search.RECIPES))
def test_every_search_recipe_is_a_valid_config_with_its_overrides(tmp_path, recipe):
    overrides = digits_search.RECIPES[recipe]
    cfg = written(tmp_path, "x", overrides)
    assert cfg.data.root == str(tmp_path / "d") and cfg.evaluation is None  # scored by the search, not in training
    for section, values in overrides.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if value is not None:
                    got = getattr(getattr(cfg, section), key)
                    assert (list(got) if isinstance(got, tuple) else got) == value


def test_the_other_priors_drop_sundae_only_settings(tmp_path):
    # digits.toml's [sampling] is the sundae prior's; each other prior reads its own defaults and
    # the recipe's values (a sundae-only key left in would be refused by the config reader)
    absorbing = written(tmp_path, "a", digits_search.RECIPES["absorbing"])
    assert absorbing.prior.type == "absorbing"
    assert absorbing.sampling == AbsorbingSampling(nb_samples=64, steps=64, temperature=1.0)
    ar = written(tmp_path, "b", digits_search.RECIPES["autoregressive"])
    assert ar.prior.type == "autoregressive" and (ar.net.type, ar.net.depth) == ("vanilla", 9)
    assert ar.sampling == AutoregressiveSampling(nb_samples=64, temperature=1.0)


@pytest.mark.parametrize("recipe, samplings", [("absorbing", ["unleashing64", "unleashing32", "maskgit12", "maskgit8"]),
                                               ("autoregressive", ["ar", "ar-top-k5"])])
def test_the_other_priors_samplings_are_their_sampling_settings(tmp_path, recipe, samplings):
    """Each sampling the search scores on a prior's recipe is a valid settings object of that prior."""
    cfg = written(tmp_path, "x", digits_search.RECIPES[recipe])
    for name in samplings:
        overrides = {k: v for k, v in digits_search.SAMPLINGS[name].items() if k != "precision"}
        settings = dataclasses.replace(cfg.sampling, **overrides)
        assert {k: getattr(settings, k) for k in overrides} == overrides


def test_ablations_share_one_budget_when_asked(tmp_path, monkeypatch):
    search = ablations.digits_search  # the module ablations fills in
    monkeypatch.setattr(search, "RECIPES", dict(search.RECIPES))
    monkeypatch.setattr(search, "SAMPLINGS", dict(search.SAMPLINGS))
    monkeypatch.setattr(ablations, "equal_flops_depth", lambda base: 7)
    ablations.register({"max_steps": 1234, "learning_rate": 5e-4})
    for name in ablations.TRAINING:
        cfg = written(tmp_path, "x", search.RECIPES[name])
        assert (cfg.trainer.max_steps, cfg.trainer.learning_rate) == (1234, 5e-4), name
    assert written(tmp_path, "x", search.RECIPES["unroll T=3"]).prior.unroll_steps == 3
    vanilla = written(tmp_path, "x", search.RECIPES["vanilla, equal FLOPs"])
    assert (vanilla.net.type, vanilla.net.depth) == ("vanilla", 7)


def test_the_vanilla_ablation_has_the_recorded_equal_flops_depth():
    # bench/results/ablations.jsonl trained "vanilla, equal FLOPs" at depth 6
    assert ablations.equal_flops_depth(digits_search.search_base_config()) == 6


def record(recipe, sampling, seed, fd, real_fd=50.0):
    rows = {"samples": {"n": 1000, "fd": fd, "precision": 0.9, "recall": 0.8, "coverage": 0.7, "cond_accuracy": 0.99},
            "samples (n=130)": {"n": 130, "fd": 2 * fd, "precision": 0.9, "recall": 0.8, "coverage": 0.7},
            "eval vs train": {"n": 130, "fd": real_fd, "precision": 0.9, "recall": 1.0, "coverage": 0.35}}
    return {"recipe": recipe, "sampling": sampling, "seed": seed, "rows": rows, "mean_steps": 20.0,
            "steps_budget": 50}


def test_report_means_over_seeds_relative_to_real_data_and_filters(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    lines = [record("b", "x", 0, 10.0), record("a", "y", 0, 30.0), record("a", "y", 1, 50.0), record("c", "z", 0, 1.0)]
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    digits_search.report(path, only={"a": ["y"], "b": ["x"]})
    table = [line.split(" | ") for line in capsys.readouterr().out.splitlines()[2:]]
    assert [row[0].strip("| ") for row in table] == ["a", "b"]  # the order asked for; "c" left out
    a = table[0]
    assert a[2] == "2" and a[3] == "40.000 ± 14.142"  # mean ± sd over the two seeds
    assert a[8] == "1.600 ± 0.566"  # FD/ref: the n=130 subset (2 * fd) over the real row's 50, per seed
    assert a[10] == "0.800 ± 0.000" and a[11] == "2.000 ± 0.000"  # recall 0.8 / 1.0, coverage 0.7 / 0.35
