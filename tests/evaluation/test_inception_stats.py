"""Statistics files: written once, reused as a cache while the images and the weights are
unchanged, refused when made with other weights; an ADM .npz scores like the folder of its images."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation import image_metrics, image_sets, inception, inception_stats
from infra.files import sha256_of
from tests.evaluation.image_files import write_images
from tests.helpers import assert_user_error, run_main


@pytest.fixture
def fake_inception(monkeypatch):
    """Replace the network by cheap features of the pixels and record each extraction's source:
    what is tested here is which sets get extracted, not Inception."""
    calls = []

    def extract(image_set, model, batch_size, device):
        calls.append(image_set.path.name)
        x = torch.cat(list(image_set.batches(batch_size))).float()  # (N, 3, H, W)
        pool = x.flatten(1)[:, ::131][:, :24]  # (N, 24) pixels
        return pool.numpy(), x.mean((2, 3)).numpy()  # logits (N, 3)

    monkeypatch.setattr(inception, "load_inception", lambda path, device: None)
    monkeypatch.setattr(inception, "extract_features", extract)
    return calls


def test_reference_statistics_are_reused_and_invalidated_by_the_images_and_the_weights(tmp_path, fake_inception):
    write_images(tmp_path / "samples", 8)
    write_images(tmp_path / "reference", 8, seed=1, brightness=30)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights one")
    stats = tmp_path / "reference-stats.npz"

    def run(tag, *extra):
        out = tmp_path / f"{tag}.json"
        proc = run_main("evaluate.py", *extra, "--inception-weights", weights, "--json", out)
        assert proc.returncode == 0, proc.stderr
        return json.loads(out.read_text()), proc.stdout

    first, _ = run("first", tmp_path / "samples", tmp_path / "reference", "--reference-stats", stats)
    assert fake_inception == ["samples", "reference"] and inception_stats.is_stats_file(stats)
    assert first["n_samples"] == first["n_reference"] == 8 and first["fid"] > 0

    again, stdout = run("again", tmp_path / "samples", tmp_path / "reference", "--reference-stats", stats)
    assert fake_inception[2:] == ["samples"] and "reusing cached statistics" in stdout
    assert again == first

    direct, _ = run("direct", tmp_path / "samples", stats)  # the statistics file as REFERENCE
    assert fake_inception[3:] == ["samples"]
    assert {k: direct[k] for k in image_metrics.JSON_KEYS} == {k: first[k] for k in image_metrics.JSON_KEYS}

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "reference" / "000.png")
    changed, stdout = run("changed", tmp_path / "samples", tmp_path / "reference", "--reference-stats", stats)
    assert fake_inception[4:] == ["samples", "reference"] and "stale (the images changed)" in stdout
    assert changed["fid"] != first["fid"]

    weights.write_bytes(b"weights two")
    _, stdout = run("reweighted", tmp_path / "samples", tmp_path / "reference", "--reference-stats", stats)
    assert fake_inception[6:] == ["samples", "reference"] and "stale (the Inception weights changed)" in stdout


def test_an_adm_npz_scores_like_the_folder_of_its_images(tmp_path, fake_inception):
    arrays = write_images(tmp_path / "samples", 8)
    write_images(tmp_path / "reference", 8, seed=1, brightness=30)
    image_sets.write_adm_npz(tmp_path / "samples.npz", arrays)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    results = []
    for samples in ("samples", "samples.npz"):
        out = tmp_path / f"{samples}.json"
        proc = run_main("evaluate.py", tmp_path / samples, tmp_path / "reference", "--inception-weights", weights,
                        "--json", out)
        assert proc.returncode == 0, proc.stderr
        results.append({k: json.loads(out.read_text())[k] for k in image_metrics.JSON_KEYS})
    assert results[0] == results[1] and results[0]["fid"] > 0


def test_save_stats_writes_a_reference_once(tmp_path, fake_inception):
    write_images(tmp_path / "reference", 8, seed=1)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    stats = tmp_path / "ref.npz"
    proc = run_main("evaluate.py", tmp_path / "reference", "--save-stats", stats, "--inception-weights", weights)
    assert proc.returncode == 0, proc.stderr
    saved = inception_stats.load_stats(stats)
    assert len(saved) == 8 and saved.weights_sha256 == sha256_of(weights)
    assert saved.source_sha256 == image_sets.ImageFolder(tmp_path / "reference").sha256()
    with np.load(stats) as raw:  # mean and covariance for other tools
        np.testing.assert_allclose(raw["mu"], saved.pool.mean(0), rtol=1e-5)
        np.testing.assert_allclose(raw["sigma"], np.cov(saved.pool.astype(np.float64), rowvar=False), rtol=1e-6)


def test_statistics_of_other_weights_are_refused(tmp_path, fake_inception):
    write_images(tmp_path / "samples", 8)
    write_images(tmp_path / "reference", 8, seed=1)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights one")
    stats = tmp_path / "ref.npz"
    run_main("evaluate.py", tmp_path / "reference", "--save-stats", stats, "--inception-weights", weights)
    weights.write_bytes(b"weights two")
    assert_user_error(run_main("evaluate.py", tmp_path / "samples", stats, "--inception-weights", weights),
                      "ref.npz", "other Inception weights")
