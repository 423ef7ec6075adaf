"""The priors over token grids, and their registry (`[prior] type` -> the prior's class).

    sundae          the paper's step-unrolled denoising over a non-causal hourglass (priors.sundae)
    absorbing       absorbing-state diffusion, Unleashing's or MaskGIT's decoding (priors.absorbing)
    autoregressive  a causal raster-order transformer with a KV cache (priors.autoregressive)

Each prior class owns its settings (`Training`: its [prior] section, `Sampling`: its [sampling]
section), its samplers and its capabilities (priors.base.Prior); nothing outside this registry
tests a prior's name.
"""
from priors.absorbing import Absorbing
from priors.autoregressive import Autoregressive
from priors.base import Prior
from priors.sundae import Sundae

PRIORS = {prior.name: prior for prior in (Sundae, Absorbing, Autoregressive)}
DEFAULT_PRIOR = "sundae"  # of a config without [prior] type (the original layout)


def prior_for(cfg) -> Prior:
    """The prior a config's `[prior] type` names, for that config."""
    return PRIORS[cfg.prior.type](cfg)


def build_model(cfg, device=None):
    """The model a config's [prior] and [net] describe (fresh weights)."""
    model = prior_for(cfg).build_model()
    return model if device is None else model.to(device)
