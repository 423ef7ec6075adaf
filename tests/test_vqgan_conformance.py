"""Our VQGAN against taming-transformers / latent-diffusion reference outputs.

Every fixture in ../shared/fixtures/vqgan/ (see its README) was produced by the reference code;
indices must match exactly and images within the fixture's tolerance.
"""
import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch

from vqgan import load_vqgan

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "vqgan"
NAMES = sorted(p.parent.name for p in FIXTURES.glob("*/config.yaml"))
ATOL = 1e-4  # sound for every fixture (README: float32 noise is ~3e-6, real bugs >= 8e-4)

fixture_names = pytest.mark.parametrize(
    "name",
    NAMES or [pytest.param(None, marks=pytest.mark.skip(reason=f"no VQ-GAN fixtures in {FIXTURES}"))],
)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """These models are tiny: a second intra-op thread only adds synchronisation, which stalls
    for whole scheduler slices when the CPU is shared (seconds per test instead of ms)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
