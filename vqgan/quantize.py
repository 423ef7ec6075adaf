"""Codebooks: latents (B, C, h, w) <-> code indices (B, h, w).

`VectorQuantizer` matches taming's `VectorQuantizer2` (key `embedding.weight`), which
latent-diffusion reuses; `GumbelQuantizer` matches taming's `GumbelQuantize` (keys `proj.*`,
`embed.weight`). Both return `(z_q, loss, indices)` from forward, for training.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


class VectorQuantizer(nn.Module):
    def __init__(self, n_embed, embed_dim, beta=0.25):
        super().__init__()
        self.beta = beta
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def codes(self, z):
        """Index of the nearest codebook row: (B, C, h, w) -> (B, h, w)."""
        b, _, h, w = z.shape
        flat = rearrange(z, "b c h w -> (b h w) c")
        codebook = self.embedding.weight
        # expanded squared distance, as the reference computes it (same argmin decisions)
        distances = (
            flat.pow(2).sum(dim=1, keepdim=True)
            + codebook.pow(2).sum(dim=1)
            - 2 * flat @ codebook.t()
        )  # (B*h*w, n_embed)
        indices = distances.argmin(dim=1)  # first index on an exact tie
        return rearrange(indices, "(b h w) -> b h w", b=b, h=h, w=w)

    def lookup(self, indices):
        """Codebook rows, channels first: (B, h, w) -> (B, C, h, w)."""
        return rearrange(self.embedding(indices), "b h w c -> b c h w")

    def forward(self, z):
        indices = self.codes(z)
        e = self.lookup(indices)
        # codebook loss pulls codes towards latents, commitment loss latents towards codes.
        # (taming's default `legacy` variant puts beta on the codebook term instead.)
        codebook_loss = F.mse_loss(e, z.detach())
        commitment_loss = F.mse_loss(z, e.detach())
        loss = codebook_loss + self.beta * commitment_loss
        z_q = z + (e - z).detach()  # straight-through: forward value e, gradient to z
        return z_q, loss, indices


class GumbelQuantizer(nn.Module):
    """Logits over codes from a 1x1 conv; Gumbel-softmax sampling in training, argmax in eval.

    The reference samples Gumbel noise even in eval mode; we take the deterministic argmax there
    (the rule the conformance fixtures use), so encode is a function of the input.
    """

    def __init__(self, z_channels, n_embed, embed_dim, kl_weight=1e-8, temperature=1.0):
        super().__init__()
        self.n_embed = n_embed
        self.kl_weight = kl_weight
        self.temperature = temperature  # of the Gumbel-softmax in training; our trainer keeps it fixed
        self.proj = nn.Conv2d(z_channels, n_embed, 1)
        self.embed = nn.Embedding(n_embed, embed_dim)

    def codes(self, z):
        """Most likely code: (B, C, h, w) -> (B, h, w)."""
        return self.proj(z).argmax(dim=1)

    def lookup(self, indices):
        return rearrange(self.embed(indices), "b h w c -> b c h w")

    def forward(self, z):
        logits = self.proj(z)  # (B, n_embed, h, w)
        if not self.training:
            indices = logits.argmax(dim=1)
            return self.lookup(indices), logits.new_zeros(()), indices
        # hard samples in the forward pass, soft gradients (straight-through), as taming does
        one_hot = F.gumbel_softmax(logits, tau=self.temperature, hard=True, dim=1)
        z_q = torch.einsum("b n h w, n d -> b d h w", one_hot, self.embed.weight)
        # KL(q || uniform prior) keeps code usage spread out
        q = logits.softmax(dim=1)
        kl = (q * (q * self.n_embed + 1e-10).log()).sum(dim=1).mean()
        return z_q, self.kl_weight * kl, one_hot.argmax(dim=1)
