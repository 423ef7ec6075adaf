"""bench.priors: the quick run prints every row with sane numbers, its models are the registry's
at equal parameter count, and its FLOP counts agree with torch's counter over whole sampling runs."""
import contextlib
import dataclasses
import io
import math

import pytest
import torch

from bench import priors
from priors import build_model, prior_for
from priors.absorbing import Absorbing
from priors.autoregressive import Autoregressive, AutoregressiveSampling
from priors.sundae import Sundae, sample_sundae

QUICK = ["--quick", "--threads", "1", "--digits-batch", "4"]
ROWS = ["SUNDAE, early stop", "SUNDAE, no early stop", "absorbing (Unleashing), S=64",
        "absorbing (Unleashing), S=256", "MaskGIT, S=8", "MaskGIT, S=16", "AR, KV cache", "AR, no cache"]
COLUMNS = ["batch", "forwards", "positions", "gflop", "samples_per_s", "s_per_sample", "ms_per_forward", "matmul"]


def number(cell):
    """A table cell as a float: drops the trained-model and estimate marks, thousands commas, 'x', '%'."""
    for mark in (priors.TRAINED, priors.ESTIMATED, ","):
        cell = cell.replace(mark, "")
    return float(cell.rstrip("x%"))


def parse(stdout):
    """{section: [table, ...]}, each table its rows' cells below the header; a table's section is the
    `####` line above it ('params' before the first)."""
    tables, section, previous = {}, "params", ""
    for line in stdout.splitlines():
        if line.startswith("#### "):
            section = line[5:].split(":")[0]
        elif line.startswith("|---"):
            tables.setdefault(section, []).append([])
        elif line.startswith("| ") and previous.startswith("|"):
            tables[section][-1].append([c.strip() for c in line.strip("|").split("|")])
        previous = line
    return tables


@pytest.fixture(scope="module")
def quick_run():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert priors.main(QUICK) == 0
    shapes = priors.shapes(priors.parse_args(QUICK))
    return parse(out.getvalue()), shapes, out.getvalue()


def cost_rows(tables, shape):
    """{label: {column: value}} of one shape's cost table (the first table of its section)."""
    return {r[0]: dict(zip(COLUMNS, map(number, r[1:]))) for r in tables[shape.name][0]}


def test_every_row_is_printed_with_positive_finite_numbers(quick_run):
    tables, shapes, _ = quick_run
    for shape in shapes:
        rows = cost_rows(tables, shape)
        assert list(rows) == ROWS
        for label, row in rows.items():
            assert row["batch"] == shape.batch
            for column, value in row.items():
                assert math.isfinite(value) and value > 0, (shape.name, label, column, value)
            assert row["s_per_sample"] == pytest.approx(1 / row["samples_per_s"], rel=0.01)


def test_forwards_and_positions_where_the_sampler_fixes_them(quick_run):
    tables, shapes, _ = quick_run
    for shape in shapes:
        rows, tokens, steps = cost_rows(tables, shape), shape.grid[0] * shape.grid[1], shape.cfg.sampling.steps
        assert rows["SUNDAE, no early stop"]["forwards"] == steps
        assert shape.cfg.sampling.min_steps <= rows["SUNDAE, early stop"]["forwards"] <= steps
        for s in priors.MASKGIT_STEPS:
            assert rows[f"MaskGIT, S={s}"]["forwards"] == s
        for s in priors.ABSORBING_STEPS:  # random, at most one per step and one per token
            got = rows[f"absorbing (Unleashing), S={s}"]["forwards"]
            assert got <= min(s, tokens)
            assert got == pytest.approx(priors.absorbing_expected_forwards(s, tokens), rel=0.25)
        for label in ("AR, KV cache", "AR, no cache"):
            assert rows[label]["forwards"] == tokens
        assert rows["AR, KV cache"]["positions"] == tokens
        assert rows["AR, no cache"]["positions"] == tokens * (tokens + 1) // 2
        for label in ROWS[:6]:
            assert rows[label]["positions"] == pytest.approx(rows[label]["forwards"] * tokens, rel=0.01)
        assert rows["AR, no cache"]["gflop"] > rows["AR, KV cache"]["gflop"]


def test_speed_ratios_and_parameter_counts(quick_run):
    tables, shapes, _ = quick_run
    for shape in shapes:
        rows = cost_rows(tables, shape)
        ratios = {r[0]: r[1:] for r in tables[shape.name][1]}
        assert len(ratios) == 3  # early stop, no early stop, break-even forwards
        for label in ("SUNDAE, early stop", "SUNDAE, no early stop"):
            sundae = rows[label]["s_per_sample"]
            cache, no_cache = ratios[label]
            assert number(cache) == pytest.approx(rows["AR, KV cache"]["s_per_sample"] / sundae, rel=0.02)
            assert number(no_cache) == pytest.approx(rows["AR, no cache"]["s_per_sample"] / sundae, rel=0.02)
        params = {r[1]: number(r[3]) for r in tables["params"][0] if r[0] == shape.name}
        assert set(params) == {"sundae", "absorbing", "ar"}
        assert params["ar"] == pytest.approx(params["sundae"], rel=0.05)  # equal parameter count
        assert params["absorbing"] == params["sundae"] + shape.cfg.net.dim  # + the mask token's embedding


@pytest.fixture
def digits():
    return priors.shapes(priors.parse_args(QUICK))[0]


def test_each_prior_is_the_registry_model_of_its_config(digits):
    configs = priors.prior_configs(digits)
    assert [type(prior_for(cfg)) for cfg in configs.values()] == [Sundae, Absorbing, Autoregressive]
    assert configs["sundae"] is digits.cfg
    for name, cfg in configs.items():  # the data and the width are the shape's
        assert (cfg.data, cfg.net.dim, cfg.net.nb_heads, cfg.net.dim_head, cfg.net.ff_mult) == \
            (digits.cfg.data, *(getattr(digits.cfg.net, k) for k in ("dim", "nb_heads", "dim_head", "ff_mult"))), name
    assert configs["absorbing"].net == digits.cfg.net
    models = priors.build_models(configs, seed=0)
    assert set(models) == {"sundae", "absorbing", "ar"} and not any(m.training for m in models.values())
    for name, model in models.items():  # seeds 0, 1, 2 in that order, through the registry
        torch.manual_seed(list(models).index(name))
        fresh = build_model(configs[name]).state_dict()
        assert all(torch.equal(fresh[k], v) for k, v in model.state_dict().items()), name
    ar_depth = len(models["ar"].blocks)
    params = {d: priors.count_params(build_model(priors.ar_config(digits, d))) for d in (ar_depth - 1, ar_depth + 1)}
    sundae = priors.count_params(models["sundae"])
    assert all(abs(n - sundae) >= abs(priors.count_params(models["ar"]) - sundae) for n in params.values())


@pytest.mark.parametrize("use_cache", [True, False])
def test_ar_flops_equal_the_counter_over_a_whole_sampling_run(digits, use_cache):
    digits.cfg.data = dataclasses.replace(digits.cfg.data, latent_shape=[4, 4])
    cfg = priors.ar_config(digits, depth=2)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    cond = torch.zeros(1, dtype=torch.long)
    settings = AutoregressiveSampling(use_cache=use_cache)
    counted = priors.counted_flops(lambda: prior_for(cfg).sample(
        model, (4, 4), settings, nb_samples=1, cond=cond, generator=torch.Generator().manual_seed(0)))
    assert priors.ar_sample_flops(model, digits, use_cache) == counted


def test_grid_flops_times_forwards_equal_the_counter_over_a_sundae_run(digits):
    torch.manual_seed(0)
    model = build_model(digits.cfg).eval()
    # proportion 1: every position picked, so the head runs everywhere, as grid_forward_flops counts it
    cfg = dataclasses.replace(digits.cfg.sampling, steps=3, min_steps=1, early_stop=False, sample_proportion=1.0,
                              end_sample_proportion=1.0)
    counted = priors.counted_flops(lambda: sample_sundae(
        model, digits.grid, cfg, num_tokens=digits.vocab, nb_samples=1, cond=torch.zeros(1, dtype=torch.long),
        generator=torch.Generator().manual_seed(0)))
    assert 3 * priors.grid_forward_flops(model, digits) == counted


def test_only_the_large_shape_estimates_ar_without_the_cache_and_digits_checks_the_fit(quick_run):
    tables, (digits, large), stdout = quick_run
    assert priors.ESTIMATED not in "".join(tables[digits.name][0][-1])
    assert priors.ESTIMATED in tables[large.name][0][-1][5]  # its samples/s
    fit = next(line for line in stdout.splitlines() if line.startswith(f"- {digits.name}: fit"))
    assert 0 < float(fit.split("fit / run = ")[1].rstrip(")")) < 10
