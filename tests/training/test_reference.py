"""The guide's config reference is generated from the config dataclasses and cannot drift."""
import dataclasses

from priors import PRIORS
from tests.helpers import REPO, assert_user_error, run_main
from training.config import SECTIONS
from training.reference import BEGIN, END, reference


def test_the_guide_holds_the_generated_reference():
    text = (REPO / "docs" / "guide.md").read_text()
    block = text[text.index(BEGIN):text.index(END) + len(END)]
    assert block == reference(), "run: PYTHONPATH=. python scripts/config_reference.py --write docs/guide.md"


def test_every_key_of_every_section_and_prior_is_documented():
    text = reference()
    classes = [*SECTIONS.values(), *(p.Training for p in PRIORS.values()), *(p.Sampling for p in PRIORS.values())]
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.init:
                assert f"\n{f.name} = " in text, f"{cls.__name__}.{f.name}"
                assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no doc"


def test_the_writer_refuses_a_file_without_the_block(tmp_path):
    other = tmp_path / "notes.md"
    other.write_text("no block here\n")
    assert_user_error(run_main("scripts/config_reference.py", "--write", other), "notes.md", "expected one block")
    assert other.read_text() == "no block here\n"
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nstale\n{END}\noutro\n")
    assert run_main("scripts/config_reference.py", "--write", readme).returncode == 0
    assert readme.read_text() == f"intro\n{reference()}\noutro\n"
