"""Fixtures shared by every test package: one intra-op thread for tiny models, and one tiny
prior trained once per session."""
import sys
from types import SimpleNamespace

import pytest

from tests.helpers import REPO, run_main, write_tiny_config

sys.path.insert(0, str(REPO))  # the packages and scripts, without installing


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread: the tiny models gain nothing from more, and on a shared 2-core
    machine two spinning threads per process make each step many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_prior(tmp_path_factory):
    """The tiny config of tests.helpers trained by train.py for its 20 steps, seed 3 (evaluations
    and checkpoints at steps 10 and 20). Tests read it; a test that writes makes its own run."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny-prior")
    cfg = write_tiny_config(root)
    proc = run_main("train.py", "--cfg-path", cfg, "--seed", 3)
    torch.set_num_threads(threads)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = root / "runs" / "tiny"
    return SimpleNamespace(root=root, cfg=cfg, data=root / "latents", run_dir=run_dir,
                           checkpoints=run_dir / "checkpoints", last=run_dir / "checkpoints" / "last.ckpt")
