"""The VQ-GAN objective (taming's VQLPIPSWithDiscriminator, with Unleashing Transformers' clamp
and DiffAugment): L1 + LPIPS reconstruction, codebook terms, a PatchGAN with hinge loss.

Generator:      nll + lambda * disc_weight * disc_factor * L_G + codebook_weight * L_codebook
Discriminator:  disc_factor * hinge(D(real), D(fake))
where nll = mean(pixelloss_weight * |x - x_rec| + perceptual_weight * LPIPS(x, x_rec)),
L_G = -mean(D(x_rec)), and lambda = ||grad nll|| / (||grad L_G|| + delta) on the decoder's last
layer, clamped to [0, adaptive_weight_max]. Both GAN terms are off before `disc_start`.
"""
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqgan.diffaug import Augmentation, DiffAugment
from vqgan.discriminator import PatchDiscriminator
from vqgan.training_config import LossConfig

ADAPTIVE_WEIGHT_DELTA = 1e-4


def l1_loss(x, recon):
    """Absolute error per pixel: (B, C, H, W) x 2 -> (B, C, H, W)."""
    return (x - recon).abs()


def hinge_d_loss(logits_real, logits_fake):
    """Pushes real logits above +1 and fake ones below -1; zero loss beyond the margins."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real, logits_fake):
    """Binary cross-entropy with real = 1, fake = 0, on logits."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


D_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}


def generator_loss(logits_fake):
    """The generator wants the discriminator to score its images high."""
    return -logits_fake.mean()


def adaptive_weight(nll_loss, g_loss, last_layer, max_weight, delta=ADAPTIVE_WEIGHT_DELTA):
    """lambda = ||d nll / d w|| / (||d L_G / d w|| + delta), clamped to [0, max_weight], detached.

    Balances the two terms where they meet, at the decoder's last weight `w`: the GAN gradient
    gets the reconstruction gradient's size. The clamp keeps lambda bounded when the GAN gradient
    is tiny (e.g. right after `disc_start`), where it would otherwise explode.
    """
    (nll_grad,) = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)
    (g_grad,) = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    ratio = nll_grad.norm() / (g_grad.norm() + delta)
    return ratio.clamp(0.0, max_weight).detach()


@dataclass
class LossTerms:
    total: torch.Tensor
    logs: dict = field(default_factory=dict)  # name -> detached scalar tensor


class VQGANLoss(nn.Module):
    """Holds the discriminator and (optionally) LPIPS; attribute names are taming's keys
    (`discriminator.main.*`, `perceptual_loss.*`), so under a module attribute `loss` they give
    `loss.discriminator.main.*` in the checkpoint."""

    def __init__(self, cfg: LossConfig, adaptive_weight_max=1.0, perceptual: Optional[nn.Module] = None,
                 augment: Optional[DiffAugment] = None):
        super().__init__()
        self.cfg = cfg
        self.adaptive_weight_max = adaptive_weight_max
        if perceptual is not None:
            self.perceptual_loss = perceptual
        self.discriminator = PatchDiscriminator(cfg.disc_in_channels, cfg.disc_ndf, cfg.disc_num_layers)
        self.augment = augment
        self.d_loss = D_LOSSES[cfg.disc_loss]

    @property
    def perceptual(self):
        return getattr(self, "perceptual_loss", None)

    def disc_factor(self, step):
        return self.cfg.disc_factor if step >= self.cfg.disc_start else 0.0

    def _discriminate(self, x, aug: Optional[Augmentation]):
        if self.augment is not None and aug is not None:
            x = self.augment.apply(x, aug)
        return self.discriminator(x)

    def reconstruction(self, x, recon):
        """(nll, logs): the per-pixel L1 plus LPIPS per image, averaged."""
        rec = self.cfg.pixelloss_weight * l1_loss(x, recon)  # (B, C, H, W)
        logs = {"rec_loss": rec.detach().mean()}
        if self.perceptual is not None and self.cfg.perceptual_weight > 0:
            p_loss = self.perceptual(x, recon)  # (B, 1, 1, 1), broadcast per pixel
            rec = rec + self.cfg.perceptual_weight * p_loss
            logs["p_loss"] = p_loss.detach().mean()
        return rec.mean(), logs

    def generator_terms(self, x, recon, codebook_loss, step, last_layer, aug=None) -> LossTerms:
        nll, logs = self.reconstruction(x, recon)
        total = nll + self.cfg.codebook_weight * codebook_loss
        logs |= {"nll_loss": nll.detach(), "quant_loss": codebook_loss.detach()}
        factor = self.disc_factor(step)
        if factor > 0:
            g_loss = generator_loss(self._discriminate(recon, aug))
            weight = adaptive_weight(nll, g_loss, last_layer, self.adaptive_weight_max)
            total = total + weight * self.cfg.disc_weight * factor * g_loss
            logs |= {"g_loss": g_loss.detach(), "d_weight": weight}
        logs["total_loss"] = total.detach()
        return LossTerms(total, logs)

    def discriminator_terms(self, x, recon, step, aug=None) -> LossTerms:
        """`recon` should come detached: this loss trains the discriminator only."""
        logits_real = self._discriminate(x, aug)
        logits_fake = self._discriminate(recon, aug)
        loss = self.disc_factor(step) * self.d_loss(logits_real, logits_fake)
        logs = {"disc_loss": loss.detach(), "logits_real": logits_real.detach().mean(),
                "logits_fake": logits_fake.detach().mean()}
        return LossTerms(loss, logs)
