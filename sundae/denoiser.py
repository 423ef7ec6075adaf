"""Build the denoiser a config's [net] section describes."""
import torch

from hourglass_transformer import HourglassError, HourglassTransformerLM
from infra.devices import check_fits_in_memory
from sundae.errors import SundaeError


def build_denoiser(cfg):
    """HourglassTransformerLM for `net.type = "hourglass"`; for "vanilla"/"transformer" the same
    class with an integer depth (no down-sampling): one code path for both. Every [net] key that
    shapes the model is passed through (see NetConfig)."""
    net = cfg.net
    flat = isinstance(net.depth, int)
    if net.type == "hourglass" and flat:
        raise SundaeError(f"net.depth: an hourglass net takes [pre, valley, post], got {net.depth!r}")
    if net.type != "hourglass" and not flat:
        raise SundaeError(f"net.depth: a {net.type} net takes an int depth, got {net.depth!r}")
    with torch.device("meta"):  # count first: shapes only, no memory
        check_fits_in_memory(sum(p.numel() for p in _backbone(cfg).parameters()), f"{cfg.path or 'config'}: [net]")
    return _backbone(cfg)


def _backbone(cfg):
    net = cfg.net
    try:
        return HourglassTransformerLM(
            num_tokens=cfg.data.vocab_size,
            dim=net.dim,
            depth=net.depth,
            shorten_factor=net.shorten_factor,
            heads=net.nb_heads,
            dim_head=net.dim_head,
            ff_mult=net.ff_mult,
            attn_dropout=net.attn_dropout,
            ff_dropout=net.ff_dropout,
            updown_sample_type=net.updown_sample_type,
            attn_resampling=net.attn_resampling,
            attn_resampling_type=net.attn_resampling_type,
            resampling_layout=net.resampling_layout,
            rotary_pos_emb=net.use_rotary,
            rotary_coords=net.rotary_coords,
            rotary_layout=net.rotary_layout,
            num_classes=net.num_classes if net.conditional else None,
            max_grid=tuple(cfg.data.latent_shape),
        )
    except HourglassError as e:  # e.g. a shorten factor that is not a perfect square
        raise SundaeError(f"[net]: {e}") from None
