"""A causal transformer over token grids in raster order (Taming Transformers' prior), built from
model.py's attention, feed-forward and block config.

    grid (B, h, w) -> raster sequence x_0 .. x_{L-1}, L = h*w (row by row)
    inputs  = [start, x_0, ..., x_{L-2}]      # shifted right; start = the class token if conditional
    logits[i] = p(x_i | start, x_0 .. x_{i-1})  # (B, L, V), reshaped back to (B, h, w, V)

Attention is F.scaled_dot_product_attention with a causal mask (is_causal), so input i sees
inputs 0..i only. Positions: input i sits at the grid cell of the token it predicts,
(i // w, i % w), and gets that cell's 2D axial rotary angles (rotary.py) on its queries and
keys, or, with rotary_pos_emb=False, learned row + column embeddings of that cell. The start
input thus sits at (0, 0), the cell it predicts.

KV cache: `new_cache(h, w)` then `forward_step(tokens, cache=cache)` feeds the next tokens and
returns the logits for the cells after them; each layer's keys and values are stored, so each new
token costs one position's forward. The first call on an empty cache feeds the start input too.
"""
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .errors import HourglassError
from .model import Attention, AxialPositionEmbedding, BlockConfig, FeedForward, init_weights, is_int
from .rotary import COORDS, axial_rotary


class KVCache:
    """Keys and values of every attention layer for the first `length` inputs of one h x w grid.

    Buffers (B, heads, h*w, dim_head) are allocated on the first write, with the keys' dtype and
    device, and filled in order; `length` counts the inputs fed so far (start included).
    """

    def __init__(self, num_layers, grid, rotary):
        self.grid = grid
        self.capacity = grid[0] * grid[1]
        self.rotary = rotary  # (cos, sin), each (h*w, dim_head/2), or None
        self.length = 0
        self.keys = [None] * num_layers
        self.values = [None] * num_layers

    def update(self, layer, k, v):
        """Store k, v (B, heads, n, e) after the `length` cached inputs; return all keys/values so far."""
        b, heads, n, e = k.shape
        if self.keys[layer] is None:
            self.keys[layer] = k.new_zeros(b, heads, self.capacity, e)
            self.values[layer] = v.new_zeros(b, heads, self.capacity, e)
        end = self.length + n
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class CausalAttention(Attention):
    """model.py's Attention as causal self-attention (no `context`), with an optional KV cache.

    Same parameters as Attention; input i attends to inputs 0..i. With a cache holding `past`
    inputs, the new keys/values are stored after them and the n new queries see all past ones.
    """

    def forward(self, x, rotary=None, cache=None, layer=0):  # (B, n, d) -> (B, n, d)
        q, k, v = self.qkv(x, rotary=rotary)  # (B, heads, n, e)
        past = 0 if cache is None else cache.length
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, heads, past + n, e)
        n, mask = q.shape[-2], None
        if past and n > 1:  # new inputs after cached ones: input i sees keys 0 .. past + i
            keys = torch.arange(past + n, device=x.device)
            mask = keys[None, :] <= (past + torch.arange(n, device=x.device))[:, None]  # (n, past + n)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=past == 0
        )
        return self.to_out(rearrange(out, "b h n e -> b n (h e)"))


class CausalBlock(nn.Module):
    """Pre-norm block as model.Block (same parameter names), with causal, cacheable attention."""

    def __init__(self, cfg):
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.dim)
        self.attn = CausalAttention(cfg)
        self.ff_norm = nn.LayerNorm(cfg.dim)
        self.ff = FeedForward(cfg)

    def forward(self, x, rotary=None, cache=None, layer=0):  # (B, n, d) -> (B, n, d)
        x = x + self.attn(self.attn_norm(x), rotary, cache, layer)
        return x + self.ff(self.ff_norm(x))


class CausalTransformerLM(nn.Module):
    """Autoregressive transformer over 2D token grids in raster order: tokens (B, h, w) -> logits (B, h, w, V).

    logits[:, r, c] predict tokens[:, r, c] from the tokens before it in raster order (and the
    class label when `num_classes` is set: the class token is the first input). `depth` blocks of
    causal self-attention; positions as in the module docstring. Learned positions
    (rotary_pos_emb=False) need max_grid = (h, w).
    """

    def __init__(
        self,
        num_tokens,
        dim,
        depth,
        heads=8,
        dim_head=64,
        ff_mult=4,
        attn_dropout=0.0,
        ff_dropout=0.0,
        rotary_pos_emb=True,
        rotary_coords="integer",
        num_classes=None,
        max_grid=None,
    ):
        super().__init__()
        for name, value in (("num_tokens", num_tokens), ("dim", dim), ("depth", depth), ("heads", heads),
                            ("dim_head", dim_head), ("ff_mult", ff_mult)):
            if not (is_int(value) and value >= 1):
                raise HourglassError(f"{name}={value!r}: expected a positive int")
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

        self.num_tokens = num_tokens
        self.num_classes = num_classes
        self.dim_head = dim_head
        self.rotary_coords = rotary_coords if rotary_pos_emb else None
        cfg = BlockConfig(dim, heads, dim_head, ff_mult, attn_dropout, ff_dropout, self.rotary_coords)
        self.token_emb = nn.Embedding(num_tokens, dim)
        self.start_emb = nn.Embedding(num_classes if num_classes is not None else 1, dim)  # class or start token
        self.pos_emb = None if rotary_pos_emb else AxialPositionEmbedding(tuple(max_grid), dim)
        self.blocks = nn.ModuleList(CausalBlock(cfg) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.to_logits = nn.Linear(dim, num_tokens)
        self.apply(init_weights)

    def forward(self, tokens, cond=None):
        """Teacher forcing: tokens (B, h, w) long, cond (B,) long -> logits (B, h, w, V)."""
        self._check_tokens(tokens, 3)
        _, h, w = tokens.shape
        flat = rearrange(tokens, "b h w -> b (h w)")
        logits = self.forward_step(flat[:, :-1], cond, grid=(h, w))  # (B, h*w, V)
        return rearrange(logits, "b (h w) v -> b h w v", h=h)

    def new_cache(self, h, w, *, device=None):
        """An empty KVCache for one h x w grid (the batch size is fixed by the first forward_step)."""
        self._check_grid(h, w)
        rotary = None
        if self.rotary_coords is not None:
            rotary = axial_rotary(h, w, self.dim_head, self.rotary_coords, device, torch.float32)
        return KVCache(len(self.blocks), (h, w), rotary)

    def forward_step(self, tokens, cond=None, *, cache=None, grid=None):
        """Feed the next grid tokens in raster order; logits for the cells that follow them.

        tokens (B, n) long: the tokens of the next n cells not yet fed. On an empty (or no) cache
        the start input goes first, so the output is (B, n + 1, V), predicting cells 0..n;
        otherwise (B, n, V), predicting the n cells after the tokens fed so far. cond (B,) long
        class labels: used with the start input only. Without a cache this is a plain causal
        forward of the prefix and needs grid = (h, w); with one, the cache's grid is used and its
        keys/values grow by the inputs fed.
        """
        self._check_tokens(tokens, 2)
        b = tokens.shape[0]
        past = 0 if cache is None else cache.length
        if cache is None:
            if grid is None:
                raise HourglassError("forward_step without a cache needs grid=(h, w)")
            self._check_grid(*grid)
        else:
            grid = cache.grid
        h, w = grid
        x = self.token_emb(tokens)  # (B, n, d)
        if past == 0:
            x = torch.cat((self._start(cond, b, x.device)[:, None, :], x), dim=1)  # (B, n + 1, d)
        elif cond is not None and self.num_classes is None:
            raise HourglassError("cond: given, but the model has no num_classes")
        end = past + x.shape[1]
        if end > h * w:
            raise HourglassError(
                f"tokens: {end} inputs for a {h}x{w} grid; at most {h * w} (the last token predicts nothing)")
        if self.pos_emb is not None:
            if h > self.pos_emb.max_grid[0] or w > self.pos_emb.max_grid[1]:
                raise HourglassError(f"tokens: grid {h}x{w} is larger than max_grid {self.pos_emb.max_grid}")
            x = x + rearrange(self.pos_emb(h, w), "h w d -> (h w) d")[past:end]
        rotary = None
        if self.rotary_coords is not None:
            cos, sin = cache.rotary if cache is not None else axial_rotary(
                h, w, self.dim_head, self.rotary_coords, x.device, torch.float32)
            rotary = (cos[past:end].to(x.device), sin[past:end].to(x.device))  # (n', dim_head/2)
        for layer, block in enumerate(self.blocks):
            x = block(x, rotary, cache, layer)
        if cache is not None:
            cache.length = end
        return self.to_logits(self.norm(x))

    def _start(self, cond, b, device):  # -> (B, d): the class token, or the one start token
        if self.num_classes is None:
            if cond is not None:
                raise HourglassError("cond: given, but the model has no num_classes")
            return self.start_emb.weight[0].expand(b, -1)
        if not (isinstance(cond, torch.Tensor) and cond.shape == (b,) and cond.dtype in (torch.long, torch.int)):
            shape = tuple(cond.shape) if isinstance(cond, torch.Tensor) else cond
            raise HourglassError(f"cond: expected a LongTensor of class labels with shape ({b},), got {shape}")
        if cond.device.type == "cpu" and bool(((cond < 0) | (cond >= self.num_classes)).any()):
            raise HourglassError(f"cond: class labels must lie in [0, {self.num_classes})")
        return self.start_emb(cond.to(device))

    def _check_tokens(self, tokens, ndim):
        if not (isinstance(tokens, torch.Tensor) and tokens.ndim == ndim and tokens.dtype in (torch.long, torch.int)):
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            expected = "(B, h, w)" if ndim == 3 else "(B, n)"
            raise HourglassError(f"tokens: expected a LongTensor {expected}, got {shape}")
        if tokens.device.type == "cpu" and bool(((tokens < 0) | (tokens >= self.num_tokens)).any()):
            raise HourglassError(f"tokens: values must lie in [0, {self.num_tokens})")

    def _check_grid(self, h, w):
        if not (is_int(h) and is_int(w) and h >= 1 and w >= 1):
            raise HourglassError(f"grid ({h!r}, {w!r}): expected two positive ints")
