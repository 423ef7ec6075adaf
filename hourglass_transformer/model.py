"""The 2D hourglass transformer: a non-causal transformer over a grid of tokens that works on a
shortened grid in the middle (Nawrot et al. 2021, "Hierarchical Transformers Are More Efficient
Language Models", adapted to 2D latent grids as in SUNDAE-VQGAN).

    tokens (B, h, w) -> embed -> stack -> norm -> logits (B, h, w, num_outputs)

The stack is either a plain transformer (`depth` an int: the vanilla baseline) or an hourglass
level (`depth` a triple (pre, valley, post)) on an h x w grid, shortened by k per level:

    x     = pre blocks(x)          # (B, h, w, d)
    short = down(x)                # (B, h', w', d): one vector per group of k tokens
    short = valley(short)          # a plain stack, or the next level
    x     = x + up(short)          # the residual around the valley, as in the paper
    x     = post blocks(x)         # (B, h, w, d)

Which k tokens form a group (`resampling_layout`):
- "2d" (default): the s x s patch, s = sqrt(k); the shortened grid is (h/s, w/s). Activations
  keep their (B, h, w, d) grid shape between levels, so a group is always a 2D patch.
- "1d": k consecutive tokens of the raster-flattened grid (the paper's 1D shortening, for the
  ablation); a run stays inside a row when k divides w, so the shortened grid is (h, w/k) (or
  (h*w/k, 1) when a run spans k/w whole rows).

Attention resampling (`attn_resampling`, `attn_resampling_type`):
- "ours" (default): down, the pooled vector of a group attends to the group's tokens (its patch);
  up, after adding the up-sampled valley output, each token attends to the pre-valley tokens of
  its own group. Both are residual attention blocks with normalised queries and keys/values
  (query_norm, patch_norm) and no feed-forward.
- "original" (SUNDAE-VQGAN's code and the hourglass reference, lucidrains'
  hourglass-transformer-pytorch): each resampling block is one full pre-norm transformer layer,
  x + attn(norm(x), context), then x + ff(norm(x)); the context (keys/values) is not normalised.
  Down, the pooled vector attends to its group's tokens; up, after adding the up-sampled valley
  output, each token attends to its group's valley output: a single key, so the attention
  weights are always 1 and the block adds to_out(v(valley vector)) before its feed-forward (its
  query and key projections get no gradient; kept so parameter counts match the original).
  One difference stays: the original code groups these attentions as runs of k tokens of the
  flattened sequence ("b (n s) d -> (b n) s d") even when it pools 2D patches, so there a pooled
  vector attends to k raster-consecutive tokens, not to its patch; here the attention always
  uses the pooling's groups.

The paper shifts tokens right before shortening to stay causal; this model is non-causal (every
token sees every token), so there is no shift and no mask. Attention goes through
F.scaled_dot_product_attention, which on its fused paths never builds the (h*w)^2 score matrix,
so memory grows linearly with the number of tokens.
Positions: rotary embeddings (rotary.py; 2D axial or 1D over the raster order, integer or
normalized coordinates) or learned absolute row + column ones.
"""
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from .errors import HourglassError
from .rotary import LAYOUTS, apply_rotary, check as check_rotary, grid_rotary

UPDOWN_SAMPLE_TYPES = ("linear", "naive")
RESAMPLING_TYPES = ("ours", "original")
RESAMPLING_LAYOUTS = LAYOUTS  # ("2d", "1d")


@dataclass(frozen=True)
class BlockConfig:
    dim: int
    heads: int
    dim_head: int
    ff_mult: int
    attn_dropout: float
    ff_dropout: float
    rotary_coords: str | None  # None: no rotary embeddings
    rotary_layout: str = "2d"  # "2d": axial over rows and columns, "1d": over the raster order


@dataclass(frozen=True)
class ResamplingConfig:
    updown_sample_type: str = "linear"  # "linear": project the concatenated group, "naive": mean
    attn_resampling: bool = True
    attn_resampling_type: str = "ours"  # see the module docstring
    layout: str = "2d"  # which tokens form a group: a 2D patch or a raster run


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

        `rotary` = (cos, sin) from rotary.py rotates q and k; only for self-attention, where
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
    """Pre-norm transformer layer: attention (to x itself, or to a raw `context`), then a feed-forward."""

    def __init__(self, cfg):
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.dim)
        self.attn = Attention(cfg)
        self.ff_norm = nn.LayerNorm(cfg.dim)
        self.ff = FeedForward(cfg)

    def forward(self, x, rotary=None, context=None):  # (B, L, d), (B, m, d) -> (B, L, d)
        x = x + self.attn(self.attn_norm(x), context, rotary)
        return x + self.ff(self.ff_norm(x))


class Transformer(nn.Module):
    """`depth` blocks of full self-attention over one grid."""

    def __init__(self, depth, cfg):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(depth))
        self.dim_head = cfg.dim_head
        self.rotary_coords = cfg.rotary_coords
        self.rotary_layout = cfg.rotary_layout

    def forward(self, x):  # (B, h, w, d) -> (B, h, w, d)
        if len(self.blocks) == 0:
            return x
        _, h, w, _ = x.shape
        rotary = None
        if self.rotary_coords is not None:  # positions on this level's own grid
            rotary = grid_rotary(h, w, self.dim_head, self.rotary_coords, self.rotary_layout, x.device, x.dtype)
        x = rearrange(x, "b h w d -> b (h w) d")
        for block in self.blocks:
            x = block(x, rotary)
        return rearrange(x, "b (h w) d -> b h w d", h=h)


class Grouping:
    """Which k tokens of an h x w grid pool into one position of the shortened grid.

    "2d": the s x s patch (s = sqrt(k)). "1d": k consecutive tokens of the raster-flattened grid.
    Groups come in the raster order of the shortened grid, the tokens of a group in raster order.
    """

    def __init__(self, layout, k):
        self.layout, self.k = layout, k
        self.s = math.isqrt(k) if layout == "2d" else None  # patch side

    def short_grid(self, h, w):
        """The shortened grid (h', w'), or None when h x w cannot be cut into groups."""
        k, s = self.k, self.s
        if self.layout == "2d":
            return (h // s, w // s) if h % s == 0 and w % s == 0 else None
        if w % k == 0:  # runs inside a row
            return h, w // k
        if k % w == 0 and h % (k // w) == 0:  # each run is k/w whole rows
            return h * w // k, 1
        return None

    def describe(self):  # what a group is, and what a grid needs for it: for error messages
        if self.layout == "2d":
            return f"{self.s}x{self.s} patches", f"both sides must divide by {self.s}"
        return (f"runs of {self.k} consecutive tokens in raster order",
                f"the width must divide by {self.k}, or divide {self.k} with the height dividing by {self.k}/width")

    def group(self, x):  # (B, h, w, d) -> (B, n, k, d), n = h' * w'
        if self.layout == "2d":
            return rearrange(x, "b (h p1) (w p2) d -> b (h w) (p1 p2) d", p1=self.s, p2=self.s)
        flat = rearrange(x, "b h w d -> b (h w) d")
        return rearrange(flat, "b (n k) d -> b n k d", k=self.k)

    def ungroup(self, groups, h, w):  # (B, n, k, d) -> (B, h, w, d), the inverse of group
        if self.layout == "2d":
            return rearrange(groups, "b (h w) (p1 p2) d -> b (h p1) (w p2) d", h=h // self.s, p1=self.s, p2=self.s)
        flat = rearrange(groups, "b n k d -> b (n k) d")
        return rearrange(flat, "b (h w) d -> b h w d", h=h)


class PatchAttention(nn.Module):
    """Our resampling block: residual attention of the queries to their group's (normalised) tokens."""

    def __init__(self, cfg):
        super().__init__()
        self.query_norm = nn.LayerNorm(cfg.dim)
        self.patch_norm = nn.LayerNorm(cfg.dim)
        self.attn = Attention(cfg)

    def forward(self, queries, context):  # (N, m, d), (N, k, d) -> (N, m, d)
        return queries + self.attn(self.query_norm(queries), self.patch_norm(context))


def resampling_block(cfg, resampling_type):
    """"ours": attention only (PatchAttention); "original": one full transformer layer (Block)."""
    return Block(cfg) if resampling_type == "original" else PatchAttention(cfg)


class DownSample(nn.Module):
    """(B, h, w, d) -> (B, h', w', d): one vector per group of k tokens (see Grouping).

    "linear" concatenates the group and projects it, "naive" averages it. With attention
    resampling the pooled vector then attends to the tokens of its group (both variants).
    """

    def __init__(self, kind, grouping, cfg, attn_resampling=True, resampling_type="ours"):
        super().__init__()
        self.grouping = grouping
        self.proj = nn.Linear(grouping.k * cfg.dim, cfg.dim) if kind == "linear" else None
        self.attn = resampling_block(cfg, resampling_type) if attn_resampling else None

    def forward(self, x):
        b, h, w, _ = x.shape
        h_short, _ = self.grouping.short_grid(h, w)
        groups = self.grouping.group(x)  # (B, n, k, d)
        if self.proj is None:
            short = groups.mean(dim=2)  # (B, n, d)
        else:
            short = self.proj(rearrange(groups, "b n k d -> b n (k d)"))
        if self.attn is not None:
            queries = rearrange(short, "b n d -> (b n) 1 d")
            short = self.attn(queries, context=rearrange(groups, "b n k d -> (b n) k d"))
            short = rearrange(short, "(b n) 1 d -> b n d", b=b)
        return rearrange(short, "b (h w) d -> b h w d", h=h_short)


class UpSample(nn.Module):
    """(B, h', w', d) valley output + (B, h, w, d) pre-valley tokens -> (B, h, w, d).

    The transpose of DownSample ("linear": project to k vectors, "naive": repeat), added to the
    pre-valley tokens. With attention resampling each token of a group then attends to the
    group's pre-valley tokens ("ours") or to the group's valley output ("original").
    """

    def __init__(self, kind, grouping, cfg, attn_resampling=True, resampling_type="ours"):
        super().__init__()
        self.grouping = grouping
        self.resampling_type = resampling_type
        self.proj = nn.Linear(cfg.dim, grouping.k * cfg.dim) if kind == "linear" else None
        self.attn = resampling_block(cfg, resampling_type) if attn_resampling else None

    def forward(self, short, x):
        b, h, w, _ = x.shape
        k = self.grouping.k
        short = rearrange(short, "b h w d -> b (h w) d")  # (B, n, d)
        if self.proj is None:
            up = repeat(short, "b n d -> b n k d", k=k)
        else:
            up = rearrange(self.proj(short), "b n (k d) -> b n k d", k=k)
        pre_valley = self.grouping.group(x)  # (B, n, k, d)
        groups = pre_valley + up
        if self.attn is not None:
            if self.resampling_type == "original":
                context = rearrange(short, "b n d -> (b n) 1 d")  # the group's valley output
            else:
                context = rearrange(pre_valley, "b n k d -> (b n) k d")  # the group's pre-valley tokens
            groups = self.attn(rearrange(groups, "b n k d -> (b n) k d"), context=context)
            groups = rearrange(groups, "(b n) k d -> b n k d", b=b)
        return self.grouping.ungroup(groups, h, w)


class HourglassLevel(nn.Module):
    """pre blocks -> down -> valley -> up (+ residual) -> post blocks, on one grid."""

    def __init__(self, depth, shorten_factors, cfg, rcfg, level):
        super().__init__()
        pre, valley, post = depth
        self.level = level
        self.shorten_factor = shorten_factors[0]
        self.grouping = Grouping(rcfg.layout, self.shorten_factor)
        self.s = self.grouping.s  # patch side; None for 1D runs
        self.pre = Transformer(pre, cfg)
        self.down = DownSample(rcfg.updown_sample_type, self.grouping, cfg, rcfg.attn_resampling,
                               rcfg.attn_resampling_type)
        self.valley = build_stack(valley, shorten_factors[1:], cfg, rcfg, level + 1)
        self.up = UpSample(rcfg.updown_sample_type, self.grouping, cfg, rcfg.attn_resampling,
                           rcfg.attn_resampling_type)
        self.post = Transformer(post, cfg)

    def short_grid(self, h, w):
        """The valley's grid for an h x w input; an error naming the level when it cannot pool."""
        grid = self.grouping.short_grid(h, w)
        if grid is None:
            groups, rule = self.grouping.describe()
            raise HourglassError(f"hourglass level {self.level}: grid {h}x{w} cannot be down-sampled by "
                                 f"shorten_factor {self.shorten_factor} ({groups}); {rule}")
        return grid

    def forward(self, x):  # (B, h, w, d) -> (B, h, w, d)
        x = self.pre(x)
        x = self.up(self.valley(self.down(x)), x)
        return self.post(x)


def build_stack(depth, shorten_factors, cfg, rcfg, level=0):
    if isinstance(depth, int):
        return Transformer(depth, cfg)
    return HourglassLevel(depth, shorten_factors, cfg, rcfg, level)


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


def parse_shorten_factors(shorten_factor, levels, layout="2d"):
    """One k per level from an int or a list; for 2D patches each k a perfect square (sqrt(k) per axis)."""
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
        if not (is_int(k) and k >= 1):
            raise HourglassError(f"shorten_factor={k!r}: expected a positive int")
        if layout == "2d" and math.isqrt(k) ** 2 != k:
            raise HourglassError(f"shorten_factor={k!r}: expected a perfect square (4, 9, 16, ...) for 2D patches")
    return factors


def init_weights(module):
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class HourglassTransformerLM(nn.Module):
    """Non-causal hourglass transformer over 2D token grids: tokens (B, h, w) -> logits (B, h, w, V).

    `depth` is an int (a plain transformer) or a nested triple (pre, valley, post); `shorten_factor`
    is one k or a list with one k per level (perfect squares for 2D patches). Resampling:
    `updown_sample_type`, `attn_resampling`, `attn_resampling_type` ("ours" | "original") and
    `resampling_layout` ("2d" | "1d"), as in the module docstring. Positions: with
    `rotary_pos_emb`, rotary embeddings (`rotary_layout` "2d" | "1d", `rotary_coords` "integer" |
    "normalized"; any grid the levels can divide works); otherwise learned absolute row + column
    embeddings for grids up to `max_grid` = (h, w). `num_classes` turns on class conditioning.
    `num_outputs` (default num_tokens) sizes the output head, e.g. V logits from V + 1 input
    tokens (a mask token) for absorbing diffusion.
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
        attn_resampling_type="ours",
        resampling_layout="2d",
        rotary_pos_emb=True,
        rotary_coords="integer",
        rotary_layout="2d",
        num_classes=None,
        max_grid=None,
        num_outputs=None,
    ):
        super().__init__()
        for name, value in (("num_tokens", num_tokens), ("dim", dim), ("heads", heads),
                            ("dim_head", dim_head), ("ff_mult", ff_mult)):
            if not (is_int(value) and value >= 1):
                raise HourglassError(f"{name}={value!r}: expected a positive int")
        for name, value, choices in (("updown_sample_type", updown_sample_type, UPDOWN_SAMPLE_TYPES),
                                     ("attn_resampling_type", attn_resampling_type, RESAMPLING_TYPES),
                                     ("resampling_layout", resampling_layout, RESAMPLING_LAYOUTS)):
            if value not in choices:
                raise HourglassError(f"{name}={value!r}: expected one of {choices}")
        if rotary_pos_emb:
            check_rotary(dim_head, rotary_coords, rotary_layout)
        if not rotary_pos_emb and not (
            isinstance(max_grid, Sequence) and len(max_grid) == 2 and all(is_int(n) and n >= 1 for n in max_grid)
        ):
            raise HourglassError(f"max_grid={max_grid!r}: learned positions (rotary_pos_emb=False) need (h, w)")
        if num_classes is not None and not (is_int(num_classes) and num_classes >= 1):
            raise HourglassError(f"num_classes={num_classes!r}: expected a positive int or None")
        if num_outputs is not None and not (is_int(num_outputs) and num_outputs >= 1):
            raise HourglassError(f"num_outputs={num_outputs!r}: expected a positive int or None")
        depth = parse_depth(depth)
        factors = parse_shorten_factors(shorten_factor, count_levels(depth), resampling_layout)

        self.num_tokens = num_tokens
        self.num_outputs = num_outputs or num_tokens
        self.num_classes = num_classes
        self.depth = depth
        self.shorten_factors = factors
        # 2D patches: grid sides must divide by this; 1D runs have no such single number (level_grids)
        self.grid_multiple = math.prod(math.isqrt(k) for k in factors) if resampling_layout == "2d" else None
        cfg = BlockConfig(dim, heads, dim_head, ff_mult, attn_dropout, ff_dropout,
                          rotary_coords if rotary_pos_emb else None, rotary_layout)
        rcfg = ResamplingConfig(updown_sample_type, attn_resampling, attn_resampling_type, resampling_layout)
        self.token_emb = nn.Embedding(num_tokens, dim)
        self.class_emb = nn.Embedding(num_classes, dim) if num_classes is not None else None
        self.pos_emb = None if rotary_pos_emb else AxialPositionEmbedding(tuple(max_grid), dim)
        self.stack = build_stack(depth, factors, cfg, rcfg)
        self.norm = nn.LayerNorm(dim)
        self.to_logits = nn.Linear(dim, self.num_outputs)
        self.apply(init_weights)

    def level_grids(self, h, w):
        """The grid of each level, outermost first; a grid a level cannot pool evenly is an error."""
        grids, stack = [(h, w)], self.stack
        while isinstance(stack, HourglassLevel):
            h, w = stack.short_grid(h, w)
            grids.append((h, w))
            stack = stack.valley
        return grids

    def check_inputs(self, tokens, cond):
        if not (isinstance(tokens, torch.Tensor) and tokens.ndim == 3 and tokens.dtype in (torch.long, torch.int)):
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise HourglassError(f"tokens: expected a LongTensor (B, h, w), got {shape}")
        # Value checks read the tensor back: free on the CPU, a host sync per call on a GPU (where
        # the embedding lookup asserts on a bad index anyway), so they run on the CPU only, and not
        # inside torch.compile, where reading a value back breaks the graph in two.
        on_cpu = tokens.device.type == "cpu" and not torch.compiler.is_compiling()
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

    def forward(self, tokens, cond=None, at=None):
        """tokens (B, h, w) long, cond (B,) long class labels -> logits (B, h, w, num_outputs).

        at: None, or a (B, h, w) bool mask: then only the logits at its True positions, (K,
        num_outputs) in row-major order. A sampler that updates a proportion of the positions
        pays the vocabulary-wide head for those only (the whole grid is still attended)."""
        self.check_inputs(tokens, cond)
        if at is not None and (at.shape != tokens.shape or at.dtype != torch.bool):
            raise HourglassError(f"at: expected a bool mask of shape {tuple(tokens.shape)}, got "
                                 f"{at.dtype} {tuple(at.shape)}")
        _, h, w = tokens.shape
        x = self.token_emb(tokens)  # (B, h, w, d)
        if self.pos_emb is not None:
            x = x + self.pos_emb(h, w)
        if self.class_emb is not None:
            x = x + self.class_emb(cond)[:, None, None, :]
        x = self.norm(self.stack(x))  # (B, h, w, d)
        return self.to_logits(x if at is None else x[at])  # (B, h, w, V) or (K, V)
