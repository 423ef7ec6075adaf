"""The 2D hourglass transformer: a non-causal transformer over a grid of tokens that works on a
shortened grid in the middle (Nawrot et al. 2021, "Hierarchical Transformers Are More Efficient
Language Models", adapted to 2D latent grids as in SUNDAE-VQGAN).

    tokens (B, h, w) -> embed -> stack -> norm -> logits (B, h, w, num_tokens)

The stack is either a plain transformer (`depth` an int: the vanilla baseline) or an hourglass
level (`depth` a triple (pre, valley, post)) on an h x w grid, with s = sqrt(shorten_factor):

    x     = pre blocks(x)          # (B, h, w, d)
    short = down(x)                # (B, h/s, w/s, d): one vector per s x s patch
    short = valley(short)          # a plain stack, or the next level
    x     = x + up(short)          # the residual around the valley, as in the paper
    x     = post blocks(x)         # (B, h, w, d)

With attention resampling the pooled vector of a patch then attends to that patch's tokens, and
on the way up each token attends to the pre-valley tokens of its own patch.
Activations keep their (B, h, w, d) grid shape between levels, so shortening always pools 2D
s x s patches and never runs of the flattened sequence. The paper shifts tokens right before
shortening to stay causal; this model is non-causal (every token sees every token), so there is
no shift and no mask. Attention goes through F.scaled_dot_product_attention, which on its fused
paths never builds the (h*w)^2 score matrix, so memory grows linearly with the number of tokens.
Positions: 2D axial rotary embeddings (see rotary.py) or learned absolute row + column ones.
"""
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from torch import nn

from .errors import HourglassError
from .rotary import COORDS, apply_rotary, axial_rotary

UPDOWN_SAMPLE_TYPES = ("linear", "naive")


@dataclass(frozen=True)
class BlockConfig:
    dim: int
    heads: int
    dim_head: int
    ff_mult: int
    attn_dropout: float
    ff_dropout: float
    rotary_coords: str | None  # None: no rotary embeddings


class Attention(nn.Module):
    """Multi-head attention; queries come from x, keys and values from `context` (x by default)."""

    def __init__(self, cfg):
        super().__init__()
        inner = cfg.heads * cfg.dim_head
        self.heads = cfg.heads
        self.dropout = cfg.attn_dropout
        self.to_q = nn.Linear(cfg.dim, inner, bias=False)
        self.to_kv = nn.Linear(cfg.dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, cfg.dim)

    def qkv(self, x, context=None, rotary=None):
        """Queries, keys, values per head, (B, heads, L, dim_head).

        `rotary` = (cos, sin) from axial_rotary rotates q and k; only for self-attention, where
        queries and keys sit on the same grid.
        """
        context = x if context is None else context
        q = rearrange(self.to_q(x), "b n (h e) -> b h n e", h=self.heads)
        k, v = rearrange(self.to_kv(context), "b n (two h e) -> two b h n e", two=2, h=self.heads)
        if rotary is not None:  # after the head split, so every head gets positions
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        return q, k, v

    def forward(self, x, context=None, rotary=None):  # (B, n, d), (B, m, d) -> (B, n, d)
        q, k, v = self.qkv(x, context, rotary)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(rearrange(out, "b h n e -> b n (h e)"))


class FeedForward(nn.Sequential):
    def __init__(self, cfg):
        hidden = cfg.dim * cfg.ff_mult
        super().__init__(
            nn.Linear(cfg.dim, hidden), nn.GELU(), nn.Dropout(cfg.ff_dropout), nn.Linear(hidden, cfg.dim)
        )


class Block(nn.Module):
    """Pre-norm transformer block: full self-attention, then a feed-forward."""

    def __init__(self, cfg):
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.dim)
        self.attn = Attention(cfg)
        self.ff_norm = nn.LayerNorm(cfg.dim)
        self.ff = FeedForward(cfg)

    def forward(self, x, rotary=None):  # (B, L, d) -> (B, L, d)
        x = x + self.attn(self.attn_norm(x), rotary=rotary)
        return x + self.ff(self.ff_norm(x))


class Transformer(nn.Module):
    """`depth` blocks of full self-attention over one grid."""

    def __init__(self, depth, cfg):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(depth))
        self.dim_head = cfg.dim_head
        self.rotary_coords = cfg.rotary_coords

    def forward(self, x):  # (B, h, w, d) -> (B, h, w, d)
        if len(self.blocks) == 0:
            return x
        _, h, w, _ = x.shape
        rotary = None
        if self.rotary_coords is not None:
            rotary = axial_rotary(h, w, self.dim_head, self.rotary_coords, x.device, x.dtype)
        x = rearrange(x, "b h w d -> b (h w) d")
        for block in self.blocks:
            x = block(x, rotary)
        return rearrange(x, "b (h w) d -> b h w d", h=h)


def to_patches(x, s):  # (B, h, w, d) -> (B * h/s * w/s, s*s, d): one row per s x s patch
    return rearrange(x, "b (h p1) (w p2) d -> (b h w) (p1 p2) d", p1=s, p2=s)


class PatchAttention(nn.Module):
    """Residual attention in which queries see only the tokens of their own patch."""

    def __init__(self, cfg):
        super().__init__()
        self.query_norm = nn.LayerNorm(cfg.dim)
        self.patch_norm = nn.LayerNorm(cfg.dim)
        self.attn = Attention(cfg)

    def forward(self, queries, patches):  # (N, m, d), (N, s*s, d) -> (N, m, d)
        return queries + self.attn(self.query_norm(queries), self.patch_norm(patches))


class DownSample(nn.Module):
    """(B, h, w, d) -> (B, h/s, w/s, d): one vector per s x s patch.

    "linear" concatenates the patch and projects it, "naive" averages it. With attention
    resampling the pooled vector then attends to the tokens of its patch.
    """

    def __init__(self, kind, s, cfg, attn_resampling):
        super().__init__()
        self.s = s
        self.proj = nn.Linear(s * s * cfg.dim, cfg.dim) if kind == "linear" else None
        self.attn = PatchAttention(cfg) if attn_resampling else None

    def forward(self, x):
        s = self.s
        if self.proj is None:
            short = reduce(x, "b (h p1) (w p2) d -> b h w d", "mean", p1=s, p2=s)
        else:
            short = self.proj(rearrange(x, "b (h p1) (w p2) d -> b h w (p1 p2 d)", p1=s, p2=s))
        if self.attn is not None:
            b, h, w, _ = short.shape
            queries = rearrange(short, "b h w d -> (b h w) 1 d")
            short = self.attn(queries, to_patches(x, s))
            short = rearrange(short, "(b h w) 1 d -> b h w d", b=b, h=h, w=w)
        return short


class UpSample(nn.Module):
    """(B, h/s, w/s, d) valley output + (B, h, w, d) pre-valley tokens -> (B, h, w, d).

    The transpose of DownSample ("linear": project to s*s vectors, "naive": repeat), added to the
    pre-valley tokens. With attention resampling each token then attends to the pre-valley tokens
    of its own patch.
    """

    def __init__(self, kind, s, cfg, attn_resampling):
        super().__init__()
        self.s = s
        self.proj = nn.Linear(cfg.dim, s * s * cfg.dim) if kind == "linear" else None
        self.attn = PatchAttention(cfg) if attn_resampling else None

    def forward(self, short, x):
        s = self.s
        if self.proj is None:
            up = repeat(short, "b h w d -> b (h p1) (w p2) d", p1=s, p2=s)
        else:
            up = rearrange(self.proj(short), "b h w (p1 p2 d) -> b (h p1) (w p2) d", p1=s, p2=s)
        x_up = x + up
        if self.attn is not None:
            b, h, w, _ = short.shape
            x_up = self.attn(to_patches(x_up, s), to_patches(x, s))
            x_up = rearrange(x_up, "(b h w) (p1 p2) d -> b (h p1) (w p2) d", b=b, h=h, w=w, p1=s, p2=s)
        return x_up


class HourglassLevel(nn.Module):
    """pre blocks -> down -> valley -> up (+ residual) -> post blocks, on one grid."""

    def __init__(self, depth, shorten_factors, cfg, updown_sample_type, attn_resampling, level):
        super().__init__()
        pre, valley, post = depth
        self.level = level
        self.shorten_factor = shorten_factors[0]
        self.s = math.isqrt(self.shorten_factor)  # patch side
        self.pre = Transformer(pre, cfg)
        self.down = DownSample(updown_sample_type, self.s, cfg, attn_resampling)
        self.valley = build_stack(valley, shorten_factors[1:], cfg, updown_sample_type, attn_resampling, level + 1)
        self.up = UpSample(updown_sample_type, self.s, cfg, attn_resampling)
        self.post = Transformer(post, cfg)

    def forward(self, x):  # (B, h, w, d) -> (B, h, w, d)
        x = self.pre(x)
        x = self.up(self.valley(self.down(x)), x)
        return self.post(x)


def build_stack(depth, shorten_factors, cfg, updown_sample_type, attn_resampling, level=0):
    if isinstance(depth, int):
        return Transformer(depth, cfg)
    return HourglassLevel(depth, shorten_factors, cfg, updown_sample_type, attn_resampling, level)


class AxialPositionEmbedding(nn.Module):
    """Learned absolute positions: a row vector plus a column vector, for grids up to max_grid."""

    def __init__(self, max_grid, dim):
        super().__init__()
        self.max_grid = max_grid
        self.rows = nn.Embedding(max_grid[0], dim)
        self.cols = nn.Embedding(max_grid[1], dim)

    def forward(self, h, w):  # -> (h, w, d)
        return self.rows.weight[:h, None, :] + self.cols.weight[None, :w, :]


def is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def parse_depth(depth, where="depth"):
    """An int, or a nested (pre, valley, post) triple of ints -> the same as nested tuples."""
    if is_int(depth) and depth >= 0:
        return depth
    if isinstance(depth, Sequence) and not isinstance(depth, str) and len(depth) == 3:
        pre, valley, post = depth
        if is_int(pre) and is_int(post) and pre >= 0 and post >= 0:
            return (pre, parse_depth(valley, where), post)
    raise HourglassError(
        f"{where}={depth!r}: expected an int >= 0 or a triple (pre, valley, post) whose valley is an int or a triple"
    )


def count_levels(depth):
    return 0 if isinstance(depth, int) else 1 + count_levels(depth[1])


def parse_shorten_factors(shorten_factor, levels):
    """One k per level from an int or a list; each k a perfect square (sqrt(k) per axis)."""
    if is_int(shorten_factor):
        factors = [shorten_factor] * levels
    elif isinstance(shorten_factor, Sequence) and not isinstance(shorten_factor, str):
        factors = list(shorten_factor)
        if len(factors) != levels:
            raise HourglassError(
                f"shorten_factor={factors}: expected one factor per hourglass level ({levels} levels in depth)"
            )
    else:
        raise HourglassError(f"shorten_factor={shorten_factor!r}: expected an int or a list of ints")
    for k in factors:
        if not (is_int(k) and k >= 1 and math.isqrt(k) ** 2 == k):
            raise HourglassError(f"shorten_factor={k!r}: expected a perfect square (4, 9, 16, ...)")
    return factors


def init_weights(module):
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class HourglassTransformerLM(nn.Module):
    """Non-causal hourglass transformer over 2D token grids: tokens (B, h, w) -> logits (B, h, w, V).

    `depth` is an int (a plain transformer) or a nested triple (pre, valley, post); `shorten_factor`
    is one k or a list with one k per level, each a perfect square (sqrt(k) x sqrt(k) patches).
    With `rotary_pos_emb` any grid the levels can divide works; otherwise learned absolute
    embeddings cover grids up to `max_grid` = (h, w). `num_classes` turns on class conditioning.
    """

    def __init__(
        self,
        num_tokens,
        dim,
        depth,
        shorten_factor=4,
        heads=8,
        dim_head=64,
        ff_mult=4,
        attn_dropout=0.0,
        ff_dropout=0.0,
        updown_sample_type="linear",
        attn_resampling=True,
        rotary_pos_emb=True,
        rotary_coords="integer",
        num_classes=None,
        max_grid=None,
    ):
        super().__init__()
        for name, value in (("num_tokens", num_tokens), ("dim", dim), ("heads", heads),
                            ("dim_head", dim_head), ("ff_mult", ff_mult)):
            if not (is_int(value) and value >= 1):
                raise HourglassError(f"{name}={value!r}: expected a positive int")
        if updown_sample_type not in UPDOWN_SAMPLE_TYPES:
            raise HourglassError(f"updown_sample_type={updown_sample_type!r}: expected one of {UPDOWN_SAMPLE_TYPES}")
        if rotary_pos_emb and rotary_coords not in COORDS:
            raise HourglassError(f"rotary_coords={rotary_coords!r}: expected one of {COORDS}")
        if rotary_pos_emb and dim_head % 4:
            raise HourglassError(f"dim_head={dim_head}: 2D rotary embeddings need a multiple of 4")
        if not rotary_pos_emb and not (
            isinstance(max_grid, Sequence) and len(max_grid) == 2 and all(is_int(n) and n >= 1 for n in max_grid)
        ):
            raise HourglassError(f"max_grid={max_grid!r}: learned positions (rotary_pos_emb=False) need (h, w)")
        if num_classes is not None and not (is_int(num_classes) and num_classes >= 1):
            raise HourglassError(f"num_classes={num_classes!r}: expected a positive int or None")
        depth = parse_depth(depth)
        factors = parse_shorten_factors(shorten_factor, count_levels(depth))

        self.num_tokens = num_tokens
        self.num_classes = num_classes
        self.depth = depth
        self.shorten_factors = factors
        self.grid_multiple = math.prod(math.isqrt(k) for k in factors)  # grid sides must divide by it
        cfg = BlockConfig(dim, heads, dim_head, ff_mult, attn_dropout, ff_dropout,
                          rotary_coords if rotary_pos_emb else None)
        self.token_emb = nn.Embedding(num_tokens, dim)
        self.class_emb = nn.Embedding(num_classes, dim) if num_classes is not None else None
        self.pos_emb = None if rotary_pos_emb else AxialPositionEmbedding(tuple(max_grid), dim)
        self.stack = build_stack(depth, factors, cfg, updown_sample_type, attn_resampling)
        self.norm = nn.LayerNorm(dim)
        self.to_logits = nn.Linear(dim, num_tokens)
        self.apply(init_weights)

    def level_grids(self, h, w):
        """The grid of each level, outermost first; a grid a level cannot pool evenly is an error."""
        grids, stack = [(h, w)], self.stack
        while isinstance(stack, HourglassLevel):
            s = stack.s
            if h % s or w % s:
                raise HourglassError(
                    f"hourglass level {stack.level}: grid {h}x{w} cannot be down-sampled by "
                    f"shorten_factor {stack.shorten_factor} ({s}x{s} patches); both sides must divide by {s}"
                )
            h, w = h // s, w // s
            grids.append((h, w))
            stack = stack.valley
        return grids

    def check_inputs(self, tokens, cond):
        if not (isinstance(tokens, torch.Tensor) and tokens.ndim == 3 and tokens.dtype in (torch.long, torch.int)):
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise HourglassError(f"tokens: expected a LongTensor (B, h, w), got {shape}")
        # Value checks read the tensor back: free on the CPU, a host sync per call on a GPU (where
        # the embedding lookup asserts on a bad index anyway), so they run on the CPU only.
        on_cpu = tokens.device.type == "cpu"
        if on_cpu and bool(((tokens < 0) | (tokens >= self.num_tokens)).any()):
            raise HourglassError(f"tokens: values must lie in [0, {self.num_tokens})")
        b, h, w = tokens.shape
        self.level_grids(h, w)
        if self.pos_emb is not None and (h > self.pos_emb.max_grid[0] or w > self.pos_emb.max_grid[1]):
            raise HourglassError(f"tokens: grid {h}x{w} is larger than max_grid {self.pos_emb.max_grid}")
        if self.num_classes is None:
            if cond is not None:
                raise HourglassError("cond: given, but the model has no num_classes")
            return
        if not (isinstance(cond, torch.Tensor) and cond.shape == (b,) and cond.dtype in (torch.long, torch.int)):
            shape = tuple(cond.shape) if isinstance(cond, torch.Tensor) else cond
            raise HourglassError(f"cond: expected a LongTensor of class labels with shape ({b},), got {shape}")
        if on_cpu and bool(((cond < 0) | (cond >= self.num_classes)).any()):
            raise HourglassError(f"cond: class labels must lie in [0, {self.num_classes})")

    def forward(self, tokens, cond=None):
        """tokens (B, h, w) long, cond (B,) long class labels -> logits (B, h, w, num_tokens)."""
        self.check_inputs(tokens, cond)
        _, h, w = tokens.shape
        x = self.token_emb(tokens)  # (B, h, w, d)
        if self.pos_emb is not None:
            x = x + self.pos_emb(h, w)
        if self.class_emb is not None:
            x = x + self.class_emb(cond)[:, None, None, :]
        x = self.stack(x)
        return self.to_logits(self.norm(x))
