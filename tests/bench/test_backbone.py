"""bench/backbone.py: the analytic FLOP count agrees with torch's own counter."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bench.backbone import count_flops
from hourglass_transformer import HourglassTransformerLM


@pytest.mark.parametrize(
    "kw",
    [
        dict(depth=3),
        dict(depth=(1, 2, 1)),
        dict(depth=(1, (1, 1, 1), 0), shorten_factor=[4, 9], updown_sample_type="naive"),
        dict(depth=(2, 1, 1), attn_resampling=False),
    ],
)
def test_count_flops_matches_torch_flop_counter(kw):
    torch.manual_seed(0)
    model = HourglassTransformerLM(num_tokens=17, dim=32, heads=2, dim_head=8, **kw).eval()
    h, w = 12, 6
    tokens = torch.randint(0, 17, (3, h, w))
    # the math backend runs attention as matmuls, which the counter sees (the fused CPU kernel it does not)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(tokens)
    assert count_flops(model, h, w, batch=3) == counter.get_total_flops()
