"""generate-discrete-mnist.py: class-labelled gray-level token grids in the latent dataset format."""
import re

import numpy as np
import pytest

from latents.dataset import LatentDataset, read_meta
from tests.helpers import ONE_THREAD_ENV, assert_user_error, run_main, run_script


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "data"
    proc = run_script("generate-discrete-mnist.py", "digits", out, env=ONE_THREAD_ENV)
    assert proc.returncode == 0, proc.stderr
    return out


def test_digits_dataset_has_all_1797_rows_8x8_vocab_17_ten_classes(digits):
    meta = read_meta(digits)
    assert meta["codebook_size"] == 17 and meta["latent_shape"] == [8, 8]
    assert meta["class_names"] == [str(i) for i in range(10)] and meta["vqgan"] is None
    train, evaluation = LatentDataset(digits, "train"), LatentDataset(digits, "eval")
    assert len(train) + len(evaluation) == 1797 and len(evaluation) == round(0.1 * 1797)
    assert train.tokens.dtype == np.uint16 and train.num_classes == 10


def test_digits_rows_are_scikit_learns_digits_each_exactly_once(digits):
    from sklearn.datasets import load_digits

    reference = load_digits()
    seen = []
    for split in ("train", "eval"):
        ds = LatentDataset(digits, split)
        sources = read_meta(digits)["splits"][split]["sources"]
        rows = [int(re.fullmatch(r"sklearn\.datasets\.load_digits\[(\d+)\]", s).group(1)) for s in sources]
        np.testing.assert_array_equal(ds.tokens, reference.images[rows])
        np.testing.assert_array_equal(ds.labels, reference.target[rows])
        seen += rows
    assert sorted(seen) == list(range(1797))
    assert reference.images.max() == 16  # so 17 gray levels: the whole vocabulary is used


def test_refuses_a_non_empty_output_without_overwrite(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert_user_error(run_main("generate-discrete-mnist.py", "digits", out), str(out), "--overwrite")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]

    proc = run_main("generate-discrete-mnist.py", "digits", out, "--overwrite", "--eval-fraction", 0.5)
    assert proc.returncode == 0, proc.stderr
    assert not (out / "notes.txt").exists() and len(LatentDataset(out, "eval")) == 898


def test_mnist_with_a_missing_root_names_the_path(tmp_path):
    root = tmp_path / "no-such-root"
    proc = run_main("generate-discrete-mnist.py", "mnist", tmp_path / "out", "--root", root)
    assert_user_error(proc, str(root / "MNIST"), "--download")
    assert not (tmp_path / "out").exists()


def test_levels_out_of_range_is_an_error(tmp_path):
    proc = run_main("generate-discrete-mnist.py", "fashion", tmp_path / "out", "--levels", 1)
    assert_user_error(proc, "--levels 1: fashion has 256 gray levels; expected 2 to 256")
    assert not (tmp_path / "out").exists()


def test_digits_levels_bin_the_17_gray_levels(tmp_path, digits):
    proc = run_main("generate-discrete-mnist.py", "digits", tmp_path / "four", "--levels", 4)
    assert proc.returncode == 0, proc.stderr
    assert read_meta(tmp_path / "four")["codebook_size"] == 4
    for split in ("train", "eval"):
        full, four = LatentDataset(digits, split).tokens, LatentDataset(tmp_path / "four", split).tokens
        # the same rows, each of the 17 levels in one of 4 equal-width bins: 0-4, 5-8, 9-12, 13-16
        np.testing.assert_array_equal(four, full.astype(np.int64) * 4 // 17)
    assert set(np.unique(four)) == {0, 1, 2, 3}


def test_fashion_from_debians_package_directory(tmp_path, monkeypatch):
    """No torchvision files under --root: Debian's dataset-fashion-mnist directory is read."""
    from latents import mnist_files
    from tests.latents.test_mnist_files import write_split

    monkeypatch.setattr(mnist_files, "DEBIAN_ROOT", tmp_path / "debian")
    images, labels = write_split(tmp_path / "debian" / "fashion-mnist", "train", 6, seed=0)
    write_split(tmp_path / "debian" / "fashion-mnist", "t10k", 3, seed=1)
    proc = run_main("generate-discrete-mnist.py", "fashion", tmp_path / "out", "--root", tmp_path / "tv",
                    "--levels", 4)
    assert proc.returncode == 0, proc.stderr
    train = LatentDataset(tmp_path / "out", "train")
    np.testing.assert_array_equal(np.asarray(train.tokens), images // 64)
    np.testing.assert_array_equal(np.asarray(train.labels), labels)
    assert train.class_names[0] == "T-shirt/top" and len(LatentDataset(tmp_path / "out", "eval")) == 3
