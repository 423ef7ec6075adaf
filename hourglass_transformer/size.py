"""The size of a model of this package, counted from its settings without building it (building
even on the meta device walks every layer: minutes for a million of them).

    parameters(...)    the exact number of weights of HourglassTransformerLM(...) (the causal
                       model of causal.py has at most one embedding row more)
    activations(...)   the values one sample's training forward keeps for the backward pass,
                       a lower bound (the formulas are in its docstring)
"""
from .model import count_levels, parse_depth, parse_shorten_factors


def _attention(d, inner):
    return d * inner + d * 2 * inner + inner * d + d  # to_q, to_kv (no bias), to_out


def _block(d, inner, ff_mult):
    hidden = ff_mult * d
    return 2 * 2 * d + _attention(d, inner) + d * hidden + hidden + hidden * d + d  # 2 norms, attn, ff


def parameters(num_tokens, dim, depth, shorten_factor=4, heads=8, dim_head=64, ff_mult=4,
               updown_sample_type="linear", attn_resampling=True, attn_resampling_type="ours",
               resampling_layout="2d", rotary_pos_emb=True, num_classes=None, max_grid=None, num_outputs=None):
    """The number of parameters of HourglassTransformerLM with these arguments (HourglassError
    for a depth or shorten_factor it would refuse)."""
    d, inner = dim, heads * dim_head
    depth = parse_depth(depth)
    factors = parse_shorten_factors(shorten_factor, count_levels(depth), resampling_layout)
    block = _block(d, inner, ff_mult)
    resampling = (block if attn_resampling_type == "original" else 2 * 2 * d + _attention(d, inner)) \
        if attn_resampling else 0

    def stack(depth, factors):
        if isinstance(depth, int):
            return depth * block
        pre, valley, post = depth
        k = factors[0]
        down = (k * d * d + d if updown_sample_type == "linear" else 0) + resampling
        up = (d * k * d + k * d if updown_sample_type == "linear" else 0) + resampling
        return (pre + post) * block + down + up + stack(valley, factors[1:])

    outputs = num_outputs or num_tokens
    embeddings = num_tokens * d + (num_classes or 0) * d + (0 if rotary_pos_emb else sum(max_grid) * d)
    return embeddings + stack(depth, factors) + 2 * d + d * outputs + outputs


def activations(num_tokens, dim, depth, grid, shorten_factor=4, heads=8, dim_head=64, ff_mult=4,
                attn_dropout=0.0, updown_sample_type="linear", attn_resampling=True, attn_resampling_type="ours",
                resampling_layout="2d", num_outputs=None):
    """A lower bound on the values one sample's forward over an h x w `grid` keeps for backward.

    With d = dim, a = heads * dim_head, f = ff_mult and L the tokens of a level (h * w, then
    L / k at each level down), counted per token (the saved tensors torch's autograd keeps):

        transformer block   4d (norm inputs and outputs) + 4a (q, k, v, attention output)
                            + 2fd (feed-forward hidden, before and after GELU)
                            + 2 heads L when attn_dropout > 0 (the score matrix, kept by the
                            unfused attention that dropout needs, and its dropout)
        down-sampling       d with a linear projection (its input); with "ours" attention
                            2d + 2a (normalised patch, keys and values), with "original" 2a
        up-sampling         with "ours" attention 4d + 4a, with "original" 4d + 3a + 2fd
        output              2d (final norm) + V (the logits' log-softmax)

    Left out, so the bound holds: norm statistics, rotary tables, the queries of the pooled
    vectors, temporaries of the backward pass and the allocator's slack.
    """
    d, a, f = dim, heads * dim_head, ff_mult
    depth = parse_depth(depth)
    factors = parse_shorten_factors(shorten_factor, count_levels(depth), resampling_layout)

    def block(length):
        return length * (4 * d + 4 * a + 2 * f * d) + (2 * heads * length * length if attn_dropout > 0 else 0)

    def down(length):
        kept = d if updown_sample_type == "linear" else 0
        if attn_resampling:
            kept += 2 * a if attn_resampling_type == "original" else 2 * d + 2 * a
        return length * kept

    def up(length):
        if not attn_resampling:
            return 0
        return length * (4 * d + 3 * a + 2 * f * d if attn_resampling_type == "original" else 4 * d + 4 * a)

    def stack(depth, factors, length):
        if isinstance(depth, int):
            return depth * block(length)
        pre, valley, post = depth
        short = max(1, length // factors[0])
        return (pre + post) * block(length) + down(length) + up(length) + stack(valley, factors[1:], short)

    length = grid[0] * grid[1]
    return stack(depth, factors, length) + length * (2 * d + (num_outputs or num_tokens))
