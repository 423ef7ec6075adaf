"""Every top-level script reads its command line before it imports Lightning, and torch too where
its flags do not come from the priors (seconds of imports): a mistyped flag is answered at once,
with one `error:` line and exit status 2. Each script runs in a fresh interpreter with Python's import-time report (PYTHONPROFILEIMPORTTIME),
which lists every module the run imported."""
import re
import subprocess

import pytest

from tests.helpers import REPO, assert_user_error, run_script

SCRIPTS = ["train.py", "sample.py", "inpaint.py", "sample-interactive.py", "evaluate.py", "generate-latents.py",
           "recon-vqgan.py", "train-vqgan.py", "generate-discrete-mnist.py"]
# Their sampling flags are derived from the priors' settings classes, which live beside the samplers
# (priors/<name>.py, torch at the top): torch (~2 s) comes before their parser, Lightning (~5 s) does not.
FLAGS_NEED_TORCH = {"sample.py", "inpaint.py", "sample-interactive.py"}
IMPORT_LINE = re.compile(r"import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)$")


def imported_and_rest(stderr):
    """(top-level names of the modules imported, the other lines of stderr)."""
    modules, rest = set(), []
    for line in stderr.splitlines():
        match = IMPORT_LINE.match(line)
        if match:
            modules.add(match.group(1).split(".")[0])
        elif not line.startswith("import time:"):  # the report's header line
            rest.append(line)
    return modules, rest


def test_every_top_level_script_is_checked():
    assert sorted(SCRIPTS) == sorted(p.name for p in REPO.glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_mistyped_flag_is_answered_before_torch_is_imported(script):
    proc = run_script(script, "--bogus", env={"PYTHONPROFILEIMPORTTIME": "1"}, timeout=120)
    modules, rest = imported_and_rest(proc.stderr)
    assert "argparse" in modules and "infra" in modules  # the report is there: the check can see
    assert_user_error(subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout, "\n".join(rest)),
                      f"{script}: ")
    assert rest == [line for line in rest if line.startswith("error:")]  # nothing else on stderr
    assert "pytorch_lightning" not in modules and "lightning" not in modules
    if script not in FLAGS_NEED_TORCH:
        assert "torch" not in modules, f"{script} imported torch before reading its command line"
