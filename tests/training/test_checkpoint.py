"""A checkpoint fits a config when the config's model has the checkpoint's state_dict shapes; a
mismatch names the first setting whose saved value explains it."""
import dataclasses

import pytest
import torch

from infra.errors import UserError
from training.checkpoint import check_fits, load_denoiser, read_checkpoint
from training.config import load_config


def edited(cfg, section, **values):
    new = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)})
    new.path = "edited.toml"
    return new


@pytest.mark.parametrize("section, values, fragment", [
    ("net", {"dim": 48}, "net.dim = 32, but edited.toml has 48"),
    ("net", {"depth": [1, 2, 1]}, "net.depth = [1, 1, 1], but edited.toml has [1, 2, 1]"),
    ("net", {"updown_sample_type": "naive"}, "net.updown_sample_type = 'linear'"),
    ("net", {"attn_resampling": False}, "net.attn_resampling = True"),
    ("net", {"use_rotary": False}, "net.use_rotary = True"),
    ("net", {"num_classes": 3}, "net.num_classes = 2"),
    ("net", {"ff_mult": 2}, "net.ff_mult = 4"),
    ("data", {"vocab_size": 7}, "data.vocab_size = 5, but edited.toml has 7"),
    # no weight changes shape with these: compared by value
    ("net", {"rotary_coords": "normalized"}, "net.rotary_coords = 'integer', but edited.toml has 'normalized'"),
    ("net", {"rotary_layout": "1d"}, "net.rotary_layout = '2d'"),
])
def test_a_shape_changing_setting_is_named(tiny_prior, section, values, fragment):
    cfg = edited(load_config(tiny_prior.cfg), section, **values)
    with pytest.raises(UserError) as e:
        check_fits(tiny_prior.last, read_checkpoint(tiny_prior.last), cfg)
    assert str(e.value).startswith(f"{tiny_prior.last}: checkpoint was trained with ")
    assert fragment in str(e.value)


def test_settings_that_keep_the_shapes_load(tiny_prior):
    cfg = edited(load_config(tiny_prior.cfg), "net", attn_dropout=0.1, ff_dropout=0.2)
    cfg = edited(cfg, "data", root="/moved/elsewhere")
    model = load_denoiser(tiny_prior.last, cfg)
    state = read_checkpoint(tiny_prior.last)["state_dict"]
    assert torch.equal(model.token_emb.weight, state["ema.module.token_emb.weight"])


def test_a_foreign_file_is_not_a_checkpoint(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a SUNDAE training checkpoint"):
        read_checkpoint(tmp_path / "other.pt")
    (tmp_path / "garbage.ckpt").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="garbage.ckpt: not a readable checkpoint"):
        read_checkpoint(tmp_path / "garbage.ckpt")
