"""scripts/demo.sh, what `make demo` runs: the whole main job end to end on a shrunk digits config
(data, training, 1000 samples, inpainting, the harness's scores), its threads resolved once."""
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, shrunk_digits_config


def run_demo(tmp_path, env, edit=lambda text: text):
    cfg = tmp_path / "digits.toml"
    cfg.write_text(edit(shrunk_digits_config((REPO / "config" / "digits.toml").read_text(), tmp_path)))
    env = {k: v for k, v in os.environ.items() if k not in ("SUNDAE_THREADS", "OMP_NUM_THREADS")} | env
    return subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), sys.executable, str(tmp_path / "out"), str(cfg)],
                          cwd=REPO, env={**env, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"},
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_the_demo_runs_end_to_end_and_scores_its_samples(tmp_path):
    proc = run_demo(tmp_path, {"SUNDAE_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    assert "threads: 1" in proc.stdout
    assert [line.split("] ")[1] for line in proc.stdout.splitlines() if line.startswith("=== [")][-1] == "done"
    assert (tmp_path / "runs" / "digits" / "checkpoints" / "last.ckpt").exists()
    assert (out / "samples.png").stat().st_size > 0 and len(list((out / "inpainting").iterdir())) > 0
    # the console: the stages, one training bar, the scores, where things are; the log: everything
    assert "Epoch 0" in proc.stdout and "eval vs train" in proc.stdout and "samples: " in proc.stdout
    for noise in ("Validation DataLoader", "GPU available", "LitLogger", "Total params"):
        assert noise not in proc.stdout + proc.stderr, noise
    log = (out / "demo.log").read_text()
    assert "Validation DataLoader" in log and "GPU available" in log and "eval vs train" in log
    quality = json.loads((out / "quality.json").read_text())
    assert quality["rows"]["samples"]["n"] == 1000  # 100 per class, scored beside the reference rows
    assert {"eval vs train", "marginals"} <= set(quality["rows"])


def test_a_bad_thread_count_or_config_stops_the_demo_before_it_starts(tmp_path):
    proc = run_demo(tmp_path, {"SUNDAE_THREADS": "lots"})
    assert proc.returncode == 2 and "error: SUNDAE_THREADS='lots'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_stage_that_fails_shows_the_end_of_its_log(tmp_path):
    proc = run_demo(tmp_path, {"SUNDAE_THREADS": "1"}, edit=lambda text: text.replace("vocab_size = 17", "vocab_size = 18"))
    assert proc.returncode == 2  # train.py's status, through the pipe
    assert "data.vocab_size = 18" in proc.stdout and "the full log: " in proc.stdout  # train.py's one line, shown
