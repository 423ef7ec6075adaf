"""The memory a training step needs, estimated from the settings (hourglass_transformer.size,
training.memory): parameters counted exactly, activations a lower bound that stays close to what
autograd really keeps, and every shipped config within the memory it is meant for."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from hourglass_transformer import HourglassTransformerLM, size
from hourglass_transformer.causal import CausalTransformerLM
from infra.errors import UserError
from priors import build_model
from tests.helpers import REPO
from training.config import load_config
from training.memory import check_training_memory, training_memory

pytestmark = pytest.mark.usefixtures("single_thread")

SHIPPED = sorted((REPO / "config").rglob("*.toml"))
BASE = dict(num_tokens=17, dim=32, heads=4, dim_head=16)
VARIANTS = {
    "vanilla": dict(depth=2),
    "hourglass": dict(depth=[1, 2, 1]),
    "original-resampling": dict(depth=[1, 2, 1], attn_resampling_type="original"),
    "naive": dict(depth=[1, 2, 1], updown_sample_type="naive"),
    "no-attn-resampling": dict(depth=[1, 2, 1], attn_resampling=False),
    "two-levels": dict(depth=[1, [1, 1, 1], 1]),
    "attn-dropout": dict(depth=1, attn_dropout=0.1),
    "learned-positions": dict(depth=[0, 2, 0], rotary_pos_emb=False, max_grid=(8, 8)),
    "1d": dict(depth=[1, 2, 1], resampling_layout="1d", rotary_layout="1d"),
    "classes-ff2": dict(depth=[1, 2, 1], num_classes=3, ff_mult=2),
    "k16": dict(depth=[1, 2, 1], shorten_factor=16),
    "mask-token": dict(depth=[1, 2, 1], num_tokens=18, num_outputs=17),
}
PARAMETER_ARGS = {"num_tokens", "dim", "depth", "shorten_factor", "heads", "dim_head", "ff_mult", "updown_sample_type",
                  "attn_resampling", "attn_resampling_type", "resampling_layout", "rotary_pos_emb", "num_classes",
                  "max_grid", "num_outputs"}
ACTIVATION_ARGS = PARAMETER_ARGS - {"rotary_pos_emb", "num_classes", "max_grid"} | {"attn_dropout"}


def saved_for_backward(model, tokens, cond):
    """The values (float32 elements) autograd keeps from one training forward and its loss, weights
    left out: every distinct storage a saved tensor lives in, counted once."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(tokens, cond)
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1).clamp(max=logits.shape[-1] - 1))
    return sum(kept.values()) / 4


@pytest.mark.parametrize("name", VARIANTS)
def test_parameters_are_counted_exactly_and_activations_are_a_close_lower_bound(name):
    kwargs = {**BASE, **VARIANTS[name]}
    model = HourglassTransformerLM(**kwargs).train()
    assert size.parameters(**{k: v for k, v in kwargs.items() if k in PARAMETER_ARGS}) == \
        sum(p.numel() for p in model.parameters())
    batch = 4
    tokens = torch.randint(17, (batch, 8, 8))
    cond = torch.randint(3, (batch,)) if kwargs.get("num_classes") else None
    estimate = size.activations(grid=(8, 8), **{k: v for k, v in kwargs.items() if k in ACTIVATION_ARGS})
    measured = saved_for_backward(model, tokens, cond) / batch
    assert 0.75 * measured <= estimate <= measured  # a bound that holds, and not a loose one


def test_the_causal_model_is_counted_as_its_vanilla_stack():
    model = CausalTransformerLM(num_tokens=17, dim=32, depth=3, heads=4, dim_head=16).train()
    counted = size.parameters(num_tokens=17, dim=32, depth=3, heads=4, dim_head=16)
    assert counted <= sum(p.numel() for p in model.parameters()) <= counted + 32  # its start token: one row
    measured = saved_for_backward(model, torch.randint(17, (4, 8, 8)), None) / 4
    assert 0.75 * measured <= size.activations(num_tokens=17, dim=32, depth=3, heads=4, dim_head=16, grid=(8, 8)) \
        <= measured


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO / "config")))
def test_every_shipped_config_fits_the_memory_it_is_meant_for(path):
    cfg = load_config(path, warn=False)
    need = training_memory(cfg)
    with torch.device("meta"):
        built = sum(p.numel() for p in build_model(cfg).parameters())
    assert need.parameters <= built <= need.parameters + cfg.net.dim  # a mask or start token: one row more
    assert need.total < 80 * 2**30  # the GPU configs: one 80 GiB GPU
    if path.name.startswith(("digits", "tiny")):
        assert need.total < 2**30  # the CPU demos


def test_the_estimate_counts_the_training_state_unrolled_forwards_and_precision():
    cfg = load_config(REPO / "config" / "digits.toml", warn=False)
    base = training_memory(cfg)
    assert base.state_bytes == 4 * base.parameters * 5  # weights, gradients, 2 AdamW moments, EMA
    no_ema = training_memory(dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, ema_decay=0.0)))
    assert no_ema.state_bytes == 4 * base.parameters * 4
    mixed = training_memory(dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, precision="bf16-mixed")))
    assert mixed.activation_bytes * 2 == base.activation_bytes
    once = training_memory(dataclasses.replace(cfg, prior=dataclasses.replace(cfg.prior, unroll_steps=1)))
    assert once.activation_bytes * cfg.prior.unroll_steps == base.activation_bytes
    double = training_memory(dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, batch_size=64)))
    assert double.activation_bytes == 2 * base.activation_bytes


def test_the_check_compares_the_estimate_with_the_device_memory(monkeypatch):
    cfg = load_config(REPO / "config" / "digits.toml", warn=False)
    need = training_memory(cfg).total
    monkeypatch.setattr("training.memory.memory_bytes", lambda: need + 1)
    check_training_memory(cfg, "cpu", "digits.toml")
    monkeypatch.setattr("training.memory.memory_bytes", lambda: need - 1)
    with pytest.raises(UserError, match=r"^digits.toml: \[net\] is too large to train with trainer.batch_size = 32: "
                                         r"a step needs at least 0.0 GiB \(334,801 parameters .*this machine's"):
        check_training_memory(cfg, "cpu", "digits.toml")


def test_a_net_that_describes_no_model_is_left_to_the_model_to_refuse():
    cfg = load_config(REPO / "config" / "digits.toml", warn=False)
    bad = dataclasses.replace(cfg, net=dataclasses.replace(cfg.net, shorten_factor=3))  # not a perfect square
    assert training_memory(bad) is None
    with pytest.raises(UserError, match="shorten_factor=3: expected a perfect square"):
        build_model(bad)
