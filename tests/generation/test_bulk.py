"""Bulk sampling: --save-latents records every row whatever PNGs exist and however often the run
is interrupted, so the finished file always equals a clean run's."""
import numpy as np
import pytest

from generation.bulk import bulk_sample
from generation.pretrained import load_prior
from infra.errors import UserError

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def prior(tiny_prior):
    return load_prior(tiny_prior.cfg, tiny_prior.last)


def run(prior, out_dir, latents=None, nb_samples=6):
    return bulk_sample(prior, prior.cfg.sampling, out_dir, nb_samples, batch_size=2, seed=5,
                       save_latents=latents, progress=False)


def interrupted_after(monkeypatch, prior, batches):
    """Make the prior's sampler raise Ctrl-C once `batches` batches have been drawn."""
    calls, real = [], prior.sample

    def flaky(*args, **kwargs):
        if len(calls) == batches:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(prior, "sample", flaky)


@pytest.mark.parametrize("interrupt_after", [0, 1, 2])
def test_latents_after_a_png_only_run_and_a_kill_equal_a_clean_run(prior, tmp_path, monkeypatch,
                                                                   interrupt_after):
    run(prior, tmp_path / "clean", tmp_path / "clean.npy")
    clean = np.load(tmp_path / "clean.npy")

    run(prior, tmp_path / "out")  # every PNG exists, no grids recorded
    interrupted_after(monkeypatch, prior, interrupt_after)
    with pytest.raises(KeyboardInterrupt):
        run(prior, tmp_path / "out", tmp_path / "grids.npy")
    monkeypatch.undo()
    assert not (tmp_path / "grids.npy").exists()  # only the partial files in the out-dir
    summary = run(prior, tmp_path / "out", tmp_path / "grids.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "grids.npy"), clean)
    assert summary["sampled_now"] == 6 - 2 * interrupt_after and summary["written_now"] == 0
    assert sorted(p.name for p in tmp_path.glob("grids.npy*")) == ["grids.npy"]


def test_an_existing_latents_file_is_refused_before_sampling(prior, tmp_path):
    (tmp_path / "grids.npy").write_bytes(b"x")
    with pytest.raises(UserError, match="grids.npy: already exists"):
        run(prior, tmp_path / "out", tmp_path / "grids.npy")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
