"""bench is a package of the top layer: its scripts run as `python -m bench.<name>` from the
repository root with no sys.path edits, and share one timer and one matmul probe (bench.measure)."""
import ast
import os
import subprocess
import sys

import pytest

from bench import measure
from tests.helpers import REPO

SCRIPTS = ["backbone", "training", "sampling", "priors", "digits_search", "ablations"]


@pytest.mark.parametrize("path", sorted((REPO / "bench").glob("*.py")), ids=lambda p: p.name)
def test_no_bench_module_edits_sys_path(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    edits = [node.lineno for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys"]
    assert not edits, f"{path.name}: sys.path at lines {edits}; run it as python -m bench.{path.stem}"


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_each_script_runs_as_a_module_from_the_repository_root(name):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing but the working directory
    proc = subprocess.run([sys.executable, "-m", f"bench.{name}", "--help"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:")


def test_timed_keeps_the_fastest_call_after_one_warm_up():
    calls, durations = [], iter([0.05, 0.03, 0.0, 0.02])  # the warm-up would be the fastest

    def fn():
        calls.append(1)
        measure.time.sleep(next(durations))
        return len(calls)

    seconds, result = measure.timed(fn, repeats=3)
    assert len(calls) == 4 and result == 4
    assert 0.0 <= seconds < 0.03  # the fastest timed call (0.0 s), not the warm-up
    seconds, result = measure.timed(lambda: "x", repeats=1, warmup=False)
    assert result == "x" and seconds >= 0


def test_matmul_probe_keeps_the_best_and_warns_on_a_spread():
    probe = measure.MatmulProbe("cpu")
    probe.samples = [100e9, 95e9]
    assert (probe.best, probe.lowest, probe.warning()) == (100e9, 95e9, None)
    probe.samples.append(80e9)
    assert "varied by 20% during the run" in probe.warning()
    assert probe.label == "2048x2048 float32"
    assert probe.summary() == ("matmul throughput (2048x2048 float32): 100 GFLOP/s "
                               "(lowest of 3 measurements during the run: 80)")
