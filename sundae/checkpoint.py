"""Reading our own training checkpoints: for resuming and for sampling (EMA weights)."""
from pathlib import Path

import torch

from sundae.denoiser import build_denoiser
from sundae.errors import SundaeError

# Config entries that decide the network's shape: a checkpoint must agree on all of them.
ARCHITECTURE_KEYS = [("data", "vocab_size"), ("data", "latent_shape"), ("net", "type"), ("net", "dim"),
                     ("net", "nb_heads"), ("net", "dim_head"), ("net", "depth"), ("net", "shorten_factor"),
                     ("net", "ff_mult"), ("net", "use_rotary"), ("net", "updown_sample_type"),
                     ("net", "attn_resampling"), ("net", "conditional"), ("net", "num_classes")]


def read_checkpoint(path):
    """Load a checkpoint dict without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise SundaeError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise SundaeError(f"{path}: not a readable checkpoint ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt.get("hyper_parameters", {}):
        raise SundaeError(f"{path}: not a SUNDAE training checkpoint (no state_dict / config)")
    return ckpt


def check_checkpoint_matches(path, cfg, ckpt=None):
    """SundaeError naming the first architecture key where checkpoint and config disagree."""
    saved = (ckpt or read_checkpoint(path))["hyper_parameters"]["config"]
    for section, key in ARCHITECTURE_KEYS:
        mine = getattr(getattr(cfg, section), key)
        theirs = saved.get(section, {}).get(key)
        if _normalise(mine) != _normalise(theirs):
            raise SundaeError(f"{path}: checkpoint was trained with {section}.{key} = {theirs!r}, "
                              f"but {cfg.path or 'the config'} has {mine!r}")


def _normalise(value):
    return [_normalise(v) for v in value] if isinstance(value, (list, tuple)) else value


def load_denoiser(path, cfg, device="cpu", use_ema=True):
    """The denoiser of a training checkpoint, with its EMA weights when it has them, in eval mode."""
    ckpt = read_checkpoint(path)
    check_checkpoint_matches(path, cfg, ckpt)
    state = ckpt["state_dict"]
    prefix = "ema.module." if use_ema and any(k.startswith("ema.module.") for k in state) else "model."
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    model = build_denoiser(cfg)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise SundaeError(f"{path}: weights do not fit the config's [net] ({str(e).splitlines()[0]})") from None
    return model.to(device).eval().requires_grad_(False)
