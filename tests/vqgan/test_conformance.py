"""Our VQGAN against taming-transformers / latent-diffusion reference outputs.

Every fixture in ../shared/fixtures/vqgan/ (see its README) was produced by the reference code;
indices must match exactly and images within the fixture's tolerance.
"""
import json
from functools import cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import SHARED_FIXTURES
from vqgan import build_vqgan, config_from_dict, load_vqgan
from vqgan.modules import AttnBlock, Downsample, LinearAttnBlock, ResnetBlock
from vqgan.quantize import GumbelQuantizer, VectorQuantizer

FIXTURES = SHARED_FIXTURES
NAMES = sorted(p.parent.name for p in FIXTURES.glob("*/config.yaml"))
ATOL = 1e-4  # sound for every fixture (README: float32 noise is ~3e-6, real bugs >= 8e-4)

NO_FIXTURES = pytest.mark.skip(reason=f"no VQ-GAN fixtures in {FIXTURES}")
fixture_names = pytest.mark.parametrize("name", NAMES or [pytest.param(None, marks=NO_FIXTURES)])


# tiny models: one intra-op thread (conftest's single_thread) for the whole module
pytestmark = pytest.mark.usefixtures("single_thread")


class Fixture:
    def __init__(self, name):
        self.dir = FIXTURES / name
        self.meta = json.loads((self.dir / "meta.json").read_text())
        self.config = self.dir / self.meta["config"]
        self.checkpoint = self.dir / self.meta["checkpoint"]

    def atol(self, kind):
        """The fixture's stricter suggestion (10x the reference's own float32 error), if any."""
        suggested = self.meta.get("tolerance_evidence", {}).get(f"suggested_{kind}_atol")
        return min(ATOL, suggested) if suggested else ATOL

    def array(self, name):
        return torch.from_numpy(np.load(self.dir / f"{name}.npy"))

    def autoencoder_keys(self):
        """keys.txt rows a first-stage loader keeps, prefix stripped, in file order."""
        keys = []
        for line in (self.dir / "keys.txt").read_text().splitlines():
            if line.startswith("#") or not line.strip():
                continue
            key, _shape, _dtype, role = line.split("\t")
            if role in ("keep", "strip-prefix+keep"):
                keys.append(key.removeprefix(self.meta["key_prefix_to_strip"]))
        return keys


@cache
def fixture(name):
    return Fixture(name)


@cache
def model(name, legacy_cfg=None):
    f = fixture(name)
    return load_vqgan(f.config, f.checkpoint, legacy_cfg=legacy_cfg)


@fixture_names
def test_state_dict_keys_and_order_match_reference(name):
    assert list(model(name).state_dict()) == fixture(name).autoencoder_keys()


@fixture_names
def test_sizes_match_meta(name):
    f, m = fixture(name), model(name)
    assert m.codebook_size == f.meta["codebook_size"]
    assert m.embed_dim == f.meta["embed_dim"]
    assert m.downsample_factor == f.meta["downsample_factor"]
    assert m.resolution == f.meta["config_resolution"]
    assert not m.training
    assert not any(p.requires_grad for p in m.parameters())


@fixture_names
@torch.no_grad()
def test_indices_exact(name):
    f, m = fixture(name), model(name)
    indices = m.encode(f.array("input"))
    assert indices.dtype == torch.int64
    assert torch.equal(indices, f.array("indices"))


@fixture_names
@torch.no_grad()
def test_prequant_latent(name):
    f = fixture(name)
    prequant = model(name).encode_prequant(f.array("input"))
    torch.testing.assert_close(prequant, f.array("prequant"), atol=f.atol("prequant"), rtol=0)


@fixture_names
@torch.no_grad()
def test_reconstruction(name):
    f = fixture(name)
    recon, _, indices = model(name)(f.array("input"))
    torch.testing.assert_close(recon, f.array("recon"), atol=f.atol("image"), rtol=0)
    assert torch.equal(indices, f.array("indices"))


@fixture_names
@torch.no_grad()
def test_decode_from_indices(name):
    f = fixture(name)
    images = model(name).decode(f.array("indices"))
    expected = f.array("decoded_from_indices")
    torch.testing.assert_close(images, expected, atol=f.atol("image"), rtol=0)


@fixture_names
@torch.no_grad()
def test_float64_recompute_is_within_reference_float32_noise(name):
    """In float64 our model must sit within the reference's own float32 error (README table),
    which is far tighter than ATOL: a check on the semantics, not on rounding luck."""
    f = fixture(name)
    m64 = load_vqgan(f.config, f.checkpoint).double()
    evidence = f.meta["tolerance_evidence"]
    prequant = m64.encode_prequant(f.array("input").double())
    decoded = m64.decode(f.array("indices"))
    tol_pre = 2 * evidence["max_abs_diff_prequant_f32_vs_f64"]
    tol_img = 2 * evidence["max_abs_diff_decoded_f32_vs_f64"]
    assert (prequant - f.array("prequant").double()).abs().max() <= tol_pre
    assert (decoded - f.array("decoded_from_indices").double()).abs().max() <= tol_img


def test_legacy_config_detected_and_forced():
    if "taming-legacy" not in NAMES:
        pytest.skip(f"fixture taming-legacy not in {FIXTURES}")
    f = fixture("taming-legacy")
    detected, forced = model("taming-legacy"), model("taming-legacy", legacy_cfg=True)
    assert detected.config.key_prefix == forced.config.key_prefix == "first_stage_model."
    with torch.no_grad():
        assert torch.equal(forced.encode(f.array("input")), f.array("indices"))
    for (k, a), (_, b) in zip(detected.state_dict().items(), forced.state_dict().items()):
        assert torch.equal(a, b), k


@fixture_names
@torch.no_grad()
def test_non_square_input_other_than_fixture(name):
    """Any H, W divisible by f runs through the same modules: a mirrored, doubled-width input
    gives a (h, 2w) grid and decodes back to the input's shape, inside [-1, 1]."""
    f, m = fixture(name), model(name)
    x = f.array("input")[:1]
    wide = torch.cat([x, x.flip(-1)], dim=-1)  # (1, 3, H, 2W)
    indices = m.encode(wide)
    factor = m.downsample_factor
    assert indices.shape == (1, x.shape[2] // factor, 2 * x.shape[3] // factor)
    images = m.decode(indices)
    assert images.shape == wide.shape
    assert images.min() >= -1 and images.max() <= 1


# --- building blocks against naive float64 references --------------------------------------


def randomise_(module, seed):
    """Non-trivial values everywhere, GroupNorm scale and shift included."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
    return module


def conv1x1(x, conv):
    return torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], x) + conv.bias[:, None, None]


def test_attn_block_matches_explicit_softmax():
    block = randomise_(AttnBlock(32).double(), seed=1)
    x = torch.randn(2, 32, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    h = F.group_norm(x, 32, block.norm.weight, block.norm.bias, eps=1e-6)
    q, k, v = (conv1x1(h, c).flatten(2) for c in (block.q, block.k, block.v))  # (B, C, N)
    weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / 32**0.5, dim=-1)
    attended = torch.einsum("bij,bcj->bci", weights, v).reshape(x.shape)
    expected = x + conv1x1(attended, block.proj_out)
    torch.testing.assert_close(block(x), expected, atol=1e-12, rtol=0)


def test_linear_attn_block_matches_explicit_formula():
    block = randomise_(LinearAttnBlock(32).double(), seed=3)
    x = torch.randn(2, 32, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    w = block.to_qkv.weight[:, :, 0, 0]
    q, k, v = (torch.einsum("oc,bcn->bon", w[i * 32:(i + 1) * 32], x.flatten(2)) for i in range(3))
    k = torch.softmax(k, dim=-1)  # over positions
    out = torch.einsum("bdn,ben,bdm->bem", k, v, q).reshape(x.shape)
    torch.testing.assert_close(block(x), conv1x1(out, block.to_out), atol=1e-12, rtol=0)


def test_resnet_block_with_shortcut_matches_formula():
    block = randomise_(ResnetBlock(32, 64).double(), seed=5).eval()
    x = torch.randn(1, 32, 6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))

    def swish(t):
        return t / (1 + torch.exp(-t))

    h = F.conv2d(swish(F.group_norm(x, 32, block.norm1.weight, block.norm1.bias, 1e-6)),
                 block.conv1.weight, block.conv1.bias, padding=1)
    h = F.conv2d(swish(F.group_norm(h, 32, block.norm2.weight, block.norm2.bias, 1e-6)),
                 block.conv2.weight, block.conv2.bias, padding=1)
    torch.testing.assert_close(block(x), conv1x1(x, block.nin_shortcut) + h, atol=1e-12, rtol=0)


def test_downsample_pads_right_and_bottom_only():
    down = randomise_(Downsample(32, with_conv=True).double(), seed=7)
    x = torch.randn(1, 32, 6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    padded = torch.zeros(1, 32, 7, 9, dtype=torch.float64)
    padded[..., :6, :8] = x
    expected = F.conv2d(padded, down.conv.weight, down.conv.bias, stride=2)
    assert expected.shape[-2:] == (3, 4)
    torch.testing.assert_close(down(x), expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(
        Downsample(32, with_conv=False)(x), x.unfold(2, 2, 2).unfold(3, 2, 2).mean((-1, -2))
    )


def test_vector_quantizer_nearest_code_first_on_ties():
    vq = randomise_(VectorQuantizer(n_embed=10, embed_dim=4).double(), seed=9)
    with torch.no_grad():
        vq.embedding.weight[7] = vq.embedding.weight[2]  # exact duplicate: index 2 must win
    z = torch.randn(2, 4, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    z[0, :, 0, 0] = vq.embedding.weight[7]
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    expected = torch.cdist(flat, vq.embedding.weight).argmin(dim=1).reshape(2, 3, 5)
    indices = vq.codes(z)
    assert torch.equal(indices, expected) and indices[0, 0, 0] == 2


def test_vector_quantizer_training_forward():
    vq = randomise_(VectorQuantizer(n_embed=10, embed_dim=4, beta=0.25).double(), seed=11)
    z = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    z_q, loss, indices = vq(z)
    e = vq.lookup(indices)
    torch.testing.assert_close(z_q, e)
    torch.testing.assert_close(loss, 1.25 * ((z - e) ** 2).mean())
    z_q.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # straight-through
    vq.zero_grad()
    loss.backward()
    assert vq.embedding.weight.grad.abs().sum() > 0  # the codebook term trains the codes


def test_gumbel_quantizer_eval_is_argmax_and_training_samples_codes():
    gq = randomise_(GumbelQuantizer(z_channels=4, n_embed=10, embed_dim=4), seed=12)
    z = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(13))
    gq.eval()
    z_q, _, indices = gq(z)
    assert torch.equal(indices, gq.proj(z).argmax(dim=1)) and torch.equal(indices, gq.codes(z))
    assert torch.equal(z_q, gq.lookup(indices))
    gq.train()
    z_q, loss, indices = gq(z)
    torch.testing.assert_close(z_q, gq.lookup(indices))  # hard samples are codebook rows
    (z_q.sum() + loss).backward()
    assert gq.proj.weight.grad.abs().sum() > 0


# --- structure: keys that follow from the config ---------------------------------------------


def tiny_config(**ddconfig):
    dd = {"double_z": False, "z_channels": 4, "resolution": 32, "in_channels": 3, "out_ch": 3,
          "ch": 32, "ch_mult": [1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [8],
          "dropout": 0.0, **ddconfig}
    return config_from_dict({"model": {"target": "ldm.models.autoencoder.VQModel",
                                       "params": {"embed_dim": 4, "n_embed": 8, "ddconfig": dd}}})


def attention_keys(model):
    return sorted({k.rsplit(".", 2)[0] for k in model.state_dict() if ".attn" in k})


def test_attention_placement_follows_nominal_resolution():
    # resolution 34, three levels: encoder levels are 34, 17, 8; decoder levels 32, 16, 8
    model = build_vqgan(tiny_config(resolution=34, attn_resolutions=[17, 32]))
    assert attention_keys(model) == [
        "decoder.mid.attn_1", "decoder.up.0.attn.0", "decoder.up.0.attn.1",
        "encoder.down.1.attn.0", "encoder.mid.attn_1",
    ]


def test_ldm_attention_variants():
    assert attention_keys(build_vqgan(tiny_config(attn_type="none"))) == []
    for variant in ({"attn_type": "linear"}, {"use_linear_attn": True}):
        keys = build_vqgan(tiny_config(**variant)).state_dict()
        assert [k for k in keys if k.startswith("encoder.mid.attn_1")] == [
            "encoder.mid.attn_1.to_qkv.weight",
            "encoder.mid.attn_1.to_out.weight",
            "encoder.mid.attn_1.to_out.bias",
        ]
        assert keys["encoder.mid.attn_1.to_qkv.weight"].shape == (96, 32, 1, 1)
    for attn_type in ("none", "linear"):
        images = build_vqgan(tiny_config(attn_type=attn_type)).eval().decode(
            torch.zeros(1, 3, 5, dtype=torch.long))
        assert images.shape == (1, 3, 12, 20)


@torch.no_grad()
def test_tanh_out_and_resampling_without_conv():
    plain = build_vqgan(tiny_config()).eval()
    tanh = build_vqgan(tiny_config(tanh_out=True)).eval()
    tanh.load_state_dict(plain.state_dict())
    z = torch.randn(1, 4, 2, 3, generator=torch.Generator().manual_seed(14))
    torch.testing.assert_close(tanh.decode_latent(z), plain.decode_latent(z).tanh())
    no_conv = build_vqgan(tiny_config(resamp_with_conv=False))
    assert not [k for k in no_conv.state_dict() if "sample" in k]
    assert no_conv.eval().encode(torch.zeros(1, 3, 8, 12)).shape == (1, 2, 3)
