"""The architecture switches: each changes exactly what it claims.

dim_head, attn_resampling_type ("ours" | "original"), resampling_layout ("2d" | "1d"),
rotary_layout ("2d" | "1d"), rotary_coords ("integer" | "normalized"), num_outputs; and positions
of every kind reach the logits.
"""
import math

import pytest
import torch

import hourglass_transformer.model as model_module
from hourglass_transformer import HourglassError, HourglassTransformerLM
from hourglass_transformer.model import BlockConfig, DownSample, Grouping, UpSample
from hourglass_transformer.rotary import axial_rotary, sequence_rotary

V = 13

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny(**kw):
    args = dict(num_tokens=V, dim=32, depth=(1, 1, 1), heads=2, dim_head=8, ff_mult=2)
    args.update(kw)
    return HourglassTransformerLM(**args)


def count(model):
    return sum(p.numel() for p in model.parameters())


def grid(b, h, w, d, seed=0):
    return torch.randn(b, h, w, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def changed_positions(a, b):
    """The (i, j) grid positions where two (1, h, w, d) tensors differ."""
    moved = (a - b).abs().amax(dim=-1)[0] > 1e-12
    return {tuple(ij) for ij in moved.nonzero().tolist()}


def bump(x, i, j):
    """x with one vector changed (not by a constant, which a LayerNorm would remove)."""
    y = x.clone()
    y[0, i, j] += torch.linspace(-1, 1, x.shape[-1], dtype=x.dtype)
    return y


def block_config(dim=16, heads=2, dim_head=8):
    return BlockConfig(dim, heads, dim_head, ff_mult=2, attn_dropout=0.0, ff_dropout=0.0, rotary_coords="integer")


# --- parameter counts, by hand -------------------------------------------------------------------

def attention_params(d, inner):
    return d * inner + d * 2 * inner + inner * d + d  # to_q, to_kv (no bias), to_out


def ff_params(d, mult):
    return d * mult * d + mult * d + mult * d * d + d


def layer_params(d, inner, mult):
    return 2 * d + attention_params(d, inner) + 2 * d + ff_params(d, mult)  # two LayerNorms


def hourglass_params(V, d, heads, dim_head, depth, k, mult, resampling, num_outputs=None):
    """A one-level hourglass with linear resampling and attention resampling, written out."""
    inner = heads * dim_head
    pre, valley, post = depth
    resampler = {"ours": 2 * d + 2 * d + attention_params(d, inner),  # query_norm, patch_norm, attention
                 "original": layer_params(d, inner, mult)}[resampling]  # one full transformer layer
    down, up = k * d * d + d, d * k * d + k * d
    head = 2 * d + d * (num_outputs or V) + (num_outputs or V)  # final LayerNorm + logits
    return V * d + (pre + valley + post) * layer_params(d, inner, mult) + down + up + 2 * resampler + head


@pytest.mark.parametrize("resampling", ["ours", "original"])
@pytest.mark.parametrize("dim_head", [4, 8, 16])
def test_parameter_count_matches_the_hand_count(resampling, dim_head):
    model = tiny(depth=(1, 2, 1), heads=2, dim_head=dim_head, attn_resampling_type=resampling)
    assert count(model) == hourglass_params(V, 32, 2, dim_head, (1, 2, 1), 4, 2, resampling)


def test_hand_count_of_one_small_model_in_numbers():
    # d=8, 2 heads x 4, ff x2, V=5, depth (1, 1, 1), k=4, ours:
    # layer = 16 + (8*8 + 8*16 + 8*8 + 8) + 16 + (8*16 + 16 + 16*8 + 8) = 576; 3 layers = 1728
    # embed 40, down 4*64 + 8 = 264, up 64*4 + 32 = 288, resamplers 2 * (32 + 264) = 592,
    # head 16 + 40 + 5 = 61 -> 2973
    model = HourglassTransformerLM(num_tokens=5, dim=8, depth=(1, 1, 1), heads=2, dim_head=4, ff_mult=2)
    assert count(model) == 2973
    original = HourglassTransformerLM(num_tokens=5, dim=8, depth=(1, 1, 1), heads=2, dim_head=4, ff_mult=2,
                                      attn_resampling_type="original")
    assert count(original) == 2973 + 2 * (8 * 16 + 16 + 16 * 8 + 8)  # + one feed-forward per resampler


def test_dim_head_sets_the_attention_width_not_dim():
    model = tiny(dim=32, heads=2, dim_head=16)
    attn = model.stack.pre.blocks[0].attn
    assert attn.to_q.out_features == 32 and attn.to_kv.out_features == 64 and attn.to_out.in_features == 32
    wide = tiny(dim=32, heads=2, dim_head=64)
    assert wide.stack.pre.blocks[0].attn.to_q.out_features == 128
    assert HourglassTransformerLM(num_tokens=V, dim=32, depth=1).stack.blocks[0].attn.to_q.out_features == 8 * 64


def test_the_default_keeps_its_state_dict_names():
    """Checkpoints of the default model still load: the resampler is PatchAttention, as before."""
    keys = set(tiny().state_dict())
    for name in ("stack.down.attn.query_norm.weight", "stack.down.attn.patch_norm.weight",
                 "stack.up.attn.attn.to_q.weight", "stack.down.proj.weight", "stack.up.proj.weight"):
        assert name in keys
    assert not any(".ff" in k for k in keys if k.startswith(("stack.down", "stack.up")))


def test_original_resampling_adds_exactly_a_feed_forward_per_resampler():
    ours, original = tiny(), tiny(attn_resampling_type="original")
    extra = set(original.state_dict()) - set(ours.state_dict())
    missing = set(ours.state_dict()) - set(original.state_dict())
    assert extra == {f"stack.{side}.attn.{name}" for side in ("down", "up") for name in (
        "attn_norm.weight", "attn_norm.bias", "ff_norm.weight", "ff_norm.bias",
        "ff.0.weight", "ff.0.bias", "ff.3.weight", "ff.3.bias")}
    assert missing == {f"stack.{side}.attn.{norm}.{p}" for side in ("down", "up")
                       for norm in ("query_norm", "patch_norm") for p in ("weight", "bias")}
    assert count(original) - count(ours) == 2 * ff_params(32, 2)


# --- what the up-sampling attention attends to ---------------------------------------------------

def up_sample(resampling, s=2):
    torch.manual_seed(0)
    up = UpSample("linear", Grouping("2d", s * s), block_config(), True, resampling).double()
    torch.nn.init.zeros_(up.proj.weight)  # the valley reaches the tokens through the attention only
    torch.nn.init.zeros_(up.proj.bias)
    return up


def test_ours_up_attention_attends_to_the_pre_valley_tokens_of_the_patch():
    up = up_sample("ours")
    short, x = grid(1, 2, 2, 16, seed=1), grid(1, 4, 4, 16, seed=2)
    base = up(short, x)
    assert changed_positions(up(bump(short, 1, 0), x), base) == set()  # the valley is not attended
    # a pre-valley token moves its whole patch: every token of the patch attends to it
    assert changed_positions(up(short, bump(x, 2, 1)), base) == {(2, 0), (2, 1), (3, 0), (3, 1)}


def test_original_up_attention_attends_to_the_valley_output_of_the_patch():
    up = up_sample("original")
    short, x = grid(1, 2, 2, 16, seed=1), grid(1, 4, 4, 16, seed=2)
    base = up(short, x)
    assert changed_positions(up(bump(short, 1, 0), x), base) == {(2, 0), (2, 1), (3, 0), (3, 1)}
    # a pre-valley token moves only itself (residual, its own query, its feed-forward)
    assert changed_positions(up(short, bump(x, 2, 1)), base) == {(2, 1)}


@pytest.mark.parametrize("resampling, context", [("ours", "pre-valley"), ("original", "valley")])
def test_the_up_resampler_receives_the_claimed_context(resampling, context):
    up = up_sample(resampling)
    short, x = grid(1, 2, 2, 16, seed=1), grid(1, 4, 4, 16, seed=2)
    seen = []
    up.attn.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs["context"]), with_kwargs=True)
    up(short, x)
    want = {"valley": short.reshape(4, 1, 16),  # one key per patch: its valley vector
            "pre-valley": x.reshape(1, 2, 2, 2, 2, 16).permute(0, 1, 3, 2, 4, 5).reshape(4, 4, 16)}[context]
    torch.testing.assert_close(seen[0], want, rtol=0, atol=0)


def test_original_up_attention_has_one_key_so_its_weights_are_one():
    """Attending to a single key adds to_out(v(valley token)) to every token of the patch."""
    up = up_sample("original")
    block = up.attn
    short, x = grid(1, 2, 2, 16, seed=1), grid(1, 4, 4, 16, seed=2)
    queries = x.reshape(1, 2, 2, 2, 2, 16).permute(0, 1, 3, 2, 4, 5).reshape(4, 4, 16)
    context = short.reshape(4, 1, 16)
    got = block.attn(block.attn_norm(queries), context)
    v = context @ block.attn.to_kv.weight[16:].T  # the value half of to_kv
    torch.testing.assert_close(got, block.attn.to_out(v).expand(4, 4, 16), rtol=0, atol=1e-12)


def test_original_resampling_gives_no_gradient_to_the_up_attention_queries_and_keys():
    torch.manual_seed(0)
    model = tiny(attn_resampling_type="original").double()
    logits = model(torch.randint(0, V, (2, 8, 8)))
    torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.randint(0, V, (2 * 64,))).backward()
    up, down = model.stack.up.attn.attn, model.stack.down.attn.attn
    scale = down.to_q.weight.grad.abs().max()  # down attends to 4 tokens: its queries learn
    assert scale > 0
    # up attends to one key: softmax is 1 whatever q . k, so q and k get zero gradient up to rounding
    assert up.to_q.weight.grad.abs().max() < 1e-9 * scale
    assert up.to_kv.weight.grad[:16].abs().max() < 1e-9 * scale
    assert up.to_kv.weight.grad[16:].abs().max() > 1e-3 * scale  # the values do learn


# --- 1D resampling: raster runs ------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["linear", "naive"])
@pytest.mark.parametrize("attn_resampling", [False, True])
def test_1d_down_sampling_pools_runs_of_consecutive_raster_tokens(kind, attn_resampling):
    torch.manual_seed(0)
    down = DownSample(kind, Grouping("1d", 4), block_config(), attn_resampling).double()
    x = grid(1, 4, 8, 16)
    base = down(x)
    assert base.shape == (1, 4, 2, 16)  # each row of 8 holds 2 runs of 4
    for i, j in [(0, 0), (0, 3), (0, 4), (3, 5), (2, 7)]:
        assert changed_positions(down(bump(x, i, j)), base) == {(i, j // 4)}


def test_1d_runs_may_span_whole_rows():
    grouping = Grouping("1d", 4)
    assert grouping.short_grid(4, 2) == (2, 1) and grouping.short_grid(8, 4) == (8, 1)
    assert grouping.short_grid(3, 2) is None and grouping.short_grid(4, 6) is None
    down = DownSample("naive", grouping, block_config(), attn_resampling=False).double()
    x = grid(1, 4, 2, 16)
    want = x.reshape(1, 2, 4, 16).mean(dim=2)  # rows 0-1, then rows 2-3, in raster order
    torch.testing.assert_close(down(x)[:, :, 0], want)


def test_1d_linear_down_sampling_projects_the_concatenated_run():
    torch.manual_seed(0)
    down = DownSample("linear", Grouping("1d", 4), block_config(), attn_resampling=False).double()
    x = grid(1, 2, 8, 16)
    run = torch.cat([x[0, 1, 4], x[0, 1, 5], x[0, 1, 6], x[0, 1, 7]])  # row 1, second run
    torch.testing.assert_close(down(x)[0, 1, 1], down.proj(run))


@pytest.mark.parametrize("resampling", ["ours", "original"])
def test_1d_up_sampling_writes_back_to_the_run(resampling):
    torch.manual_seed(0)
    up = UpSample("linear", Grouping("1d", 4), block_config(), True, resampling).double()
    short, x = grid(1, 4, 2, 16, seed=1), grid(1, 4, 8, 16, seed=2)
    base = up(short, x)
    assert changed_positions(up(bump(short, 2, 1), x), base) == {(2, j) for j in range(4, 8)}


def test_1d_and_2d_group_different_tokens_with_the_same_parameters():
    torch.manual_seed(0)
    a = tiny(resampling_layout="2d")
    b = tiny(resampling_layout="1d")
    b.load_state_dict(a.state_dict())  # the same shapes: only which tokens are pooled differs
    x = torch.randint(0, V, (1, 8, 8))
    assert (a.eval()(x) - b.eval()(x)).abs().amax() > 1e-4
    assert a.level_grids(8, 8) == [(8, 8), (4, 4)] and b.level_grids(8, 8) == [(8, 8), (8, 2)]


def test_1d_levels_nest_and_take_any_k():
    model = tiny(depth=(1, (1, 1, 1), 1), shorten_factor=[4, 2], resampling_layout="1d")
    assert model.level_grids(4, 8) == [(4, 8), (4, 2), (4, 1)]
    assert model(torch.randint(0, V, (2, 4, 8))).shape == (2, 4, 8, V)
    assert tiny(shorten_factor=3, resampling_layout="1d")(torch.randint(0, V, (1, 2, 6))).shape == (1, 2, 6, V)
    with pytest.raises(HourglassError, match="perfect square"):
        tiny(shorten_factor=3)
    two_levels = tiny(depth=(1, (1, 1, 1), 1), resampling_layout="1d")
    assert two_levels.level_grids(4, 8) == [(4, 8), (4, 2), (2, 1)]  # level 1's runs span 2 rows of 2
    with pytest.raises(HourglassError, match=r"level 1: grid 3x2 .*runs of 4 consecutive tokens"):
        two_levels(torch.randint(0, V, (1, 3, 8)))


# --- rotary: 1D, normalized ----------------------------------------------------------------------

def test_normalized_frequencies_are_the_originals_pixel_ones():
    """The rotary-embedding library's "pixel" frequencies, pi * linspace(1, max_freq / 2, n), on
    coordinates linspace(-1, 1, side), max_freq = sqrt(sequence length) on a square grid."""
    h = w = 8
    e = 16
    n = e // 4
    max_freq = math.sqrt(h * w)
    cos, sin = axial_rotary(h, w, e, "normalized", dtype=torch.float64)
    angles = torch.empty(h * w, e // 2, dtype=torch.float64)
    for r in range(h):
        for c in range(w):
            for i in range(n):
                freq = math.pi * (1 + i * (max_freq / 2 - 1) / (n - 1))
                angles[r * w + c, i] = (-1 + 2 * r / (h - 1)) * freq
                angles[r * w + c, n + i] = (-1 + 2 * c / (w - 1)) * freq
    torch.testing.assert_close(cos, angles.cos(), rtol=0, atol=1e-12)
    torch.testing.assert_close(sin, angles.sin(), rtol=0, atol=1e-12)


def test_normalized_frequencies_follow_the_tokens_of_each_axis():
    """On a non-square grid each axis spans [-1, 1] with max_freq = its own number of tokens."""
    h, w, e = 4, 16, 8
    cos, sin = axial_rotary(h, w, e, "normalized", dtype=torch.float64)

    def axis(size):  # (size, 2) angles of one axis
        coords = torch.linspace(-1, 1, size, dtype=torch.float64)
        return coords[:, None] * torch.linspace(1.0, size / 2, 2, dtype=torch.float64) * math.pi

    rows, cols = axis(h), axis(w)
    want = torch.cat((rows[:, None].expand(h, w, 2), cols[None].expand(h, w, 2)), dim=-1).reshape(h * w, 4)
    torch.testing.assert_close(cos, want.cos(), rtol=0, atol=1e-12)
    torch.testing.assert_close(sin, want.sin(), rtol=0, atol=1e-12)


def test_1d_rotary_positions_are_raster_indices():
    h, w, e = 3, 4, 8
    cos, sin = sequence_rotary(h * w, e, "integer", dtype=torch.float64)
    n = e // 2
    want = torch.tensor([[p * 10_000.0 ** (-i / n) for i in range(n)] for p in range(h * w)], dtype=torch.float64)
    torch.testing.assert_close(cos, want.cos(), rtol=0, atol=1e-12)
    torch.testing.assert_close(sin, want.sin(), rtol=0, atol=1e-12)
    cos_n, _ = sequence_rotary(16, e, "normalized", dtype=torch.float64)
    freqs = torch.linspace(1.0, 16 / 2, n, dtype=torch.float64) * math.pi
    torch.testing.assert_close(cos_n, (torch.linspace(-1, 1, 16, dtype=torch.float64)[:, None] * freqs).cos())


def test_1d_rotary_needs_a_multiple_of_2_only():
    assert tiny(dim_head=6, rotary_layout="1d")(torch.randint(0, V, (1, 4, 4))).shape == (1, 4, 4, V)
    with pytest.raises(HourglassError, match="multiple of 4"):
        tiny(dim_head=6)
    with pytest.raises(HourglassError, match="multiple of 2"):
        tiny(dim_head=5, rotary_layout="1d")
    with pytest.raises(HourglassError, match="rotary_layout"):
        tiny(rotary_layout="3d")


@pytest.mark.parametrize("kw", [dict(rotary_coords="normalized"), dict(rotary_layout="1d"),
                                dict(rotary_layout="1d", rotary_coords="normalized")])
def test_rotary_switches_change_the_output_not_the_parameters(kw):
    torch.manual_seed(0)
    a = tiny(depth=(1, (1, 1, 1), 1)).eval()
    b = tiny(depth=(1, (1, 1, 1), 1), **kw).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, V, (1, 8, 8))
    assert (a(x) - b(x)).abs().amax() > 1e-4


# --- positions reach the attention ---------------------------------------------------------------
#
# A grid of one token everywhere cannot show rotary positions: rotary turns only queries and keys,
# so with equal values every attention output is the same average, whatever the weights (checked
# below). One marker token breaks the symmetry: without positions every other position sees the
# same multiset of tokens and gets the same logits; with them each sees the marker at its own offset.

POSITIONS = {
    "rotary 2d integer": dict(),
    "rotary 2d normalized": dict(rotary_coords="normalized"),
    "rotary 1d integer": dict(rotary_layout="1d"),
    "rotary 1d normalized": dict(rotary_layout="1d", rotary_coords="normalized"),
    "learned": dict(rotary_pos_emb=False, max_grid=(4, 4)),
}
STACKS = {"vanilla": dict(depth=2), "hourglass": dict(depth=(1, 1, 1), updown_sample_type="naive")}
MARKER = 6  # (1, 2) on the 4x4 grid
OTHERS = [i for i in range(16) if i != MARKER]
OUTSIDE_ITS_PATCH = [i for i in range(16) if i not in (2, 3, 6, 7)]  # 2x2 patch of the marker


def grid_logits(marker=True, **kw):
    """(16, V) logits of a 4x4 grid of one token, with a different token at MARKER if `marker`."""
    torch.manual_seed(0)
    # dim_head 12: with 8 or 16 every "normalized" frequency on 4 (or 16) tokens is a whole multiple
    # of pi, and the two ends of an axis, 2 apart on [-1, 1], get the same rotation (rotary.py)
    model = tiny(dim_head=12, **kw).double().eval()
    tokens = torch.full((1, 16), 3)
    if marker:
        tokens[0, MARKER] = 5
    return model(tokens.reshape(1, 4, 4))[0].reshape(16, V)


def distinct_rows(logits, tol=1e-9):
    return sum(1 for i in range(len(logits)) if all((logits[i] - logits[j]).abs().max() > tol for j in range(i)))


def no_rotation(h, w, dim_head, *args, **kwargs):  # stands in for grid_rotary: every angle 0
    return torch.ones(h * w, dim_head // 2, dtype=torch.float64), torch.zeros(h * w, dim_head // 2, dtype=torch.float64)


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("positions", POSITIONS)
def test_every_position_gets_its_own_logits(stack, positions):
    logits = grid_logits(**STACKS[stack], **POSITIONS[positions])
    assert distinct_rows(logits[OTHERS]) == 15


@pytest.mark.parametrize("stack", STACKS)
def test_without_rotary_reaching_the_attention_the_positions_are_lost(stack, monkeypatch):
    """The control of the test above: it fails when the rotation stops reaching the attention."""
    monkeypatch.setattr(model_module, "grid_rotary", no_rotation)
    logits = grid_logits(**STACKS[stack])
    # (the hourglass knows patches: the marker's patch-mates pool and attend with it)
    assert distinct_rows(logits[OTHERS if stack == "vanilla" else OUTSIDE_ITS_PATCH]) == 1


def test_linear_resampling_alone_tells_apart_only_the_places_inside_a_patch(monkeypatch):
    """Linear up-sampling gives each place in a 2x2 patch its own vector even without positions, so
    on the default hourglass rotary must tell apart the same place in different patches."""
    same_place = [0, 2, 8, 10]  # (0, 0), (0, 2), (2, 0), (2, 2): top-left of each patch
    assert distinct_rows(grid_logits(marker=False, depth=(1, 1, 1))[same_place]) == 4
    monkeypatch.setattr(model_module, "grid_rotary", no_rotation)
    blind = grid_logits(marker=False, depth=(1, 1, 1))
    assert distinct_rows(blind[same_place]) == 1 and distinct_rows(blind) == 4


@pytest.mark.parametrize("positions", [p for p in POSITIONS if p != "learned"])
def test_one_token_everywhere_hides_rotary_positions_from_a_plain_stack(positions):
    assert distinct_rows(grid_logits(marker=False, depth=2, **POSITIONS[positions])) == 1


def test_one_token_everywhere_shows_learned_positions():
    assert distinct_rows(grid_logits(marker=False, depth=2, **POSITIONS["learned"])) == 16


# --- num_outputs ---------------------------------------------------------------------------------

def test_num_outputs_gives_fewer_logits_than_input_tokens():
    torch.manual_seed(0)
    model = tiny(num_tokens=V + 1, num_outputs=V)
    tokens = torch.full((2, 4, 4), V)  # the extra (mask) token is a valid input
    assert model(tokens).shape == (2, 4, 4, V)
    assert model.token_emb.num_embeddings == V + 1 and model.to_logits.out_features == V
    assert model.num_tokens == V + 1 and model.num_outputs == V
    assert count(tiny(num_tokens=V + 1)) - count(model) == 32 + 1  # one output row (weights + bias) fewer
    assert tiny().num_outputs == V


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_bad_num_outputs_is_a_clear_error(bad):
    with pytest.raises(HourglassError, match="num_outputs"):
        tiny(num_outputs=bad)


@pytest.mark.parametrize("kw, message", [
    (dict(attn_resampling_type="orig"), "attn_resampling_type='orig'"),
    (dict(resampling_layout="3d"), "resampling_layout='3d'"),
    (dict(rotary_coords="polar"), "rotary_coords"),
])
def test_bad_switch_values_are_clear_errors(kw, message):
    with pytest.raises(HourglassError, match=message):
        tiny(**kw)
