"""The benches' models come from configs: a shipped config file with edits, read by the one
config reader (training.config) and built by the priors' registry (priors.build_model).

    cfg = load(FFHQ1024, {"net": {"dim": 256, "nb_heads": 4}, "vqgan": None})
    ar = with_prior(cfg, "autoregressive", net={"type": "vanilla", "depth": 9})
    model = priors.build_model(ar)

Edits are {section: {key: value}} merged into the file's tables: a key set to None is left out
(its default applies), a section set to None is left out, any other top-level value (such as
the original layout's unroll_steps) replaces the file's.
"""
import dataclasses
from pathlib import Path

from infra.config import read_toml
from priors.base import a_prior
from training.config import config_from_dict

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "config" / "digits.toml"
FFHQ1024 = REPO / "config" / "ffhq1024" / "ffhq1024-hourglass.toml"


def edit(table, edits):
    """A copy of `table` (a parsed TOML file) with `edits` applied (see the module docstring)."""
    table = {k: dict(v) if isinstance(v, dict) else v for k, v in table.items()}
    for section, values in edits.items():
        if isinstance(values, dict):
            merged = {**table.get(section, {}), **values}
            table[section] = {k: v for k, v in merged.items() if v is not None}
        elif values is None:
            table.pop(section, None)
        else:
            table[section] = values
    return table


def load(path, edits=None):
    """The config file at `path` with `edits` applied, read and checked by the config reader."""
    cfg = config_from_dict(edit(read_toml(path), edits or {}), source=f"{path} (edited by bench)", warn=False)
    cfg.path = str(path)
    return cfg


def table(cfg):
    """A Config as the table the reader takes: its sections, unset (None) values left out."""
    out = {}
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if f.init and section is not None:
            out[f.name] = {k: v for k, v in dataclasses.asdict(section).items() if v is not None}
    return out


def with_prior(cfg, kind, net=None):
    """`cfg`'s data, trainer and [net] (with `net` edits) under another prior: the [prior] and
    [sampling] defaults of the prior `kind` names (priors.PRIORS)."""
    values = table(cfg)
    values["prior"] = {"type": kind}
    values.pop("sampling", None)
    new = config_from_dict(edit(values, {"net": net or {}}), source=f"{cfg.path or 'config'} as {a_prior(kind)}",
                           warn=False)
    new.path = cfg.path
    return new
