"""The configs in config/ agree with themselves: each [vqgan] YAML parses, and each prior config
that names one has the VQ-GAN's codebook as its vocabulary and its grid as latent shape."""
from pathlib import Path

import pytest

from tests.helpers import REPO
from training.config import load_config
from vqgan.config import read_config

CONFIG = REPO / "config"
PRIOR_CONFIGS = sorted(CONFIG.rglob("*.toml"))
VQGAN_CONFIGS = sorted((CONFIG / "vqgan").glob("*.yaml"))


def test_there_are_configs():
    assert (CONFIG / "digits.toml") in PRIOR_CONFIGS and VQGAN_CONFIGS


@pytest.mark.parametrize("path", VQGAN_CONFIGS, ids=lambda p: p.name)
def test_vqgan_yaml_parses(path):
    cfg = read_config(path)
    assert cfg.n_embed >= 2 and cfg.ddconfig.resolution % cfg.ddconfig.downsample_factor == 0


@pytest.mark.parametrize("path", PRIOR_CONFIGS, ids=lambda p: str(p.relative_to(CONFIG)))
def test_prior_config_matches_its_vqgan(path):
    cfg = load_config(path)
    if cfg.vqgan is None:
        return
    vq_path = Path(cfg.vqgan.config)
    if not vq_path.is_absolute():
        vq_path = CONFIG.parent / vq_path
    if not vq_path.is_file():
        pytest.skip(f"{path.name} names a VQ-GAN config outside config/: {vq_path}")
    vq = read_config(vq_path, legacy_cfg=cfg.vqgan.legacy_cfg)
    side = vq.ddconfig.resolution // vq.ddconfig.downsample_factor
    assert cfg.data.vocab_size == vq.n_embed
    assert list(cfg.data.latent_shape) == [side, side]
