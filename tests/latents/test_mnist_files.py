"""MNIST-family idx files from torchvision's layout or Debian's package, and their image folders."""
import gzip

import numpy as np
import pytest
from PIL import Image

from infra.errors import UserError
from latents import mnist_files
from tests.helpers import assert_user_error, run_main


def write_idx(path, array, gz=True):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    (gzip.open if gz else open)(path, "wb").write(header + array.astype(np.uint8).tobytes())


def write_split(directory, prefix, n, seed, gz=True):
    rng = np.random.default_rng(seed)
    images, labels = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
    suffix = ".gz" if gz else ""
    write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
    return images, labels


@pytest.fixture
def no_debian(monkeypatch, tmp_path):
    monkeypatch.setattr(mnist_files, "DEBIAN_ROOT", tmp_path / "debian")
    return tmp_path / "debian"


def test_torchvision_layout_first_then_debian(tmp_path, no_debian):
    images, labels = write_split(tmp_path / "tv" / "FashionMNIST" / "raw", "train", 5, seed=0, gz=False)
    write_split(no_debian / "fashion-mnist", "train", 7, seed=1)
    got, got_labels, classes = mnist_files.read_mnist("fashion", tmp_path / "tv", train=True)
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert classes[0] == "T-shirt/top" and len(classes) == 10
    debian_images, _ = write_split(no_debian / "fashion-mnist", "t10k", 3, seed=2)
    got, _, _ = mnist_files.read_mnist("fashion", tmp_path / "tv", train=False)  # not under tv: Debian's
    np.testing.assert_array_equal(got, debian_images)


def test_missing_set_says_how_to_install(tmp_path, no_debian):
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        mnist_files.read_mnist("fashion", tmp_path, train=True)


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[:-10], "holds 3910 values, its header says"),
    (lambda data: b"\x01" + data[1:], "not an idx file"),
])
def test_damaged_files_are_named(tmp_path, no_debian, damage, message):
    raw = tmp_path / "MNIST" / "raw"
    write_split(raw, "train", 5, seed=0, gz=False)
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(UserError, match=message):
        mnist_files.read_mnist("mnist", tmp_path, train=True)


def test_image_folders_by_split_and_class(tmp_path, no_debian):
    raw = tmp_path / "tv" / "FashionMNIST" / "raw"
    train_images, train_labels = write_split(raw, "train", 6, seed=0)
    write_split(raw, "t10k", 4, seed=1)
    out = tmp_path / "images"
    proc = run_main("scripts/mnist_images.py", "fashion", out, "--size", 32, "--root", tmp_path / "tv")
    assert proc.returncode == 0, proc.stderr
    folders = sorted(p.name for p in (out / "train").iterdir())
    assert folders[0] == "0-t-shirt-top" and folders[9] == "9-ankle-boot"
    first = folders[train_labels[0]]
    image = np.asarray(Image.open(out / "train" / first / "00000.png"))
    assert image.shape == (32, 32)
    np.testing.assert_array_equal(image[2:30, 2:30], train_images[0])
    assert image[:2].max() == 0 and image[:, :2].max() == 0
    assert sum(1 for _ in (out / "test").rglob("*.png")) == 4
    assert_user_error(run_main("scripts/mnist_images.py", "fashion", out, "--root", tmp_path / "tv"),
                      "images: exists; pass --overwrite")


def test_the_debian_package_when_installed():
    if not (mnist_files.DEBIAN_ROOT / "fashion-mnist").is_dir():
        pytest.skip("dataset-fashion-mnist is not installed (make installs it: apt-get install dataset-fashion-mnist)")
    images, labels, _ = mnist_files.read_mnist("fashion", "/nonexistent", train=False)
    assert images.shape == (10000, 28, 28) and np.bincount(labels).tolist() == [1000] * 10
