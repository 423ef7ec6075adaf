"""Reading our own training checkpoints: for resuming and for sampling (EMA weights).

A checkpoint carries the config it was trained with (`hyper_parameters.config`), so the model it
holds can always be rebuilt. Whether it fits a config is decided the nanoGPT way: build the
config's model and compare state_dict shapes; on a mismatch, name the first setting whose saved
value explains it.
"""
import dataclasses
import pickle
import re
import warnings
from pathlib import Path

import torch

from infra.errors import UserError
from priors import DEFAULT_PRIOR, build_model
from priors.base import a_prior
from training.config import config_from_dict


def read_checkpoint(path):
    """Load a checkpoint dict without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:  # torch would talk about mmap and zip serialisation
        raise UserError(f"{path}: empty file (0 bytes), not a checkpoint")
    try:
        with warnings.catch_warnings():  # a TorchScript file: torch warns before our one line
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
            # never echo torch's advice to pass weights_only=False: that runs the code the file brings
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
            raise UserError(f"{path}: holds Python objects other than tensors and plain containers"
                            f"{f' ({found[1]})' if found else ''}; not loaded, for safety (not a SUNDAE "
                            "training checkpoint)") from None
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt.get("hyper_parameters", {}):
        raise UserError(f"{path}: not a SUNDAE training checkpoint (no state_dict / config)")
    return ckpt


def model_weights(ckpt, use_ema=True):
    """The denoiser's state_dict in a training checkpoint: its EMA when it has one and use_ema."""
    state = ckpt["state_dict"]
    prefix = "ema.module." if use_ema and any(k.startswith("ema.module.") for k in state) else "model."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


# Settings that change what the model computes but not the shape of any weight, so that the
# shape comparison cannot see them: compared by value.
SHAPELESS_SETTINGS = [("net", "rotary_layout"), ("net", "rotary_coords"), ("net", "resampling_layout")]


def check_fits(path, ckpt, cfg):
    """UserError, one line, when the checkpoint's model is not the model `cfg` builds."""
    saved = _saved_config(path, ckpt)
    if saved.prior.type != cfg.prior.type:
        raise UserError(f"{path}: a checkpoint of {a_prior(saved.prior.type)}, but {cfg.path or 'the config'} "
                          f"has prior.type = {cfg.prior.type!r}")
    shapes = _shapes(cfg)
    if shapes == {k: tuple(v.shape) for k, v in model_weights(ckpt, use_ema=False).items()}:
        for section, key in SHAPELESS_SETTINGS:
            theirs, mine = getattr(getattr(saved, section), key), getattr(getattr(cfg, section), key)
            if theirs != mine:
                raise UserError(f"{path}: checkpoint was trained with {section}.{key} = {theirs!r}, "
                                  f"but {cfg.path or 'the config'} has {mine!r}")
        return
    for section, key in _settings(cfg):
        theirs = getattr(getattr(saved, section), key)
        mine = getattr(getattr(cfg, section), key)
        if theirs != mine and _shapes(_with(cfg, section, key, theirs)) != shapes:
            raise UserError(f"{path}: checkpoint was trained with {section}.{key} = {theirs!r}, "
                              f"but {cfg.path or 'the config'} has {mine!r}")
    raise UserError(f"{path}: its weights do not fit the model of {cfg.path or 'the config'}")


def load_denoiser(path, cfg, device="cpu", use_ema=True):
    """The denoiser of a training checkpoint, with its EMA weights when it has them, in eval mode."""
    ckpt = read_checkpoint(path)
    check_fits(path, ckpt, cfg)
    model = build_model(cfg)
    model.load_state_dict(model_weights(ckpt, use_ema))
    return model.to(device).eval().requires_grad_(False)


def _shapes(cfg):
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        return {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}


def _settings(cfg):
    """The settings a model is built from, in the order they are reported."""
    return [("data", "vocab_size"), ("data", "latent_shape"),
            *(("net", f.name) for f in dataclasses.fields(cfg.net))]


def _with(cfg, section, key, value):
    new = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **{key: value})})
    try:
        _shapes(new)
    except UserError:  # the saved value does not even build with the rest of this config
        return cfg
    return new


def _saved_config(path, ckpt):
    """The saved config's sections that build the model ([data], [net], the prior's type): what
    the run trained with otherwise (its sampling, its trainer) never decides whether weights fit,
    and checkpoints of earlier versions wrote those sections in older layouts."""
    saved = ckpt["hyper_parameters"]["config"]
    table = {"data": saved.get("data", {}), "net": saved.get("net", {}),
             "prior": {"type": (saved.get("prior") or {}).get("type", DEFAULT_PRIOR)}}
    try:
        return config_from_dict(_drop_nones(table), source=f"{path} (its saved config)", warn=False)
    except UserError as e:
        raise UserError(f"{path}: its saved config no longer reads ({e})") from None


def _drop_nones(table):
    """asdict() writes unset options as None; TOML has no null, so they are left out."""
    if isinstance(table, dict):
        return {k: _drop_nones(v) for k, v in table.items() if v is not None}
    return table
