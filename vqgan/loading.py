"""`load_vqgan`: a config file and a checkpoint in, a ready VQGAN out."""
import torch

from infra.devices import resolve_device
from vqgan.checkpoint import AUTOENCODER_PREFIXES, load_autoencoder_state
from vqgan.config import read_config
from vqgan.errors import VQGANError
from vqgan.model import VQGAN


def load_vqgan(config_path, ckpt_path, legacy_cfg=None, device="cpu") -> VQGAN:
    """Build the VQGAN a taming/LDM config describes and load its weights from `ckpt_path`.

    `legacy_cfg`: None detects a combined Net2Net config, True forces that reading, False forces
    the plain one. The model comes back in eval mode with gradients off.
    """
    device = resolve_device(device)
    config = read_config(config_path, legacy_cfg)
    state = load_autoencoder_state(ckpt_path, config.key_prefix)
    where = f"checkpoint {ckpt_path} does not fit config {config_path}"
    if not state:
        prefixes = ", ".join(config.key_prefix + p for p in AUTOENCODER_PREFIXES)
        hint = (
            "; a combined (Net2Net) checkpoint needs its combined config or legacy_cfg=True"
            if not config.key_prefix else "; a plain VQ-GAN checkpoint needs its own VQ-GAN config"
        )
        raise VQGANError(f"{where}: no autoencoder weights (no key starts with {prefixes}){hint}")
    # shapes only, no memory and no random init: every parameter comes from the checkpoint
    with torch.device("meta"):
        model = VQGAN(config)
    check_state_dict(model, state, where)
    model = model.to_empty(device=device)
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def check_state_dict(model, state, where):
    """Raise one VQGANError listing every missing, unexpected and shape-mismatched key."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} is {tuple(state[k].shape)}, model wants {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = [
        _summary(items, label)
        for items, label in (
            (missing, "missing"),
            (unexpected, "unexpected"),
            (mismatched, "shape mismatch"),
        )
        if items
    ]
    if problems:
        raise VQGANError(f"{where}: " + "; ".join(problems))


def _summary(items, label, shown=3):
    more = f", ... ({len(items) - shown} more)" if len(items) > shown else ""
    return f"{len(items)} {label}: {', '.join(items[:shown])}{more}"
