"""The VQ-GAN autoencoder: images in [-1, 1] <-> grids of codebook indices.

Submodule names (`encoder`, `decoder`, `quantize`, `quant_conv`, `post_quant_conv`) are those of
taming's `VQModel`, so its checkpoints load key for key.
"""
import torch
import torch.nn as nn

from vqgan.config import VQGANConfig
from vqgan.errors import VQGANError
from vqgan.modules import Decoder, Encoder
from vqgan.quantize import GumbelQuantizer, VectorQuantizer

INDEX_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.uint16, torch.int32, torch.int64)


class VQGAN(nn.Module):
    """encode: images (B, 3, H, W) -> indices (B, H/f, W/f); decode: the way back.

    `encode_prequant` / `decode_latent` expose the continuous latents on either side of the
    quantizer; `forward` is the training pass.
    """

    def __init__(self, config: VQGANConfig):
        super().__init__()
        dd = config.ddconfig
        self.config = config
        self.encoder = Encoder(dd)
        self.decoder = Decoder(dd)
        if config.quantizer == "gumbel":
            self.quantize = GumbelQuantizer(
                dd.z_channels, config.n_embed, config.embed_dim, kl_weight=config.kl_weight
            )
        else:
            self.quantize = VectorQuantizer(config.n_embed, config.embed_dim, beta=config.beta)
        self.quant_conv = nn.Conv2d(dd.z_channels, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, dd.z_channels, 1)

    @property
    def codebook_size(self) -> int:
        return self.config.n_embed

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def downsample_factor(self) -> int:
        return self.config.ddconfig.downsample_factor

    @property
    def resolution(self) -> int:
        """The configured (training) resolution; inputs may have any size divisible by f."""
        return self.config.ddconfig.resolution

    def latent_shape(self, height, width) -> tuple[int, int]:
        """The index grid (h, w) of an H x W image."""
        f = self.downsample_factor
        if height % f or width % f:
            raise VQGANError(
                f"image size {height}x{width} is not divisible by the downsample factor f={f}"
            )
        return height // f, width // f

    def encode_prequant(self, x):
        """Continuous latent fed to the quantizer: (B, 3, H, W) -> (B, embed_dim, H/f, W/f)."""
        self._check_images(x)
        return self.quant_conv(self.encoder(x))

    def encode(self, x):
        """Images in [-1, 1], (B, 3, H, W) -> code indices, LongTensor (B, H/f, W/f)."""
        return self.quantize.codes(self.encode_prequant(x))

    def decode_latent(self, z_q):
        """Quantized latent (B, embed_dim, h, w) -> raw decoder output (B, 3, h*f, w*f)."""
        return self.decoder(self.post_quant_conv(z_q))

    def decode(self, indices):
        """Code indices (B, h, w) -> images (B, 3, h*f, w*f) clamped to [-1, 1]."""
        z_q = self.quantize.lookup(self._as_indices(indices))
        return self.decode_latent(z_q).clamp(-1, 1)

    def forward(self, x):
        """Training pass: (reconstruction, quantizer loss, indices); the image is not clamped."""
        z_q, qloss, indices = self.quantize(self.encode_prequant(x))
        return self.decode_latent(z_q), qloss, indices

    def _check_images(self, x):
        channels = self.config.ddconfig.in_channels
        if x.ndim != 4 or x.shape[1] != channels or not x.is_floating_point():
            raise VQGANError(
                f"images must be a float tensor (B, {channels}, H, W), "
                f"got {x.dtype} of shape {tuple(x.shape)}"
            )
        self.latent_shape(x.shape[2], x.shape[3])

    def _as_indices(self, indices):
        if indices.ndim != 3 or indices.dtype not in INDEX_DTYPES:
            raise VQGANError(
                f"indices must be an integer tensor (B, h, w), "
                f"got {indices.dtype} of shape {tuple(indices.shape)}"
            )
        indices = indices.long()  # e.g. uint16 from a latent dataset; Embedding wants int64
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.codebook_size):
            raise VQGANError(
                f"indices must lie in [0, {self.codebook_size}), "
                f"got values from {int(indices.min())} to {int(indices.max())}"
            )
        return indices


def build_vqgan(config: VQGANConfig) -> VQGAN:
    """A freshly initialised VQGAN (PyTorch default init), e.g. to train from scratch."""
    return VQGAN(config)
