"""A VQ-GAN compatible with taming-transformers and latent-diffusion checkpoints."""
from vqgan.config import DDConfig, VQGANConfig, config_from_dict, read_config
from vqgan.errors import VQGANError
from vqgan.loading import load_vqgan
from vqgan.model import VQGAN, build_vqgan

__all__ = [
    "DDConfig",
    "VQGAN",
    "VQGANConfig",
    "VQGANError",
    "build_vqgan",
    "config_from_dict",
    "load_vqgan",
    "read_config",
]
