"""Hourglass building blocks: 2D patch resampling, per-head 2D rotary, attention vs a reference."""
import math

import pytest
import torch
from einops import rearrange

from hourglass_transformer.model import Attention, BlockConfig, DownSample, Grouping, UpSample
from hourglass_transformer.rotary import apply_rotary, axial_rotary


def config(dim=16, heads=2, dim_head=8, rotary_coords="integer"):
    return BlockConfig(dim, heads, dim_head, ff_mult=2, attn_dropout=0.0, ff_dropout=0.0, rotary_coords=rotary_coords)


def patches(s):
    return Grouping("2d", s * s)


def grid(b, h, w, d, seed=0):
    return torch.randn(b, h, w, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def changed_positions(a, b):
    """The (i, j) grid positions where two (1, h, w, d) tensors differ."""
    moved = (a - b).abs().amax(dim=-1)[0] > 1e-12
    return {tuple(ij) for ij in moved.nonzero().tolist()}


def patch_of(i, j, s):
    return {(i // s * s + a, j // s * s + b) for a in range(s) for b in range(s)}


# --- 2D patch resampling -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "naive"])
@pytest.mark.parametrize("attn_resampling", [False, True])
@pytest.mark.parametrize("s", [2, 3])
def test_down_sampling_pools_exactly_the_2d_patch_of_a_token(kind, attn_resampling, s):
    torch.manual_seed(0)
    down = DownSample(kind, patches(s), config(), attn_resampling).double()
    x = grid(1, 2 * s, 3 * s, 16)
    base = down(x)
    assert base.shape == (1, 2, 3, 16)
    for i, j in [(0, 0), (s, 2 * s - 1), (2 * s - 1, 1)]:  # a 1D run of s*s tokens would not match
        y = x.clone()
        y[0, i, j] += torch.linspace(-1, 1, 16, dtype=torch.float64)
        assert changed_positions(down(y), base) == {(i // s, j // s)}


def test_naive_down_sampling_is_the_patch_mean():
    down = DownSample("naive", patches(2), config(), attn_resampling=False)
    x = grid(2, 4, 6, 16)
    want = x.reshape(2, 2, 2, 3, 2, 16).mean(dim=(2, 4))  # (b, h, p1, w, p2, d) -> (b, h, w, d)
    torch.testing.assert_close(down(x.float()), want.float())


def test_linear_down_sampling_projects_the_concatenated_patch():
    torch.manual_seed(0)
    down = DownSample("linear", patches(2), config(), attn_resampling=False).double()
    x = grid(1, 4, 4, 16)
    patch = torch.cat([x[0, 2, 0], x[0, 2, 1], x[0, 3, 0], x[0, 3, 1]])  # row-major inside the patch
    torch.testing.assert_close(down(x)[0, 1, 0], down.proj(patch))


@pytest.mark.parametrize("kind", ["linear", "naive"])
def test_up_sampling_adds_the_valley_to_the_pre_valley_tokens(kind):
    torch.manual_seed(0)
    up = UpSample(kind, patches(2), config(), attn_resampling=False).double()
    short, x = grid(1, 2, 3, 16, seed=1), grid(1, 4, 6, 16, seed=2)
    if kind == "linear":
        torch.nn.init.zeros_(up.proj.bias)
    out = up(short, x)
    assert out.shape == x.shape
    torch.testing.assert_close(up(torch.zeros_like(short), x), x)  # a zero valley leaves the residual
    y = short.clone()
    y[0, 1, 2] += torch.linspace(-1, 1, 16, dtype=torch.float64)
    assert changed_positions(up(y, x), out) == patch_of(2, 4, 2)


@pytest.mark.parametrize("kind", ["linear", "naive"])
@pytest.mark.parametrize("s", [2, 3])
def test_up_attention_resampling_attends_within_the_2d_patch(kind, s):
    torch.manual_seed(0)
    up = UpSample(kind, patches(s), config(), attn_resampling=True).double()
    short, x = grid(1, 2, 2, 16, seed=1), grid(1, 2 * s, 2 * s, 16, seed=2)
    base = up(short, x)
    for i, j in [(0, 0), (s, 2 * s - 1), (2 * s - 1, 1)]:
        y = x.clone()
        # a pre-valley token (not a constant shift, which LayerNorm would remove): its patch attends to it
        y[0, i, j] += torch.linspace(-1, 1, 16, dtype=torch.float64)
        assert changed_positions(up(short, y), base) == patch_of(i, j, s)


# --- 2D rotary embeddings ------------------------------------------------------------------------


def rotate_reference(x, angles):
    """Rotary as complex multiplication: pair (x[j], x[j + e/2]) is the complex x[j] + i x[j + e/2]."""
    half = x.shape[-1] // 2
    z = torch.complex(x[..., :half], x[..., half:]) * torch.polar(torch.ones_like(angles), angles)
    return torch.cat((z.real, z.imag), dim=-1)


def angles_reference(h, w, dim_head, base=10_000.0):
    """Integer-coordinate angles written out: first half of the pairs by row, second by column."""
    n = dim_head // 4
    angles = torch.empty(h * w, dim_head // 2, dtype=torch.float64)
    for r in range(h):
        for c in range(w):
            for i in range(n):
                freq = base ** (-i / n)
                angles[r * w + c, i] = r * freq
                angles[r * w + c, n + i] = c * freq
    return angles


def test_rotary_matches_the_written_out_2d_rotation():
    h, w, e = 3, 5, 8
    cos, sin = axial_rotary(h, w, e, "integer", dtype=torch.float64)
    angles = angles_reference(h, w, e)
    torch.testing.assert_close(cos, angles.cos(), rtol=0, atol=1e-12)
    x = torch.randn(2, 4, h * w, e, dtype=torch.float64)
    torch.testing.assert_close(apply_rotary(x, cos, sin), rotate_reference(x, angles), rtol=0, atol=1e-12)


def test_every_head_gets_the_2d_rotary_positions():
    torch.manual_seed(0)
    heads, h, w = 4, 3, 4
    attn = Attention(config(dim=16, heads=heads, dim_head=8)).double()
    x = grid(1, 1, 1, 16).reshape(1, 1, 16).expand(1, h * w, 16)  # one vector at every position
    rotary = axial_rotary(h, w, 8, "integer", dtype=torch.float64)
    q0, k0, _ = attn.qkv(x)
    q, k, _ = attn.qkv(x, rotary=rotary)
    angles = angles_reference(h, w, 8)
    for head in range(heads):
        torch.testing.assert_close(q[0, head], rotate_reference(q0[0, head], angles), rtol=0, atol=1e-12)
        torch.testing.assert_close(k[0, head], rotate_reference(k0[0, head], angles), rtol=0, atol=1e-12)
        # identical content everywhere, so any variation of the scores comes from positions
        scores = q[0, head] @ k[0, head].T
        assert (scores[0] - scores[0, 0]).abs().amax() > 1e-6, f"head {head} sees no positions"


@pytest.mark.parametrize("coords", ["integer", "normalized"])
def test_rotary_score_depends_only_on_the_2d_offset(coords):
    h, w, e = 6, 7, 16
    cos, sin = axial_rotary(h, w, e, coords, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(e, dtype=torch.float64, generator=gen).expand(h * w, e)
    k = torch.randn(e, dtype=torch.float64, generator=gen).expand(h * w, e)
    scores = apply_rotary(q, cos, sin) @ apply_rotary(k, cos, sin).T  # (h*w, h*w)

    def score(p, r):
        return scores[p[0] * w + p[1], r[0] * w + r[1]]

    for p, r, shift in [((0, 0), (2, 3), (3, 2)), ((4, 1), (1, 5), (1, 1)), ((2, 2), (2, 2), (3, -2))]:
        shifted = score((p[0] + shift[0], p[1] + shift[1]), (r[0] + shift[0], r[1] + shift[1]))
        torch.testing.assert_close(score(p, r), shifted, rtol=0, atol=1e-10)
    # ...and it does depend on it, along rows and along columns separately
    assert (score((0, 0), (1, 0)) - score((0, 0), (0, 0))).abs() > 1e-6
    assert (score((0, 0), (0, 1)) - score((0, 0), (0, 0))).abs() > 1e-6
    assert (score((0, 0), (1, 0)) - score((0, 0), (0, 1))).abs() > 1e-6


def test_integer_coordinates_give_the_same_angles_on_any_grid_size():
    small, _ = axial_rotary(4, 4, 8, "integer", dtype=torch.float64)
    large, _ = axial_rotary(8, 8, 8, "integer", dtype=torch.float64)
    torch.testing.assert_close(rearrange(large, "(h w) e -> h w e", h=8)[:4, :4].reshape(16, 4), small)


# --- attention against a naive float64 reference ----------------------------------------------


def naive_attention(attn, x, context, angles=None):
    """softmax(Q K^T / sqrt(d)) V per head, with explicit loops over batch and heads."""
    heads, e = attn.heads, attn.to_q.out_features // attn.heads
    wq, wk, wv = attn.to_q.weight, *attn.to_kv.weight.chunk(2, dim=0)
    out = torch.empty(x.shape[0], x.shape[1], heads * e, dtype=x.dtype)
    for b in range(x.shape[0]):
        for hd in range(heads):
            rows = slice(hd * e, (hd + 1) * e)
            q, k, v = x[b] @ wq[rows].T, context[b] @ wk[rows].T, context[b] @ wv[rows].T
            if angles is not None:
                q, k = rotate_reference(q, angles), rotate_reference(k, angles)
            weights = torch.softmax(q @ k.T / math.sqrt(e), dim=-1)  # (n, m): fine at test sizes
            out[b, :, rows] = weights @ v
    return out @ attn.to_out.weight.T + attn.to_out.bias


@torch.no_grad()
def test_float64_self_attention_with_rotary_matches_naive_reference():
    torch.manual_seed(0)
    attn = Attention(config(dim=24, heads=3, dim_head=8)).double().eval()
    h, w = 3, 4
    x = torch.randn(2, h * w, 24, dtype=torch.float64)
    rotary = axial_rotary(h, w, 8, "integer", dtype=torch.float64)
    got = attn(x, rotary=rotary)
    want = naive_attention(attn, x, x, angles_reference(h, w, 8))
    assert (got - want).abs().max() < 1e-10


@torch.no_grad()
def test_float64_cross_attention_matches_naive_reference():
    torch.manual_seed(0)
    attn = Attention(config(dim=24, heads=3, dim_head=8)).double().eval()
    x, context = torch.randn(5, 1, 24, dtype=torch.float64), torch.randn(5, 4, 24, dtype=torch.float64)
    assert (attn(x, context) - naive_attention(attn, x, context)).abs().max() < 1e-10
