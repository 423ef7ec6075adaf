"""Dependencies flow one way: infra -> {hourglass_transformer, vqgan, evaluation, latents} ->
priors -> training -> generation -> {scripts, bench}. Every module's imports are parsed (never run)
and checked against the layers."""
import ast

import pytest

from tests.helpers import REPO

# package -> the project packages it may import (besides itself)
ALLOWED = {
    "infra": set(),
    "hourglass_transformer": {"infra"},
    "vqgan": {"infra"},
    "evaluation": {"infra"},
    "latents": {"infra"},
    "priors": {"infra", "hourglass_transformer"},
    "training": {"infra", "hourglass_transformer", "vqgan", "evaluation", "latents", "priors"},
    "generation": {"infra", "hourglass_transformer", "vqgan", "evaluation", "latents", "priors", "training"},
    # the benchmarks: the top layer, beside the scripts (python -m bench.<name>); no package imports it
    "bench": {"infra", "hourglass_transformer", "vqgan", "evaluation", "latents", "priors", "training", "generation"},
}
SCRIPT_DIRS = [REPO, REPO / "scripts"]
SCRIPTS = {p.stem for d in SCRIPT_DIRS for p in d.glob("*.py")}


def project_imports(path):
    """The top-level names of the project's packages and scripts that a file imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & (set(ALLOWED) | SCRIPTS)


MODULES = sorted(p for package in ALLOWED for p in (REPO / package).rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_run_down_the_layers(path):
    package = path.relative_to(REPO).parts[0]
    wrong = project_imports(path) - ALLOWED[package] - {package}
    assert not wrong, f"{path.relative_to(REPO)} imports {sorted(wrong)}: {package} may import only {sorted(ALLOWED[package])}"


def test_every_package_is_checked():
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    assert packages == set(ALLOWED), f"add the new package to ALLOWED with its layer: {packages ^ set(ALLOWED)}"


def test_the_checker_sees_a_wrong_way_import(tmp_path):
    bad = tmp_path / "model.py"
    bad.write_text("import os\nfrom priors.sundae import sample\nimport train\nfrom . import sibling\n")
    assert project_imports(bad) == {"priors", "train"}
