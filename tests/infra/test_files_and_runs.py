"""Outputs and run directories: atomic writes, temporary files of killed writes removed, one
writer per run directory, outputs that cannot be written named before any work."""
import os
import subprocess
import sys
import time

import pytest

from infra.errors import UserError
from infra.files import atomic_path, remove_stale_temps, writable_dir, writable_file
from infra.runs import RunDirLock, claim_run_dir
from tests.helpers import REPO, TINY_CONFIG, write_tiny_config


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_writes_temporary_file_is_removed_by_the_next_write(tmp_path):
    stale = tmp_path / f".last.ckpt.tmp-{dead_pid()}-abc123"
    live = tmp_path / f".last.ckpt.tmp-{os.getpid()}-def456"  # a write in progress: kept
    other = tmp_path / f".other.ckpt.tmp-{dead_pid()}-xyz"  # another target: not this write's business
    for path in (stale, live, other):
        path.write_bytes(b"partial")
    with atomic_path(tmp_path / "last.ckpt") as tmp:
        tmp.write_text("done")
    assert (tmp_path / "last.ckpt").read_text() == "done"
    assert not stale.exists() and live.exists() and other.exists()
    remove_stale_temps(tmp_path)
    assert not other.exists() and live.exists()


@pytest.mark.parametrize("make, fragment", [
    (lambda p: (p / "file").write_text(""), "cannot be made, a parent is a file"),
    (lambda p: (p / "file").mkdir() or (p / "file" / "x").mkdir(), None),
])
def test_writable_dir_names_what_is_wrong(tmp_path, make, fragment):
    make(tmp_path)
    if fragment is None:
        assert writable_dir(tmp_path / "file" / "x" / "new" / "deeper").is_dir()  # parents are made
        return
    with pytest.raises(UserError, match=f"file/sub: output directory {fragment}"):
        writable_dir(tmp_path / "file" / "sub")


def test_an_unwritable_or_full_directory_is_named(tmp_path, monkeypatch):
    import infra.files

    def refuse(*args, **kwargs):  # what a read-only mount or a full disk answers (root or not)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(infra.files.tempfile, "TemporaryFile", refuse)
    with pytest.raises(UserError, match=r"locked: output directory is not writable \(Permission denied\)"):
        writable_dir(tmp_path / "locked")


def test_writable_file_refuses_a_directory_and_a_file_parent(tmp_path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(UserError, match="adir: grid is a directory, expected a file name"):
        writable_file(tmp_path / "adir", "grid")
    (tmp_path / "afile").write_text("")
    with pytest.raises(UserError, match="afile: directory of the grid is a file, expected a directory"):
        writable_file(tmp_path / "afile" / "grid.png", "grid")


def test_one_writer_per_run_directory(tmp_path, capsys):
    with RunDirLock(tmp_path):
        assert f"pid {os.getpid()}" in (tmp_path / ".lock").read_text()
        with pytest.raises(UserError, match=rf"in use by another run \(pid {os.getpid()} on "):
            with RunDirLock(tmp_path):
                pass
    assert not (tmp_path / ".lock").exists()
    # a lock file left by a killed run holds no flock: it is stale, and taken over with a note
    (tmp_path / ".lock").write_text(f"pid {dead_pid()} on somewhere\n")
    with RunDirLock(tmp_path):
        pass
    assert "was left by a run that stopped without releasing it" in capsys.readouterr().out


def test_claiming_removes_stale_checkpoint_temporaries(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("x")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    stale = run / "checkpoints" / f".step-0000020.ckpt.tmp-{dead_pid()}-abc"
    stale.write_bytes(b"half")
    with claim_run_dir(run, cfg, "config.toml", ["samples"]):
        assert (run / "config.toml").read_text() == "x"
    assert not stale.exists()
    with claim_run_dir(tmp_path / "not-made", cfg, "config.toml", [], rank=1):
        pass
    assert not (tmp_path / "not-made").exists()  # only rank 0 claims


@pytest.mark.slow
def test_a_second_train_py_on_the_same_run_is_refused(tmp_path):
    cfg = write_tiny_config(tmp_path, TINY_CONFIG.replace("max_steps = 20", "max_steps = 100000"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, str(REPO / "train.py"), "--cfg-path", str(cfg)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = tmp_path / "runs" / "tiny" / ".lock"
        deadline = time.time() + 120
        while not (lock.exists() and lock.read_text()) and time.time() < deadline:
            time.sleep(0.2)
        second = subprocess.run([sys.executable, str(REPO / "train.py"), "--cfg-path", str(cfg), "--overwrite"],
                                env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        assert f"in use by another run (pid {first.pid} on " in second.stderr
        assert not list((tmp_path / "runs" / "tiny" / "checkpoints").glob("*-v1.ckpt"))
    finally:
        first.kill()
        first.wait()
