"""The prior is the unit: the registry holds every prior, each declares its settings and
capabilities once, and no code outside priors/ tests a prior's name."""
import ast
import dataclasses

import pytest

from priors import PRIORS
from priors.settings import ParallelSampling, PriorSettings, SamplingSettings
from tests.helpers import REPO

OUTSIDE = [p for p in REPO.rglob("*.py") if p.relative_to(REPO).parts[0] not in ("priors", "tests", ".venv")]


def constants(node):
    if isinstance(node, ast.Constant):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [e.value for e in node.elts if isinstance(e, ast.Constant)]
    return []


def compared_names(path):
    """The registered prior names a file compares a value with (==, !=, in, match cases)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Compare):
            found += [v for operand in (node.left, *node.comparators) for v in constants(operand) if v in PRIORS]
        elif isinstance(node, ast.MatchValue):
            found += [v for v in constants(node.value) if v in PRIORS]
    return found


@pytest.mark.parametrize("path", OUTSIDE, ids=lambda p: str(p.relative_to(REPO)))
def test_no_code_outside_the_registry_tests_a_prior_name(path):
    assert not compared_names(path), f"{path.relative_to(REPO)} compares with {compared_names(path)}: use a capability"


def test_the_checker_sees_a_name_test(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("if prior.name == 'autoregressive':\n    pass\nok = kind in ('sundae', 'x')\n")
    assert compared_names(bad) == ["autoregressive", "sundae"]


@pytest.mark.parametrize("name", PRIORS)
def test_each_prior_declares_its_settings_and_capabilities(name):
    prior = PRIORS[name]
    assert prior.name == name
    assert issubclass(prior.Training, PriorSettings) and issubclass(prior.Sampling, SamplingSettings)
    for settings in (prior.Training, prior.Sampling):  # frozen, and every default valid
        assert settings.__dataclass_params__.frozen
        settings()
    # guidance needs the guidance settings, which come with the parallel samplers' steps
    assert prior.guidance == issubclass(prior.Sampling, ParallelSampling)
    assert prior.inpaints in ("any mask", "raster prefix")
    assert set(prior.net_types) <= {"hourglass", "vanilla", "transformer"}


def test_each_sampling_field_is_declared_once():
    """A field shared by several priors lives on their common base class, not in each."""
    declared = {}
    for prior in PRIORS.values():
        for cls in prior.Sampling.__mro__:
            if not dataclasses.is_dataclass(cls):
                continue
            base = cls.__mro__[1]
            inherited = {f.name for f in dataclasses.fields(base)} if dataclasses.is_dataclass(base) else set()
            for f in dataclasses.fields(cls):
                if f.name not in inherited:
                    declared.setdefault(f.name, set()).add(cls)
    assert {name: owners for name, owners in declared.items() if len(owners) > 1} == {}
