"""Token grids -> images: through the VQ-GAN decoder, or as gray levels when there is none."""
import torch
import torch.nn.functional as F
from einops import repeat


def tokens_to_gray(tokens, vocab_size, scale=4):
    """(B, h, w) tokens read as gray levels 0..V-1 -> (B, 3, h*scale, w*scale) in [-1, 1]."""
    x = tokens.float() / max(vocab_size - 1, 1) * 2 - 1
    x = repeat(x, "b h w -> b c h w", c=3)
    return F.interpolate(x, scale_factor=scale, mode="nearest") if scale > 1 else x


@torch.inference_mode()
def render_tokens(tokens, vocab_size, vqgan=None, batch_size=16):
    """(B, h, w) -> (B, 3, H, W) images in [-1, 1] on the CPU, decoded by `vqgan` when given."""
    if vqgan is None:
        return tokens_to_gray(tokens.cpu(), vocab_size)
    device = next(vqgan.parameters()).device
    return torch.cat([vqgan.decode(chunk.to(device)).float().cpu() for chunk in tokens.split(batch_size)])
