"""The one config reader: plain mappings (TOML or YAML) -> typed, validated dataclasses.

A config is a tree of dataclasses. Each field's annotation says what it accepts, its range
included, so a value is checked where it is declared:

    learning_rate: PositiveFloat = 1e-4          # a finite number > 0
    betas: Annotated[list[Probability], Length(2)] = ...
    lr_scheduler_name: Literal["constant", "cosine"] = "constant"

`build(cls, mapping, where, source)` checks every key: an unknown or misspelt key, a wrong type,
a non-finite float, an integer beyond int64 or a value out of range is a `ConfigError` naming
the file, the key and what was expected, e.g.
`tiny.toml: trainer.learning_rate: expected a finite number > 0, got inf`. Fields whose metadata
holds `ignored` are accepted for compatibility and reported back so the caller can warn.
"""
import dataclasses
import difflib
import math
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from infra.errors import UserError

Precision = Literal["32", "bf16-mixed", "16-mixed"]  # Lightning's training precisions we support
PRECISIONS = typing.get_args(Precision)
INT64_MAX = 2**63 - 1


class ConfigError(UserError):
    """A config value, key or file that does not fit; the message names the file and key."""


# --- constraints (used inside Annotated[...]) ------------------------------------------------

@dataclass(frozen=True)
class Range:
    """low <= value <= high (strict where *_open); either end may be None."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def check(self, value):
        return not ((self.low is not None and (value <= self.low if self.low_open else value < self.low))
                    or (self.high is not None and (value >= self.high if self.high_open else value > self.high)))

    def describe(self):
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        return f"{'<' if self.high_open else '<='} {self.high}"


@dataclass(frozen=True)
class Length:
    """A list of exactly n items."""
    n: int

    def check(self, value):
        return len(value) == self.n

    def describe(self):
        return f"with {self.n} items"


PositiveInt = Annotated[int, Range(low=1)]
NonNegativeInt = Annotated[int, Range(low=0)]
PositiveFloat = Annotated[float, Range(low=0, low_open=True)]
NonNegativeFloat = Annotated[float, Range(low=0)]
Probability = Annotated[float, Range(0, 1, high_open=True)]  # dropouts, decays, betas: [0, 1)
UnitFloat = Annotated[float, Range(0, 1)]


def setting(default=dataclasses.MISSING, doc="", *, factory=None, **metadata):
    """A config field with its one-line documentation, which the config reference and the
    command-line help print (`metadata["doc"]`); `factory` for mutable defaults."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"doc": doc, **metadata})
    return dataclasses.field(default=default, metadata={"doc": doc, **metadata})


def ignored(default, reason):
    """A field kept only so that original configs load; setting it has no effect (and warns)."""
    return dataclasses.field(default=default, metadata={"ignored": reason, "doc": f"accepted and ignored: {reason}"})


# --- files -------------------------------------------------------------------------------------

def read_toml(path):
    """A TOML file as a dict; ConfigError naming the file when missing or malformed."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: unreadable config ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML ({e})") from None


def read_yaml(path):
    """A YAML file as an OmegaConf node, parsed once; interpolations resolve when a key is read
    (`plain`), so only the keys we read must resolve."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config not found (or not a file)")
    try:
        return OmegaConf.load(path)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: unreadable config ({e})") from None
    except yaml.YAMLError as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: invalid YAML ({first_line})") from None


def plain(node, where, source):
    """An OmegaConf node (or plain value) as plain Python, interpolations resolved; a key that
    cannot resolve is named."""
    if OmegaConf.is_dict(node) or isinstance(node, dict):
        return {k: plain(_get(node, k, where, source), _join(where, k), source) for k in node.keys()}
    if OmegaConf.is_list(node) or isinstance(node, list):
        return [plain(_get(node, i, where, source), f"{where}[{i}]", source) for i in range(len(node))]
    return node


def _get(node, key, where, source):
    try:
        return node[key]
    except OmegaConfBaseException as e:
        path = f"{where}[{key}]" if isinstance(key, int) else _join(where, key)
        raise ConfigError(f"{source}: {path}: cannot resolve ({str(e).splitlines()[0]})") from None


def node_at(node, path, source):
    """The node at a dotted `path` of a parsed file, unresolved; None where a key is absent."""
    where = ""
    for key in path.split("."):
        where = _join(where, key)
        if not _is_mapping(node):
            raise ConfigError(f"{source}: {_parent(where)}: expected a mapping, got {plain(node, where, source)!r}")
        if key not in node:
            return None
        node = _get(node, key, where, source)
    return node


def section(node, path, source, optional=False, only=None):
    """The mapping at a dotted `path` of a parsed file as plain Python ({} if absent and
    optional). Only that mapping is resolved, and with `only` (names) only those of its keys, so
    an interpolation elsewhere in the file never has to resolve."""
    root, node = node, node_at(node, path, source)
    if node is None:
        if optional:
            return {}
        keys = path.split(".")
        first_missing = next(".".join(keys[:i]) for i in range(1, len(keys) + 1)
                             if node_at(root, ".".join(keys[:i]), source) is None)
        raise ConfigError(f"{source}: missing key '{first_missing}'")
    if not _is_mapping(node):
        raise ConfigError(f"{source}: {path}: expected a mapping, got {plain(node, path, source)!r}")
    keys = [k for k in node.keys() if only is None or k in only]
    return {k: plain(_get(node, k, path, source), _join(path, k), source) for k in keys}


def _parent(where):
    return where.rpartition(".")[0] or "the file"


def field_names(cls):
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _is_mapping(value):
    return isinstance(value, dict) or OmegaConf.is_dict(value)


def _join(where, key):
    return f"{where}.{key}" if where else str(key)


# --- building dataclasses ---------------------------------------------------------------------

@dataclass
class Built:
    """What `build` found beside the values: keys that are accepted but have no effect, and
    notes for the user (a deprecated place of a key)."""
    ignored: list = dataclasses.field(default_factory=list)  # [(key path, reason)]
    notes: list = dataclasses.field(default_factory=list)  # [message]


def build(cls, mapping, where="", source=None, report=None):
    """A `cls` dataclass from `mapping`, every value checked against its field's annotation and
    every key known (read other tools' sections with `section(..., only=field_names(cls))`).
    Nested dataclass fields are built from nested mappings. `report` (a Built) collects the
    ignored keys that were set.
    """
    prefix = f"{source}: " if source else ""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{prefix}{where or 'config'}: expected a table of keys, got {mapping!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls, include_extras=True)
    values = {}
    for key, value in mapping.items():
        path = _join(where, key)
        if key not in fields:
            raise ConfigError(f"{prefix}unknown key '{path}'{did_you_mean(str(key), fields)}")
        if report is not None and "ignored" in fields[key].metadata:
            report.ignored.append((path, fields[key].metadata["ignored"]))
        values[key] = check_value(value, hints[key], path, source, report)
    missing = [name for name, f in fields.items() if name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{prefix}missing key '{_join(where, missing[0])}'")
    return cls(**values)


def did_you_mean(word, candidates):
    """' (did you mean 'x'?)' for the closest candidate, or ''."""
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_value(value, tp, key, source=None, report=None):
    """`value` if it fits the annotation `tp` (ints pass as floats, bools never as numbers, floats
    must be finite and ints fit int64); ConfigError naming `key` otherwise."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *constraints = typing.get_args(tp)
        if isinstance(value, float) and not math.isfinite(value):
            _fail(key, f"a finite {type_name(tp)}", value, source, mismatch=False)
        value = check_value(value, base, key, source, report)
        if value is not None and not all(c.check(value) for c in constraints):
            _fail(key, type_name(tp), value, source, mismatch=False)
        return value
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = [t for t in typing.get_args(tp) if t is not type(None)]
        if value is None and len(options) < len(typing.get_args(tp)):
            return None
        if len(options) == 1:  # Optional[X]: X's own message is the most precise
            return check_value(value, options[0], key, source, report)
        for option in options:
            try:
                return check_value(value, option, key, source, report)
            except _TypeMismatch:
                pass  # another option may fit; a wrong value of the right type is reported
        _fail(key, type_name(tp), value, source)
    if origin is Literal:
        choices = typing.get_args(tp)
        if any(value == c and type(value) is type(c) for c in choices):
            return value
        _fail(key, type_name(tp), value, source, mismatch=False)
    if origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            item = typing.get_args(tp)[0] if typing.get_args(tp) else Any
            items = [check_value(v, item, f"{key}[{i}]", source, report) for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return build(tp, value, key, source, report=report)
        if isinstance(value, tp):  # built in code: check it the same way
            check_fields(value, key)
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > INT64_MAX:
                _fail(key, "an integer that fits in 64 bits", value, source, mismatch=False)
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                _fail(key, "a finite number", value, source, mismatch=False)
            return float(value)
    elif isinstance(value, tp):
        return value
    _fail(key, type_name(tp), value, source)


class _TypeMismatch(ConfigError):
    """The value is not of the expected type (so another option of a Union may still fit)."""


def _fail(key, expected, value, source, mismatch=True):
    prefix = f"{source}: " if source else ""
    shown = str(value) if isinstance(value, float) and not math.isfinite(value) else repr(value)
    raise (_TypeMismatch if mismatch else ConfigError)(f"{prefix}{key}: expected {expected}, got {shown}")


def check_fields(obj, where=""):
    """Check every field of a dataclass instance built in code (e.g. in __post_init__) with the
    same rules as a config file's values."""
    hints = typing.get_type_hints(type(obj), include_extras=True)
    for f in dataclasses.fields(obj):
        if f.init:
            check_value(getattr(obj, f.name), hints[f.name], _join(where, f.name))


def type_name(tp):
    """`Optional[list[int]]` -> "list[int]": configs have no null worth naming."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *constraints = typing.get_args(tp)
        return " ".join([type_name(base), *(c.describe() for c in constraints)])
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(t) for t in typing.get_args(tp) if t is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"{origin.__name__}[{type_name(args[0])}]" if args else origin.__name__
    if dataclasses.is_dataclass(tp):
        return "a table"
    return getattr(tp, "__name__", str(tp))
