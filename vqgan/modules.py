"""Encoder and decoder of the taming-transformers / latent-diffusion VQ-GAN.

Attribute names are checkpoint keys (`down.0.block.1.norm1.weight`, `mid.attn_1.q.bias`, ...)
and attribute order is key order: rename or reorder nothing without checking the fixtures.
"""
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from vqgan.config import DDConfig


def swish(x):
    return x * x.sigmoid()


def group_norm(channels):
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """Two pre-norm 3x3 convs with swish, added onto the (projected) input."""

    def __init__(self, in_ch, out_ch, dropout=0.0):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        # a 1x1 projection on the skip path only where the width changes
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x):
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all h*w positions, added back onto the input."""

    def __init__(self, ch):
        super().__init__()
        self.norm = group_norm(ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        height = x.shape[-2]
        h = self.norm(x)
        # (B, C, h, w) -> (B, 1, h*w, C): one head whose width is all C channels
        q, k, v = (rearrange(f(h), "b c h w -> b 1 (h w) c") for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # scale C ** -0.5, softmax over keys
        out = rearrange(out, "b 1 (h w) c -> b c h w", h=height)
        return x + self.proj_out(out)


class LinearAttnBlock(nn.Module):
    """latent-diffusion's linear attention (one head of width C); replaces its input, no norm."""

    def __init__(self, ch):
        super().__init__()
        self.to_qkv = nn.Conv2d(ch, 3 * ch, 1, bias=False)
        self.to_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        height = x.shape[-2]
        # (B, 3C, h, w) -> 3 x (B, C, h*w)
        q, k, v = rearrange(self.to_qkv(x), "b (three c) h w -> three b c (h w)", three=3)
        k = k.softmax(dim=-1)  # over positions, so the context is a weighted mean of values
        context = k @ v.transpose(1, 2)  # (B, C_k, C_v)
        out = context.transpose(1, 2) @ q  # (B, C_v, h*w)
        return self.to_out(rearrange(out, "b c (h w) -> b c h w", h=height))


def attention(ch, attn_type):
    if attn_type == "vanilla":
        return AttnBlock(ch)
    if attn_type == "linear":
        return LinearAttnBlock(ch)
    return nn.Identity()  # "none": no attention and no keys


class Downsample(nn.Module):
    def __init__(self, ch, with_conv):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0) if with_conv else None

    def forward(self, x):
        if self.conv is None:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        # asymmetric: one zero column on the right and one row at the bottom
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, ch, with_conv):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1) if with_conv else None

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)


class Level(nn.Module):
    """One resolution level: ResnetBlocks, each followed by attention where configured."""

    def __init__(self, widths, use_attn, attn_type, dropout):
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(w_in, w_out, dropout) for w_in, w_out in zip(widths, widths[1:])
        )
        # Identity placeholders keep forward uniform and add no state_dict keys
        self.attn = nn.ModuleList(
            attention(w, attn_type) if use_attn else nn.Identity() for w in widths[1:]
        )

    def forward(self, x):
        for block, attn in zip(self.block, self.attn):
            x = attn(block(x))
        return x


class DownLevel(Level):
    def __init__(self, widths, use_attn, attn_type, dropout, downsample):
        super().__init__(widths, use_attn, attn_type, dropout)
        self.downsample = downsample  # nn.Identity on the deepest level

    def forward(self, x):
        return self.downsample(super().forward(x))


class UpLevel(Level):
    def __init__(self, widths, use_attn, attn_type, dropout, upsample):
        super().__init__(widths, use_attn, attn_type, dropout)
        self.upsample = upsample  # nn.Identity on the full-resolution level

    def forward(self, x):
        return self.upsample(super().forward(x))


class MidBlock(nn.Module):
    def __init__(self, ch, attn_type, dropout):
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch, dropout)
        self.attn_1 = attention(ch, attn_type)
        self.block_2 = ResnetBlock(ch, ch, dropout)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """(B, in_channels, H, W) -> (B, z_channels, H/f, W/f)."""

    def __init__(self, cfg: DDConfig):
        super().__init__()
        n = cfg.num_levels
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        width = cfg.ch
        for i, mult in enumerate(cfg.ch_mult):
            level_width = cfg.ch * mult
            last = i == n - 1
            self.down.append(DownLevel(
                [width] + [level_width] * cfg.num_res_blocks,
                use_attn=cfg.resolution // 2**i in cfg.attn_resolutions,  # nominal resolution
                attn_type=cfg.attn_type,
                dropout=cfg.dropout,
                downsample=nn.Identity() if last else Downsample(level_width, cfg.resamp_with_conv),
            ))
            width = level_width
        self.mid = MidBlock(width, cfg.attn_type, cfg.dropout)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, cfg.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, z_channels, h, w) -> (B, out_ch, h*f, w*f)."""

    def __init__(self, cfg: DDConfig):
        super().__init__()
        n = cfg.num_levels
        width = cfg.ch * cfg.ch_mult[-1]
        lowest_res = cfg.resolution // 2 ** (n - 1)
        self.tanh_out = cfg.tanh_out
        self.conv_in = nn.Conv2d(cfg.z_channels, width, 3, padding=1)
        self.mid = MidBlock(width, cfg.attn_type, cfg.dropout)
        # built deepest first but indexed by level, so up[0] is the full-resolution level
        levels = [None] * n
        for i in reversed(range(n)):
            level_width = cfg.ch * cfg.ch_mult[i]
            levels[i] = UpLevel(
                [width] + [level_width] * (cfg.num_res_blocks + 1),
                use_attn=lowest_res * 2 ** (n - 1 - i) in cfg.attn_resolutions,
                attn_type=cfg.attn_type,
                dropout=cfg.dropout,
                upsample=nn.Identity() if i == 0 else Upsample(level_width, cfg.resamp_with_conv),
            )
            width = level_width
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, cfg.out_ch, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        h = self.conv_out(swish(self.norm_out(h)))
        return h.tanh() if self.tanh_out else h
