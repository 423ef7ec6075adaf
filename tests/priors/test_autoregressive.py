"""The autoregressive prior: causal transformer (causality, KV cache), loss, top-k/top-p filtering,
sampling with and without the cache, and raster-prefix inpainting."""
import math

import pytest
import torch
import torch.nn.functional as F

from hourglass_transformer import HourglassError
from hourglass_transformer.causal import CausalTransformerLM
from infra.errors import UserError
from priors.autoregressive import (AutoregressiveSampling, autoregressive_loss, check_raster_prefix, filter_logits,
                                   sample_autoregressive)

V = 7


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    pass


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def tiny(sharpen=1.0, **kw):
    """A small random model; `sharpen` scales its logits so that they matter to the draws."""
    torch.manual_seed(kw.pop("seed", 0))
    args = dict(num_tokens=V, dim=32, depth=2, heads=2, dim_head=8, ff_mult=2)
    args.update(kw)
    model = CausalTransformerLM(**args).eval()
    with torch.no_grad():
        model.to_logits.weight.mul_(sharpen)
    return model


def grid(b, h, w, seed=0):
    return torch.randint(0, V, (b, h, w), generator=gen(seed))


MODELS = {
    "rotary": dict(),
    "learned": dict(rotary_pos_emb=False, max_grid=(4, 5)),
    "class": dict(num_classes=3),
}


def cond_for(kind, b):
    return torch.arange(b) % 3 if kind == "class" else None


# --- the causal transformer ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", MODELS)
def test_output_at_position_i_does_not_depend_on_later_tokens(kind):
    model = tiny(**MODELS[kind])
    x = grid(2, 4, 5)
    cond = cond_for(kind, 2)
    base = model(x, cond).flatten(1, 2)  # (2, 20, V)
    assert base.shape == (2, 20, V)
    for i in (0, 3, 7, 19):
        perturbed = x.flatten(1).clone()
        perturbed[:, i:] = (perturbed[:, i:] + 1 + torch.arange(20 - i) % (V - 1)) % V  # change every token >= i
        out = model(perturbed.reshape(2, 4, 5), cond).flatten(1, 2)
        # logits at i predict token i from tokens < i: positions 0..i are unchanged...
        torch.testing.assert_close(out[:, : i + 1], base[:, : i + 1], rtol=0, atol=1e-5)
        if i + 1 < 20:  # ...and the next one sees the change (the model does look at earlier tokens)
            assert (out[:, i + 1] - base[:, i + 1]).abs().max() > 1e-4


def test_class_token_comes_first():
    model = tiny(num_classes=3)
    x = grid(1, 3, 3).expand(2, 3, 3)
    out = model(x, torch.tensor([0, 1]))
    assert (out[0, 0, 0] - out[1, 0, 0]).abs().max() > 1e-4  # the first position sees only the class
    with pytest.raises(HourglassError, match="cond"):
        model(x)
    with pytest.raises(HourglassError, match="no num_classes"):
        tiny()(x, torch.tensor([0, 1]))


@pytest.mark.parametrize("kind", MODELS)
def test_kv_cache_gives_the_logits_of_the_full_forward(kind):
    model = tiny(**MODELS[kind])
    x = grid(3, 4, 5, seed=1)
    cond = cond_for(kind, 3)
    full = model(x, cond).flatten(1, 2)  # (3, 20, V)
    flat = x.flatten(1)
    with torch.no_grad():
        one_by_one = model.new_cache(4, 5)
        steps = [model.forward_step(flat[:, :0], cond, cache=one_by_one)]  # the start: logits for cell 0
        steps += [model.forward_step(flat[:, i:i + 1], cond, cache=one_by_one) for i in range(19)]
        chunked = model.new_cache(4, 5)  # a prefix, then a chunk after cached inputs, then one token
        chunks = [model.forward_step(flat[:, :6], cond, cache=chunked),
                  model.forward_step(flat[:, 6:18], cond, cache=chunked),
                  model.forward_step(flat[:, 18:19], cond, cache=chunked)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.cat(chunks, 1), full, rtol=0, atol=1e-5)
    assert one_by_one.length == 20
    with pytest.raises(HourglassError, match="at most 20"):
        model.forward_step(flat[:, 19:20], cond, cache=one_by_one)


def test_forward_step_without_a_cache_needs_the_grid():
    with pytest.raises(HourglassError, match="grid"):
        tiny().forward_step(torch.zeros(1, 3, dtype=torch.long))


# --- loss ----------------------------------------------------------------------------------------


def test_loss_is_teacher_forced_cross_entropy_with_accuracy():
    model = tiny(num_classes=3).train()
    x, cond = grid(4, 3, 4, seed=2), torch.tensor([0, 1, 2, 0])
    out = autoregressive_loss(model, x, cond, num_tokens=V)
    logits = model(x, cond)
    expected = F.cross_entropy(logits.reshape(-1, V), x.reshape(-1))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.bits_per_token.item() == pytest.approx(expected.item() / math.log(2), rel=1e-5)
    assert out.accuracy.item() == pytest.approx((logits.argmax(-1) == x).float().mean().item())
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_training_lowers_the_loss():
    model = tiny().train()
    data = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 0, 1]]).expand(8, 3, 3)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = autoregressive_loss(model, data, num_tokens=V)
        optimiser.zero_grad()
        out.loss.backward()
        optimiser.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.3 * losses[0]
    model.eval()
    sampled = sample_autoregressive(model, (3, 3), AutoregressiveSampling(top_k=1), num_tokens=V, nb_samples=4,
                                    generator=gen(3))
    assert torch.equal(sampled.tokens, data[:4])  # greedy decoding recovers the memorised grid


# --- filtering -----------------------------------------------------------------------------------

PROBS = torch.tensor([0.05, 0.5, 0.1, 0.2, 0.15])  # sorted: token 1, 3, 4, 2, 0


def kept(**kw):
    out = filter_logits(PROBS.log(), **kw)
    return set(torch.isfinite(out).nonzero().flatten().tolist())


def test_top_k_keeps_the_k_most_probable_tokens():
    assert kept(top_k=1) == {1}
    assert kept(top_k=2) == {1, 3}
    assert kept(top_k=3) == {1, 3, 4}
    assert kept(top_k=10) == {0, 1, 2, 3, 4}


def test_top_p_keeps_the_smallest_set_reaching_p():
    assert kept(top_p=0.3) == {1}  # 0.5 >= 0.3 already
    assert kept(top_p=0.6) == {1, 3}  # 0.5 < 0.6 <= 0.7
    assert kept(top_p=0.8) == {1, 3, 4}  # 0.7 < 0.8 <= 0.85
    assert kept(top_p=0.9) == {1, 3, 4, 2}  # 0.85 < 0.9 <= 0.95
    assert kept(top_p=1.0) == {0, 1, 2, 3, 4}
    # top-p applies to the distribution left by top-k, renormalised: 0.5/0.85 + 0.2/0.85 > 0.8.
    assert kept(top_k=3, top_p=0.8) == {1, 3}


def test_filter_keeps_the_logits_it_keeps_and_works_per_row():
    logits = torch.stack([PROBS.log(), PROBS.flip(0).log()])  # (2, 5): 0.5 at 1 and 3
    out = filter_logits(logits, top_k=2)
    assert torch.equal(out[torch.isfinite(out)], logits[torch.isfinite(out)])
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [1, 3]
    assert torch.isfinite(out[1]).nonzero().flatten().tolist() == [1, 3]  # 0.5 and 0.2, flipped
    with pytest.raises(UserError, match="top_k"):
        filter_logits(logits, top_k=0)
    with pytest.raises(UserError, match="top_p"):
        filter_logits(logits, top_p=1.5)


# --- sampling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("settings", [dict(), dict(temperature=0.7, top_k=3), dict(top_p=0.8)])
def test_sampling_with_the_kv_cache_gives_the_tokens_of_sampling_without(kind, settings):
    model = tiny(sharpen=10.0, **MODELS[kind])
    cond = cond_for(kind, 16)
    runs = [sample_autoregressive(model, (4, 5), AutoregressiveSampling(use_cache=use_cache, **settings),
                                  num_tokens=V, nb_samples=16, cond=cond, generator=gen(4), return_history=True)
            for use_cache in (True, False)]
    cached, uncached = runs
    assert torch.equal(cached.tokens, uncached.tokens)
    assert all(torch.equal(a, b) for a, b in zip(cached.history, uncached.history))
    assert len(cached.history) == 21 and (cached.history[0] == V).all()
    assert (cached.steps_used == 20).all()
    assert (cached.tokens >= 0).all() and (cached.tokens < V).all()
    # A different seed gives different grids (the draws do come from the generator).
    other = sample_autoregressive(model, (4, 5), AutoregressiveSampling(**settings), num_tokens=V, nb_samples=16,
                                  cond=cond, generator=gen(5))
    assert not torch.equal(other.tokens, cached.tokens)


def test_sampling_respects_top_k():
    model = tiny(sharpen=10.0)
    out = sample_autoregressive(model, (3, 3), AutoregressiveSampling(top_k=2), num_tokens=V, nb_samples=64,
                                generator=gen(6), return_history=True)
    for i in range(9):  # each drawn token is one of the two most probable given its prefix
        prefix = out.tokens.flatten(1)[:, :i]
        with torch.inference_mode():
            logits = model.forward_step(prefix, grid=(3, 3))[:, -1]
        top2 = logits.topk(2).indices
        assert (top2 == out.tokens.flatten(1)[:, i:i + 1]).any(dim=1).all()


@pytest.mark.parametrize("use_cache", [True, False])
def test_prefix_inpainting_keeps_the_known_tokens(use_cache):
    model = tiny(num_classes=3)
    start = grid(3, 4, 5, seed=7)
    keep = torch.zeros(3, 20, dtype=torch.bool)
    keep[0, :7] = True  # different prefix lengths per sample, one empty
    keep[1, :12] = True
    keep = keep.reshape(3, 4, 5)
    out = sample_autoregressive(model, start, AutoregressiveSampling(use_cache=use_cache), keep_mask=keep,
                                num_tokens=V, cond=torch.tensor([0, 1, 2]), generator=gen(8), return_history=True)
    assert torch.equal(out.tokens[keep], start[keep])
    assert (out.tokens < V).all()
    assert all(torch.equal(g[keep], start[keep]) for g in out.history)
    assert (out.steps_used == 20).all()  # the batch starts at the shortest prefix (sample 2's, empty)
    # With only prefixed samples the sampler starts after the shortest prefix.
    out = sample_autoregressive(model, start[:2], AutoregressiveSampling(use_cache=use_cache), keep_mask=keep[:2],
                                num_tokens=V, cond=torch.tensor([0, 1]), generator=gen(8))
    assert torch.equal(out.tokens[keep[:2]], start[:2][keep[:2]])
    assert (out.steps_used == 13).all()
    # Unknown positions can be marked with the mask value num_tokens instead of a keep_mask.
    marked = torch.where(keep[:2], start[:2], V)
    again = sample_autoregressive(model, marked, AutoregressiveSampling(use_cache=use_cache), num_tokens=V,
                                  cond=torch.tensor([0, 1]), generator=gen(8))
    assert torch.equal(again.tokens, out.tokens)


def test_a_whole_known_grid_needs_no_forward():
    start = grid(2, 3, 3)
    out = sample_autoregressive(tiny(), start, AutoregressiveSampling(), keep_mask=torch.ones(2, 3, 3,
                                dtype=torch.bool), num_tokens=V)
    assert torch.equal(out.tokens, start) and (out.steps_used == 0).all()


@pytest.mark.parametrize("known", [
    [[1, 1, 0], [1, 0, 0]],  # a token kept after a gap
    [[0, 0, 0], [0, 0, 1]],  # only the last token
    [[0, 1, 1], [1, 1, 1]],  # a hole at the start
])
def test_a_non_prefix_mask_is_a_one_line_error(known):
    keep = torch.tensor(known, dtype=torch.bool)
    with pytest.raises(UserError) as e:
        sample_autoregressive(tiny(), grid(1, 2, 3)[0], AutoregressiveSampling(), keep_mask=keep, nb_samples=2,
                              num_tokens=V)
    message = str(e.value)
    assert message.startswith("the autoregressive prior can only complete a raster-order prefix; ")
    assert "\n" not in message


def test_check_raster_prefix_counts_prefix_lengths():
    known = torch.tensor([[[1, 1], [1, 0]], [[0, 0], [0, 0]], [[1, 1], [1, 1]]], dtype=torch.bool)
    assert check_raster_prefix(known).tolist() == [3, 0, 4]
