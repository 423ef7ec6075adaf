"""The PatchGAN discriminator of taming's VQ-GAN loss (pix2pix's NLayerDiscriminator layout).

Its only submodule is the `main` Sequential, whose indices are taming's checkpoint keys
(`loss.discriminator.main.0.weight`, `...main.3.running_mean`, ...): reorder nothing.
"""
import torch.nn as nn


def conv_out_size(size, kernel=4, stride=2, padding=1):
    return (size + 2 * padding - kernel) // stride + 1


class PatchDiscriminator(nn.Module):
    """Images (B, C, H, W) -> real/fake logits per overlapping patch, (B, 1, h, w).

    A stride-2 4x4 conv, then `num_layers` conv-BatchNorm-LeakyReLU blocks doubling the width
    (at most 8 * ndf); the last block keeps the resolution (stride 1), as does the final 1-channel
    conv. Convs before a BatchNorm have no bias: the norm's shift replaces it.
    """

    def __init__(self, in_channels=3, ndf=64, num_layers=3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = ndf
        for n in range(1, num_layers + 1):
            out = ndf * min(2**n, 8)
            stride = 2 if n < num_layers else 1
            layers += [
                nn.Conv2d(width, out, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2),
            ]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.num_layers = num_layers
        self.apply(_dcgan_init)

    def forward(self, x):
        return self.main(x)

    @staticmethod
    def output_size(size, num_layers):
        """Side of the logit map for an input side `size` (<= 0: the input is too small)."""
        size = conv_out_size(size)  # the first conv
        for n in range(1, num_layers + 1):
            size = conv_out_size(size, stride=2 if n < num_layers else 1)
        return conv_out_size(size, stride=1)  # the final 1-channel conv


def _dcgan_init(module):
    # N(0, 0.02) convs and N(1, 0.02) norm scales (DCGAN's recipe, which taming also uses)
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
