"""HourglassTransformerLM: shapes, grid errors, full receptive field, conditioning, grads, seeds."""
import pytest
import torch

from hourglass_transformer import HourglassError, HourglassTransformerLM

V = 13  # vocabulary size of the tiny test models


def tiny(**kw):
    args = dict(num_tokens=V, dim=32, depth=(1, 1, 1), heads=2, dim_head=8, ff_mult=2)
    args.update(kw)
    return HourglassTransformerLM(**args)


def tokens(b, h, w, seed=0):
    return torch.randint(0, V, (b, h, w), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("updown", ["linear", "naive"])
@pytest.mark.parametrize("attn_resampling", [True, False])
@pytest.mark.parametrize(
    "depth, shorten_factor, grid",
    [
        (2, 4, (6, 10)),  # vanilla: any grid
        ((1, 1, 1), 4, (4, 4)),
        ((1, 1, 1), 4, (8, 4)),
        ((1, 1, 1), 9, (6, 12)),
        ((1, (1, 1, 1), 1), 4, (8, 12)),
        ((1, (0, 1, 1), 1), [4, 9], (12, 6)),
    ],
)
def test_logits_shape(updown, attn_resampling, depth, shorten_factor, grid):
    torch.manual_seed(0)
    model = tiny(depth=depth, shorten_factor=shorten_factor, updown_sample_type=updown,
                 attn_resampling=attn_resampling)
    out = model(tokens(2, *grid))
    assert out.shape == (2, *grid, V)
    assert torch.isfinite(out).all()
    assert model.num_tokens == V


@pytest.mark.parametrize("depth", [2, (1, 1, 1)])
def test_logits_at_selected_positions_are_the_full_logits_there(depth):
    torch.manual_seed(0)
    model = tiny(depth=depth, num_classes=3).eval()
    x, cond = tokens(3, 4, 4), torch.tensor([0, 2, 1])
    at = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(1)) < 0.3
    with torch.no_grad():
        full, selected = model(x, cond), model(x, cond, at=at)
    assert selected.shape == (int(at.sum()), V)
    assert torch.allclose(selected, full[at], atol=1e-6)  # row-major order, the same numbers
    with pytest.raises(HourglassError, match="at: expected a bool mask of shape"):
        model(x, cond, at=at[:2])


def test_level_grids_of_nested_levels():
    model = tiny(depth=(1, (1, 1, 1), 1), shorten_factor=[4, 9])
    assert model.level_grids(12, 24) == [(12, 24), (6, 12), (2, 4)]
    assert model.grid_multiple == 6


@pytest.mark.parametrize(
    "grid, message",
    [((6, 8), r"level 1: grid 3x4"), ((8, 6), r"level 1: grid 4x3"), ((5, 8), r"level 0: grid 5x8")],
)
def test_grid_that_a_level_cannot_pool_is_an_error_naming_level_and_shape(grid, message):
    model = tiny(depth=(1, (1, 1, 1), 1))
    with pytest.raises(HourglassError, match=message):
        model(tokens(1, *grid))


def test_rotary_model_takes_any_divisible_grid():
    model = tiny(depth=(1, 1, 1)).eval()
    for grid in [(2, 2), (4, 32), (40, 2)]:
        assert model(tokens(1, *grid)).shape == (1, *grid, V)


@pytest.mark.parametrize("updown", ["linear", "naive"])
@pytest.mark.parametrize("attn_resampling", [True, False])
def test_every_output_position_depends_on_every_input_position(updown, attn_resampling):
    torch.manual_seed(0)
    model = tiny(depth=(1, (1, 1, 1), 1), updown_sample_type=updown, attn_resampling=attn_resampling)
    model = model.double().eval()
    x = tokens(1, 8, 8)
    base = model(x)
    for i, j in [(0, 0), (7, 7), (3, 5)]:
        y = x.clone()
        y[0, i, j] = (y[0, i, j] + 1) % V
        moved = (model(y) - base).abs().amax(dim=-1)  # (1, h, w)
        assert (moved > 1e-12).all(), f"perturbing ({i},{j}) left some logits unchanged"


def test_learned_positions_need_max_grid_and_cover_it_only():
    with pytest.raises(HourglassError, match="max_grid"):
        tiny(rotary_pos_emb=False)
    model = tiny(rotary_pos_emb=False, max_grid=(8, 4))
    assert model(tokens(2, 8, 4)).shape == (2, 8, 4, V)
    assert model(tokens(2, 4, 2)).shape == (2, 4, 2, V)
    with pytest.raises(HourglassError, match="larger than max_grid"):
        model(tokens(1, 8, 8))


def test_learned_positions_make_the_model_position_aware():
    torch.manual_seed(0)
    model = tiny(rotary_pos_emb=False, max_grid=(4, 4)).eval()
    out = model(torch.full((1, 4, 4), 3))  # the same token everywhere
    assert (out - out[:, :1, :1]).abs().amax() > 1e-4


def test_class_conditioning_changes_the_output():
    torch.manual_seed(0)
    model = tiny(num_classes=5).eval()
    x = tokens(2, 4, 4)
    a = model(x, torch.tensor([0, 1]))
    b = model(x, torch.tensor([3, 1]))
    assert (a[0] - b[0]).abs().amax() > 1e-4
    torch.testing.assert_close(a[1], b[1])


@pytest.mark.parametrize(
    "cond, message",
    [
        (torch.tensor([0]), r"shape \(2,\)"),
        (torch.tensor([[0], [1]]), r"shape \(2,\)"),
        (torch.tensor([0.0, 1.0]), r"LongTensor"),
        (None, r"LongTensor"),
        (torch.tensor([0, 5]), r"\[0, 5\)"),
        (torch.tensor([-1, 0]), r"\[0, 5\)"),
    ],
)
def test_bad_cond_is_a_clear_error(cond, message):
    model = tiny(num_classes=5)
    with pytest.raises(HourglassError, match=rf"cond: .*{message}"):
        model(tokens(2, 4, 4), cond)


def test_cond_without_num_classes_is_an_error():
    with pytest.raises(HourglassError, match="no num_classes"):
        tiny()(tokens(2, 4, 4), torch.tensor([0, 1]))


@pytest.mark.parametrize("bad", [torch.zeros(2, 4, 4), torch.zeros(2, 16, dtype=torch.long), torch.full((1, 4, 4), V)])
def test_bad_tokens_are_a_clear_error(bad):
    with pytest.raises(HourglassError, match="tokens: "):
        tiny()(bad)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(depth=(1, 1)), "depth="),
        (dict(depth=(1, (1, 1), 1)), "depth="),
        (dict(depth=-1), "depth="),
        (dict(shorten_factor=8), "perfect square"),
        (dict(shorten_factor=[4, 4]), "one factor per hourglass level"),
        (dict(updown_sample_type="conv"), "updown_sample_type"),
        (dict(dim_head=6), "multiple of 4"),
        (dict(rotary_coords="polar"), "rotary_coords"),
        (dict(num_classes=0), "num_classes"),
    ],
)
def test_bad_config_is_a_clear_error(kw, message):
    with pytest.raises(HourglassError, match=message):
        tiny(**kw)


def test_depth_accepts_lists_like_yaml_configs_give():
    model = tiny(depth=[1, [1, 1, 1], 1], shorten_factor=[4, 4])
    assert model.depth == (1, (1, 1, 1), 1)


@pytest.mark.parametrize(
    "kw",
    [
        dict(depth=(1, (1, 1, 1), 1), num_classes=3),
        dict(depth=(1, 1, 1), updown_sample_type="naive", rotary_pos_emb=False, max_grid=(8, 8), num_classes=3),
        dict(depth=2, num_classes=3),
    ],
)
def test_gradients_reach_every_parameter(kw):
    torch.manual_seed(0)
    model = tiny(**kw)
    # 8x8 so the innermost grid is 2x2: on a single token, attention weights are constant (no q/k grads)
    logits = model(tokens(2, 8, 8), torch.tensor([0, 2]))
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), tokens(2, 8, 8, seed=1).reshape(-1))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_results_are_deterministic_under_a_seed():
    def run():
        torch.manual_seed(123)
        model = tiny(depth=(1, (1, 1, 1), 1), attn_dropout=0.1, ff_dropout=0.1).train()
        return model(tokens(2, 8, 8)), model.state_dict()

    (out_a, state_a), (out_b, state_b) = run(), run()
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    torch.manual_seed(7)
    out_c = tiny(depth=(1, (1, 1, 1), 1)).eval()(tokens(2, 8, 8))
    assert not torch.equal(out_a, out_c)
