"""LPIPS (Zhang et al. 2018), the perceptual distance of taming's VQ-GAN loss, in its key layout.

Keys are those under `loss.perceptual_loss.` in a taming checkpoint: `scaling_layer.shift/scale`,
the VGG16 convs as `net.slice1..5.<index in vgg16.features>`, and `lin0..4.model.1.weight`.
Weights are never downloaded: `load_lpips` reads a local file, either such a state_dict or any
taming VQ-GAN checkpoint (which carries LPIPS under `loss.perceptual_loss.`).
"""
from collections import OrderedDict

import torch
import torch.nn as nn

from vqgan.checkpoint import load_state_dict
from vqgan.loading import check_state_dict

TAMING_PREFIX = "loss.perceptual_loss."
# VGG16's feature extractor: conv widths, "M" for a 2x2 max-pool
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
SLICE_ENDS = (4, 9, 16, 23, 30)  # LPIPS taps the ReLU before each pool, and the last one
WIDTHS = (64, 128, 256, 512, 512)


def vgg16_features():
    layers, width = [], 3
    for item in VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(width, item, 3, padding=1), nn.ReLU()]
            width = item
    return layers


class ScalingLayer(nn.Module):
    """[-1, 1] images -> the input statistics VGG was trained on."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, x):
        return (x - self.shift) / self.scale


class VGGSlices(nn.Module):
    def __init__(self):
        super().__init__()
        layers, start = vgg16_features(), 0
        for i, end in enumerate(SLICE_ENDS, start=1):
            # keep each layer's index in vgg16.features as its name: the checkpoint keys
            named = OrderedDict((str(j), layers[j]) for j in range(start, end))
            setattr(self, f"slice{i}", nn.Sequential(named))
            start = end

    def forward(self, x):
        features = []
        for i in range(1, len(SLICE_ENDS) + 1):
            x = getattr(self, f"slice{i}")(x)
            features.append(x)
        return features


class LinearHead(nn.Module):
    """A learned non-negative weight per channel; `model.0` is the dropout in the reference's
    layout (inactive here, see LPIPS.train)."""

    def __init__(self, channels):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x):
        return self.model(x)


class LPIPS(nn.Module):
    """Perceptual distance of image pairs in [-1, 1]: (B, 3, H, W) x 2 -> (B, 1, 1, 1)."""

    def __init__(self):
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.net = VGGSlices()
        for i, width in enumerate(WIDTHS):
            setattr(self, f"lin{i}", LinearHead(width))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode=True):
        # Always eval: a fixed metric. (The reference leaves its heads' dropout active whenever
        # the training loop calls .train(), which makes the loss noisy; we do not.)
        return super().train(False)

    def forward(self, x, y):
        fx = self.net(self.scaling_layer(x))
        fy = self.net(self.scaling_layer(y))
        distance = 0
        for i, (a, b) in enumerate(zip(fx, fy)):
            diff = (unit_channels(a) - unit_channels(b)) ** 2  # (B, C_i, h_i, w_i)
            distance = distance + getattr(self, f"lin{i}")(diff).mean(dim=(2, 3), keepdim=True)
        return distance


def unit_channels(x, eps=1e-10):
    """Scale each position's feature vector to unit length."""
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def load_lpips(path, device="cpu") -> LPIPS:
    """LPIPS with the weights of a local file: its state_dict, or a taming checkpoint holding it
    under `loss.perceptual_loss.`. VQGANError when the file is missing or does not fit."""
    state = load_state_dict(path)
    if any(k.startswith(TAMING_PREFIX) for k in state):
        state = {k[len(TAMING_PREFIX):]: v for k, v in state.items() if k.startswith(TAMING_PREFIX)}
    with torch.device("meta"):
        model = LPIPS()
    check_state_dict(model, state, f"LPIPS weights {path} do not fit")
    model = model.to_empty(device=device)
    model.load_state_dict(state, strict=True)
    return model.requires_grad_(False).eval()
