"""bench.backbone and bench.flops: the models come from the FFHQ1024 config through the registry,
and the analytic FLOP count agrees with torch's own counter."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bench.backbone import HOURGLASS_DEPTH, NUM_TOKENS, VANILLA_DEPTH, model_configs
from bench.flops import count_flops, counted_flops
from hourglass_transformer import HourglassTransformerLM
from priors import build_model


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
    assert counted_flops(lambda: model(tokens)) == counter.get_total_flops()  # the helper counts the same


def test_the_two_models_are_the_registry_models_of_their_configs():
    """The hourglass and the vanilla stack of the table, built by the registry from the FFHQ1024
    config at bench width, are the bare backbones the README describes, weight for weight."""
    width = dict(num_tokens=NUM_TOKENS, dim=64, heads=2, dim_head=32, ff_mult=4)
    for name, depth in (("hourglass", HOURGLASS_DEPTH), ("vanilla", VANILLA_DEPTH)):
        cfg = model_configs(dim=64, heads=2, dim_head=32)[name]
        torch.manual_seed(0)
        ours = build_model(cfg).state_dict()
        torch.manual_seed(0)
        bare = HourglassTransformerLM(depth=depth, shorten_factor=4, **width).state_dict()
        assert ours.keys() == bare.keys() and all(torch.equal(ours[k], bare[k]) for k in ours), name
