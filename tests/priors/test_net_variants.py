"""[net]'s architecture switches: they parse, bad values are one-line errors naming the
key, build_model passes them to the backbone, a checkpoint names the one that differs; and
configs in the original tool's exact layout load unchanged."""
import dataclasses
import tomllib
from pathlib import Path

import pytest
import torch

from hourglass_transformer.model import Block, PatchAttention
from infra.errors import UserError
from priors import build_model
from tests.helpers import TINY_CONFIG
from training.checkpoint import check_fits, read_checkpoint
from training.config import config_from_dict, load_config

HERE = Path(__file__).resolve().parents[1] / "training"  # the original-layout configs
SWITCHES = {  # key: (default, the other values)
    "attn_resampling_type": ("ours", ["original"]),
    "resampling_layout": ("2d", ["1d"]),
    "rotary_layout": ("2d", ["1d"]),
    "rotary_coords": ("integer", ["normalized"]),
}


def tiny_table(**net):
    """The tiny config with the [net] defaults (TINY_CONFIG pins dim_head = 16 for speed)."""
    table = tomllib.loads(TINY_CONFIG.format(runs="runs", data="data/tiny"))
    del table["net"]["dim_head"]
    table["net"].update(net)
    return table


def error_of(**net):
    with pytest.raises(UserError) as e:
        config_from_dict(tiny_table(**net))
    message = str(e.value)
    assert "\n" not in message
    return message


def count(model):
    return sum(p.numel() for p in model.parameters())


def meta_denoiser(cfg):
    with torch.device("meta"):  # shapes only
        return build_model(cfg)


# --- parsing ----------------------------------------------------------------------------------------

def test_defaults():
    net = config_from_dict(tiny_table()).net
    assert net.dim_head == 64 and net.use_rotary
    assert {key: getattr(net, key) for key in SWITCHES} == {key: d for key, (d, _) in SWITCHES.items()}


@pytest.mark.parametrize("key, value", [(k, v) for k, (_, values) in SWITCHES.items() for v in values])
def test_each_switch_parses(key, value):
    assert getattr(config_from_dict(tiny_table(**{key: value})).net, key) == value


@pytest.mark.parametrize("key, value, fragment", [
    ("attn_resampling_type", "orig", "net.attn_resampling_type: expected one of 'ours', 'original', got 'orig'"),
    ("resampling_layout", "3d", "net.resampling_layout: expected one of '2d', '1d', got '3d'"),
    ("resampling_layout", 2, "net.resampling_layout: expected one of '2d', '1d', got 2"),
    ("rotary_layout", "2D", "net.rotary_layout: expected one of '2d', '1d', got '2D'"),
    ("rotary_coords", "pixel", "net.rotary_coords: expected one of 'integer', 'normalized', got 'pixel'"),
    ("dim_head", 0, "net.dim_head: expected int >= 1, got 0"),
    ("dim_head", 6, "net.dim_head: expected a multiple of 4 with use_rotary = true and rotary_layout = '2d', got 6"),
    ("resampling", "original", "unknown key 'net.resampling'"),
])
def test_bad_values_are_one_line_errors_naming_the_key(key, value, fragment):
    assert fragment in error_of(**{key: value})


def test_dim_head_needs_a_multiple_of_2_only_with_1d_rotary_and_nothing_without_rotary():
    assert config_from_dict(tiny_table(dim_head=6, rotary_layout="1d")).net.dim_head == 6
    assert "multiple of 2" in error_of(dim_head=5, rotary_layout="1d")
    assert config_from_dict(tiny_table(dim_head=5, use_rotary=False)).net.dim_head == 5


def test_dim_no_longer_has_to_divide_by_nb_heads():
    model = meta_denoiser(config_from_dict(tiny_table(dim=33, nb_heads=2)))
    assert model.stack.pre.blocks[0].attn.to_q.weight.shape == (2 * 64, 33)


def test_a_non_square_shorten_factor_builds_only_with_1d_resampling():
    cfg = config_from_dict(tiny_table(shorten_factor=2, resampling_layout="1d"))
    assert meta_denoiser(cfg).shorten_factors == [2]
    with pytest.raises(UserError, match=r"\[net\]: shorten_factor=2: expected a perfect square"):
        build_model(config_from_dict(tiny_table(shorten_factor=2)))


# --- build_model passes them ------------------------------------------------------------------------

def test_build_model_passes_every_switch():
    default = meta_denoiser(config_from_dict(tiny_table()))
    assert isinstance(default.stack.down.attn, PatchAttention) and default.stack.down.grouping.layout == "2d"
    assert default.stack.pre.rotary_layout == "2d" and default.stack.pre.rotary_coords == "integer"
    assert default.stack.pre.blocks[0].attn.to_q.out_features == 2 * 64  # nb_heads x the default dim_head

    cfg = config_from_dict(tiny_table(dim_head=12, attn_resampling_type="original", resampling_layout="1d",
                                      rotary_layout="1d", rotary_coords="normalized"))
    model = meta_denoiser(cfg)
    assert isinstance(model.stack.down.attn, Block) and isinstance(model.stack.up.attn, Block)
    assert model.stack.up.resampling_type == "original"
    assert model.stack.down.grouping.layout == "1d" and model.level_grids(4, 4) == [(4, 4), (4, 1)]
    for stack in (model.stack.pre, model.stack.valley, model.stack.post):
        assert stack.rotary_layout == "1d" and stack.rotary_coords == "normalized"
    assert model.stack.pre.blocks[0].attn.to_q.out_features == 2 * 12
    learned = meta_denoiser(config_from_dict(tiny_table(use_rotary=False)))
    assert learned.pos_emb is not None and learned.stack.pre.rotary_coords is None


@pytest.mark.parametrize("key, value", [(k, v) for k, (_, values) in SWITCHES.items() for v in values])
def test_each_switch_changes_the_built_model(key, value):
    table = tiny_table(dim_head=8)
    table["data"]["latent_shape"] = [8, 8]
    torch.manual_seed(0)
    a = build_model(config_from_dict(table)).eval()
    table["net"][key] = value
    b = build_model(config_from_dict(table)).eval()
    if key != "attn_resampling_type":  # the others keep the parameters: only what they compute changes
        b.load_state_dict(a.state_dict())
    tokens, cond = torch.randint(0, 5, (2, 8, 8)), torch.tensor([0, 1])
    assert (a(tokens, cond) - b(tokens, cond)).abs().amax() > 1e-5


# --- checkpoints --------------------------------------------------------------------------------------

def edited(cfg, **values):
    new = dataclasses.replace(cfg, net=dataclasses.replace(cfg.net, **values))
    new.path = "edited.toml"
    return new


@pytest.mark.parametrize("values, fragment", [
    (dict(attn_resampling_type="original"), "net.attn_resampling_type = 'ours', but edited.toml has 'original'"),
    (dict(dim_head=64), "net.dim_head = 16, but edited.toml has 64"),
])
def test_checkpoint_names_the_switch_that_changes_the_shapes(tiny_prior, values, fragment):
    cfg = edited(load_config(tiny_prior.cfg), **values)
    with pytest.raises(UserError) as e:
        check_fits(tiny_prior.last, read_checkpoint(tiny_prior.last), cfg)
    assert fragment in str(e.value) and "\n" not in str(e.value)


# --- the original tool's layout ---------------------------------------------------------------------

def original_hourglass_params(V, d, heads, dim_head, depth, k, mult=4):
    """The original code's HourglassTransformerLM (one level, linear resampling, attention
    resampling as one full layer each way, final LayerNorm, no positions to learn), by hand."""
    inner = heads * dim_head
    layer = (2 * d + d * inner + d * 2 * inner + inner * d + d) + (2 * d + d * mult * d + mult * d + mult * d * d + d)
    pre, valley, post = depth
    return (V * d + (pre + valley + post + 2) * layer + (k * d * d + d) + (d * k * d + k * d)
            + 2 * d + d * V + V)


def test_an_original_config_loads_unchanged(capsys):
    cfg = load_config(HERE / "original_layout.toml")
    assert "trainer.metric_names is accepted for compatibility and ignored" in capsys.readouterr().err
    assert cfg.trainer.eval_batches == 32 and cfg.data.split_sizes == [120000, 10000, 10000]
    assert cfg.latent_shape == (32, 32) and cfg.vocab_size == 8192
    assert cfg.net.dim_head == 64  # the original's, which its configs never spell out
    assert cfg.sampling.end_temperature == 0.7 and cfg.vqgan.latent_shape == [32, 32]
    # with the original's resampling, the original's model, parameter for parameter
    original = dataclasses.replace(cfg, net=dataclasses.replace(cfg.net, attn_resampling_type="original"))
    want = original_hourglass_params(8192, 2048, 8, 64, (2, 10, 2), 4)
    assert count(meta_denoiser(original)) == want == 604_309_504 + 2 * (2 * 2048 * 8192 + 8192 + 2048)
    assert count(meta_denoiser(cfg)) == 604_309_504  # ours: no feed-forward in the two resamplers


def test_an_original_conditional_config_loads_unchanged():
    cfg = load_config(HERE / "original_layout_conditional.toml", warn=False)
    assert cfg.data.train_root and cfg.data.eval_root and cfg.data.root is None
    assert cfg.latent_shape == (28, 28) and cfg.net.conditional and cfg.net.num_classes == 10
    assert meta_denoiser(cfg).level_grids(28, 28) == [(28, 28), (14, 14)]


def test_original_layout_files_use_only_the_originals_keys():
    """The fixtures stay in the original's layout: no key of ours crept in."""
    original_keys = {
        None: {"unroll_steps", "trainer", "data", "vqgan", "sampling", "net"},
        "trainer": {"exp_name", "batch_size", "nb_batches", "learning_rate", "metric_names",
                    "checkpoint_frequency", "lr_scheduler_name", "max_steps"},
        "data": {"root", "train_root", "eval_root", "vocab_size", "sequence_length", "split_sizes"},
        "vqgan": {"config", "checkpoint", "latent_shape"},
        "sampling": {"steps", "nb_samples", "temperature", "end_temperature", "sample_proportion",
                     "end_sample_proportion"},
        "net": {"type", "dim", "nb_heads", "shorten_factor", "depth", "use_rotary", "conditional", "num_classes"},
    }
    for name in ("original_layout.toml", "original_layout_conditional.toml"):
        table = tomllib.loads((HERE / name).read_text())
        assert set(table) <= original_keys[None]
        for section, keys in table.items():
            if isinstance(keys, dict):
                assert set(keys) <= original_keys[section], (name, section)

