"""The one config reader: types, ranges, unknown keys, ignored keys and YAML sections, each
mistake one line naming the file, the key and what was expected."""
import math
from dataclasses import dataclass, field
from typing import Annotated, Literal, Optional, Union

import pytest
from omegaconf import OmegaConf

from infra.config import (INT64_MAX, Built, ConfigError, Length, NonNegativeInt, PositiveFloat, PositiveInt,
                          Probability, Range, UnitFloat, build, check_fields, ignored, node_at, read_toml,
                          read_yaml, section)


@dataclass
class Inner:
    rate: PositiveFloat = 1.0
    name: str = "x"


@dataclass
class Outer:
    steps: PositiveInt = 10
    count: NonNegativeInt = 0
    ratio: UnitFloat = 0.5
    dropout: Probability = 0.0
    mode: Literal["a", "b"] = "a"
    betas: Annotated[list[Probability], Length(2)] = field(default_factory=lambda: [0.9, 0.99])
    shape: Optional[list[PositiveInt]] = None
    depth: Union[NonNegativeInt, list] = 3
    legacy: bool = ignored(False, "it never did anything")
    inner: Inner = field(default_factory=Inner)
    required_or_none: Optional[str] = None


def error(table, source="c.toml"):
    with pytest.raises(ConfigError) as e:
        build(Outer, table, source=source)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{source}: ")
    return message


def test_values_are_typed_and_ints_pass_as_floats():
    cfg = build(Outer, {"steps": 3, "ratio": 1, "inner": {"rate": 2}, "shape": [4, 4], "depth": [1, 2, 1]})
    assert cfg.steps == 3 and cfg.ratio == 1.0 and isinstance(cfg.ratio, float)
    assert cfg.inner == Inner(rate=2.0) and cfg.shape == [4, 4] and cfg.depth == [1, 2, 1]


@pytest.mark.parametrize("table, expected", [
    ({"steps": 0}, "steps: expected int >= 1, got 0"),
    ({"steps": 2.5}, "steps: expected int, got 2.5"),
    ({"steps": True}, "steps: expected int, got True"),
    ({"steps": INT64_MAX + 1}, f"steps: expected an integer that fits in 64 bits, got {INT64_MAX + 1}"),
    ({"count": -1}, "count: expected int >= 0, got -1"),
    ({"ratio": 1.5}, "ratio: expected float in [0, 1], got 1.5"),
    ({"dropout": 1.0}, "dropout: expected float in [0, 1), got 1.0"),
    ({"inner": {"rate": math.inf}}, "inner.rate: expected a finite float > 0, got inf"),
    ({"inner": {"rate": math.nan}}, "inner.rate: expected a finite float > 0, got nan"),
    ({"inner": {"rate": 0}}, "inner.rate: expected float > 0, got 0.0"),
    ({"mode": "c"}, "mode: expected one of 'a', 'b', got 'c'"),
    ({"betas": [0.9]}, "betas: expected list[float in [0, 1)] with 2 items, got [0.9]"),
    ({"betas": [0.9, 1.0]}, "betas[1]: expected float in [0, 1), got 1.0"),
    ({"shape": [4, "4"]}, "shape[1]: expected int, got '4'"),
    ({"depth": "deep"}, "depth: expected int >= 0 or list, got 'deep'"),
    ({"depth": -1}, "depth: expected int >= 0, got -1"),
    ({"inner": 3}, "inner: expected a table, got 3"),
    ({"stepz": 1}, "unknown key 'stepz' (did you mean 'steps'?)"),
    ({"inner": {"rat": 1.0}}, "unknown key 'inner.rat' (did you mean 'rate'?)"),
    ({"zzz": 1}, "unknown key 'zzz'"),
])
def test_each_mistake_names_the_key_and_what_was_expected(table, expected):
    assert error(table).endswith(expected), error(table)


def test_required_fields_are_named_when_missing():
    @dataclass
    class Needs:
        path: str

    with pytest.raises(ConfigError, match=r"^f.yaml: missing key 'sec.path'$"):
        build(Needs, {}, where="sec", source="f.yaml")


def test_ignored_keys_are_accepted_and_reported():
    report = Built()
    assert build(Outer, {"legacy": True, "inner": {}}, report=report).legacy is True
    assert report.ignored == [("legacy", "it never did anything")]
    report = Built()
    build(Outer, {}, report=report)
    assert report.ignored == []  # only keys the file sets are reported


def test_check_fields_applies_the_same_rules_to_objects_built_in_code():
    check_fields(Outer())
    with pytest.raises(ConfigError, match=r"^sec.steps: expected int >= 1, got -3$"):
        check_fields(Outer(steps=-3), "sec")


def test_toml_and_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="missing.toml: config file not found"):
        read_toml(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[x\n")
    with pytest.raises(ConfigError, match="bad.toml: invalid TOML"):
        read_toml(tmp_path / "bad.toml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        read_yaml(tmp_path / "bad.yaml")


def test_yaml_sections_resolve_only_what_is_read(tmp_path):
    raw = OmegaConf.create({"model": {"params": {"a": 1, "b": "${model.params.a}",
                                                 "broken": "${oc.env:NO_SUCH_VARIABLE_FOR_TESTS}"}}})
    assert section(raw, "model.params", "f.yaml", only=["a", "b"]) == {"a": 1, "b": 1}
    with pytest.raises(ConfigError, match=r"^f.yaml: model.params.broken: cannot resolve"):
        section(raw, "model.params", "f.yaml")
    with pytest.raises(ConfigError, match=r"^f.yaml: missing key 'model.other'$"):
        section(raw, "model.other.deeper", "f.yaml")
    assert section(raw, "data.params", "f.yaml", optional=True) == {}
    assert node_at(raw, "model.params.nothing", "f.yaml") is None
    with pytest.raises(ConfigError, match=r"model.params.a: expected a mapping, got 1"):
        section(raw, "model.params.a", "f.yaml")


def test_a_range_describes_itself():
    assert Range(0, 1, low_open=True).describe() == "in (0, 1]"
    assert Range(low=2).describe() == ">= 2" and Range(high=3, high_open=True).describe() == "< 3"
