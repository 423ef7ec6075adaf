"""The latent dataset format: round trip, token dtype, memory mapping, atomic creation."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from infra.errors import UserError
from latents.dataset import LatentDataset, create_latent_dataset, read_meta, token_dtype


def tree(root):
    """{relative path: bytes} of every file under root: to show a directory is untouched."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_round_trip_tokens_labels_sources_flipped_meta(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 300, size=(7, 3, 5))
    labels = rng.integers(0, 3, size=7)
    sources = [f"img/{i}.png" for i in range(7)]
    flipped = [i % 2 == 1 for i in range(7)]
    eval_tokens = rng.integers(0, 300, size=(2, 3, 5))
    root = tmp_path / "latents"
    with create_latent_dataset(root, 300, (3, 5), ["cat", "dog", "owl"],
                               {"created_by": "test", "vqgan": {"checkpoint": "x.ckpt"}}) as add_split:
        train = add_split("train", 7)
        train.write(0, tokens[:4], labels[:4], sources[:4], flipped[:4])  # in two pieces
        train.write(4, tokens[4:], labels[4:], sources[4:], flipped[4:])
        add_split("eval", 2).write(0, eval_tokens, [2, 0], ["e0", "e1"])

    ds = LatentDataset(root, "train")
    assert len(ds) == 7 and ds.latent_shape == (3, 5) and ds.codebook_size == 300
    assert ds.class_names == ["cat", "dog", "owl"] and ds.num_classes == 3
    np.testing.assert_array_equal(ds.tokens, tokens)
    np.testing.assert_array_equal(ds.labels, labels)
    grid, label = ds[5]
    assert grid.dtype == torch.int64 and grid.shape == (3, 5)
    assert torch.equal(grid, torch.from_numpy(tokens[5])) and label == labels[5]

    meta = read_meta(root)
    assert meta["created_by"] == "test" and meta["vqgan"] == {"checkpoint": "x.ckpt"}
    assert meta["splits"]["train"] == {"count": 7, "sources": sources, "flipped": flipped}
    assert meta["splits"]["eval"] == {"count": 2, "sources": ["e0", "e1"], "flipped": [False, False]}
    evaluation = LatentDataset(root, "eval")
    np.testing.assert_array_equal(evaluation.tokens, eval_tokens)
    assert [evaluation[i][1] for i in range(2)] == [2, 0]


def test_unlabelled_dataset_has_no_labels_file_and_label_minus_one(tmp_path):
    root = tmp_path / "latents"
    with create_latent_dataset(root, 4, (2, 2)) as add_split:
        add_split("train", 3).write(0, np.zeros((3, 2, 2), dtype=np.int64))
    ds = LatentDataset(root)
    assert ds.num_classes is None and ds[1][1] == -1
    assert not (root / "train_labels.npy").exists()


@pytest.mark.parametrize("codebook_size, largest, dtype", [
    (16, 15, np.uint16), (2**16, 2**16 - 1, np.uint16), (2**16 + 1, 2**16, np.int32), (100_000, 99_999, np.int32),
])
def test_token_dtype_follows_codebook_size(tmp_path, codebook_size, largest, dtype):
    assert token_dtype(codebook_size) == dtype
    root = tmp_path / "latents"
    with create_latent_dataset(root, codebook_size, (1, 2)) as add_split:
        add_split("train", 1).write(0, [[[0, largest]]])
    ds = LatentDataset(root)
    assert ds.tokens.dtype == dtype and np.load(root / "train_tokens.npy").dtype == dtype
    assert read_meta(root)["token_dtype"] == np.dtype(dtype).name
    assert ds[0][0].tolist() == [[0, largest]]  # the largest code survives the narrow dtype


def test_dataset_is_memory_mapped_not_loaded(tmp_path):
    root = tmp_path / "latents"
    with create_latent_dataset(root, 8, (4, 4), ["a"]) as add_split:
        add_split("train", 10).write(0, np.ones((10, 4, 4)), np.zeros(10))
    ds = LatentDataset(root)
    assert isinstance(ds.tokens, np.memmap) and isinstance(ds.labels, np.memmap)
    assert Path(ds.tokens.filename) == (root / "train_tokens.npy").resolve() and ds.tokens.mode == "r"
    # A mapped array shares the file's pages: a later write to the file shows through it, which a
    # copy read into RAM at start would not.
    on_disk = np.load(root / "train_tokens.npy", mmap_mode="r+")
    on_disk[7] = 5
    on_disk.flush()
    assert ds[7][0].unique().tolist() == [5] and ds[6][0].unique().tolist() == [1]


def test_refuses_non_empty_output_without_overwrite(tmp_path):
    root = tmp_path / "latents"
    root.mkdir()
    (root / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        with create_latent_dataset(root, 4, (2, 2)) as add_split:
            add_split("train", 1).write(0, np.zeros((1, 2, 2)))
    assert tree(root) == {"keep.txt": b"mine"}

    with create_latent_dataset(root, 4, (2, 2), overwrite=True) as add_split:
        add_split("train", 1).write(0, np.zeros((1, 2, 2)))
    assert not (root / "keep.txt").exists() and len(LatentDataset(root)) == 1


def test_empty_output_dir_is_accepted(tmp_path):
    root = tmp_path / "latents"
    root.mkdir()
    with create_latent_dataset(root, 4, (2, 2)) as add_split:
        add_split("train", 2).write(0, np.zeros((2, 2, 2)))
    assert len(LatentDataset(root)) == 2


def test_output_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "latents"
    path.write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        with create_latent_dataset(path, 4, (2, 2)):
            pass


def test_failure_inside_block_leaves_no_output_and_no_temp_dir(tmp_path):
    root = tmp_path / "latents"
    with pytest.raises(RuntimeError, match="encoder crashed"):
        with create_latent_dataset(root, 4, (2, 2)) as add_split:
            add_split("train", 4).write(0, np.zeros((2, 2, 2)))
            raise RuntimeError("encoder crashed")
    assert list(tmp_path.iterdir()) == []


def test_failure_inside_block_leaves_existing_dataset_untouched(tmp_path):
    root = tmp_path / "latents"
    with create_latent_dataset(root, 4, (2, 2), ["a"]) as add_split:
        add_split("train", 3).write(0, np.full((3, 2, 2), 3), [0, 0, 0], ["x", "y", "z"])
    before = tree(root)
    with pytest.raises(RuntimeError):
        with create_latent_dataset(root, 9, (3, 3), overwrite=True) as add_split:
            add_split("train", 5).write(0, np.ones((5, 3, 3)))
            raise RuntimeError("interrupted")
    assert tree(root) == before
    assert [p.name for p in tmp_path.iterdir()] == ["latents"]  # no temp dir beside it


@pytest.mark.parametrize("bad", [5, -1])
def test_out_of_range_tokens_are_rejected(tmp_path, bad):
    root = tmp_path / "latents"
    with pytest.raises(UserError, match=r"\[0, 5\)"):
        with create_latent_dataset(root, 5, (1, 3)) as add_split:
            add_split("train", 1).write(0, [[[0, bad, 1]]])
    assert list(tmp_path.iterdir()) == []


def test_reader_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="no meta.json"):
        LatentDataset(tmp_path)
    root = tmp_path / "latents"
    with create_latent_dataset(root, 4, (2, 2)) as add_split:
        add_split("train", 1).write(0, np.zeros((1, 2, 2)))
    with pytest.raises(UserError, match="no split 'eval'"):
        LatentDataset(root, "eval")
    meta = json.loads((root / "meta.json").read_text())
    (root / "meta.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(UserError, match="v99"):
        LatentDataset(root)
