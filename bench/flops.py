"""FLOP counts, two ways: analytically for the hourglass backbone (count_flops), and by torch's
own counter for anything else (counted_flops). Both count matmuls only, 2 FLOPs per
multiply-add; tests/bench checks that the two agree on the backbone."""
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from hourglass_transformer.model import Transformer


def linear_flops(n, layer):
    """Multiply-adds of `layer` on n vectors, 2 FLOPs each."""
    return 2 * n * layer.in_features * layer.out_features


def attention_flops(n_queries, n_keys, attn):
    """Projections plus Q K^T and weights @ V for one sequence."""
    inner = attn.to_q.out_features
    scores_and_mix = 2 * 2 * n_queries * n_keys * inner
    return (linear_flops(n_queries, attn.to_q) + linear_flops(n_keys, attn.to_kv)
            + scores_and_mix + linear_flops(n_queries, attn.to_out))


def stack_flops(stack, h, w):
    """Forward FLOPs of a Transformer or an HourglassLevel on one h x w grid."""
    if isinstance(stack, Transformer):
        n = h * w
        return sum(attention_flops(n, n, b.attn) + linear_flops(n, b.ff[0]) + linear_flops(n, b.ff[-1])
                   for b in stack.blocks)
    s = stack.s
    patches, patch_size = (h // s) * (w // s), s * s
    flops = stack_flops(stack.pre, h, w) + stack_flops(stack.valley, h // s, w // s) + stack_flops(stack.post, h, w)
    for resample in (stack.down, stack.up):
        if resample.proj is not None:
            flops += linear_flops(patches, resample.proj)
    if stack.down.attn is not None:  # one pooled query per patch
        flops += patches * attention_flops(1, patch_size, stack.down.attn.attn)
    if stack.up.attn is not None:  # every token of a patch queries that patch
        flops += patches * attention_flops(patch_size, patch_size, stack.up.attn.attn)
    return flops


def count_flops(model, h, w, batch):
    """Matmul FLOPs of one forward pass of an HourglassTransformerLM on a (batch, h, w) grid.

    Elementwise work (norms, softmax, GELU, rotary) is left out: it is small next to the matmuls.
    """
    return batch * (stack_flops(model.stack, h, w) + linear_flops(h * w, model.to_logits))


def counted_flops(fn):
    """FLOPs of fn() by torch's FlopCounterMode, without autograd. Attention runs on the math
    backend, whose matmuls the counter sees (the fused CPU kernel it does not)."""
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()
