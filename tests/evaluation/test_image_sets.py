"""Image sets: the ADM .npz layout written and read back, folders as uint8 batches, and one-line
errors for sets that cannot be read."""
import numpy as np
import pytest
import torch
from PIL import Image

from evaluation import image_sets
from tests.evaluation.image_files import write_images
from tests.helpers import assert_user_error, run_main


def test_adm_npz_round_trips_images_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, size=(5, 7, 9, 3)).astype(np.uint8)
    labels = rng.integers(0, 10, size=5)
    path = tmp_path / "samples.npz"
    image_sets.write_adm_npz(path, arrays, labels)

    back, back_labels = image_sets.read_adm_npz(path)
    np.testing.assert_array_equal(back, arrays)
    np.testing.assert_array_equal(back_labels, labels)
    with np.load(path) as raw:  # what ADM's evaluator and other tools read
        assert sorted(raw.files) == ["arr_0", "arr_1"] and raw["arr_0"].dtype == np.uint8
    streamed = torch.cat(list(image_sets.AdmNpz(path).batches(2)))  # (N, 3, H, W), in batches of 2
    np.testing.assert_array_equal(streamed.permute(0, 2, 3, 1).numpy(), arrays)

    image_sets.write_adm_npz(tmp_path / "unlabelled.npz", arrays)
    assert image_sets.read_adm_npz(tmp_path / "unlabelled.npz")[1] is None


def test_folder_batches_are_the_images_as_uint8(tmp_path):
    arrays = write_images(tmp_path / "set", 5, size=8)
    folder = image_sets.ImageFolder(tmp_path / "set")
    batches = list(folder.batches(2))
    assert [len(b) for b in batches] == [2, 2, 1] and batches[0].dtype == torch.uint8
    np.testing.assert_array_equal(torch.cat(batches).permute(0, 2, 3, 1).numpy(), arrays)


@pytest.mark.parametrize("arrays, fragment", [
    ({"arr_0": np.zeros((4, 8, 8, 3), np.float32)}, "float32 4x8x8x3"),
    ({"arr_0": np.zeros((4, 8, 8), np.uint8)}, "uint8 4x8x8"),
    ({"images": np.zeros((4, 8, 8, 3), np.uint8)}, "no arr_0"),
    ({"arr_0": np.zeros((0, 8, 8, 3), np.uint8)}, "no images"),
])
def test_npz_of_the_wrong_layout_is_a_one_line_error(tmp_path, arrays, fragment):
    write_images(tmp_path / "ref", 8)
    np.savez(tmp_path / "bad.npz", **arrays)
    assert_user_error(run_main("evaluate.py", tmp_path / "bad.npz", tmp_path / "ref"), "bad.npz", fragment)


def test_not_an_npz_is_a_one_line_error(tmp_path):
    write_images(tmp_path / "ref", 8)
    (tmp_path / "bad.npz").write_bytes(b"not a zip archive")
    assert_user_error(run_main("evaluate.py", tmp_path / "bad.npz", tmp_path / "ref"),
                      "bad.npz", "not a readable .npz")


def test_mixed_image_sizes_and_empty_folders_are_one_line_errors(tmp_path):
    write_images(tmp_path / "ref", 8)
    write_images(tmp_path / "mixed", 3, size=32)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "mixed" / "small.png")
    assert_user_error(run_main("evaluate.py", tmp_path / "mixed", tmp_path / "ref"),
                      "mixed", "different sizes", "16x16", "32x32")
    (tmp_path / "empty").mkdir()
    assert_user_error(run_main("evaluate.py", tmp_path / "empty", tmp_path / "ref"), "empty", "no images")
    assert_user_error(run_main("evaluate.py", tmp_path / "nowhere", tmp_path / "ref"), "nowhere")
